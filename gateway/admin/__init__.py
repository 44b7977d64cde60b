"""The admin HTTP listener: status page, JSON status, Prometheus metrics, readiness,
refresh and reload (``web``), rendered from the status records (``render``, ``metrics``)."""
