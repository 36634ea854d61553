"""The one inference path: ensemble embeddings (:class:`Embedder`) and sketch -> photo
translation (:class:`Translator`).

Evaluation, cross-validation, pre-training health checks, the service and the command line
all embed through these classes; bundles (:mod:`app.ml.bundle.store`) only store and verify the
networks that they run. :class:`BaseEmbedder` and :class:`BaseTranslator` hold everything
around the networks (preprocessing, flip test-time augmentation, normalisation, combining
members, batching, locking), so the PyTorch classes here and the ONNX Runtime ones in
:mod:`app.ml.bundle.onnx_runtime` differ only in how a network is run.

Precision: ``fp32`` (the default everywhere) or bf16 autocast (``bf16``, or ``auto`` where
the hardware has bf16 units, see :mod:`app.ml.infer.precision`). Convolutions run on
channels-last tensors either way. bf16 is an approximation: on the shipped ResNet-56 its
embeddings are within cosine 0.999 of fp32 but top-10 lists change (docs/results.md,
"Inference speed"), so nothing turns it on by default.
"""

from __future__ import annotations

import contextlib
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from app.ml.infer.precision import Precision, RunPrecision, autocast_dtype
from app.ml.models.cyclegan import from_gan_output, to_gan_input
from app.ml.transforms import DEFAULT_MEAN, DEFAULT_STD, image_to_uint8, normalize, to_uint8_batch

Modality = Literal["photo", "sketch"]
Backend = Literal["torch", "onnx"]


def fuse_views(*views: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """One unit vector a row from several unit embeddings of the same queries (a sketch's own
    embedding and its translation's): their normalised sum, as flip TTA fuses an image and
    its mirror image; with ``weights``, their normalised weighted sum."""
    if not views or any(v.shape != views[0].shape for v in views):
        raise ValueError("fuse_views needs one or more embedding arrays of one shape")
    if weights is None:
        weights = [1.0] * len(views)
    if len(weights) != len(views) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError("fuse_views needs one non-negative weight a view, not all zero")
    stacked = np.stack([np.asarray(v, np.float32) for v in views])
    total = np.tensordot(np.asarray(weights, np.float32), stacked, axes=1)
    norms = np.linalg.norm(total, axis=1, keepdims=True)
    return (total / np.maximum(norms, 1e-12)).astype(np.float32)


def modalities_of(modality: Modality | Sequence[Modality], count: int) -> list[Modality]:
    """One modality per image: ``modality`` repeated when it is one, else checked to be one
    known modality per image."""
    listed: list[Modality] = [modality] * count if isinstance(modality, str) else list(modality)
    if len(listed) != count:
        raise ValueError(f"{len(listed)} modalities for {count} images")
    for m in listed:
        if m not in ("photo", "sketch"):
            raise ValueError(f"modality must be 'photo' or 'sketch', got {m!r}")
    return listed


def member_embedding(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A member's raw (unnormalised) embedding: ``model.embed(x)`` or the second output of
    ``model(x)`` (or its only output). ONNX export runs the same function."""
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


@contextlib.contextmanager
def _eval_mode(models: Sequence[nn.Module]) -> Iterator[None]:
    """Eval mode for the block, each model's previous mode restored afterwards."""
    modes = [m.training for m in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)


class _TorchRunner:
    """Runs networks on one device under inference mode, eval mode and the chosen precision."""

    def __init__(self, device: torch.device, precision: Precision) -> None:
        self.device = device
        self.autocast = autocast_dtype(device, precision)
        self.precision: Literal["bf16", "fp32"] = "bf16" if self.autocast else "fp32"

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device).to(memory_format=torch.channels_last)

    @contextlib.contextmanager
    def running(self, models: Sequence[nn.Module]) -> Iterator[None]:
        with torch.inference_mode(), _eval_mode(models):
            if self.autocast is None:
                yield
            else:
                with torch.autocast(self.device.type, dtype=self.autocast):
                    yield

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


class BaseEmbedder(ABC):
    """Ensemble embedding of person images (photos or sketches), whatever runs the members.

    Each member's embedding is L2-normalised (with flip-TTA: the normalised mean of the
    image's and its mirror's), members are concatenated, divided by sqrt(M) and
    L2-normalised, so the cosine of two outputs is the mean of the member cosines.
    Subclasses implement :meth:`_raw_members`; calls are serialised by a lock.
    """

    backend: Backend
    precision: RunPrecision

    def __init__(
        self,
        input_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        *,
        sketch_grey: bool,
        tta_flip: bool,
        device: torch.device,
    ) -> None:
        self.device = device
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.sketch_grey = sketch_grey
        self.tta_flip = tta_flip
        self._lock = threading.Lock()
        self.member_dims: list[int] = []
        self.dim = 0

    @abstractmethod
    def _raw_members(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised float32 ``[M, 3, H, W]`` -> one raw ``[M, d_i]`` embedding per member."""

    def network_input(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """What the member networks receive for uint8 ``[N, 3, H, W]`` images: normalised
        float32, followed by the N mirror images when flip TTA is on (``[2N, 3, H, W]``).
        Int8 calibration (:mod:`app.ml.bundle.onnx_quantize`) feeds exactly this."""
        x = normalize(batch_uint8.to(self.device), self.mean, self.std)
        if self.tta_flip:
            x = torch.cat([x, torch.flip(x, dims=[3])], 0)
        return x

    def _forward(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        n = batch_uint8.shape[0]
        x = self.network_input(batch_uint8)
        with self._lock:
            raw = self._raw_members(x)
        parts = []
        for out in raw:
            emb = F.normalize(out.float(), dim=1)
            if self.tta_flip:
                emb = F.normalize(emb[:n] + emb[n:], dim=1)
            parts.append(emb)
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
        with torch.inference_mode():
            return self._forward(batch_uint8)

    def to_uint8(
        self, images: Sequence[Image.Image], modality: Modality | Sequence[Modality] = "photo"
    ) -> torch.Tensor:
        """PIL images -> the uint8 ``[N, 3, H, W]`` batch :meth:`embed_tensor` takes: resized,
        and grey where the image is a sketch (``modality`` one for all or one per image)."""
        modalities = modalities_of(modality, len(images))
        if not images:
            return to_uint8_batch([], self.input_size)
        return torch.stack(
            [
                image_to_uint8(im, self.input_size, grey=m == "sketch" and self.sketch_grey)
                for im, m in zip(images, modalities, strict=True)
            ]
        )

    def network_image(self, image: Image.Image, modality: Modality = "photo") -> Image.Image:
        """``image`` at the input size, grey when it is a sketch: the pixels the networks see.
        Embedding it gives the same vector as embedding ``image``, and it holds a few KB where
        a decoded upload holds up to megabytes (batch uploads keep these while they wait)."""
        pixels = self.to_uint8([image], modality)[0]
        return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()), "RGB")

    def embed(
        self,
        images: Sequence[Image.Image],
        modality: Modality | Sequence[Modality] = "photo",
        batch_size: int = 64,
    ) -> np.ndarray:
        """PIL images -> float32 ``(N, dim)`` L2-normalised embeddings.

        ``modality`` is one for all images or one per image: sketches and photos then go
        through the networks in the same forward pass (each preprocessed as its kind), as a
        fused query's sketch and translation do (:mod:`app.ml.infer.query_views`)."""
        modalities = modalities_of(modality, len(images))
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        chunks = [np.zeros((0, self.dim), dtype=np.float32)]
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            batch = self.to_uint8(images[start:stop], modalities[start:stop])
            chunks.append(self.embed_tensor(batch).cpu().numpy().astype(np.float32, copy=False))
        return np.concatenate(chunks, 0)


class Embedder(BaseEmbedder):
    """:class:`BaseEmbedder` running PyTorch members.

    Models are moved to ``device`` (``None``: keep them where they are, useful for
    evaluating training models) in channels-last layout. Forward passes run in eval mode
    under ``precision`` (see the module docstring); each model's previous train/eval mode is
    restored afterwards.
    """

    backend: Backend = "torch"

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
        precision: Precision = "fp32",
    ) -> None:
        if not models:
            raise ValueError("Embedder needs at least one model")
        self._runner = _TorchRunner(_resolve_device(models, device), precision)
        super().__init__(
            input_size,
            mean,
            std,
            sketch_grey=sketch_grey,
            tta_flip=tta_flip,
            device=self._runner.device,
        )
        self.precision = self._runner.precision
        self.models = [self._runner.prepare(m) for m in models]
        self.member_dims = [self._member_dim(m) for m in self.models]
        self.dim = sum(self.member_dims)

    def _member_dim(self, model: nn.Module) -> int:
        dim = getattr(model, "embedding_dim", None)
        if isinstance(dim, int):
            return dim
        probe = torch.zeros((1, 3, *self.input_size), device=self.device)
        return int(self._run([model], probe)[0].shape[1])

    def _run(self, models: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
        x = self._runner.input(x)
        with self._runner.running(models):
            return [member_embedding(model, x).float() for model in models]

    def _raw_members(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._run(self.models, x)


class BaseTranslator(ABC):
    """Sketch -> synthetic photo, whatever runs the generator (thread-safe).

    Sketches are converted to grey (3 equal channels), resized to ``input_size`` (H, W),
    scaled to [-1, 1]; the output is an RGB image of the same size. Subclasses implement
    :meth:`generate`; calls are serialised by a lock.
    """

    backend: Backend
    precision: Literal["bf16", "fp32"]

    def __init__(self, input_size: tuple[int, int], device: torch.device) -> None:
        self.device = device
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self._lock = threading.Lock()

    @abstractmethod
    def _generate(self, x: torch.Tensor) -> torch.Tensor:
        """float32 ``[N, 3, H, W]`` in [-1, 1] -> the generator's output (same shape)."""

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's float32 output for input in [-1, 1] (under the lock)."""
        with self._lock, torch.inference_mode():
            return self._generate(x.to(self.device)).float()

    def translate_tensor(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 3, H, W]`` grey sketches -> uint8 ``[N, 3, H, W]`` photos (CPU)."""
        return from_gan_output(self.generate(to_gan_input(batch_uint8))).cpu()

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


class Translator(BaseTranslator):
    """:class:`BaseTranslator` running a PyTorch CycleGAN generator under ``precision``.

    The generator runs in eval mode and its previous mode is restored; ``device=None``
    keeps it where it is.
    """

    backend: Backend = "torch"

    def __init__(
        self,
        generator: nn.Module,
        input_size: tuple[int, int],
        device: str | torch.device | None = "cpu",
        precision: Precision = "fp32",
    ) -> None:
        self._runner = _TorchRunner(_resolve_device([generator], device), precision)
        super().__init__(input_size, self._runner.device)
        self.precision = self._runner.precision
        self.generator = self._runner.prepare(generator)

    def _generate(self, x: torch.Tensor) -> torch.Tensor:
        with self._runner.running([self.generator]):
            return self.generator(self._runner.input(x)).float()
