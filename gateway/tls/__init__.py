"""TLS: context building and the connection creator that serves the current context."""
