"""Small synthetic images and bundle building for the service tests."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from app.ml.bundle.store import save_bundle
from app.ml.models.cyclegan import GeneratorSpec, build_generator
from app.ml.models.resnet_cifar import MemberSpec, build_member


def person_image(seed: int, size: tuple[int, int] = (32, 64)) -> Image.Image:
    """A blocky random RGB picture (width, height) that differs per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BILINEAR)
    noise = rng.integers(-20, 20, size=(h, w, 3))
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (32, 64)) -> bytes:
    return encode(person_image(seed, size), "JPEG", quality=90)


def png(seed: int, size: tuple[int, int] = (32, 64)) -> bytes:
    return encode(person_image(seed, size), "PNG")


def sketch_png(seed: int) -> bytes:
    """A grey line-drawing-like picture."""
    rng = np.random.default_rng(10_000 + seed)
    arr = np.full((64, 32), 255, np.uint8)
    for _ in range(12):
        x, y = rng.integers(0, 32), rng.integers(0, 64)
        arr[max(0, y - 6) : y + 6, x] = 0
        arr[y, max(0, x - 4) : x + 4] = 0
    return encode(Image.fromarray(arr, "L"), "PNG")


def _centre_embeddings(member: torch.nn.Module) -> None:
    """Random weights put every image near one direction (ReLU features are all positive);
    a bias that removes the mean feature spreads the synthetic images' embeddings apart."""
    from app.ml.transforms import to_batch

    feats: list[torch.Tensor] = []
    hook = member.fc.register_forward_hook(lambda _m, inp, _out: feats.append(inp[0]))
    with torch.no_grad():
        member(to_batch([person_image(s) for s in range(64)], (64, 32)))
        hook.remove()
        member.fc.bias.copy_(-member.fc.weight @ feats[0].mean(0))


def build_tiny_bundle(
    out: Path,
    *,
    translator: bool = True,
    version: str = "1.0",
    seed: int = 0,
    tta_flip: bool = False,
) -> Path:
    """A tiny bundle; another ``seed`` gives other weights (another embedding space).
    Flip test-time augmentation is off unless ``tta_flip`` (tests/service/test_flip_tta.py)."""
    torch.manual_seed(seed)
    spec = MemberSpec(arch="resnet20", num_classes=10, fc_dim=64, input_size=(64, 32))
    member = build_member(spec).eval()
    _centre_embeddings(member)
    gen = None
    if translator:
        gen_spec = GeneratorSpec(ngf=8, n_blocks=1, input_size=(64, 32))
        gen = (gen_spec, build_generator(gen_spec).eval(), {})
    save_bundle(
        out,
        name="tiny",
        version=version,
        members=[("m0", spec, member, {})],
        translator=gen,
        input_size=(64, 32),
        tta_flip=tta_flip,
    )
    return out


class Counting:
    """Wraps an embedder or translator: records each call's size (and modality), and holds
    calls until ``gate`` is set when one is given."""

    def __init__(self, inner: Any, gate: threading.Event | None = None) -> None:
        self.inner = inner
        self.gate = gate
        self.calls: list[tuple[str, int]] = []
        self.kinds: list[str] = []  # the modality of each image embedded, in order
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _record(self, what: str, n: int) -> None:
        with self._lock:
            self.calls.append((what, n))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"

    def embed(
        self,
        images: Sequence[Image.Image],
        modality: str | Sequence[str] = "photo",
        batch_size: int = 64,
    ) -> np.ndarray:
        """Recorded as the call's one modality, or ``mixed``; each image's in ``kinds``."""
        kinds = [modality] * len(images) if isinstance(modality, str) else list(modality)
        with self._lock:
            self.kinds.extend(kinds)
        one = len(set(kinds)) == 1
        self._record(
            modality if isinstance(modality, str) else kinds[0] if one else "mixed", len(images)
        )
        return self.inner.embed(images, modality=modality, batch_size=batch_size)

    def translate_batch(
        self, images: Sequence[Image.Image], batch_size: int = 16
    ) -> list[Image.Image]:
        self._record("translate", len(images))
        return self.inner.translate_batch(images, batch_size=batch_size)


def concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads released together; results (or exceptions) in order."""
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results
