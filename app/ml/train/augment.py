"""Training-time augmentation on whole batches of tensors (CPU or GPU alike).

- random crop: the image shifted by up to ``pad`` pixels with zero fill (torchvision's
  ``RandomCrop(padding=pad)``), plus a random horizontal flip;
- random erasing (Zhong et al., AAAI 2020): a rectangle of 2–40 % of the area and aspect
  0.3–3.3 filled with random values, with probability ``p`` per image;
- grey: a photo turned grey with probability ``p`` (sketches are grey already);
- pseudo-sketches: a photo replaced, with probability ``p``, by a grey, pencil-sketch, edge or
  XDoG line-drawing version of itself, so the network learns features that survive the loss of
  colour and texture; optionally only a horizontal body band (head, torso or legs) is drawn
  and the rest turned grey (local sketch-style transforms, as in few-shot sketch re-id work).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def xdog_sketch(g: torch.Tensor, sigma: float | None = None, k: float = 1.6) -> torch.Tensor:
    """Extended difference-of-Gaussians line drawing (Winnemöller et al., 2012) of a grey image
    [N,1,H,W] in [0,1]: thin dark strokes on white, closer to a pen drawing than Sobel edges."""
    s = sigma if sigma is not None else max(0.5, g.shape[-2] / 128)
    dog = _gaussian_blur(g, s) - 0.98 * _gaussian_blur(g, s * k)
    eps, phi = 0.01, 40.0
    return torch.where(dog >= eps, torch.ones_like(dog), 1.0 + torch.tanh(phi * (dog - eps)))


SKETCH_STYLES = ("grey", "pencil", "edge", "xdog")
"""Whole-image pseudo-sketch styles, by name (StageConfig.sketch_styles)."""


def _style(g: torch.Tensor, name: str) -> torch.Tensor:
    if name == "grey":
        return g
    if name == "pencil":
        return pencil_sketch(g)
    if name == "edge":
        return edge_sketch(g)
    if name == "xdog":
        return xdog_sketch(g)
    raise ValueError(f"unknown sketch style {name!r}; known: {', '.join(SKETCH_STYLES)}")


def _body_band(n: int, h: int, device: torch.device) -> torch.Tensor:
    """[N,1,H,1] mask of one random horizontal band per image, a third to two thirds high."""
    height = (torch.empty(n, device=device).uniform_(1 / 3, 2 / 3) * h).round()
    top = (torch.rand(n, device=device) * (h - height + 1)).floor()
    rows = torch.arange(h, device=device).view(1, h)
    band = (rows >= top.view(n, 1)) & (rows < (top + height).view(n, 1))
    return band.view(n, 1, h, 1)


def pseudo_sketch(
    x: torch.Tensor,
    p: float,
    is_photo: torch.Tensor,
    styles: Sequence[str] = ("grey", "pencil", "edge"),
    local: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each photo in ``x`` ([N,3,H,W] in [0,1]) by a sketch-like version with prob. p.

    The style is drawn uniformly from ``styles``. With probability ``local`` a chosen photo is
    drawn in that style only inside one body band, the rest of it turned grey. Returns the
    batch and a boolean [N] mask of the images that became whole pseudo-sketches (not the
    local ones), which cross-modal training may treat as sketches. Computed for the whole batch
    and selected per image (no host synchronisation on a GPU).
    """
    n = x.shape[0]
    if p <= 0:
        return x, torch.zeros(n, dtype=torch.bool, device=x.device)
    chosen = (torch.rand(n, device=x.device) < p) & is_photo
    g = grey(x)
    kind = torch.randint(0, len(styles), (n, 1, 1, 1), device=x.device)
    variants = g
    for i, name in enumerate(styles):
        if name != "grey":
            variants = torch.where(kind == i, _style(g, name), variants)
    is_local = torch.zeros(n, dtype=torch.bool, device=x.device)
    if local > 0:
        is_local = chosen & (torch.rand(n, device=x.device) < local)
        band = _body_band(n, x.shape[-2], x.device)
        variants = torch.where(is_local.view(n, 1, 1, 1) & ~band, g, variants)
    out = torch.where(chosen.view(n, 1, 1, 1), variants.expand_as(x), x)
    return out, chosen & ~is_local


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
