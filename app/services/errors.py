"""Errors of the service layer; the API maps each class to one HTTP status."""

from __future__ import annotations

from app.errors import SketchReidError, UserInputError


class NotFoundError(UserInputError):
    """An id that does not exist (or that the caller may not see): HTTP 404."""


class OutOfRangeError(UserInputError):
    """A value of the right type outside the range the service accepts: HTTP 422."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLargeError(UserInputError):
    """An upload over the size limit: HTTP 413."""


class ConflictError(SketchReidError):
    """A request that the current state forbids (e.g. revoking the last admin key): HTTP 409."""


class AuthenticationError(SketchReidError):
    """No API key, an unknown key or a revoked key: HTTP 401."""


class TooManyAuthFailuresError(SketchReidError):
    """Too many failed API keys from this address: HTTP 429 with ``Retry-After``."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermissionDeniedError(SketchReidError):
    """A valid key whose role may not do this: HTTP 403."""


class NotReadyError(SketchReidError):
    """The service cannot answer right now (e.g. the index is being rebuilt): HTTP 503."""


def input_error_status(exc: UserInputError) -> int:
    """The HTTP status of a refused input (also used for one file of a batch)."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, PayloadTooLargeError):
        return 413
    if isinstance(exc, OutOfRangeError):
        return 422
    return 400


class UnavailableError(NotReadyError):
    """A dependency (the database) is down, stalled or saturated: HTTP 503 with
    ``Retry-After``; the request was not completed and may be sent again."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InsufficientStorageError(SketchReidError):
    """The disk (or the database's disk) is full: HTTP 507; nothing was stored."""
