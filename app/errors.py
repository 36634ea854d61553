"""Errors that carry a message meant for a person, not a traceback."""


class SketchReidError(Exception):
    """Base class: the message says what was wrong and, where possible, what to do."""


class UserInputError(SketchReidError, ValueError):
    """A bad path, option value or file supplied by the user (CLI exit code 2, HTTP 4xx)."""


class ImageError(UserInputError):
    """Bytes that cannot be decoded into a usable image."""


class DataLayoutError(UserInputError):
    """A data folder that does not follow the expected layout."""


class BundleError(SketchReidError):
    """A model bundle that is missing, corrupt or inconsistent with its manifest."""
