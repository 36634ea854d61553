"""Content-addressed image storage: ``<root>/ab/cd/<sha256>.<ext>``, written atomically."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from app.core.files import atomic_write_bytes, fsync_dir

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

# (signature test, extension, content type) for the formats app.ml.images accepts.
_FORMATS: tuple[tuple[str, str], ...] = (
    ("jpg", "image/jpeg"),
    ("png", "image/png"),
    ("webp", "image/webp"),
    ("gif", "image/gif"),
    ("bmp", "image/bmp"),
    ("tif", "image/tiff"),
)
CONTENT_TYPES = dict(_FORMATS)


def is_sha256(text: str) -> bool:
    return bool(_SHA_RE.match(text))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sniff_extension(data: bytes) -> str:
    """File extension from the leading bytes ("bin" when unknown; decoding decides validity)."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    return "bin"


def content_type_for(path: str) -> str:
    return CONTENT_TYPES.get(path.rsplit(".", 1)[-1].lower(), "application/octet-stream")


class BlobStore:
    """Images stored once by content hash under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def relative_path(self, sha256: str, ext: str) -> str:
        if not _SHA_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext}"

    def path(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"blob path escapes the store: {relative!r}")
        return path

    def put(self, sha256: str, ext: str, data: bytes) -> tuple[str, bool]:
        """Store ``data``; returns (relative path, whether the file was newly written)."""
        if sha256_hex(data) != sha256:
            raise ValueError("data does not match its sha256")
        relative = self.relative_path(sha256, ext)
        path = self.path(relative)
        if path.is_file() and path.stat().st_size == len(data):
            try:
                # Fresh again, so an orphan sweep running now leaves it (app.services.orphans).
                os.utime(path)
                return relative, False
            except FileNotFoundError:
                pass  # swept away just now: write it again
        atomic_write_bytes(path, data)
        return relative, True

    def read(self, relative: str) -> bytes:
        return self.path(relative).read_bytes()

    def exists(self, relative: str) -> bool:
        return self.path(relative).is_file()

    def remove(self, relative: str) -> bool:
        """Delete a blob; returns whether a file went.

        Empty fan-out folders are left in place: removing them could race a concurrent ``put``.
        """
        path = self.path(relative)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)
        return True

    def files(self) -> list[Path]:
        """Every stored blob (for tests and consistency checks)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith("."))
