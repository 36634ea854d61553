"""Memory of decoding (issue 24): huge images are shrunk in the mode they were decoded in,
before any 8-bit or float conversion, with the same result as converting first; one
``DecodeBudget`` bounds the bytes that concurrent decodes hold together."""

from __future__ import annotations

import io
import threading
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageError
from app.ml import images
from app.ml.images import DecodeBudget, DecodeBusyError, decode_cost, load_image


def _encode(im: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kwargs)
    return out.getvalue()


def _gradient(width: int, height: int, top: float) -> np.ndarray:
    x = np.linspace(0.0, top, width)[None, :]
    y = np.linspace(0.0, 1.0, height)[:, None]
    return x * (0.5 + 0.5 * y)


def _reference(im: Image.Image, max_side: int) -> np.ndarray:
    """What the loader used to do: convert the full-size image to 8-bit RGB, then shrink."""
    if im.mode in ("I;16", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 1.0 if im.mode == "F" and arr.max() <= 1.0 else 65535.0 if arr.max() > 255 else 255
        grey = np.clip(np.rint(arr * 255.0 / top), 0, 255).astype(np.uint8)
        rgb = Image.fromarray(grey, "L").convert("RGB")
    else:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
    scale = max_side / max(rgb.size)
    size = (round(rgb.width * scale), round(rgb.height * scale))
    return np.asarray(rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0), np.int16)


def _cases() -> dict[str, tuple[Image.Image, str]]:
    w, h = 600, 900
    grey16 = Image.fromarray(_gradient(w, h, 65535).astype(np.uint16))
    floats = Image.fromarray(_gradient(w, h, 1.0).astype(np.float32), "F")
    palette = Image.new("P", (w, h), 0)
    palette.putpalette([255, 0, 0, 0, 200, 0, 0, 0, 255] + [0] * 759)
    palette.paste(1, (0, 0, w // 2, h))
    palette.paste(2, (0, h // 3, w, h // 2))
    return {
        "grey16-png": (grey16, "PNG"),
        "float32-tiff": (floats, "TIFF"),
        "palette-transparency-png": (palette, "PNG"),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_wide_and_palette_images_are_shrunk_before_conversion(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    im, fmt = _cases()[name]
    kwargs = {"transparency": bytes([0, 128, 255])} if im.mode == "P" else {}
    data = _encode(im, fmt, **kwargs)
    decoded = Image.open(io.BytesIO(data))
    decoded.load()

    converted: list[tuple[str, tuple[int, int]]] = []
    for name_of in ("_to_uint8", "_to_rgb"):
        inner = getattr(images, name_of)

        def spy(arg: Any, *rest: Any, _inner: Any = inner, _name: str = name_of) -> Any:
            size = arg.size if isinstance(arg, Image.Image) else (arg.shape[1], arg.shape[0])
            converted.append((_name, size))
            return _inner(arg, *rest)

        monkeypatch.setattr(images, name_of, spy)
    out = load_image(data, max_side=128)
    assert out.mode == "RGB" and max(out.size) == 128
    # Every conversion to 8-bit ran on the small image, none on the 600x900 one.
    assert converted and all(max(size) == 128 for _, size in converted), converted
    # And gives what converting the full image first gave, within rounding.
    reference = _reference(decoded, 128)
    assert reference.shape == np.asarray(out).shape
    assert np.abs(np.asarray(out, np.int16) - reference).max() <= 2


def test_the_cost_of_a_decode_counts_its_copies() -> None:
    size = (1000, 1000)
    rgb = decode_cost("RGB", size, "PNG", transparency=False)
    assert decode_cost("RGBA", size, "PNG", transparency=False) > rgb  # premultiplied copy
    assert decode_cost("RGB", size, "PNG", transparency=True) > rgb  # made RGBA first
    assert decode_cost("I;16", size, "PNG", transparency=False) > rgb  # widened to I
    assert decode_cost("RGB", size, "JPEG", transparency=False) > rgb  # decoded twice
    assert decode_cost("L", size, "PNG", transparency=False) < rgb
    assert decode_cost("RGB", (2000, 1000), "PNG", transparency=False) > 2 * rgb - 2**21


def test_an_image_needing_more_than_the_budget_is_refused() -> None:
    data = _encode(Image.new("RGBA", (2000, 2000), (1, 2, 3, 4)), "PNG")
    budget = DecodeBudget(8 * 1048576)
    with pytest.raises(ImageError, match=r"2000×2000 RGBA image needs about \d+ MB to decode"):
        load_image(data, budget=budget)
    assert budget.used == 0


def test_concurrent_decodes_share_one_budget() -> None:
    data = _encode(Image.new("RGB", (1500, 1500), (9, 99, 199)), "PNG")
    cost = decode_cost("RGB", (1500, 1500), "PNG", transparency=False)
    budget = DecodeBudget(int(cost * 2.5))
    results: list[Any] = []
    active = 0
    most = 0
    lock = threading.Lock()
    inner = images._small_rgb

    def counting(im: Image.Image, max_side: int | None) -> Image.Image:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        try:
            return inner(im, max_side)
        finally:
            with lock:
                active -= 1

    images_small = images._small_rgb
    images._small_rgb = counting  # type: ignore[assignment]
    try:
        threads = [
            threading.Thread(target=lambda: results.append(load_image(data, budget=budget)))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        images._small_rgb = images_small  # type: ignore[assignment]
    assert len(results) == 8 and all(r.getpixel((0, 0)) == (9, 99, 199) for r in results)
    assert budget.peak <= budget.total and budget.used == 0
    assert most <= 2  # 2.5 decodes' worth: never three at once


def test_a_budget_that_stays_full_is_busy_not_unbounded() -> None:
    budget = DecodeBudget(4 * 1048576, wait_s=0.2)
    data = _encode(Image.new("RGB", (500, 500)), "PNG")
    with (
        budget.hold(4 * 1048576, "another image"),
        pytest.raises(DecodeBusyError, match="decoding other large images"),
    ):
        load_image(data, budget=budget)
    assert load_image(data, budget=budget).size == (500, 500)  # room again once released
