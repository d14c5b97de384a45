"""The operator web UI: static files the controller serves, a client of its REST API."""
