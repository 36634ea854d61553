"""ONNX Runtime behind the same interface as the PyTorch embedder and translator.

:class:`OnnxEmbedder` and :class:`OnnxTranslator` subclass the shared
:class:`app.ml.infer.embedder.BaseEmbedder` / :class:`~app.ml.infer.embedder.BaseTranslator`, so
preprocessing, flip test-time augmentation, normalisation and batching are the same code;
only the networks run in ONNX Runtime (CPU, fp32 or int8 graphs, intra-op threads that sleep
rather than spin when idle). Nothing here imports PyTorch: the service runs these from a
bundle's prepared files (:mod:`app.ml.bundle.prepared`) where PyTorch is not installed.

:func:`load_sessions` opens the files of a verified folder and checks nothing; the ways in
check first: :func:`app.ml.bundle.prepared.load_prepared` (a bundle's prepared folders, by
sha256 from the manifest down) and :func:`app.ml.bundle.onnx_parity.with_onnx` (any export
folder, by sha256 and parity with the bundle's PyTorch networks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.errors import BundleError, SketchReidError
from app.ml.bundle.manifest import Manifest
from app.ml.bundle.onnx_files import OnnxManifest
from app.ml.infer.embedder import Backend, BaseEmbedder, BaseTranslator
from app.ml.infer.precision import RunPrecision


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def default_threads() -> int:
    """Intra-op threads for a session: ``OMP_NUM_THREADS`` when set (what PyTorch's own
    default follows), else 0 (ONNX Runtime's default: one per physical core)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def _session(path: Path, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise SketchReidError(
            "the ONNX backend needs onnxruntime: pip install 'sketch-reid[onnx]'"
        ) from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle intra-op threads sleep instead of spinning: a spinning thread holds a core that
    # the request threads (decoding, the database) and other processes need; on the loaded
    # 2-core machine spinning doubled both the wall and the CPU time of a pass
    # (docs/results.md, "Threads").
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BundleError(f"{path}: ONNX Runtime cannot load it ({str(exc)[:300]})") from exc


def _run(session: Any, x: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(x, dtype=np.float32)
    return np.asarray(session.run(None, {"x": array})[0], dtype=np.float32)


class OnnxEmbedder(BaseEmbedder):
    """:class:`BaseEmbedder` running each member's ONNX graph (one session per member)."""

    backend: Backend = "onnx"

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
        photo_flip: bool | None = None,
        member_weights: Sequence[float] | None = None,
        centering: tuple[Sequence[float], Sequence[float]] | None = None,
        precision: RunPrecision = "fp32",
        threads: int = 0,
    ) -> None:
        if not sessions or len(sessions) != len(member_dims):
            raise ValueError("OnnxEmbedder needs one session and one dimension per member")
        super().__init__(
            input_size,
            mean,
            std,
            sketch_grey=sketch_grey,
            tta_flip=tta_flip,
            photo_flip=photo_flip,
            member_weights=member_weights,
            centering=centering,
            device="cpu",
        )
        self.precision = precision
        # The int8 graphs' checksums (set by load_sessions): two calibrations of one bundle
        # embed differently, and caches of vectors tell them apart by this.
        self.graphs: str | None = None
        # Intra-op threads each session runs with (0: ONNX Runtime's default, one per core).
        self.threads = threads
        self.sessions = sessions
        self.member_dims = list(member_dims)
        self.dim = sum(self.member_dims)

    def intra_op_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    def _raw_members(self, x: np.ndarray) -> list[np.ndarray]:
        return [_run(session, x) for session in self.sessions]


class OnnxTranslator(BaseTranslator):
    """:class:`BaseTranslator` running the generator's ONNX graph."""

    backend: Backend = "onnx"
    precision: Literal["bf16", "fp32"] = "fp32"

    def __init__(self, session: Any, input_size: tuple[int, int]) -> None:
        super().__init__(input_size, "cpu")
        self.session = session

    def _generate(self, x: np.ndarray) -> np.ndarray:
        return _run(self.session, x)


def load_sessions(
    onnx_dir: Path, record: OnnxManifest, manifest: Manifest, threads: int | None = None
) -> tuple[OnnxEmbedder, OnnxTranslator | None]:
    """ONNX Runtime embedder and translator for the files ``record`` lists (no checks); the
    embedder's precision is the record's. ``threads``: intra-op threads a session
    (default :func:`default_threads`)."""
    n = default_threads() if threads is None else threads
    embedder = OnnxEmbedder(
        [_session(onnx_dir / member.file, n) for member in record.members],
        [member.dim for member in record.members],
        manifest.input_size,
        manifest.mean,
        manifest.std,
        sketch_grey=manifest.sketch_grey,
        tta_flip=manifest.tta_flip,
        photo_flip=manifest.photo_tta_flip,
        member_weights=manifest.member_weights,
        centering=manifest.centering_means(),
        precision=record.precision,
        threads=n,
    )
    if record.precision == "int8":  # which int8 graphs: the calibration shapes the vectors
        embedder.graphs = ",".join(m.sha256 for m in record.members)
    translator = None
    if record.translator is not None and manifest.translator is not None:
        session = _session(onnx_dir / record.translator.file, n)
        translator = OnnxTranslator(session, manifest.translator.spec.input_size)
    return embedder, translator
