"""Reading multipart files with the per-file size limit."""

from __future__ import annotations

from fastapi import UploadFile

from app.services.errors import PayloadTooLargeError


def read_upload(upload: UploadFile, limit: int) -> bytes:
    """The file's bytes; ``PayloadTooLargeError`` past ``limit`` (never reads more than that)."""
    if upload.size is not None and upload.size > limit:
        raise PayloadTooLargeError(_too_large(upload.size, limit))
    upload.file.seek(0)
    # Read what is there (plus one byte to notice more), not a buffer of the whole limit.
    data = upload.file.read((limit if upload.size is None else min(upload.size, limit)) + 1)
    if len(data) > limit:
        raise PayloadTooLargeError(_too_large(None, limit))
    return data


def _too_large(size: int | None, limit: int) -> str:
    have = f"{size / 1048576:.1f} MB" if size is not None else "larger than the limit"
    return f"file is {have}; the limit is {limit / 1048576:g} MB"
