"""Klein apps: the registry API, health endpoints, and the one place errors become responses."""
