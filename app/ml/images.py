"""The one image loader of the project: bytes, a path or a binary file -> RGB PIL image.

Every image that enters training, evaluation or the service goes through :func:`load_image`.
It applies the EXIF orientation, converts every colour mode to RGB (transparency composited on
white), decodes huge JPEG scans at reduced scale, refuses decompression bombs from the header
alone, refuses truncated JPEGs that Pillow would decode silently (:func:`jpeg_incomplete`), and
turns every decoding problem into a one-line :class:`app.errors.ImageError`.

Memory: an image is shrunk to ``max_side`` in the mode it was decoded in (16-bit grey widened
to 32-bit integers, palettes composited on white and expanded to RGB first) before any
conversion to 8-bit RGB or float, and turned to its EXIF orientation once small. What one decode
needs at its peak is estimated from the header (:func:`decode_cost`); a
:class:`DecodeBudget` shared by every caller of a process (the service's uploads, batches and
searches) lets decodes run only while the bytes they hold together stay under one limit.
"""

from __future__ import annotations

import io
import math
import os
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin

from app.errors import ImageError, SketchReidError

# Formats accepted on input, in the order their signatures are tried. "MPO" is how Pillow names
# the multi-picture JPEGs many phones write; it is accepted as JPEG.
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_JPEG_FAMILY = frozenset({"JPEG", "MPO"})

# What Pillow raises for data it cannot decode.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO


class DecodeBusyError(SketchReidError):
    """The decoding budget stayed full for longer than its wait: HTTP 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DecodeBudget:
    """Bytes of decoded pixels in flight, shared by every decode that is given it.

    A decode holds :func:`decode_cost` bytes from just before its pixels are decoded until its
    small result is made; one that would take the total over ``total_bytes`` waits for others
    to finish, at most ``wait_s`` seconds (then :class:`DecodeBusyError`). An image that
    alone needs more than ``total_bytes`` is refused (:class:`ImageError`).
    """

    def __init__(self, total_bytes: int, wait_s: float = 30.0) -> None:
        if total_bytes < 1:
            raise ValueError(f"total_bytes must be positive, not {total_bytes}")
        self.total = total_bytes
        self.wait_s = wait_s
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, cost: int, what: str) -> Iterator[None]:
        if cost > self.total:
            raise ImageError(
                f"{what} needs about {cost / 1048576:,.0f} MB to decode, more than the "
                f"decoding memory of {self.total / 1048576:,.0f} MB"
            )
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self.used + cost > self.total:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    if self.used + cost <= self.total:
                        break
                    raise DecodeBusyError(
                        f"the server is decoding other large images ({self.used / 1048576:,.0f}"
                        f" of {self.total / 1048576:,.0f} MB in use); send this one again "
                        "in a moment (Retry-After)"
                    )
            self.used += cost
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= cost
                self._cond.notify_all()


def _pixel_bytes(mode: str) -> int:
    """Bytes Pillow stores per pixel: 1 for 1/L/P, 2 for 16-bit, 4 for all the others (RGB is
    stored as 4 bytes a pixel)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def decode_cost(mode: str, size: tuple[int, int], fmt: str | None, transparency: bool) -> int:
    """Bytes one decode holds at its peak, from the header: the decoded image, plus the copy
    that shrinking needs (a premultiplied RGBa/La copy with alpha, the RGB expansion of a
    palette, 32-bit integers for 16-bit grey), plus a second decode for a JPEG (the truncation
    check), plus a byte a pixel for the box-reduced image the resize goes through (a quarter
    of the pixels at 4 bytes), plus 15 % and 1 MB for buffers. Measured against the peak
    resident memory of one decode in docs/reliability.md ("Memory bound")."""
    pixels = size[0] * size[1]
    stored = _pixel_bytes(mode)
    if mode in ("L", "RGB", "I", "F") and not transparency:
        work = 0
    elif mode in ("LA", "RGBA"):
        work = 4  # the premultiplied copy the resize makes
    elif mode == "P":
        work = 4  # expanded to RGB (palette transparency composited in the palette)
    elif mode.startswith("I;16"):
        work = 4  # widened to 32-bit integers
    elif mode == "1":
        work = 1  # widened to L
    else:
        work = 8  # converted to RGBA, then its premultiplied copy
    if fmt in _JPEG_FAMILY:
        work += stored
    return int(pixels * (stored + work + 1) * 1.15) + 1048576


def _has_alpha_mode(mode: str) -> bool:
    return mode in ("RGBA", "LA", "PA", "RGBa", "La")


def load_image(
    source: ImageSource,
    *,
    max_side: int | None = 1024,
    max_pixels: int = 150_000_000,
    budget: DecodeBudget | None = None,
) -> Image.Image:
    """Decode ``source`` into an RGB image whose longer side is at most ``max_side``.

    ``source`` is the encoded bytes, a path, or a binary file object (read from its current
    position). ``max_side=None`` keeps the full size. Images with more than ``max_pixels``
    pixels are refused from their header, before any pixel is decoded. With ``budget``, the
    decode waits for room in it (see :class:`DecodeBudget`).

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
                return _decode(fp, path, max_side, max_pixels, budget)
        except PermissionError as exc:
            raise ImageError(f"cannot read {path}: {exc.strerror}") from exc
    if isinstance(source, bytes | bytearray | memoryview):
        return _decode(io.BytesIO(bytes(source)), None, max_side, max_pixels, budget)
    name = getattr(source, "name", None)
    label = name if isinstance(name, str) else None
    try:
        source.seek(source.tell())
    except (AttributeError, OSError):  # a pipe or socket: read it all
        return _decode(io.BytesIO(source.read()), label, max_side, max_pixels, budget)
    return _decode(source, label, max_side, max_pixels, budget)


def _decode(
    fp: BinaryIO,
    label: str | None,
    max_side: int | None,
    max_pixels: int,
    budget: DecodeBudget | None,
) -> Image.Image:
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
        draft: tuple[int, int] | None = None
        if max_side is not None and im.format in _JPEG_FAMILY:
            scale = max_side / max(width, height)
            if scale < 1:  # decode at 1/2, 1/4 or 1/8 scale, never below the target size
                draft = (math.ceil(width * scale), math.ceil(height * scale))
                im.draft(im.mode, draft)
        holding = (
            budget.hold(
                decode_cost(im.mode, im.size, im.format, "transparency" in im.info),
                f"the {width}×{height} {im.mode} image",
            )
            if budget is not None
            else nullcontext()
        )
        with holding:
            im.load()  # force the full decode here: truncated data raises now, not later
            if im.format in _JPEG_FAMILY:  # libjpeg fills scans that end early with grey
                fp.seek(0)
                problem = jpeg_incomplete(fp.read(), im, draft)
                if problem is not None:
                    raise ImageError(f"truncated JPEG: {problem}")
            out = _small_rgb(im, max_side)
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


# --- Truncated JPEGs -----------------------------------------------------------------------
#
# libjpeg does not stop at a premature end of the scan data: when the entropy-coded data meets a
# marker (the EOI put back after a cut, or any later segment) before every block of the image is
# decoded, it warns ("Corrupt JPEG data: premature end of data segment"), fills the remaining
# blocks with grey and carries on. Pillow drops the warning, so a JPEG cut in half with its EOI
# put back, or a header of 6000×6000 over 16×16 of data, decodes "successfully" (and
# ``LOAD_TRUNCATED_IMAGES`` does not enter: the data does end with EOI). Two checks catch it:
#
# * the markers (no pixel decoded): every colour component has a scan; a progressive image's
#   scans bring every coefficient of every component to its last bit; a scan with a restart
#   interval has every one of its restart markers. A cut between two scans or two intervals
#   leaves the decoder nothing to run short of, so only the markers can tell.
# * the scan data: the image is decoded a second time with filler bytes between the scan data
#   and the EOI marker. Where the scans were complete the decoder never reads the filler (it
#   skips it as junk before the EOI) and both decodes are the same, pixel for pixel; where they
#   ended early, it decodes the filler as more blocks instead of grey and the pixels differ
#   (or the filler makes it fail). The cost: a JPEG is decoded twice, at the same scale.
#
# What neither can see: a cut that removes only the last few bits of the final scan, when the
# filler happens to decode to the same values as libjpeg's grey.

# Markers without a length field: TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
# Frame headers (SOF), by how their scans make the image: sequential (baseline, extended;
# Huffman or arithmetic coding), progressive; lossless and hierarchical ones only get the
# decoding check.
_SOF_SEQUENTIAL = frozenset({0xC0, 0xC1, 0xC9})
_SOF_PROGRESSIVE = frozenset({0xC2, 0xCA})
_SOF_ANY = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC})  # not DHT, JPG, DAC
# Between the scan data and the EOI: no 0xFF (so no marker), varied bits (so no run of one
# symbol), long enough for several blocks. Complete scans never reach it.
_SCAN_FILLER = bytes((i * 73 + 41) % 255 for i in range(256))


@dataclass(frozen=True)
class JpegScan:
    """One scan (SOS) of a JPEG: its components, spectral selection and successive
    approximation, and the restart interval in force with the restart markers it holds."""

    components: tuple[int, ...]
    ss: int
    se: int
    ah: int
    al: int
    restart_interval: int
    restarts: int


@dataclass
class JpegLayout:
    """What the markers of a JPEG say, read without decoding any pixel."""

    end: int | None = None  # offset just past the EOI marker (None: not found where expected)
    sof: int | None = None  # the frame header's marker (0xC0 baseline, 0xC2 progressive, ...)
    width: int = 0
    height: int = 0
    sampling: dict[int, tuple[int, int]] = field(default_factory=dict)  # component id -> H, V
    scans: list[JpegScan] = field(default_factory=list)


def jpeg_layout(data: bytes) -> JpegLayout:
    """Walk the markers of the JPEG at the start of ``data`` up to its EOI (the end of the
    first image of a multi-picture file). A structure it cannot follow (cut short, corrupt)
    ends the walk with ``end`` None, leaving the decoder to say what is wrong."""
    layout = JpegLayout()
    n = len(data)
    pos = 2  # after SOI
    interval = 0
    while pos < n:
        if data[pos] != 0xFF:
            return layout
        while pos < n and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= n:
            return layout
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            layout.end = pos
            return layout
        if marker in _JPEG_STANDALONE:
            continue
        if pos + 2 > n:
            return layout
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > n:
            return layout
        start, pos = pos + 2, pos + length
        if marker in _SOF_ANY and length >= 8:
            _read_frame(layout, marker, data[start:pos])
        elif marker == 0xDD and length >= 4:  # DRI
            (interval,) = struct.unpack_from(">H", data, start)
        elif marker == 0xDA:  # SOS, then entropy-coded data up to the next marker but RSTn
            restarts = 0
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    return layout
                following = data[pos + 1]
                if following == 0x00 or following == 0xFF:  # a stuffed 0xFF, fill bytes
                    pos += 2 if following == 0x00 else 1
                    continue
                if 0xD0 <= following <= 0xD7:
                    restarts += 1
                    pos += 2
                    continue
                break
            scan = _read_scan(data[start : start + length - 2], interval, restarts)
            if scan is not None:
                layout.scans.append(scan)
    return layout


def _read_frame(layout: JpegLayout, marker: int, segment: bytes) -> None:
    _precision, height, width, count = struct.unpack_from(">BHHB", segment)
    layout.sof, layout.width, layout.height = marker, width, height
    for i in range(count):
        if 6 + 3 * i + 2 < len(segment):
            ident, factors = segment[6 + 3 * i], segment[7 + 3 * i]
            layout.sampling[ident] = (factors >> 4, factors & 0x0F)


def _read_scan(segment: bytes, interval: int, restarts: int) -> JpegScan | None:
    if not segment:
        return None
    count = segment[0]
    if len(segment) < 1 + 2 * count + 3:
        return None
    components = tuple(segment[1 + 2 * i] for i in range(count))
    ss, se, approx = segment[1 + 2 * count : 4 + 2 * count]
    return JpegScan(components, ss, se, approx >> 4, approx & 0x0F, interval, restarts)


def _scan_mcus(layout: JpegLayout, scan: JpegScan) -> int | None:
    """How many MCUs (blocks, for a scan of one component) a scan codes; None if unknown."""
    if not layout.sampling or any(c not in layout.sampling for c in scan.components):
        return None
    hmax = max(h for h, _ in layout.sampling.values())
    vmax = max(v for _, v in layout.sampling.values())
    if hmax < 1 or vmax < 1:
        return None
    if len(scan.components) > 1:
        return math.ceil(layout.width / (8 * hmax)) * math.ceil(layout.height / (8 * vmax))
    h, v = layout.sampling[scan.components[0]]
    columns = math.ceil(math.ceil(layout.width * h / hmax) / 8)
    rows = math.ceil(math.ceil(layout.height * v / vmax) / 8)
    return columns * rows


def _missing_scans(layout: JpegLayout) -> str | None:
    """Why the scans the markers list cannot make the whole image, or None."""
    if layout.end is None or layout.sof is None or not layout.scans or layout.height == 0:
        return None  # not followed to its end, or its height comes later (DNL): no judgement
    components = list(layout.sampling)
    if layout.sof in _SOF_SEQUENTIAL:
        covered = {c for scan in layout.scans for c in scan.components}
        missing = [c for c in components if c not in covered]
        if missing:
            return (
                f"it has no scan for {len(missing)} of its {len(components)} colour "
                "components (the file ends early)"
            )
    elif layout.sof in _SOF_PROGRESSIVE:
        lowest: dict[tuple[int, int], int] = {}  # (component, coefficient) -> lowest Al sent
        for scan in layout.scans:
            for c in scan.components:
                for k in range(scan.ss, min(scan.se, 63) + 1):
                    lowest[c, k] = min(lowest.get((c, k), scan.al), scan.al)
        if any(lowest.get((c, k)) != 0 for c in components for k in range(64)):
            return (
                f"its {len(layout.scans)} progressive scans stop before the image is complete "
                "(the file ends early)"
            )
    for scan in layout.scans:
        mcus = _scan_mcus(layout, scan)
        if scan.restart_interval and mcus is not None:
            intervals = math.ceil(mcus / scan.restart_interval)
            if scan.restarts + 1 < intervals:
                return (
                    f"a scan ends after {scan.restarts + 1} of its {intervals} restart "
                    "intervals (the file ends early)"
                )
    return None


def jpeg_incomplete(
    data: bytes, decoded: Image.Image, draft: tuple[int, int] | None = None
) -> str | None:
    """Why the JPEG ``data``, which Pillow decoded into ``decoded`` (drafted to ``draft``),
    is not the whole image its header declares; None when it is (see the notes above)."""
    layout = jpeg_layout(data)
    if layout.end is None:  # the decoder followed what this walk could not: leave it be
        return None
    missing = _missing_scans(layout)
    if missing is not None:
        return missing
    padded = data[: layout.end - 2] + _SCAN_FILLER + b"\xff\xd9"
    size = f"{layout.width}×{layout.height}"
    short = f"its scan data ends before the {size} image its header declares is complete"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = JpegImagePlugin.JpegImageFile(io.BytesIO(padded))
            if draft is not None:
                probe.draft(probe.mode, draft)
            probe.load()
    except _DECODE_ERRORS:
        return short
    return None if _same_pixels(probe, decoded) else short


def _same_pixels(a: Image.Image, b: Image.Image, band: int = 256) -> bool:
    """Whether two images have the same mode, size and pixels (compared a band of rows at a
    time, so that no copy of either whole image is made)."""
    if a.mode != b.mode or a.size != b.size:
        return False
    width, height = a.size
    for top in range(0, height, band):
        box = (0, top, width, min(top + band, height))
        if a.crop(box).tobytes() != b.crop(box).tobytes():
            return False
    return True


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


# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose).
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(im: Image.Image) -> Image.Transpose | None:
    """The transposition the EXIF orientation asks for; damaged EXIF data: none."""
    try:
        return _ORIENTATIONS.get(int(im.getexif().get(0x0112, 1)))
    except (*_DECODE_ERRORS, KeyError, TypeError):
        return None


def _small_rgb(im: Image.Image, max_side: int | None) -> Image.Image:
    """The decoded ``im`` as RGB, at most ``max_side`` on its longer side, upright.

    Shrunk first, in a mode the resampler takes without a float copy of the full image:
    16-bit grey as 32-bit integers, a palette composited on white in the palette then
    expanded, other modes as RGB or RGBA. Grey levels are scaled by the range of the whole
    image (its extrema, read without a copy); the orientation is applied to the small image.
    """
    turn = _orientation(im)
    top = _grey_top(im)
    out = _resamplable(im)
    if max_side is not None:
        out = _shrink(out, max_side)
    if turn is not None:
        out = out.transpose(turn)
    elif out is im:
        out = im.copy()  # never hand out the decoder's image (it may hold the caller's file)
    return _to_rgb(out, top)


def _grey_top(im: Image.Image) -> float:
    """The value that maps to white for a 16/32-bit integer or float grey image."""
    if not (im.mode.startswith("I;16") or im.mode in ("I", "F")):
        return 255.0
    low_high = im.getextrema()
    high = float(low_high[1]) if isinstance(low_high, tuple) else 255.0  # type: ignore[arg-type]
    if im.mode == "F":
        return 1.0 if high <= 1.0 else 255.0
    return 65535.0 if high > 255 else 255.0


def _resamplable(im: Image.Image) -> Image.Image:
    """``im`` in a mode that Pillow resizes (L, LA, RGB, RGBA, I, F), transparency kept."""
    mode = im.mode
    transparency = "transparency" in im.info
    if mode in ("L", "RGB", "I", "F", "LA", "RGBA") and not transparency:
        return im
    if mode.startswith("I;16"):
        return im.convert("I")
    if mode == "1":
        return im.convert("L")
    if mode == "P":
        return _palette_on_white(im)
    try:
        return im.convert("RGBA" if transparency or _has_alpha_mode(mode) else "RGB")
    except ValueError as exc:
        raise ImageError(f"unsupported colour mode {mode}") from exc


def _palette_on_white(im: Image.Image) -> Image.Image:
    """A palette image as RGB, its transparent entries composited on white in the palette
    (one RGB copy of the image, not an RGBA one and its premultiplied copy). Changes the
    palette of ``im``, the decoder's image, which is not handed out."""
    palette = np.asarray(im.getpalette("RGB") or [], dtype=np.float64).reshape(-1, 3)
    alpha = np.full(len(palette), 255.0)
    transparency = im.info.get("transparency")
    if isinstance(transparency, int) and 0 <= transparency < len(palette):
        alpha[transparency] = 0.0
    elif isinstance(transparency, bytes | bytearray):
        given = np.frombuffer(bytes(transparency), dtype=np.uint8)[: len(palette)]
        alpha[: len(given)] = given
    if "transparency" in im.info:
        a = (alpha / 255.0)[:, None]
        on_white = np.clip(np.rint(palette * a + 255.0 * (1.0 - a)), 0, 255).astype(np.uint8)
        im.putpalette(on_white.tobytes(), "RGB")
        del im.info["transparency"]
    return im.convert("RGB")


def _to_rgb(im: Image.Image, top: float = 255.0) -> Image.Image:
    """L, LA, RGB, RGBA, I or F -> RGB; alpha composited on white, wide grey scaled by
    ``top`` (the value that becomes white) to 8-bit."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(im), top), mode="L").convert("RGB")
    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"unsupported colour mode {im.mode}") from exc


def _to_uint8(arr: np.ndarray, top: float) -> np.ndarray:
    """Scale a 32-bit integer or float grey image (a small one) to 0..255."""
    values = arr.astype(np.float64)
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
