"""Tests for app.ml.transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.ml.transforms import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    image_to_uint8,
    normalize,
    to_batch,
    to_tensor,
    to_uint8_batch,
)

torch.set_num_threads(1)


def test_image_to_uint8_shape_dtype_and_orientation() -> None:
    img = Image.new("RGB", (50, 120), (10, 20, 30))  # PIL size is (W, H)
    t = image_to_uint8(img, (64, 32))
    assert t.dtype == torch.uint8
    assert t.shape == (3, 64, 32)
    assert t[:, 0, 0].tolist() == [10, 20, 30]
    assert t.is_contiguous()


def test_image_to_uint8_keeps_left_right_layout() -> None:
    arr = np.zeros((64, 32, 3), dtype=np.uint8)
    arr[:, :16, 0] = 255  # left half red
    t = image_to_uint8(Image.fromarray(arr), (64, 32))
    assert t[0, :, :16].min() == 255
    assert t[0, :, 16:].max() == 0


def test_grey_replicates_luminance() -> None:
    img = Image.new("RGB", (32, 64), (200, 50, 10))
    t = image_to_uint8(img, (64, 32), grey=True)
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
    expected = np.asarray(img.convert("L"))[0, 0]
    assert int(t[0, 0, 0]) == int(expected)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_other_modes_become_three_channels(mode: str) -> None:
    img = Image.new(mode, (20, 40))
    assert image_to_uint8(img, (8, 4)).shape == (3, 8, 4)


def test_invalid_size() -> None:
    with pytest.raises(ValueError):
        image_to_uint8(Image.new("RGB", (4, 4)), (0, 4))


def test_normalize_matches_formula_3d_and_4d() -> None:
    x = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8)
    y = normalize(x, DEFAULT_MEAN, DEFAULT_STD)
    mean = torch.tensor(DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(DEFAULT_STD).view(3, 1, 1)
    expected = (x.float() / 255 - mean) / std
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(normalize(x[0]), expected[0])
    assert x.dtype == torch.uint8  # input untouched


def test_normalize_rejects_bad_shape() -> None:
    with pytest.raises(ValueError):
        normalize(torch.zeros((2, 1, 4, 4), dtype=torch.uint8))


def test_batches() -> None:
    imgs = [Image.new("RGB", (10, 10), (i, i, i)) for i in range(3)]
    assert to_uint8_batch(imgs, (8, 4)).shape == (3, 3, 8, 4)
    assert to_uint8_batch([], (8, 4)).shape == (0, 3, 8, 4)
    batch = to_batch(imgs, (8, 4))
    assert batch.dtype == torch.float32 and batch.shape == (3, 3, 8, 4)
    torch.testing.assert_close(batch[1], to_tensor(imgs[1], (8, 4)))


# ----------------------------------------------------------------- one definition, two forms


def _photos(n: int = 6) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [
        Image.fromarray(rng.integers(0, 256, (90 + 7 * i, 41 + 3 * i, 3), dtype=np.uint8))
        for i in range(n)
    ]


@pytest.mark.parametrize("grey", [False, True])
def test_the_numpy_preprocessing_gives_the_tensors_of_the_torch_path(grey: bool) -> None:
    """The service (numpy, no PyTorch) and training/evaluation (tensors) preprocess alike,
    bit for bit: resize, grey, normalisation and the flip-TTA batch."""
    from app.ml.infer.torch_embedder import Embedder
    from app.ml.models.resnet_cifar import MemberSpec, build_member
    from app.ml.transforms import image_to_array, normalize_array, to_uint8_array

    images = _photos()
    arrays = to_uint8_array(images, (64, 32), grey=grey)
    tensors = to_uint8_batch(images, (64, 32), grey=grey)
    assert np.array_equal(arrays, tensors.numpy())
    assert np.array_equal(image_to_array(images[0], (64, 32), grey), tensors[0].numpy())
    mean, std = (0.3, 0.5, 0.7), (0.2, 0.25, 0.3)
    assert np.array_equal(normalize_array(arrays, mean, std), normalize(tensors, mean, std).numpy())
    assert np.array_equal(normalize_array(arrays[0]), normalize(tensors[0]).numpy())

    member = build_member(MemberSpec(arch="resnet8", num_classes=3, fc_dim=8))
    embedder = Embedder([member], (64, 32), mean, std, tta_flip=True)
    want = normalize(tensors, mean, std)
    want = torch.cat([want, torch.flip(want, dims=[3])], 0)
    assert np.array_equal(embedder.network_input(arrays), want.numpy())


def test_the_translator_scaling_matches_the_cyclegans() -> None:
    from app.ml.models.cyclegan import from_gan_output, to_gan_input
    from app.ml.transforms import gan_input, gan_output

    batch = torch.randint(0, 256, (3, 3, 8, 4), dtype=torch.uint8)
    assert np.array_equal(gan_input(batch.numpy()), to_gan_input(batch).numpy())
    # Generator outputs, including exact half levels (rounded half to even) and overshoot.
    out = torch.cat([torch.rand(200) * 2.2 - 1.1, (torch.arange(0, 256) + 0.5) / 127.5 - 1.0])
    assert np.array_equal(gan_output(out.numpy()), from_gan_output(out).numpy())
