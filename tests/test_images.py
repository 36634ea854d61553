"""app.ml.images.load_image: formats, colour modes, orientation, size limits and every error."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from app.errors import ImageError, UserInputError
from app.ml.images import SUPPORTED_FORMATS, load_image


def encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(size: tuple[int, int] = (60, 40)) -> Image.Image:
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, mode="RGB")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming a size, with almost no pixel data: what a decompression bomb looks like."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_every_supported_format_loads_from_bytes(fmt: str) -> None:
    im = load_image(encode(noise(), fmt))
    assert im.mode == "RGB"
    assert im.size == (60, 40)


def test_path_str_pathlike_and_file_object(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    noise().save(path)
    for source in (path, str(path)):
        assert load_image(source).size == (60, 40)
    with path.open("rb") as fp:
        assert load_image(fp).size == (60, 40)
        assert not fp.closed  # the caller's file stays open


def test_file_object_read_from_its_current_position() -> None:
    data = encode(noise(), "PNG")
    fp = io.BytesIO(b"header-to-skip" + data)
    fp.seek(len(b"header-to-skip"))
    assert load_image(fp).size == (60, 40)


def test_lossless_pixels_are_preserved() -> None:
    im = noise()
    assert np.array_equal(np.asarray(load_image(encode(im, "PNG"))), np.asarray(im))


def test_exif_orientation_is_applied() -> None:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = load_image(encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[2] > 200 and top[0] < 60  # the blue left half is now on top
    assert bottom[0] > 200 and bottom[2] < 60


def test_exif_orientation_with_draft_decoding() -> None:
    im = Image.new("RGB", (400, 200), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 8
    out = load_image(encode(im, "JPEG", exif=exif.tobytes()), max_side=50)
    assert out.size == (25, 50)


def test_grey_la_rgba_p_cmyk_and_16_bit_become_rgb() -> None:
    grey = load_image(encode(Image.new("L", (8, 8), 100), "PNG"))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (100, 100, 100)

    la = load_image(encode(Image.new("LA", (8, 8), (0, 0)), "PNG"))
    assert la.getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> white paper

    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    out = load_image(encode(rgba, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (255, 0, 0)

    half = load_image(encode(Image.new("RGBA", (8, 8), (0, 0, 0, 128)), "PNG"))
    assert 120 <= half.getpixel((0, 0))[0] <= 135

    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 255, 0] + [0, 0, 255] * 255)
    pal.putpixel((2, 2), 1)
    out = load_image(encode(pal, "PNG"))
    assert out.getpixel((0, 0)) == (0, 255, 0) and out.getpixel((2, 2)) == (0, 0, 255)

    pal.info["transparency"] = 0
    for fmt in ("PNG", "GIF"):
        out = load_image(encode(pal, fmt, transparency=0))
        assert out.getpixel((0, 0)) == (255, 255, 255), fmt
        assert out.getpixel((2, 2)) == (0, 0, 255), fmt

    cmyk = load_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    r, g, b = cmyk.getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full -> red

    deep = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert load_image(encode(deep, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    mid = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    assert load_image(encode(mid, "TIFF")).getpixel((0, 0))[0] in (127, 128)

    bilevel = load_image(encode(Image.new("1", (8, 8), 1), "BMP"))
    assert bilevel.getpixel((0, 0)) == (255, 255, 255)


def test_max_side_downscales_keeping_aspect() -> None:
    out = load_image(encode(noise((300, 100)), "PNG"), max_side=60)
    assert out.size == (60, 20)
    assert load_image(encode(noise((300, 100)), "PNG"), max_side=None).size == (300, 100)
    assert load_image(encode(noise((30, 10)), "PNG"), max_side=60).size == (30, 10)  # no upscale


def test_huge_jpeg_scan_is_decoded_at_reduced_scale() -> None:
    scan = Image.new("L", (4000, 12000), 255)
    data = encode(scan, "JPEG", quality=80)
    out = load_image(data, max_side=1024)
    assert out.size == (341, 1024)
    assert out.mode == "RGB"
    with Image.open(io.BytesIO(data)) as probe:  # draft really decodes at 1/8 scale
        probe.draft("L", (341, 1024))
        assert probe.size == (500, 1500)


def test_decompression_bomb_is_refused_from_the_header() -> None:
    with pytest.raises(ImageError) as err:
        load_image(png_header_only(50000, 50000))
    assert str(err.value) == "image is 50000×50000 pixels, more than the limit of 150,000,000"
    with pytest.raises(ImageError, match="more than the limit of 1,000"):
        load_image(encode(noise((50, 50)), "PNG"), max_pixels=1000)
    # a limit above Pillow's own bomb threshold is honoured too (header only, no decode)
    with pytest.raises(ImageError, match="20000×20000"):
        load_image(png_header_only(20000, 20000), max_pixels=300_000_000)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("max_side", [None, 16])
def test_truncated_image_raises(fmt: str, max_side: int | None) -> None:
    data = encode(noise((200, 150)), fmt)
    with pytest.raises(ImageError) as err:
        load_image(data[: len(data) // 2], max_side=max_side)
    assert str(err.value) == "truncated or corrupt image data"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    data = encode(noise((200, 150)), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"^truncated or corrupt image data: .*cut\.jpg$"):
        load_image(path)


def test_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"^empty image data \(0 bytes\)$"):
        load_image(b"")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"^empty file: .*empty\.jpg$"):
        load_image(empty)


def test_not_an_image(tmp_path: Path) -> None:
    text = tmp_path / "x.txt"
    text.write_text("hello, this is not a picture")
    with pytest.raises(ImageError, match=r"^not an image file: .*x\.txt$"):
        load_image(text)
    with pytest.raises(ImageError, match=r"^not an image \(unrecognised data\)$"):
        load_image(b"\x00\x01garbage" * 10)


def test_unsupported_format_is_named() -> None:
    with pytest.raises(ImageError) as err:
        load_image(encode(noise(), "PPM"))
    assert str(err.value).startswith("unsupported image format PPM")
    assert "JPEG, PNG" in str(err.value)


def test_corrupt_header() -> None:
    data = bytearray(encode(noise(), "PNG"))
    data[20] ^= 0xFF  # inside IHDR: the CRC no longer matches
    with pytest.raises(ImageError, match="corrupt"):
        load_image(bytes(data))


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"^no such file: .*nope\.jpg$"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match=r"^not a file: "):
        load_image(tmp_path)


def test_errors_are_user_input_errors_and_one_line() -> None:
    with pytest.raises(UserInputError) as err:
        load_image(b"junk")
    assert "\n" not in str(err.value)


def test_bad_arguments_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="max_side"):
        load_image(b"x", max_side=0)


# --- JPEGs cut short with their end marker put back (Pillow decodes them without a word) ---

EOI = b"\xff\xd9"


def photo(size: tuple[int, int] = (64, 128), seed: int = 1) -> Image.Image:
    """Smooth colours with a little noise: what a person crop compresses like."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 4, 3), dtype=np.uint8), mode="RGB")
    base = np.asarray(coarse.resize(size, Image.Resampling.BILINEAR), dtype=np.int16)
    grain = rng.integers(-20, 20, base.shape)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8), mode="RGB")


def cut_with_eoi(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)] + EOI


def pillow_accepts(data: bytes) -> bool:
    """What Pillow alone says: the cut files below decode 'successfully' (grey filled in)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
    return True


JPEG_KINDS = {
    "baseline": {"quality": 90},
    "progressive": {"quality": 90, "progressive": True},
    "optimized-444": {"quality": 95, "optimize": True, "subsampling": 0},
    "restart-markers": {"quality": 90, "restart_marker_blocks": 4},
}


@pytest.mark.parametrize("kind", sorted(JPEG_KINDS))
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("max_side", [None, 1024, 32])
def test_complete_jpegs_are_accepted_with_their_pixels(
    kind: str, mode: str, max_side: int | None
) -> None:
    data = encode(photo((96, 200)).convert(mode), "JPEG", **JPEG_KINDS[kind])
    out = load_image(data, max_side=max_side)
    if max_side is None:
        with Image.open(io.BytesIO(data)) as im:
            assert np.array_equal(np.asarray(out), np.asarray(im.convert("RGB")))


@pytest.mark.parametrize("kind", sorted(JPEG_KINDS))
@pytest.mark.parametrize("fraction", [0.2, 0.45, 0.8, 0.95])
@pytest.mark.parametrize("max_side", [None, 32])
def test_a_jpeg_cut_short_with_its_end_marker_put_back_is_refused(
    kind: str, fraction: float, max_side: int | None
) -> None:
    cut = cut_with_eoi(encode(photo((96, 200)), "JPEG", **JPEG_KINDS[kind]), fraction)
    assert pillow_accepts(cut)
    with pytest.raises(ImageError, match=r"^truncated JPEG: ") as err:
        load_image(cut, max_side=max_side)
    assert "the file ends early" in str(err.value) or "ends before the 96×200 image" in str(
        err.value
    )


def test_a_jpeg_header_larger_than_its_data_is_refused(tmp_path: Path) -> None:
    """A 16×16 JPEG whose frame header says 6000×6000: libjpeg fills 36 Mpx with grey."""
    data = bytearray(encode(photo((16, 16)), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 6000, 6000)  # after marker, length, precision
    assert pillow_accepts(bytes(data))
    message = "truncated JPEG: its scan data ends before the 6000×6000 image its header declares"
    with pytest.raises(ImageError, match=f"^{message} is complete$"):
        load_image(bytes(data))
    path = tmp_path / "big.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=rf"^{message} is complete: .*big\.jpg$"):
        load_image(path, max_side=None)


def _cut_before_marker(data: bytes, marker: bytes, occurrence: int) -> bytes:
    """``data`` up to the ``occurrence``-th (1-based) ``marker``, then EOI: complete segments,
    the rest missing."""
    pos = -1
    for _ in range(occurrence):
        pos = data.index(marker, pos + 1)
    return data[:pos] + EOI


def test_a_progressive_jpeg_cut_between_two_scans_is_refused() -> None:
    """No scan is short, so the decoder has nothing to run out of: the scans that are there
    do not bring every coefficient to its last bit."""
    data = encode(photo((96, 200)), "JPEG", quality=90, progressive=True)
    scans = data.count(b"\xff\xda")
    assert scans >= 6
    for kept in (1, scans // 2, scans - 1):
        cut = _cut_before_marker(data, b"\xff\xda", kept + 1)
        assert pillow_accepts(cut)
        with pytest.raises(ImageError, match=rf"^truncated JPEG: its {kept} progressive scans"):
            load_image(cut)


def test_a_jpeg_cut_at_a_restart_marker_is_refused() -> None:
    data = encode(photo((96, 200)), "JPEG", quality=90, restart_marker_blocks=4)
    intervals = 1 + sum(data.count(bytes([0xFF, 0xD0 + i])) for i in range(8))
    cut = _cut_before_marker(data, b"\xff\xd3", 2)  # RST3 closes interval 4, then 12
    assert pillow_accepts(cut)
    with pytest.raises(ImageError) as err:
        load_image(cut)
    assert str(err.value) == (
        f"truncated JPEG: a scan ends after 12 of its {intervals} restart intervals "
        "(the file ends early)"
    )


def test_a_sequential_jpeg_without_the_scans_of_some_components_is_refused() -> None:
    """A frame of three components whose only scan codes the first (as a non-interleaved
    JPEG cut after its first scan): libjpeg leaves the other two empty."""
    grey = encode(photo((64, 64)).convert("L"), "JPEG", quality=90)
    sof = grey.index(b"\xff\xc0")
    length = struct.unpack_from(">H", grey, sof + 2)[0]
    precision_size = grey[sof + 4 : sof + 9]  # precision, height, width
    components = b"\x01\x11\x00" + b"\x02\x11\x00" + b"\x03\x11\x00"
    frame = struct.pack(">H", 8 + len(components)) + precision_size + b"\x03" + components
    data = grey[: sof + 2] + frame + grey[sof + 2 + length :]
    assert pillow_accepts(data)
    with pytest.raises(ImageError, match=r"^truncated JPEG: it has no scan for 2 of its 3 "):
        load_image(data)
