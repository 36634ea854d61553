"""One router per resource, mounted under /api/v1 (health endpoints at the root)."""
