"""What an int8 ONNX folder must show before it serves: quantised graphs and embeddings close
to the bundle's PyTorch fp32 ones, but not identical to them.

int8 cannot meet the fp32 export's parity bound (``EMBEDDING_ATOL``, 1e-4), so an int8 folder
is held to three checks instead, at quantisation and at every load:

* :func:`check_quantized_graph`: every convolution and fully connected layer of each member
  reads int8 weights through ``DequantizeLinear`` and a quantised activation, so a folder of
  fp32 graphs (a copy, or a quantiser that silently did nothing) is refused;
* :func:`check_int8_parity` on the folder's probe (``probe.npy``: preprocessed calibration
  photos, grey sketches and translations as uint8): the lowest cosine between an image's int8
  and fp32 embeddings must reach :data:`INT8_MIN_COSINE` (wrong preprocessing at
  calibration, or graphs of other weights, make it collapse), and the largest difference must
  exceed :data:`INT8_MIN_DIFFERENCE` (fp32 arithmetic behind an int8 label would not).

The fp32 reference is whatever embedder the caller passes: the bundle's PyTorch networks
(:func:`app.ml.bundle.onnx_parity.with_onnx`, quantisation). A bundle's prepared int8 files
(:mod:`app.ml.bundle.prepared`) are held to these checks when written and, at load, to their
sha256s and :func:`check_quantized_graph`. Nothing here imports PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.errors import BundleError
from app.ml.bundle.onnx_files import PROBE_FILE, OnnxManifest
from app.ml.infer.embedder import BaseEmbedder

INT8_MIN_COSINE = 0.98
"""Lowest cosine allowed between an image's int8 and fp32 embeddings on the probe. Measured
(per-channel QInt8 weights, QUInt8 activations, MinMax calibration on 12 synthetic people):
on the random-weight 32x16 bundle of tests/test_onnx_int8.py 0.9960 on the probe and 0.9942
at worst on 50 unseen people's photos and sketches; on the 64x32 two-member bundle of
tests/test_onnx.py 0.9997 and 0.9996. The same graphs calibrated on inputs without the
mean/std normalisation reach only -0.22 and 0.94: 0.98 lies between."""
INT8_MIN_DIFFERENCE = 1e-4
"""int8 embeddings must differ from fp32 by more than the fp32 export's parity bound."""
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
_INT8 = 3  # onnx.TensorProto.INT8


FLOAT_ENDS_NODES = ("/conv1/Conv", "/fc/Gemm")
"""The layers an int8 graph made with ``float_ends`` keeps in float: the first convolution (it
sees the raw pixels) and the embedding layer (its output is the embedding). Both are a small
share of a member's compute."""


def check_quantized_graph(path: Path, *, float_ends: bool = False) -> int:
    """Raise :class:`BundleError` unless every Conv/Gemm/MatMul of the graph in ``path``
    takes a dequantised activation and dequantised int8 weights (with ``float_ends``, except
    :data:`FLOAT_ENDS_NODES`); returns how many it has."""
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - the onnx extra installs both
        raise BundleError("int8 ONNX checks need onnx: pip install 'sketch-reid[onnx]'") from exc
    graph = onnx.load(str(path)).graph
    int8_weights = {t.name for t in graph.initializer if t.data_type == _INT8}
    dequantised = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    weighted = [n for n in graph.node if n.op_type in WEIGHTED_OPS]
    allowed = set(FLOAT_ENDS_NODES) if float_ends else set()
    plain = [
        n.name or n.op_type
        for n in weighted
        if n.name not in allowed
        and (
            len(n.input) < 2
            or n.input[0] not in dequantised
            or dequantised.get(n.input[1]) not in int8_weights
        )
    ]
    if not weighted or plain:
        raise BundleError(
            f"{path}: not an int8 graph ({len(plain)} of {len(weighted)} convolution/linear "
            f"layers run in float, e.g. {plain[:3]}); quantise it with `sketchreid model quantize`"
        )
    return len(weighted)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two batches of embeddings."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-8)


def check_int8_parity(
    reference: BaseEmbedder, embedder: BaseEmbedder, probe: np.ndarray
) -> dict[str, float]:
    """Lowest cosine and largest difference between ``embedder`` (int8) and the fp32
    ``reference``'s embeddings of the uint8 ``probe``; raises :class:`BundleError` below
    :data:`INT8_MIN_COSINE` or at most :data:`INT8_MIN_DIFFERENCE`."""
    want = reference.embed_array(probe)
    have = embedder.embed_array(probe)
    low = float(cosines(have, want).min())
    diff = float(np.abs(have - want).max())
    if low < INT8_MIN_COSINE:
        raise BundleError(
            f"int8 embeddings are too far from fp32 ({reference.backend}): lowest cosine "
            f"{low:.4f} on {len(probe)} probe images (< {INT8_MIN_COSINE}); calibrate again"
        )
    if diff <= INT8_MIN_DIFFERENCE:
        raise BundleError(
            f"int8 embeddings equal fp32 ({reference.backend}; largest difference {diff:.1e}): "
            "the graphs do not run in int8"
        )
    return {"embedding_min_cosine": low, "embedding_max_abs": diff}


def float_ends_of(record: OnnxManifest) -> bool:
    """Whether ``record``'s int8 graphs were made with ``float_ends``."""
    return record.quantization is not None and record.quantization.float_ends


def read_probe(folder: Path, size: tuple[int, int]) -> np.ndarray:
    """The int8 folder's probe images: uint8 ``[N, 3, H, W]`` at the bundle's input size."""
    try:
        probe = np.load(folder / PROBE_FILE, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{folder / PROBE_FILE}: unreadable ({exc})") from exc
    if probe.dtype != np.uint8 or probe.ndim != 4 or tuple(probe.shape[1:]) != (3, *size):
        raise BundleError(f"{folder / PROBE_FILE}: not uint8 [N,3,{size[0]},{size[1]}] images")
    return probe


def check_int8(
    folder: Path, record: OnnxManifest, embedder: BaseEmbedder, reference: BaseEmbedder
) -> dict[str, float]:
    """The int8 checks on a verified int8 folder: every member graph quantised, the folder's
    probe within the int8 bounds of the fp32 ``reference``."""
    for member in record.members:
        check_quantized_graph(folder / member.file, float_ends=float_ends_of(record))
    return check_int8_parity(reference, embedder, read_probe(folder, embedder.input_size))
