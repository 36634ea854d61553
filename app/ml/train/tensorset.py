"""Images decoded once into uint8 tensors, so training epochs never touch the disk.

Every image goes through the project's one loader (:func:`app.ml.images.load_image`) and one
resize (:func:`app.ml.transforms.image_to_uint8`); sketches are turned grey exactly as the
:class:`app.ml.infer.torch_embedder.Embedder` turns them grey at query time.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from app.ml.data.pku import Sample
from app.ml.images import load_image
from app.ml.transforms import image_to_uint8

PHOTO, SKETCH = 0, 1


@dataclass
class TensorSet:
    """A labelled image set held in memory: ``images`` is uint8 [N, 3, H, W]."""

    images: torch.Tensor
    labels: torch.Tensor  # int64 class index 0..K-1
    pids: torch.Tensor  # int64 original identity
    modality: torch.Tensor  # int64, PHOTO or SKETCH

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def num_classes(self) -> int:
        return int(self.labels.max().item()) + 1 if len(self) else 0

    def to(self, device: torch.device | str) -> TensorSet:
        return TensorSet(
            self.images.to(device),
            self.labels.to(device),
            self.pids.to(device),
            self.modality.to(device),
        )


def _decode(sample: Sample, size: tuple[int, int], sketch_grey: bool) -> torch.Tensor:
    grey = sketch_grey and sample.modality == "sketch"
    image = load_image(sample.path, max_side=max(size) * 4)
    return image_to_uint8(image, size, grey=grey)


def _cache_key(samples: Sequence[Sample], size: tuple[int, int], sketch_grey: bool) -> str:
    digest = hashlib.sha256(f"{size}|{sketch_grey}".encode())
    for s in samples:
        stat = os.stat(s.path)
        digest.update(f"{s.path}|{stat.st_size}|{stat.st_mtime_ns}|{s.modality}\n".encode())
    return digest.hexdigest()[:24]


def decode_samples(
    samples: Sequence[Sample],
    size: tuple[int, int],
    *,
    sketch_grey: bool = True,
    cache_dir: Path | None = None,
    desc: str = "decoding",
    workers: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Decode ``samples`` into a uint8 [N, 3, H, W] tensor, optionally cached on disk."""
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"images-{_cache_key(samples, size, sketch_grey)}.pt"
        if cache_file.exists():
            return torch.load(cache_file, weights_only=True)
    out = torch.empty((len(samples), 3, *size), dtype=torch.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(lambda s: _decode(s, size, sketch_grey), samples)
        for i, tensor in enumerate(
            tqdm(
                jobs,
                total=len(samples),
                desc=desc,
                leave=False,
                disable=not progress or len(samples) < 200,
            )
        ):
            out[i] = tensor
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        torch.save(out, tmp)
        tmp.replace(cache_file)
    return out


def build_tensor_set(
    samples: Sequence[Sample],
    size: tuple[int, int],
    *,
    label_of: dict[int, int] | None = None,
    sketch_grey: bool = True,
    cache_dir: Path | None = None,
    desc: str = "decoding",
    progress: bool = True,
) -> TensorSet:
    """Decode samples and attach labels (``label_of`` maps pid -> class; default: relabel)."""
    if label_of is None:
        label_of = {pid: i for i, pid in enumerate(sorted({s.pid for s in samples}))}
    images = decode_samples(
        samples, size, sketch_grey=sketch_grey, cache_dir=cache_dir, desc=desc, progress=progress
    )
    return TensorSet(
        images=images,
        labels=torch.tensor([label_of[s.pid] for s in samples], dtype=torch.int64),
        pids=torch.tensor([s.pid for s in samples], dtype=torch.int64),
        modality=torch.tensor(
            [SKETCH if s.modality == "sketch" else PHOTO for s in samples], dtype=torch.int64
        ),
    )
