"""One router per resource, mounted under /api/v1 (health endpoints at the root)."""

# Registers the "id" path convertor before any route is defined: routes write "{name:id}"
# for integer ids and Starlette's "{name:uuid}" for UUIDs.
from app.api import convertors as _convertors  # noqa: F401
