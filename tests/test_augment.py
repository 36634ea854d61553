"""Tests for the batch augmentations of app.ml.train.augment."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from app.ml.train import augment

torch.set_num_threads(1)


@pytest.fixture()
def images() -> torch.Tensor:
    """A batch of 64 random 32×16 images in [0, 1]; distinct pixels, so shifts are visible."""
    return torch.rand(64, 3, 32, 16, generator=torch.Generator().manual_seed(0))


def _shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``x`` [3,H,W] with out[y, x] = x[y + dy, x + dx], zero outside."""
    _, h, w = x.shape
    out = torch.zeros_like(x)
    ys, yd = slice(max(0, dy), min(h, h + dy)), slice(max(0, -dy), min(h, h - dy))
    xs, xd = slice(max(0, dx), min(w, w + dx)), slice(max(0, -dx), min(w, w - dx))
    out[:, yd, xd] = x[:, ys, xs]
    return out


def test_to_unit_maps_uint8_to_unit_interval() -> None:
    x = torch.tensor([0, 1, 128, 254, 255], dtype=torch.uint8).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    y = augment.to_unit(x)
    assert y.dtype == torch.float32
    assert y.shape == x.shape
    assert y.min().item() == 0.0 and y.max().item() == 1.0
    assert torch.allclose(y[0, 0, 0], torch.tensor([0, 1, 128, 254, 255]) / 255.0)


def test_crop_flip_without_pad_or_flip_is_the_identity(images: torch.Tensor) -> None:
    out = augment.random_crop_flip(images, pad=0, flip=False)
    assert out.shape == images.shape
    assert torch.equal(out, images)


def test_flip_mirrors_about_half_of_the_images(images: torch.Tensor) -> None:
    torch.manual_seed(1)
    out = augment.random_crop_flip(images, pad=0, flip=True)
    assert out.shape == images.shape
    mirrored = [torch.equal(o, x.flip(-1)) for o, x in zip(out, images, strict=True)]
    unchanged = [torch.equal(o, x) for o, x in zip(out, images, strict=True)]
    assert all(m != u for m, u in zip(mirrored, unchanged, strict=True))  # exactly one of the two
    assert 16 <= sum(mirrored) <= 48


def test_crop_shifts_by_at_most_pad_with_zero_fill(images: torch.Tensor) -> None:
    pad = 2
    torch.manual_seed(2)
    out = augment.random_crop_flip(images, pad=pad, flip=False)
    assert out.shape == images.shape
    shifts = set()
    for o, x in zip(out, images, strict=True):
        match = [
            (dx, dy)
            for dx in range(-pad, pad + 1)
            for dy in range(-pad, pad + 1)
            if torch.equal(o, _shifted(x, dx, dy))
        ]
        assert len(match) == 1, "each output is the input shifted by at most pad pixels"
        shifts.add(match[0])
    assert len(shifts) > 5  # the shift is drawn per image


def test_random_erasing_with_p0_is_the_identity(images: torch.Tensor) -> None:
    assert torch.equal(augment.random_erasing(images, p=0.0), images)


def test_random_erasing_with_p1_replaces_one_rectangle_per_image() -> None:
    x = torch.rand(200, 3, 64, 32, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(3)
    out = augment.random_erasing(x, p=1.0)
    assert out.shape == x.shape
    changed = out != x
    # The rectangle spans every channel; outside it nothing changes.
    assert torch.equal(changed.all(dim=1), changed.any(dim=1))
    area = 64 * 32
    fractions = []
    for mask in changed.any(dim=1):
        rows, cols = mask.any(dim=1), mask.any(dim=0)
        assert rows.any(), "every image is erased when p = 1"
        rectangle = rows.view(-1, 1) & cols.view(1, -1)
        assert torch.equal(mask, rectangle)
        for line in (rows, cols):  # contiguous rows and columns
            idx = line.nonzero().flatten()
            assert int(idx[-1] - idx[0]) + 1 == len(idx)
        fractions.append(mask.sum().item() / area)
    # 2–40 % of the area, give or take the rounding of the sides to whole pixels.
    assert min(fractions) >= 0.015 and max(fractions) <= 0.42
    assert max(fractions) - min(fractions) > 0.2  # the size is random


def test_random_erasing_sometimes_spares_an_image_when_p_is_half(images: torch.Tensor) -> None:
    torch.manual_seed(4)
    out = augment.random_erasing(images, p=0.5)
    erased = (out != images).flatten(1).any(dim=1)
    assert 10 <= int(erased.sum()) <= 54


def test_pseudo_sketch_leaves_sketches_alone_and_greys_chosen_photos(
    images: torch.Tensor,
) -> None:
    before = images.clone()
    is_photo = torch.arange(len(images)) % 2 == 0
    torch.manual_seed(5)
    out, drawn = augment.pseudo_sketch(images, p=1.0, is_photo=is_photo)
    assert torch.equal(drawn, is_photo), "every photo (and no sketch) is reported as drawn"
    assert torch.equal(images, before), "the input batch is not modified in place"
    assert torch.equal(out[~is_photo], images[~is_photo])
    photos = out[is_photo]
    assert torch.equal(photos[:, 0], photos[:, 1]) and torch.equal(photos[:, 1], photos[:, 2])
    assert not torch.equal(photos, images[is_photo])
    assert photos.min() >= 0.0 and photos.max() <= 1.0


def test_pseudo_sketch_with_p0_or_no_photos_changes_nothing(images: torch.Tensor) -> None:
    everyone = torch.ones(len(images), dtype=torch.bool)
    for p, photos in ((0.0, everyone), (1.0, ~everyone)):
        out, drawn = augment.pseudo_sketch(images, p, photos)
        assert torch.equal(out, images) and not drawn.any()


def test_pseudo_sketch_picks_about_p_of_the_photos(images: torch.Tensor) -> None:
    torch.manual_seed(6)
    out, drawn = augment.pseudo_sketch(images, 0.5, torch.ones(len(images), dtype=torch.bool))
    changed = (out != images).flatten(1).any(dim=1)
    assert 10 <= int(changed.sum()) <= 54
    assert torch.equal(changed, drawn)


def test_xdog_draws_dark_strokes_on_white_at_edges() -> None:
    g = torch.ones(1, 1, 64, 32)
    g[..., 20:44, 8:24] = 0.2  # a dark block on white: its outline should be drawn
    out = augment.xdog_sketch(g)
    assert out.shape == g.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert out[..., 2:10, 2:30].min() > 0.99, "flat white stays paper-white"
    outline = torch.cat([out[..., 18:22, 10:22].flatten(), out[..., 42:46, 10:22].flatten()])
    assert outline.min() < 0.5, "the block's edges become dark strokes"


def test_local_pseudo_sketch_draws_one_band_and_is_not_counted_as_a_sketch(
    images: torch.Tensor,
) -> None:
    torch.manual_seed(7)
    photos = torch.ones(len(images), dtype=torch.bool)
    out, drawn = augment.pseudo_sketch(images, 1.0, photos, styles=("edge",), local=1.0)
    assert not drawn.any(), "a partly drawn photo is not a whole pseudo-sketch"
    g = augment.grey(images).expand_as(images)
    same_as_grey = (out == g).all(dim=1).all(dim=2)  # [N, H]: row left grey
    rows_drawn = (~same_as_grey).sum(dim=1).float()
    assert (rows_drawn <= images.shape[-2] * 2 / 3 + 1).all(), "only one band is drawn"
    assert (rows_drawn > 0).float().mean() > 0.9


def test_unknown_style_is_refused(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="unknown sketch style"):
        augment.pseudo_sketch(images, 1.0, torch.ones(len(images), dtype=torch.bool), ("ink",))


@pytest.mark.parametrize("sketch", [augment.edge_sketch, augment.pencil_sketch])
def test_sketch_filters_stay_in_unit_range(sketch: Callable[[torch.Tensor], torch.Tensor]) -> None:
    g = augment.grey(torch.rand(8, 3, 64, 32, generator=torch.Generator().manual_seed(7)))
    assert g.shape == (8, 1, 64, 32)
    out = sketch(g)
    assert out.shape == g.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.std() > 0.01  # not a constant image
    flat = sketch(torch.full((1, 1, 16, 8), 0.4))
    assert torch.allclose(flat, torch.ones_like(flat), atol=1e-5), "no edges: white paper"
