"""Where an encoded image ends: bytes after it are refused, not stored.

A JPEG, PNG or WEBP file has a defined end (the EOI marker, the IEND chunk, the RIFF size).
Whatever follows it is not part of the picture: an archive or a second image appended to a
crop would be stored as "evidence" and served back to anyone who can read the gallery. The
service refuses such files rather than strip the tail, because stripping would store bytes
other than those received (and the sha256 identity of the upload would then be of something
the sender never sent). Formats without a reliable end marker (GIF, BMP, TIFF) are not checked.

The walkers only look at the container structure; a file they cannot follow (truncated,
corrupt) is left to the decoder, which says what is wrong with it.
"""

from __future__ import annotations

import struct

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG markers without a length field: TEM, RST0-7, SOI, EOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_end(data: bytes) -> int | None:
    """Offset just past the EOI marker of the JPEG in ``data``, or None if not found."""
    n = len(data)
    pos = 2  # after SOI
    while pos < n:
        if data[pos] != 0xFF:
            return None
        while pos < n and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= n:
            return None
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return pos
        if marker in _STANDALONE:
            continue
        if pos + 2 > n:
            return None
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            return None
        pos += length
        if marker != 0xDA:
            continue
        # Entropy-coded scan data: up to the next marker that is not a stuffed 0xFF00 or RSTn.
        while True:
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= n:
                return None
            following = data[pos + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                pos += 1 if following == 0xFF else 2
                continue
            break
    return None


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
        fmt, end = "JPEG", _jpeg_end(data)
    elif data.startswith(_PNG_SIGNATURE):
        fmt, end = "PNG", _png_end(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt, end = "WEBP", _webp_end(data)
    else:
        return None
    if end is None or end >= len(data):
        return None
    return fmt, len(data) - end
