"""Image preprocessing shared by training, evaluation and the service.

Images become uint8 ``[3, H, W]`` tensors at a fixed size (:func:`image_to_uint8`); batches
of those are normalised to float32 with the manifest's mean/std (:func:`normalize`) on
whatever device they live. Keeping the uint8 stage separate lets datasets cache compact
tensors and lets augmentation run on tensors before normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

DEFAULT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
DEFAULT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def image_to_uint8(image: Image.Image, size: tuple[int, int], grey: bool = False) -> torch.Tensor:
    """Resize ``image`` to ``size`` = (H, W) and return a uint8 tensor ``[3, H, W]``.

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
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def normalize(
    batch: torch.Tensor,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> torch.Tensor:
    """Turn uint8 ``[N, 3, H, W]`` (or ``[3, H, W]``) into float32 ``(x / 255 - mean) / std``.

    The result is on the same device as ``batch``.
    """
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


def to_uint8_batch(
    images: Sequence[Image.Image], size: tuple[int, int], grey: bool = False
) -> torch.Tensor:
    """Several images -> uint8 ``[N, 3, H, W]`` (``[0, 3, H, W]`` for an empty sequence)."""
    if not images:
        return torch.empty((0, 3, int(size[0]), int(size[1])), dtype=torch.uint8)
    return torch.stack([image_to_uint8(im, size, grey=grey) for im in images])


def to_batch(
    images: Sequence[Image.Image],
    size: tuple[int, int],
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    grey: bool = False,
) -> torch.Tensor:
    """Several images -> normalised float32 ``[N, 3, H, W]``."""
    return normalize(to_uint8_batch(images, size, grey=grey), mean, std)
