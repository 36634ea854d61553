"""Image preprocessing shared by training, evaluation and the service.

Images become uint8 ``[3, H, W]`` arrays at a fixed size (:func:`image_to_array`); batches of
those are normalised to float32 with the manifest's mean/std (:func:`normalize_array`).
Keeping the uint8 stage separate lets datasets cache compact tensors and lets augmentation run
on tensors before normalisation.

The definitions are numpy and PIL, so the service runs without PyTorch (ONNX Runtime serving,
docs/service.md). The PyTorch helpers below (:func:`image_to_uint8`, :func:`to_uint8_batch`,
:func:`normalize`, ...) are those same arrays as tensors, for training and evaluation; they
import PyTorch when called. ``normalize`` repeats :func:`normalize_array`'s arithmetic on the
tensor's own device (training normalises augmented batches on the GPU); tests/test_transforms.py
holds the two equal, as it holds :func:`gan_input` / :func:`gan_output` equal to the CycleGAN's
tensor versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

DEFAULT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
DEFAULT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def image_to_array(image: Image.Image, size: tuple[int, int], grey: bool = False) -> np.ndarray:
    """Resize ``image`` to ``size`` = (H, W) and return a uint8 array ``[3, H, W]``.

    Resizing uses PIL bilinear filtering with antialiasing. With ``grey=True`` the image is
    converted to luminance ("L") and replicated to three equal channels.
    """
    height, width = int(size[0]), int(size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive (H, W), got {size!r}")
    img = image.convert("L") if grey else image.convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    array = np.asarray(img, dtype=np.uint8)
    if grey:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def to_uint8_array(
    images: Sequence[Image.Image], size: tuple[int, int], grey: bool = False
) -> np.ndarray:
    """Several images -> uint8 ``[N, 3, H, W]`` (``[0, 3, H, W]`` for an empty sequence)."""
    if not images:
        return np.empty((0, 3, int(size[0]), int(size[1])), dtype=np.uint8)
    return np.stack([image_to_array(im, size, grey=grey) for im in images])


def normalize_array(
    batch: np.ndarray,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> np.ndarray:
    """uint8 ``[N, 3, H, W]`` (or ``[3, H, W]``) -> float32 ``(x / 255 - mean) / std``."""
    if batch.ndim not in (3, 4) or batch.shape[-3] != 3:
        raise ValueError(f"expected [3,H,W] or [N,3,H,W], got shape {tuple(batch.shape)}")
    mean_a = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    x = batch.astype(np.float32) / np.float32(255.0)
    x -= mean_a
    x /= std_a
    return x


def gan_input(batch_uint8: np.ndarray) -> np.ndarray:
    """uint8 ``[..., 3, H, W]`` -> float32 in [-1, 1], what the translator's generator takes."""
    x = batch_uint8.astype(np.float32) / np.float32(127.5)
    x -= np.float32(1.0)
    return x


def gan_output(batch: np.ndarray) -> np.ndarray:
    """The generator's output in [-1, 1] -> uint8 (rounded half to even, clamped)."""
    x = (np.asarray(batch, dtype=np.float32) + np.float32(1.0)) * np.float32(127.5)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- PyTorch


def image_to_uint8(image: Image.Image, size: tuple[int, int], grey: bool = False) -> torch.Tensor:
    """:func:`image_to_array` as a uint8 tensor ``[3, H, W]``."""
    import torch

    return torch.from_numpy(image_to_array(image, size, grey=grey))


def to_uint8_batch(
    images: Sequence[Image.Image], size: tuple[int, int], grey: bool = False
) -> torch.Tensor:
    """:func:`to_uint8_array` as a uint8 tensor ``[N, 3, H, W]``."""
    import torch

    return torch.from_numpy(to_uint8_array(images, size, grey=grey))


def normalize(
    batch: torch.Tensor,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> torch.Tensor:
    """:func:`normalize_array` for a uint8 tensor ``[N, 3, H, W]`` (or ``[3, H, W]``), on the
    tensor's own device."""
    import torch

    if batch.dim() not in (3, 4) or batch.shape[-3] != 3:
        raise ValueError(f"expected [3,H,W] or [N,3,H,W], got shape {tuple(batch.shape)}")
    shape = (3, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=batch.device).view(shape)
    x = batch.to(torch.float32).div_(255.0)
    return x.sub_(mean_t).div_(std_t)


def to_tensor(
    image: Image.Image,
    size: tuple[int, int],
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    grey: bool = False,
) -> torch.Tensor:
    """One image -> normalised float32 ``[3, H, W]`` (resize, optional grey, normalise)."""
    return normalize(image_to_uint8(image, size, grey=grey), mean, std)


def to_batch(
    images: Sequence[Image.Image],
    size: tuple[int, int],
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    grey: bool = False,
) -> torch.Tensor:
    """Several images -> normalised float32 ``[N, 3, H, W]``."""
    return normalize(to_uint8_batch(images, size, grey=grey), mean, std)
