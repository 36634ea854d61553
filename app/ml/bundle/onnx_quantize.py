"""int8 ONNX graphs of a bundle by ONNX Runtime static quantisation, calibrated on real images.

``quantize_onnx(bundle, FP32_DIR, OUT, photos, sketches, source=...)`` reads a verified fp32
export (:func:`app.ml.bundle.onnx_export.export_onnx`) and writes ``OUT``: each member's graph
quantised by ``onnxruntime.quantization.quantize_static``, the translator copied as it is
(fp32), ``probe.npy`` and ``onnx.json`` with ``precision: "int8"``
(:mod:`app.ml.bundle.onnx_files`). :func:`quantize_bundle` exports the fp32 graphs itself.

Choices, following ONNX Runtime's guidance for x86 CPUs (``quantize_static``'s docstring):

* QDQ format (the CPU kernels fuse QuantizeLinear/DequantizeLinear pairs into int8 kernels);
* QUInt8 activations with QInt8 weights (U8S8), per output channel: the ResNets' activations
  follow ReLUs (mostly non-negative, an asymmetric uint8 range loses no half of it) and the
  per-channel scales keep the narrow channels of a ResNet's convolutions apart;
* ``reduce_range`` (7-bit weights) only on a CPU without VNNI (:func:`cpu_has_vnni`), where
  AVX2's ``VPMADDUBSW`` can saturate its 16-bit sums of u8 x s8 products;
* calibration on real inputs (MinMax by default; ``calibration="percentile"`` clips each
  activation's range at its 99.999th percentile, ``"entropy"`` at the KL-optimal threshold:
  finer steps for the bulk of the values, chosen on the protocol), fed exactly as the graphs
  receive them: the images go
  through the project's preprocessing (:func:`app.ml.transforms.to_uint8_array`, grey for
  sketches when the bundle says so) and :meth:`BaseEmbedder.network_input` (normalisation and
  the mirror images of flip TTA). Photos, sketches and, with a translator, the translations of
  the sketches (what the ``translated`` view embeds) are all calibrated on;
* ``quant_pre_process`` (shape inference and ONNX Runtime's graph optimisation) first, so
  that batch normalisation folded into convolutions is quantised once, not twice.

The translator stays fp32: its output is an image an investigator looks at, it runs once per
search (the members run for every ingested crop), and an int8 generator would need its own
measure of what an acceptable picture is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from app.errors import BundleError, SketchReidError
from app.ml.bundle.onnx_files import (
    CALIBRATIONS,
    ONNX_MANIFEST,
    PROBE_FILE,
    Calibration,
    OnnxCalibration,
    OnnxManifest,
    OnnxMember,
    OnnxQuantization,
    _record_json,
    calibrate_method_name,
    verify_onnx_dir,
)
from app.ml.bundle.onnx_int8 import FLOAT_ENDS_NODES, check_int8_parity, check_quantized_graph
from app.ml.bundle.onnx_parity import check_translator_parity, reference_embedder
from app.ml.bundle.onnx_runtime import load_sessions
from app.ml.bundle.store import Bundle, _fsync_write, _replace_dir, _sha256
from app.ml.infer.embedder import BaseEmbedder
from app.ml.infer.precision import cpu_has_vnni
from app.ml.transforms import to_uint8_array

CALIBRATION_BATCH = 32
PROBE_PER_KIND = 8
"""Images of each kind (photos, sketches, translations) kept in ``probe.npy``."""
KEEP_FLOAT_OPS = ("BatchNormalization",)


class CalibrationImages:
    """uint8 ``[N, 3, H, W]`` batches of one bundle's calibration images, preprocessed as the
    service preprocesses them, and their network inputs for ONNX Runtime's calibrator."""

    def __init__(
        self, bundle: Bundle, photos: Sequence[Image.Image], sketches: Sequence[Image.Image]
    ) -> None:
        if not photos or not sketches:
            raise SketchReidError(
                f"int8 calibration needs photos and sketches, got {len(photos)} photo(s) and "
                f"{len(sketches)} sketch(es)"
            )
        m = bundle.manifest
        self.photos = to_uint8_array(photos, m.input_size)
        self.sketches = to_uint8_array(sketches, m.input_size, grey=m.sketch_grey)
        self.translated = to_uint8_array([], m.input_size)
        if bundle.translator is not None:
            fakes = bundle.translator.translate_batch(list(sketches))
            self.translated = to_uint8_array(fakes, m.input_size)

    @property
    def kinds(self) -> list[np.ndarray]:
        return [t for t in (self.photos, self.sketches, self.translated) if len(t)]

    def probe(self) -> np.ndarray:
        """The first :data:`PROBE_PER_KIND` images of each kind."""
        return np.concatenate([t[:PROBE_PER_KIND] for t in self.kinds])

    def network_inputs(self, embedder: BaseEmbedder) -> Iterator[np.ndarray]:
        """float32 batches exactly as ``embedder`` hands them to the member graphs."""
        for images in self.kinds:
            for start in range(0, len(images), CALIBRATION_BATCH):
                x = embedder.network_input(images[start : start + CALIBRATION_BATCH])
                yield np.ascontiguousarray(x, dtype=np.float32)


def uniform_batches(batches: list[np.ndarray], size: int) -> list[np.ndarray]:
    """The rows of ``batches`` in batches of exactly ``size`` rows, the last one completed with
    rows from the start: ONNX Runtime's histogram calibrators stack a tensor's outputs across
    batches and need one shape."""
    rows = np.concatenate(batches)
    if len(rows) % size:
        rows = np.concatenate([rows, np.resize(rows, (size - len(rows) % size, *rows.shape[1:]))])
    return [np.ascontiguousarray(rows[i : i + size]) for i in range(0, len(rows), size)]


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over precomputed input batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches = batches
        self._next = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._next, None)
        return None if batch is None else {"x": batch}

    def rewind(self) -> None:
        self._next = iter(self.batches)


def _quantize_graph(
    src: Path,
    out: Path,
    batches: list[np.ndarray],
    reduce_range: bool,
    calibration: Calibration = "minmax",
    float_ends: bool = False,
) -> list[str]:
    """Quantise ``src`` into ``out``; the names of the nodes left in float."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="sketchreid-quant-") as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        # A BN neck's BatchNormalization (after the FC layer, 1-D scale) stays float: its
        # rank-1 scale has no channel axis to quantise per channel, and it costs nothing.
        float_nodes = [
            n.name
            for n in onnx.load(str(prepared)).graph.node
            if n.op_type in KEEP_FLOAT_OPS or (float_ends and n.name in FLOAT_ENDS_NODES)
        ]
        extra: dict[str, object] = {}
        if calibration != "minmax":
            batches = uniform_batches(batches, CALIBRATION_BATCH)
            # Histograms are made every few batches, not from every output held at once.
            extra["CalibMaxIntermediateOutputs"] = 4
        quantize_static(
            str(prepared),
            str(out),
            _Reader(batches),  # type: ignore[arg-type]
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, calibrate_method_name(calibration)),
            nodes_to_exclude=float_nodes,
            extra_options=extra,
        )
    return float_nodes


def quantize_onnx(
    bundle: Bundle,
    fp32_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    photos: Sequence[Image.Image],
    sketches: Sequence[Image.Image],
    *,
    source: str,
    overwrite: bool = False,
    reduce_range: bool | None = None,
    calibration: Calibration = "minmax",
    float_ends: bool = False,
) -> OnnxManifest:
    """Quantise the verified fp32 export ``fp32_dir`` of ``bundle`` into ``out_dir``,
    calibrated on ``photos`` and ``sketches`` (``source`` says where they came from, for the
    record). The folder appears whole or not at all; graphs that fail the int8 checks
    (:mod:`app.ml.bundle.onnx_int8`) raise :class:`BundleError` and leave nothing behind.
    ``reduce_range`` None: 7-bit weights only on a CPU without VNNI. ``calibration``: how
    activation ranges are chosen from the calibration images (module docstring).
    ``float_ends``: keep the first convolution and the embedding layer in float
    (:data:`FLOAT_ENDS_NODES`)."""
    import onnxruntime

    src = Path(fp32_dir)
    fp32 = verify_onnx_dir(src, bundle.manifest, "fp32")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BundleError(f"{out} already exists and is not empty; choose another folder")
    if calibration not in CALIBRATIONS:
        raise SketchReidError(f"unknown int8 calibration {calibration!r}; one of {CALIBRATIONS}")
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    images = CalibrationImages(bundle, photos, sketches)
    batches = list(images.network_inputs(bundle.embedder))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        members: list[OnnxMember] = []
        float_nodes: dict[str, list[str]] = {}
        for member in fp32.members:
            path = tmp / member.file
            float_nodes[member.file] = _quantize_graph(
                src / member.file, path, batches, reduce_range, calibration, float_ends
            )
            check_quantized_graph(path, float_ends=float_ends)
            members.append(member.model_copy(update={"sha256": _sha256(path)}))
        if fp32.translator is not None:
            shutil.copyfile(src / fp32.translator.file, tmp / fp32.translator.file)
        probe = images.probe()
        np.save(tmp / PROBE_FILE, probe, allow_pickle=False)
        record = fp32.model_copy(
            update={
                "members": members,
                "precision": "int8",
                "parity": {},
                "quantization": OnnxQuantization(
                    onnxruntime=onnxruntime.__version__,
                    quant_format="QDQ",
                    activation_type="QUInt8",
                    weight_type="QInt8",
                    per_channel=True,
                    reduce_range=reduce_range,
                    calibrate_method=calibrate_method_name(calibration),
                    calibration=OnnxCalibration(
                        source=source,
                        photos=len(images.photos),
                        sketches=len(images.sketches),
                        translated=len(images.translated),
                    ),
                    fp32_sha256={m.file: m.sha256 for m in fp32.members},
                    probe_sha256=_sha256(tmp / PROBE_FILE),
                    translator_precision="fp32",
                    float_ends=float_ends,
                    float_nodes=float_nodes,
                ),
            }
        )
        embedder, translator = load_sessions(tmp, record, bundle.manifest)
        record.parity = check_int8_parity(reference_embedder(bundle), embedder, probe)
        if translator is not None:
            record.parity.update(check_translator_parity(bundle, translator))
        _fsync_write(tmp / ONNX_MANIFEST, _record_json(record))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def quantize_bundle(
    bundle: Bundle,
    out_dir: str | os.PathLike[str],
    photos: Sequence[Image.Image],
    sketches: Sequence[Image.Image],
    *,
    source: str,
    fp32_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    calibration: Calibration = "minmax",
    float_ends: bool = False,
) -> OnnxManifest:
    """:func:`quantize_onnx` from ``fp32_dir``, or from a fresh fp32 export in a temporary
    folder when none is given."""

    def quantize_from(folder: str | os.PathLike[str]) -> OnnxManifest:
        return quantize_onnx(
            bundle,
            folder,
            out_dir,
            photos,
            sketches,
            source=source,
            overwrite=overwrite,
            calibration=calibration,
            float_ends=float_ends,
        )

    if fp32_dir is not None:
        return quantize_from(fp32_dir)
    from app.ml.bundle.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="sketchreid-fp32-onnx-") as work:
        folder = Path(work) / "fp32"
        export_onnx(bundle, folder)
        return quantize_from(folder)
