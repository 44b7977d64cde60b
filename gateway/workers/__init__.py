"""Several serving processes: the master (``master``) and its workers (``child``)."""
