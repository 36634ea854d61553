"""Training-time augmentation on whole batches of tensors (CPU or GPU alike).

- random crop: the image shifted by up to ``pad`` pixels with zero fill (torchvision's
  ``RandomCrop(padding=pad)``), plus a random horizontal flip;
- random erasing (Zhong et al., AAAI 2020): a rectangle of 2–40 % of the area and aspect
  0.3–3.3 filled with random values, with probability ``p`` per image;
- grey: a photo turned grey with probability ``p`` (sketches are grey already);
- pseudo-sketches: a photo replaced, with probability ``p``, by a grey, pencil-sketch or edge
  version of itself, so the network learns features that survive the loss of colour and texture.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)


def to_unit(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] -> float32 in [0, 1]."""
    return batch_uint8.float().div_(255.0)


def grey(x: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] in [0,1] -> [N,1,H,W] luma."""
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))


def pencil_sketch(g: torch.Tensor) -> torch.Tensor:
    """Colour-dodge pencil sketch of a grey image [N,1,H,W] in [0,1]."""
    blurred = _gaussian_blur(1.0 - g, sigma=max(1.0, g.shape[-2] / 40))
    return (g / (1.0 - blurred).clamp_min(1e-3)).clamp(0.0, 1.0)


def edge_sketch(g: torch.Tensor) -> torch.Tensor:
    """Dark Sobel edges on white from a grey image [N,1,H,W] in [0,1]."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=g.device, dtype=g.dtype)
    kernel = torch.stack([kx, kx.t()]).unsqueeze(1)
    grad = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), kernel)
    magnitude = grad.pow(2).sum(dim=1, keepdim=True).sqrt()
    return (1.0 - 2.0 * magnitude).clamp(0.0, 1.0)


def pseudo_sketch(x: torch.Tensor, p: float, is_photo: torch.Tensor) -> torch.Tensor:
    """Replace each photo in ``x`` ([N,3,H,W] in [0,1]) by a sketch-like version with prob. p.

    Computed for the whole batch and selected per image (no host synchronisation on a GPU).
    """
    if p <= 0:
        return x
    n = x.shape[0]
    chosen = ((torch.rand(n, device=x.device) < p) & is_photo).view(n, 1, 1, 1)
    g = grey(x)
    kind = torch.randint(0, 3, (n, 1, 1, 1), device=x.device)
    variants = torch.where(kind == 0, g, torch.where(kind == 1, pencil_sketch(g), edge_sketch(g)))
    return torch.where(chosen, variants.expand_as(x), x)


def random_grey(x: torch.Tensor, p: float, is_photo: torch.Tensor) -> torch.Tensor:
    """Turn each photo in ``x`` ([N,3,H,W] in [0,1]) grey (3 equal channels) with prob. p."""
    if p <= 0:
        return x
    n = x.shape[0]
    chosen = ((torch.rand(n, device=x.device) < p) & is_photo).view(n, 1, 1, 1)
    return torch.where(chosen, grey(x).expand_as(x), x)


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool = True) -> torch.Tensor:
    """Shift each image by up to ``pad`` pixels (zero fill) and flip half of them."""
    n, _, h, w = x.shape
    dev = x.device
    dx = (
        torch.randint(-pad, pad + 1, (n,), device=dev).float()
        if pad > 0
        else torch.zeros(n, device=dev)
    )
    dy = (
        torch.randint(-pad, pad + 1, (n,), device=dev).float()
        if pad > 0
        else torch.zeros(n, device=dev)
    )
    sx = torch.ones(n, device=dev)
    if flip:
        sx = torch.where(torch.rand(n, device=dev) < 0.5, -sx, sx)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = sx
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2.0 * dx / w
    theta[:, 1, 2] = 2.0 * dy / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def random_erasing(
    x: torch.Tensor,
    p: float,
    area: tuple[float, float] = (0.02, 0.4),
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
) -> torch.Tensor:
    """Erase one random rectangle per image with probability ``p`` (random normal fill)."""
    if p <= 0:
        return x
    n, c, h, w = x.shape
    dev = x.device
    s = torch.empty(n, device=dev).uniform_(*area) * h * w
    log_r = torch.empty(n, device=dev).uniform_(math.log(aspect[0]), math.log(aspect[1]))
    r = torch.exp(log_r)
    eh = torch.sqrt(s * r).round().clamp(1, h).long()
    ew = torch.sqrt(s / r).round().clamp(1, w).long()
    top = (torch.rand(n, device=dev) * (h - eh + 1).float()).floor().long()
    left = (torch.rand(n, device=dev) * (w - ew + 1).float()).floor().long()
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    mask = (
        (rows >= top.view(n, 1, 1))
        & (rows < (top + eh).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1))
        & (cols < (left + ew).view(n, 1, 1))
    )
    mask &= (torch.rand(n, device=dev) < p).view(n, 1, 1)
    mask = mask.unsqueeze(1).expand(n, c, h, w)
    return torch.where(mask, torch.randn_like(x), x)
