"""The one inference path: ensemble embeddings (:class:`BaseEmbedder`) and sketch -> photo
translation (:class:`BaseTranslator`), whatever runs the networks.

Evaluation, cross-validation, pre-training health checks, the service and the command line
all embed through these classes; bundles (:mod:`app.ml.bundle.store`) only store and verify the
networks that they run. :class:`BaseEmbedder` and :class:`BaseTranslator` hold everything
around the networks (preprocessing, flip test-time augmentation, normalisation, combining
members, batching, locking) in numpy, so the PyTorch classes
(:mod:`app.ml.infer.torch_embedder`: :class:`~app.ml.infer.torch_embedder.Embedder`,
:class:`~app.ml.infer.torch_embedder.Translator`) and the ONNX Runtime ones
(:mod:`app.ml.bundle.onnx_runtime`) differ only in how a network is run, and the service
imports no PyTorch when ONNX Runtime serves. The ``*_tensor`` methods take and give PyTorch
tensors for training and evaluation; they import PyTorch when called.

Precision: ``fp32`` (the default everywhere) or bf16 autocast (``bf16``, or ``auto`` where
the hardware has bf16 units, see :mod:`app.ml.infer.precision`) for PyTorch, ``int8`` for
ONNX Runtime's quantised graphs. bf16 is an approximation: on the shipped ResNet-56 its
embeddings are within cosine 0.999 of fp32 but top-10 lists change (docs/results.md,
"Inference speed"), so nothing turns it on by default.
"""

from __future__ import annotations

import itertools
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from app.ml.infer.precision import RunPrecision
from app.ml.transforms import gan_input, gan_output, image_to_array, normalize_array, to_uint8_array

if TYPE_CHECKING:
    import torch

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


def member_shares(weights: Sequence[float] | None) -> list[float] | None:
    """Members' weights normalised to sum 1 (their shares of the ensemble's cosine); None:
    equal shares."""
    if weights is None:
        return None
    total = sum(weights)
    return [w / total for w in weights]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (at least 1e-12), as ``torch.nn.functional.normalize``."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.sum(x * x, axis=1, keepdims=True, dtype=np.float32))
    return x / np.maximum(norms, np.float32(1e-12))


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


class BaseEmbedder(ABC):
    """Ensemble embedding of person images (photos or sketches), whatever runs the members.

    Each member's embedding is L2-normalised (with flip-TTA: the normalised mean of the
    image's and its mirror's), members are concatenated, each multiplied by the square root of
    its share (``member_weights`` normalised to sum 1; default 1/M each) and L2-normalised, so
    the cosine of two outputs is the share-weighted mean of the member cosines.
    Subclasses implement :meth:`_raw_members`; calls are serialised by a lock. ``device`` is
    where the networks run (``"cpu"`` or a ``torch.device``); :meth:`embed_tensor` returns
    its tensors there.
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
        photo_flip: bool | None = None,
        member_weights: Sequence[float] | None = None,
        centering: tuple[Sequence[float], Sequence[float]] | None = None,
        device: Any = "cpu",
    ) -> None:
        self.device = device
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.sketch_grey = sketch_grey
        self.tta_flip = tta_flip
        # Flip TTA for photos: as for sketches unless the bundle says otherwise.
        self.photo_flip = tta_flip if photo_flip is None else photo_flip
        if member_weights is not None and (
            not member_weights or any(not w > 0 for w in member_weights)
        ):
            raise ValueError(f"member weights must be positive, got {list(member_weights)}")
        self.member_weights = None if member_weights is None else [float(w) for w in member_weights]
        # Rows: the photo and the sketch mean of each member's unit embedding (concatenated).
        self.centering = None if centering is None else np.asarray(centering, dtype=np.float32)
        if self.centering is not None and (
            self.centering.ndim != 2 or self.centering.shape[0] != 2
        ):
            raise ValueError("centering takes a photo mean and a sketch mean of equal length")
        self._lock = threading.Lock()
        self.member_dims: list[int] = []
        self.dim = 0

    @abstractmethod
    def intra_op_threads(self) -> int:
        """Threads one pass of a member runs with."""

    @abstractmethod
    def _raw_members(self, x: np.ndarray) -> list[np.ndarray]:
        """Normalised float32 ``[M, 3, H, W]`` -> one raw float32 ``[M, d_i]`` per member."""

    def flips(self, modalities: Sequence[Modality]) -> np.ndarray:
        """Which images of a batch of these modalities get flip TTA (bool, one per image)."""
        return np.array(
            [self.photo_flip if m == "photo" else self.tta_flip for m in modalities], dtype=bool
        )

    def _flip_mask(self, n: int, flip: np.ndarray | Sequence[bool] | None) -> np.ndarray:
        if flip is None:
            return np.full(n, self.tta_flip, dtype=bool)
        mask = np.asarray(flip, dtype=bool)
        if mask.shape != (n,):
            raise ValueError(f"{mask.shape[0] if mask.ndim else 0} flip flags for {n} images")
        return mask

    def network_input(
        self, batch_uint8: np.ndarray, flip: np.ndarray | Sequence[bool] | None = None
    ) -> np.ndarray:
        """What the member networks receive for uint8 ``[N, 3, H, W]`` images: normalised
        float32, followed by the mirror images of those ``flip`` marks (default: all of them
        when flip TTA is on, ``[2N, 3, H, W]``). Int8 calibration
        (:mod:`app.ml.bundle.onnx_quantize`) feeds exactly this."""
        x = normalize_array(np.asarray(batch_uint8), self.mean, self.std)
        mask = self._flip_mask(x.shape[0], flip)
        if mask.any():
            x = np.concatenate([x, x[mask][:, :, :, ::-1]], 0)
        return np.ascontiguousarray(x)

    def _member_units(
        self, batch_uint8: np.ndarray, flip: np.ndarray | Sequence[bool] | None = None
    ) -> list[np.ndarray]:
        """Each member's unit embedding of the images (with flip TTA: of the image and its
        mirror's normalised sum), one ``[N, d_i]`` array a member."""
        n = batch_uint8.shape[0]
        mask = self._flip_mask(n, flip)
        x = self.network_input(batch_uint8, mask)
        with self._lock:
            raw = self._raw_members(x)
        parts = []
        for out in raw:
            emb = l2_normalize(out)
            if mask.any():
                own = emb[:n].copy()
                own[mask] = l2_normalize(own[mask] + emb[n:])
                emb = own
            parts.append(emb)
        return parts

    def combine_units(
        self,
        units: np.ndarray | Sequence[np.ndarray],
        sketch: np.ndarray | Sequence[bool] | None = None,
    ) -> np.ndarray:
        """The ensemble's vectors from its members' unit embeddings (``[N, dim]`` as
        :meth:`embed_units` returns them, or one array a member): each less the mean of its
        image's kind when the bundle is centred (``sketch``: which images are sketches;
        default none) and normalised again, weighted by its share, concatenated and
        normalised."""
        x = units if isinstance(units, np.ndarray) else np.concatenate(list(units), 1)
        cuts = np.cumsum([0, *self.member_dims])
        if x.ndim != 2 or x.shape[1] != cuts[-1]:
            raise ValueError(f"expected [N, {cuts[-1]}] member units, got {x.shape}")
        if self.centering is not None:
            if self.centering.shape[1] != cuts[-1]:
                raise ValueError(
                    f"centering means of {self.centering.shape[1]} values for a "
                    f"{cuts[-1]}-d embedding"
                )
            x = x - self.centering[self._sketch_rows(len(x), sketch)]
        parts = [x[:, a:b] for a, b in itertools.pairwise(cuts)]
        if self.centering is not None:
            parts = [l2_normalize(p) for p in parts]
        shares = member_shares(self.member_weights)
        if shares is None:
            combined = np.concatenate(parts, 1) / np.float32(math.sqrt(len(parts)))
        else:
            if len(shares) != len(parts):
                raise ValueError(f"{len(shares)} member weights for {len(parts)} members")
            scales = [np.float32(math.sqrt(w)) for w in shares]
            combined = np.concatenate([p * c for p, c in zip(parts, scales, strict=True)], 1)
        return l2_normalize(combined)

    def _forward(
        self,
        batch_uint8: np.ndarray,
        flip: np.ndarray | Sequence[bool] | None = None,
        sketch: np.ndarray | Sequence[bool] | None = None,
    ) -> np.ndarray:
        return self.combine_units(self._member_units(batch_uint8, flip), sketch)

    def _sketch_rows(self, n: int, sketch: np.ndarray | Sequence[bool] | None) -> np.ndarray:
        """Row of :attr:`centering` for each of ``n`` images: 1 for a sketch, 0 for a photo."""
        rows = np.zeros(n, dtype=np.int64) if sketch is None else np.asarray(sketch, np.int64)
        if rows.shape != (n,):
            raise ValueError(f"{rows.shape[0] if rows.ndim else 0} sketch flags for {n} images")
        return rows

    def embed_array(
        self,
        batch_uint8: np.ndarray,
        flip: np.ndarray | Sequence[bool] | None = None,
        sketch: np.ndarray | Sequence[bool] | None = None,
    ) -> np.ndarray:
        """uint8 ``[N, 3, H, W]`` at ``input_size`` -> float32 ``[N, dim]``.

        Grey conversion for sketches is the caller's job here (``image_to_array(...,
        grey=True)``); :meth:`embed` does it for PIL images, and says which images get flip
        TTA (``flip``, one flag per image; default: all of them when ``tta_flip``) and which
        are sketches (``sketch``, one flag per image; default: none), for a bundle's
        modality centering.
        """
        if batch_uint8.dtype != np.uint8 or batch_uint8.ndim != 4:
            raise ValueError(
                f"expected a uint8 [N,3,H,W] batch, got {batch_uint8.dtype} "
                f"{tuple(batch_uint8.shape)}"
            )
        if tuple(batch_uint8.shape[1:]) != (3, *self.input_size):
            raise ValueError(
                f"expected [N,3,{self.input_size[0]},{self.input_size[1]}], "
                f"got {tuple(batch_uint8.shape)}"
            )
        if batch_uint8.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._forward(batch_uint8, flip, sketch)

    def embed_tensor(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """:meth:`embed_array` for a uint8 tensor; float32 ``[N, dim]`` on ``self.device``."""
        import torch

        if batch_uint8.dtype != torch.uint8:
            raise ValueError(
                f"expected a uint8 [N,3,H,W] tensor, got {batch_uint8.dtype} "
                f"{tuple(batch_uint8.shape)}"
            )
        out = self.embed_array(batch_uint8.detach().cpu().numpy())
        return torch.from_numpy(out).to(self.device)

    def to_uint8(
        self, images: Sequence[Image.Image], modality: Modality | Sequence[Modality] = "photo"
    ) -> np.ndarray:
        """PIL images -> the uint8 ``[N, 3, H, W]`` batch :meth:`embed_array` takes: resized,
        and grey where the image is a sketch (``modality`` one for all or one per image)."""
        modalities = modalities_of(modality, len(images))
        if not images:
            return to_uint8_array([], self.input_size)
        return np.stack(
            [
                image_to_array(im, self.input_size, grey=m == "sketch" and self.sketch_grey)
                for im, m in zip(images, modalities, strict=True)
            ]
        )

    def network_image(self, image: Image.Image, modality: Modality = "photo") -> Image.Image:
        """``image`` at the input size, grey when it is a sketch: the pixels the networks see.
        Embedding it gives the same vector as embedding ``image``, and it holds a few KB where
        a decoded upload holds up to megabytes (batch uploads keep these while they wait)."""
        pixels = self.to_uint8([image], modality)[0]
        return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), "RGB")

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
        sketch = np.array([m == "sketch" for m in modalities], dtype=bool)
        return self.combine_units(self.embed_units(images, modalities, batch_size), sketch)

    def embed_units(
        self,
        images: Sequence[Image.Image],
        modality: Modality | Sequence[Modality] = "photo",
        batch_size: int = 64,
    ) -> np.ndarray:
        """PIL images -> each member's unit embedding, concatenated (float32 ``(N, dim)``),
        before centering and member weights: what :meth:`combine_units` turns into
        :meth:`embed`'s vectors (caches keep these, so a change of weights or centering
        re-uses them)."""
        modalities = modalities_of(modality, len(images))
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        chunks = [np.zeros((0, self.dim), dtype=np.float32)]
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            kinds = modalities[start:stop]
            batch = self.to_uint8(images[start:stop], kinds)
            chunks.append(np.concatenate(self._member_units(batch, self.flips(kinds)), 1))
        return np.concatenate(chunks, 0)


class BaseTranslator(ABC):
    """Sketch -> synthetic photo, whatever runs the generator (thread-safe).

    Sketches are converted to grey (3 equal channels), resized to ``input_size`` (H, W),
    scaled to [-1, 1]; the output is an RGB image of the same size. Subclasses implement
    :meth:`_generate`; calls are serialised by a lock.
    """

    backend: Backend
    precision: Literal["bf16", "fp32"]

    def __init__(self, input_size: tuple[int, int], device: Any = "cpu") -> None:
        self.device = device
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self._lock = threading.Lock()

    @abstractmethod
    def _generate(self, x: np.ndarray) -> np.ndarray:
        """float32 ``[N, 3, H, W]`` in [-1, 1] -> the generator's float32 output."""

    def generate_array(self, x: np.ndarray) -> np.ndarray:
        """The generator's float32 output for float32 input in [-1, 1] (under the lock)."""
        with self._lock:
            return np.asarray(self._generate(np.ascontiguousarray(x, np.float32)), np.float32)

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`generate_array` for a float32 tensor (CPU result)."""
        import torch

        return torch.from_numpy(self.generate_array(x.detach().float().cpu().numpy()))

    def translate_array(self, batch_uint8: np.ndarray) -> np.ndarray:
        """uint8 ``[N, 3, H, W]`` grey sketches -> uint8 ``[N, 3, H, W]`` photos."""
        return gan_output(self.generate_array(gan_input(batch_uint8)))

    def translate_tensor(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """:meth:`translate_array` for a uint8 tensor (CPU result)."""
        import torch

        return torch.from_numpy(self.translate_array(batch_uint8.detach().cpu().numpy()))

    def translate_batch(
        self, images: Sequence[Image.Image], batch_size: int = 16
    ) -> list[Image.Image]:
        out: list[Image.Image] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = np.stack([image_to_array(im, self.input_size, grey=True) for im in chunk])
            for arr in self.translate_array(batch).transpose(0, 2, 3, 1):
                out.append(Image.fromarray(np.ascontiguousarray(arr)))
        return out

    def translate(self, image: Image.Image) -> Image.Image:
        return self.translate_batch([image])[0]
