"""ONNX Runtime behind the same interface as the PyTorch embedder and translator.

:class:`OnnxEmbedder` and :class:`OnnxTranslator` subclass the shared
:class:`app.ml.infer.embedder.BaseEmbedder` / :class:`~app.ml.infer.embedder.BaseTranslator`, so
preprocessing, flip test-time augmentation, normalisation and batching are the same code;
only the networks run in ONNX Runtime (CPU, fp32 or int8 graphs, as many intra-op threads as
PyTorch uses, which sleep rather than spin when idle).

:func:`with_onnx` is the way in: it verifies an export folder against the bundle
(:func:`app.ml.bundle.onnx_files.verify_onnx_dir`: source weights and sha256 of each file) and
then checks parity against the bundle's PyTorch networks on a fixed probe batch, so what is
served computes the same function as the verified weights. An int8 folder
(:mod:`app.ml.bundle.onnx_quantize`) cannot meet fp32 parity; it is held to the int8 checks of
:mod:`app.ml.bundle.onnx_int8` instead (quantised graphs, cosine to fp32 on its probe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from app.errors import BundleError, SketchReidError
from app.ml.bundle.onnx_files import PROBE_FILE, OnnxManifest, OnnxPrecision, verify_onnx_dir
from app.ml.bundle.onnx_int8 import check_int8_parity, check_quantized_graph
from app.ml.bundle.store import Bundle, manifest_embedder
from app.ml.infer.embedder import Backend, BaseEmbedder, BaseTranslator, Embedder, Translator
from app.ml.infer.precision import RunPrecision

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
    # Idle intra-op threads sleep instead of spinning: a spinning thread holds a core that
    # the request threads (decoding, the database) and other processes need; on the loaded
    # 2-core machine spinning doubled both the wall and the CPU time of a pass
    # (docs/results.md, "Threads").
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        precision: RunPrecision = "fp32",
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
        self.precision = precision
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
    """ONNX Runtime embedder and translator for the files ``record`` lists (no checks); the
    embedder's precision is the record's."""
    m = bundle.manifest
    embedder = OnnxEmbedder(
        [_session(onnx_dir / member.file) for member in record.members],
        [member.dim for member in record.members],
        m.input_size,
        m.mean,
        m.std,
        sketch_grey=m.sketch_grey,
        tta_flip=m.tta_flip,
        precision=record.precision,
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


def _reference(bundle: Bundle) -> Embedder:
    """The bundle's PyTorch networks on the CPU in fp32: what every ONNX file answers to."""
    return manifest_embedder(bundle.manifest, bundle.members, "cpu", "fp32")


def check_translator_parity(bundle: Bundle, translator: OnnxTranslator) -> dict[str, float]:
    """Max abs difference between the ONNX translator and the bundle's PyTorch generator on
    the probe batch; raises :class:`BundleError` beyond :data:`TRANSLATOR_ATOL`."""
    m = bundle.manifest
    if bundle.generator is None or m.translator is None:
        return {}
    size = m.translator.spec.input_size
    x = _probe(size).float().div(127.5).sub(1.0)
    torch_out = Translator(bundle.generator, size, device="cpu").generate(x)
    tdiff = float((translator.generate(x) - torch_out).abs().max())
    if tdiff > TRANSLATOR_ATOL:
        raise BundleError(
            f"ONNX translator output differs from PyTorch by {tdiff:.2e} (> {TRANSLATOR_ATOL:.0e})"
        )
    return {"translator_max_abs": tdiff}


def check_parity(
    bundle: Bundle, embedder: OnnxEmbedder, translator: OnnxTranslator | None
) -> dict[str, float]:
    """Max abs differences between ONNX Runtime (fp32) and the bundle's PyTorch fp32
    networks on the probe batch; raises :class:`BundleError` beyond :data:`EMBEDDING_ATOL` /
    :data:`TRANSLATOR_ATOL`."""
    probe = _probe(bundle.manifest.input_size)
    want = _reference(bundle).embed_tensor(probe)
    diff = float((embedder.embed_tensor(probe) - want).abs().max())
    result = {"embedding_max_abs": diff}
    if diff > EMBEDDING_ATOL:
        raise BundleError(
            f"ONNX embeddings differ from PyTorch by {diff:.2e} (> {EMBEDDING_ATOL:.0e})"
        )
    if translator is not None:
        result.update(check_translator_parity(bundle, translator))
    return result


def check_int8(
    bundle: Bundle, folder: Path, record: OnnxManifest, embedder: OnnxEmbedder
) -> dict[str, float]:
    """The int8 checks of :mod:`app.ml.bundle.onnx_int8` on a verified int8 folder: every
    member graph quantised, the folder's probe within the int8 bounds of PyTorch fp32."""
    for member in record.members:
        check_quantized_graph(folder / member.file)
    try:
        probe = torch.from_numpy(np.load(folder / PROBE_FILE, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{folder / PROBE_FILE}: unreadable ({exc})") from exc
    size = bundle.manifest.input_size
    if probe.dtype != torch.uint8 or probe.dim() != 4 or tuple(probe.shape[1:]) != (3, *size):
        raise BundleError(f"{folder / PROBE_FILE}: not uint8 [N,3,{size[0]},{size[1]}] images")
    return check_int8_parity(bundle, embedder, probe)


def with_onnx(
    bundle: Bundle, onnx_dir: str | Path, precision: OnnxPrecision | None = None
) -> Bundle:
    """``bundle`` with its embedder and translator run by ONNX Runtime from ``onnx_dir``,
    after checking the files against the bundle and the outputs against its PyTorch
    networks: fp32 folders to :data:`EMBEDDING_ATOL`, int8 folders (``precision`` in their
    record, ``inference`` then says int8) by :func:`check_int8`. ``precision`` given: the
    folder must hold that precision."""

    folder = Path(onnx_dir)
    record = verify_onnx_dir(folder, bundle, precision)
    embedder, translator = load_sessions(folder, record, bundle)
    if record.precision == "int8":
        check_int8(bundle, folder, record, embedder)
        if translator is not None:
            check_translator_parity(bundle, translator)
    else:
        check_parity(bundle, embedder, translator)
    if bundle.translator is not None and translator is None:
        raise BundleError(f"{folder}: the bundle has a translator but the export does not")
    return Bundle(
        bundle.path, bundle.manifest, bundle.members, embedder, translator, bundle.generator
    )
