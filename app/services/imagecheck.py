"""Where an encoded image ends: bytes after it are refused, not stored.

A JPEG, PNG or WEBP file has a defined end (the EOI marker, the IEND chunk, the RIFF size).
Whatever follows it is not part of the picture: an archive or a second image appended to a
crop would be stored as "evidence" and served back to anyone who can read the gallery. The
service refuses such files rather than strip the tail, because stripping would store bytes
other than those received (and the sha256 identity of the upload would then be of something
the sender never sent). Formats without a reliable end marker (GIF, BMP, TIFF) are not checked.

The walkers only look at the container structure (the JPEG one is the image loader's,
:func:`app.ml.images.jpeg_layout`); a file they cannot follow (truncated, corrupt) is left to
the decoder, which says what is wrong with it.
"""

from __future__ import annotations

import struct

from app.ml.images import jpeg_layout

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_end(data: bytes) -> int | None:
    n = len(data)
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        pos += 12 + length  # length, type, data, CRC
        if pos > n:
            return None
        if kind == b"IEND":
            return pos
    return None


def _webp_end(data: bytes) -> int | None:
    if len(data) < 12:
        return None
    (size,) = struct.unpack_from("<I", data, 4)
    end = 8 + size + (size & 1)  # RIFF chunks are padded to an even length
    return end if end <= len(data) else None


def trailing_bytes(data: bytes) -> tuple[str, int] | None:
    """(format, number of bytes after the image's end) when there are any, else None."""
    if data.startswith(b"\xff\xd8\xff"):
        fmt, end = "JPEG", jpeg_layout(data).end
    elif data.startswith(_PNG_SIGNATURE):
        fmt, end = "PNG", _png_end(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt, end = "WEBP", _webp_end(data)
    else:
        return None
    if end is None or end >= len(data):
        return None
    return fmt, len(data) - end
