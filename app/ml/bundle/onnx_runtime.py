"""ONNX Runtime behind the same interface as the PyTorch embedder and translator.

:class:`OnnxEmbedder` and :class:`OnnxTranslator` subclass the shared
:class:`app.ml.infer.embedder.BaseEmbedder` / :class:`~app.ml.infer.embedder.BaseTranslator`, so
preprocessing, flip test-time augmentation, normalisation and batching are the same code;
only the networks run in ONNX Runtime (CPU, fp32, as many threads as PyTorch uses).

:func:`with_onnx` is the way in: it verifies an export folder against the bundle
(:func:`app.ml.bundle.onnx_files.verify_onnx_dir`: source weights and sha256 of each file) and
then checks parity against the bundle's PyTorch networks on a fixed probe batch, so what is
served computes the same function as the verified weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from app.errors import BundleError, SketchReidError
from app.ml.bundle.onnx_files import OnnxManifest, verify_onnx_dir
from app.ml.bundle.store import Bundle
from app.ml.infer.embedder import Backend, BaseEmbedder, BaseTranslator, Embedder, Translator

# Parity bounds, PyTorch fp32 vs ONNX Runtime: combined unit-length embeddings (measured
# ~1e-6 on the shipped ResNet-56) and generator outputs in [-1, 1] (1e-3 is 0.13 of a level).
EMBEDDING_ATOL = 1e-4
TRANSLATOR_ATOL = 1e-3
PROBE_IMAGES = 8


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _session(path: Path) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise SketchReidError(
            "the ONNX backend needs onnxruntime: pip install 'sketch-reid[onnx]'"
        ) from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BundleError(f"{path}: ONNX Runtime cannot load it ({str(exc)[:300]})") from exc


def _run(session: Any, x: torch.Tensor) -> torch.Tensor:
    array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    return torch.from_numpy(session.run(None, {"x": array})[0])


class OnnxEmbedder(BaseEmbedder):
    """:class:`BaseEmbedder` running each member's ONNX graph (one session per member)."""

    backend: Backend = "onnx"
    precision: Literal["bf16", "fp32"] = "fp32"

    def __init__(
        self,
        sessions: list[Any],
        member_dims: list[int],
        input_size: tuple[int, int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        *,
        sketch_grey: bool = True,
        tta_flip: bool = True,
    ) -> None:
        if not sessions or len(sessions) != len(member_dims):
            raise ValueError("OnnxEmbedder needs one session and one dimension per member")
        super().__init__(
            input_size,
            mean,
            std,
            sketch_grey=sketch_grey,
            tta_flip=tta_flip,
            device=torch.device("cpu"),
        )
        self.sessions = sessions
        self.member_dims = list(member_dims)
        self.dim = sum(self.member_dims)

    def _raw_members(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_run(session, x) for session in self.sessions]


class OnnxTranslator(BaseTranslator):
    """:class:`BaseTranslator` running the generator's ONNX graph."""

    backend: Backend = "onnx"
    precision: Literal["bf16", "fp32"] = "fp32"

    def __init__(self, session: Any, input_size: tuple[int, int]) -> None:
        super().__init__(input_size, torch.device("cpu"))
        self.session = session

    def _generate(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.session, x)


def load_sessions(
    onnx_dir: Path, record: OnnxManifest, bundle: Bundle
) -> tuple[OnnxEmbedder, OnnxTranslator | None]:
    """ONNX Runtime embedder and translator for the files ``record`` lists (no checks)."""
    m = bundle.manifest
    embedder = OnnxEmbedder(
        [_session(onnx_dir / member.file) for member in record.members],
        [member.dim for member in record.members],
        m.input_size,
        m.mean,
        m.std,
        sketch_grey=m.sketch_grey,
        tta_flip=m.tta_flip,
    )
    translator = None
    if record.translator is not None and m.translator is not None:
        session = _session(onnx_dir / record.translator.file)
        translator = OnnxTranslator(session, m.translator.spec.input_size)
    return embedder, translator


def _probe(size: tuple[int, int]) -> torch.Tensor:
    """Fixed uint8 probe images: noise and smooth gradients (seeded, same on every run)."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (PROBE_IMAGES // 2, 3, *size), generator=gen, dtype=torch.uint8)
    ramp = torch.linspace(0, 255, size[0] * size[1]).reshape(1, 1, *size)
    smooth = (ramp * torch.rand((PROBE_IMAGES // 2, 3, 1, 1), generator=gen)).to(torch.uint8)
    return torch.cat([noise, smooth])


def check_parity(
    bundle: Bundle, embedder: OnnxEmbedder, translator: OnnxTranslator | None
) -> dict[str, float]:
    """Max abs differences between ONNX Runtime and the bundle's PyTorch fp32 networks on
    the probe batch; raises :class:`BundleError` beyond :data:`EMBEDDING_ATOL` /
    :data:`TRANSLATOR_ATOL`."""
    m = bundle.manifest
    reference = Embedder(
        bundle.members,
        m.input_size,
        m.mean,
        m.std,
        sketch_grey=m.sketch_grey,
        tta_flip=m.tta_flip,
        device="cpu",
        precision="fp32",
    )
    probe = _probe(m.input_size)
    diff = float((embedder.embed_tensor(probe) - reference.embed_tensor(probe)).abs().max())
    result = {"embedding_max_abs": diff}
    if diff > EMBEDDING_ATOL:
        raise BundleError(
            f"ONNX embeddings differ from PyTorch by {diff:.2e} (> {EMBEDDING_ATOL:.0e})"
        )
    if translator is not None and bundle.generator is not None and m.translator is not None:
        size = m.translator.spec.input_size
        x = _probe(size).float().div(127.5).sub(1.0)
        torch_out = Translator(bundle.generator, size, device="cpu").generate(x)
        tdiff = float((translator.generate(x) - torch_out).abs().max())
        result["translator_max_abs"] = tdiff
        if tdiff > TRANSLATOR_ATOL:
            raise BundleError(
                f"ONNX translator output differs from PyTorch by {tdiff:.2e} "
                f"(> {TRANSLATOR_ATOL:.0e})"
            )
    return result


def with_onnx(bundle: Bundle, onnx_dir: str | Path) -> Bundle:
    """``bundle`` with its embedder and translator run by ONNX Runtime from ``onnx_dir``,
    after checking the files against the bundle and parity against its PyTorch networks."""

    folder = Path(onnx_dir)
    record = verify_onnx_dir(folder, bundle)
    embedder, translator = load_sessions(folder, record, bundle)
    check_parity(bundle, embedder, translator)
    if bundle.translator is not None and translator is None:
        raise BundleError(f"{folder}: the bundle has a translator but the export does not")
    return Bundle(
        bundle.path, bundle.manifest, bundle.members, embedder, translator, bundle.generator
    )
