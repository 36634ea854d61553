"""The one inference path: ensemble embeddings (:class:`Embedder`) and sketch -> photo
translation (:class:`Translator`).

Evaluation, cross-validation, pre-training health checks, the service and the command line
all embed through :class:`Embedder`; bundles (:mod:`app.ml.bundle`) only store and verify
the networks that these classes run.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from app.ml.models.cyclegan import from_gan_output, to_gan_input
from app.ml.transforms import DEFAULT_MEAN, DEFAULT_STD, image_to_uint8, normalize, to_uint8_batch

Modality = Literal["photo", "sketch"]


def _member_embedding(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    embed = getattr(model, "embed", None)
    if callable(embed):
        return embed(x)
    out = model(x)
    return out[1] if isinstance(out, tuple) else out


def _resolve_device(models: Sequence[nn.Module], device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for model in models:
        for param in model.parameters():
            return param.device
    return torch.device("cpu")


class Embedder:
    """Ensemble embedding of person images (photos or sketches).

    Each member's embedding is L2-normalised (with flip-TTA: the normalised mean of the
    image's and its mirror's), members are concatenated, divided by sqrt(M) and
    L2-normalised, so the cosine of two outputs is the mean of the member cosines.

    Models are moved to ``device`` (``None``: keep them where they are, useful for
    evaluating training models). Forward passes run in eval mode under a lock; each model's
    previous train/eval mode is restored afterwards.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        input_size: tuple[int, int],
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
        *,
        sketch_grey: bool = True,
        tta_flip: bool = True,
        device: str | torch.device | None = "cpu",
    ) -> None:
        if not models:
            raise ValueError("Embedder needs at least one model")
        self.device = _resolve_device(models, device)
        self.models = [m.to(self.device) for m in models]
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.sketch_grey = sketch_grey
        self.tta_flip = tta_flip
        self._lock = threading.Lock()
        self.member_dims = [self._member_dim(m) for m in self.models]
        self.dim = sum(self.member_dims)

    def _member_dim(self, model: nn.Module) -> int:
        dim = getattr(model, "embedding_dim", None)
        if isinstance(dim, int):
            return dim
        probe = torch.zeros((1, 3, *self.input_size), dtype=torch.uint8)
        return int(self._forward([model], probe).shape[1])

    def _forward(self, models: Sequence[nn.Module], batch_uint8: torch.Tensor) -> torch.Tensor:
        x = normalize(batch_uint8.to(self.device), self.mean, self.std)
        n = x.shape[0]
        if self.tta_flip:
            x = torch.cat([x, torch.flip(x, dims=[3])], 0)
        parts = []
        with self._lock, torch.inference_mode():
            modes = [m.training for m in models]
            try:
                for model in models:
                    model.eval()
                    emb = F.normalize(_member_embedding(model, x).float(), dim=1)
                    if self.tta_flip:
                        emb = F.normalize(emb[:n] + emb[n:], dim=1)
                    parts.append(emb)
            finally:
                for model, mode in zip(models, modes, strict=True):
                    model.train(mode)
            combined = torch.cat(parts, 1) / math.sqrt(len(parts))
            return F.normalize(combined, dim=1)

    def embed_tensor(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 3, H, W]`` at ``input_size`` -> float32 ``[N, dim]`` on ``self.device``.

        Grey conversion for sketches is the caller's job here (``image_to_uint8(...,
        grey=True)``); :meth:`embed` does it for PIL images.
        """
        if batch_uint8.dtype != torch.uint8 or batch_uint8.dim() != 4:
            raise ValueError(
                f"expected a uint8 [N,3,H,W] tensor, got {batch_uint8.dtype} "
                f"{tuple(batch_uint8.shape)}"
            )
        if tuple(batch_uint8.shape[1:]) != (3, *self.input_size):
            raise ValueError(
                f"expected [N,3,{self.input_size[0]},{self.input_size[1]}], "
                f"got {tuple(batch_uint8.shape)}"
            )
        if batch_uint8.shape[0] == 0:
            return torch.zeros((0, self.dim), dtype=torch.float32, device=self.device)
        return self._forward(self.models, batch_uint8)

    def embed(
        self,
        images: Sequence[Image.Image],
        modality: Modality = "photo",
        batch_size: int = 64,
    ) -> np.ndarray:
        """PIL images -> float32 ``(N, dim)`` L2-normalised embeddings."""
        if modality not in ("photo", "sketch"):
            raise ValueError(f"modality must be 'photo' or 'sketch', got {modality!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        grey = modality == "sketch" and self.sketch_grey
        chunks = [np.zeros((0, self.dim), dtype=np.float32)]
        for start in range(0, len(images), batch_size):
            batch = to_uint8_batch(images[start : start + batch_size], self.input_size, grey=grey)
            chunks.append(self.embed_tensor(batch).cpu().numpy().astype(np.float32, copy=False))
        return np.concatenate(chunks, 0)


class Translator:
    """Sketch -> synthetic photo with a CycleGAN generator (thread-safe).

    Sketches are converted to grey (3 equal channels), resized to ``input_size`` (H, W),
    scaled to [-1, 1]; the output is an RGB image of the same size. The generator runs in
    eval mode under a lock and its previous mode is restored; ``device=None`` keeps it
    where it is.
    """

    def __init__(
        self,
        generator: nn.Module,
        input_size: tuple[int, int],
        device: str | torch.device | None = "cpu",
    ) -> None:
        self.device = _resolve_device([generator], device)
        self.generator = generator.to(self.device)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self._lock = threading.Lock()

    def translate_tensor(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 3, H, W]`` grey sketches -> uint8 ``[N, 3, H, W]`` photos (CPU)."""
        x = to_gan_input(batch_uint8.to(self.device))
        with self._lock, torch.inference_mode():
            mode = self.generator.training
            try:
                y = self.generator.eval()(x)
            finally:
                self.generator.train(mode)
        return from_gan_output(y).cpu()

    def translate_batch(
        self, images: Sequence[Image.Image], batch_size: int = 16
    ) -> list[Image.Image]:
        out: list[Image.Image] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = torch.stack([image_to_uint8(im, self.input_size, grey=True) for im in chunk])
            for arr in self.translate_tensor(batch).permute(0, 2, 3, 1).numpy():
                out.append(Image.fromarray(np.ascontiguousarray(arr)))
        return out

    def translate(self, image: Image.Image) -> Image.Image:
        return self.translate_batch([image])[0]
