"""The one image loader of the project: bytes, a path or a binary file -> RGB PIL image.

Every image that enters training, evaluation or the service goes through :func:`load_image`.
It applies the EXIF orientation, converts every colour mode to RGB (transparency composited on
white), decodes huge JPEG scans at reduced scale, refuses decompression bombs from the header
alone, and turns every decoding problem into a one-line :class:`app.errors.ImageError`.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
import zlib
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

from app.errors import ImageError

# Formats accepted on input, in the order their signatures are tried. "MPO" is how Pillow names
# the multi-picture JPEGs many phones write; it is accepted as JPEG.
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_JPEG_FAMILY = frozenset({"JPEG", "MPO"})

# What Pillow raises for data it cannot decode.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO


def load_image(
    source: ImageSource,
    *,
    max_side: int | None = 1024,
    max_pixels: int = 150_000_000,
) -> Image.Image:
    """Decode ``source`` into an RGB image whose longer side is at most ``max_side``.

    ``source`` is the encoded bytes, a path, or a binary file object (read from its current
    position). ``max_side=None`` keeps the full size. Images with more than ``max_pixels``
    pixels are refused from their header, before any pixel is decoded.

    Raises :class:`ImageError` with a one-line message for a missing or empty file, data that is
    not an image, an unsupported format, truncated or corrupt data, or a decompression bomb.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels or None, not {max_side}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, not {max_pixels}")

    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ImageError(f"no such file: {path}")
        if not os.path.isfile(path):
            raise ImageError(f"not a file: {path}")
        try:
            with open(path, "rb") as fp:
                return _decode(fp, path, max_side, max_pixels)
        except PermissionError as exc:
            raise ImageError(f"cannot read {path}: {exc.strerror}") from exc
    if isinstance(source, bytes | bytearray | memoryview):
        return _decode(io.BytesIO(bytes(source)), None, max_side, max_pixels)
    name = getattr(source, "name", None)
    label = name if isinstance(name, str) else None
    try:
        source.seek(source.tell())
    except (AttributeError, OSError):  # a pipe or socket: read it all
        return _decode(io.BytesIO(source.read()), label, max_side, max_pixels)
    return _decode(source, label, max_side, max_pixels)


def _decode(fp: BinaryIO, label: str | None, max_side: int | None, max_pixels: int) -> Image.Image:
    where = f": {label}" if label else ""
    start = fp.tell()
    prefix = fp.read(16)
    fp.seek(start)
    if not prefix:
        raise ImageError(f"empty file{where}" if label else "empty image data (0 bytes)")
    if start:  # plugins expect the image to start at offset 0
        fp = io.BytesIO(fp.read())

    im = _open_header(fp, prefix, label)
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}×{height}){where}")
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}×{height} pixels, more than the limit of {max_pixels:,}{where}"
        )
    try:
        if max_side is not None and im.format in _JPEG_FAMILY:
            scale = max_side / max(width, height)
            if scale < 1:  # decode at 1/2, 1/4 or 1/8 scale, never below the target size
                im.draft(im.mode, (math.ceil(width * scale), math.ceil(height * scale)))
        im.load()  # force the full decode here: truncated data raises now, not later
        out = _exif_transpose(im)
        if max_side is not None and out.mode in ("L", "LA", "RGB", "RGBA"):
            out = _shrink(out, max_side)  # shrink first: converting a huge scan costs more
        out = _to_rgb(out)
        if max_side is not None:
            out = _shrink(out, max_side)
    except ImageError as exc:
        raise ImageError(f"{exc}{where}") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image is too large to decode safely ({exc}){where}") from exc
    except MemoryError as exc:
        raise ImageError(f"not enough memory to decode the image{where}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"truncated or corrupt image data{where}") from exc
    # No im.close(): it would close a file object the caller owns (paths: closed by the with).
    return out


def _open_header(fp: BinaryIO, prefix: bytes, label: str | None) -> ImageFile.ImageFile:
    """Identify the format and read the header only (no pixel data), for supported formats.

    This is :func:`PIL.Image.open` restricted to :data:`SUPPORTED_FORMATS` and without Pillow's
    own decompression-bomb check, so that :func:`load_image` applies its own ``max_pixels``.
    """
    where = f": {label}" if label else ""
    Image.init()
    for fmt in SUPPORTED_FORMATS:
        if fmt not in Image.OPEN:  # Pillow built without this codec
            continue
        factory, accept = Image.OPEN[fmt]
        accepted = accept(prefix) if accept is not None else True
        if isinstance(accepted, str) or not accepted:  # a str is Pillow's "missing codec" note
            continue
        fp.seek(0)
        try:
            return factory(fp, label or "")
        except Image.DecompressionBombError as exc:
            raise ImageError(f"image is too large to decode safely ({exc}){where}") from exc
        except _DECODE_ERRORS as exc:
            raise ImageError(f"corrupt {fmt} header{where}") from exc
    fmt_name = _other_format(fp)
    if fmt_name is not None:
        raise ImageError(
            f"unsupported image format {fmt_name}{where} "
            f"(supported: {', '.join(SUPPORTED_FORMATS)})"
        )
    raise ImageError(f"not an image file{where}" if label else "not an image (unrecognised data)")


def _other_format(fp: BinaryIO) -> str | None:
    """The name Pillow gives to an image in a format we do not accept, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(fp) as other:
                return str(other.format)
    except Exception:  # any failure simply means "not an image we can name"
        return None


def _exif_transpose(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; damaged EXIF data leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(im)
    except (*_DECODE_ERRORS, KeyError, TypeError):
        return im.copy()


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited on white, 16-bit scaled to 8-bit."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(im)), mode="L").convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"unsupported colour mode {im.mode}") from exc


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a 16/32-bit integer or float grey image to 0..255."""
    values = arr.astype(np.float64)
    if arr.dtype.kind == "f":
        top = 1.0 if values.size and float(values.max()) <= 1.0 else 255.0
    elif arr.dtype.itemsize >= 2 and values.size and float(values.max()) > 255:
        top = 65535.0
    else:
        top = 255.0
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


def _shrink(im: Image.Image, max_side: int) -> Image.Image:
    """Downscale (Lanczos, with an integer pre-reduction) so the longer side is <= max_side."""
    width, height = im.size
    longest = max(width, height)
    if longest <= max_side:
        return im
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
