"""The ONNX files that live beside a bundle: the record ``onnx.json`` that ties each file to the
bundle weights it was exported from, and its verification. Shared by the exporter
(:mod:`app.ml.bundle.onnx_export`), the quantiser (:mod:`app.ml.bundle.onnx_quantize`) and the
runtime (:mod:`app.ml.bundle.onnx_runtime`), so none imports another for it.

An int8 folder has the same record with ``precision: "int8"`` and a ``quantization`` block:
how the graphs were quantised, the images they were calibrated on, the sha256 of each fp32
graph they came from, and the probe file (``probe.npy``, uint8 preprocessed calibration
images) on which every load re-measures them against the PyTorch weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from app.errors import BundleError
from app.ml.bundle.manifest import Manifest, _sha256

ONNX_MANIFEST = "onnx.json"
ONNX_FORMAT_VERSION = 1
OPSET = 17
TRANSLATOR_ONNX = "translator.onnx"
PROBE_FILE = "probe.npy"
OnnxPrecision = Literal["fp32", "int8"]


class OnnxFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    sha256: str
    source_sha256: str


class OnnxMember(OnnxFile):
    name: str
    dim: int


class OnnxCalibration(BaseModel):
    """The images an int8 folder was calibrated on (counts are images before flip TTA)."""

    model_config = ConfigDict(extra="forbid")

    source: str
    photos: int
    sketches: int
    translated: int


Calibration = Literal["minmax", "percentile", "entropy"]
CALIBRATIONS: tuple[Calibration, ...] = ("minmax", "percentile", "entropy")
_METHOD_NAMES = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def calibrate_method_name(calibration: Calibration) -> str:
    """The record's ``calibrate_method``: ONNX Runtime's ``CalibrationMethod`` name."""
    return _METHOD_NAMES[calibration]


class OnnxQuantization(BaseModel):
    """How an int8 folder was made (``onnxruntime.quantization.quantize_static``)."""

    model_config = ConfigDict(extra="forbid")

    onnxruntime: str
    quant_format: str
    activation_type: str
    weight_type: str
    per_channel: bool
    reduce_range: bool
    calibrate_method: str
    calibration: OnnxCalibration
    fp32_sha256: dict[str, str]
    probe_sha256: str
    translator_precision: OnnxPrecision
    float_ends: bool = False  # the first convolution and the embedding layer kept in float
    float_nodes: dict[str, list[str]] = {}  # per member file, the nodes left in float


class OnnxManifest(BaseModel):
    """Contents of ``onnx.json``."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = ONNX_FORMAT_VERSION
    bundle: str
    version: str
    opset: int
    torch: str
    members: list[OnnxMember]
    translator: OnnxFile | None = None
    parity: dict[str, float]
    precision: OnnxPrecision = "fp32"
    quantization: OnnxQuantization | None = None


def onnx_digest(m: Manifest) -> str:
    """16 hex digits naming the weights (members and translator) that exports come from: the
    name of a cache folder of ONNX files."""
    sources = [e.sha256 for e in m.members] + ([m.translator.sha256] if m.translator else [])
    return hashlib.sha256(" ".join(sources).encode()).hexdigest()[:16]


def _record_json(record: OnnxManifest) -> str:
    return json.dumps(record.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def read_onnx_manifest(onnx_dir: str | os.PathLike[str]) -> OnnxManifest:
    path = Path(onnx_dir) / ONNX_MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: missing (export with `sketchreid model export-onnx`)")
    try:
        return OnnxManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        raise BundleError(f"{path}: unreadable or invalid ({str(exc)[:300]})") from exc


def verify_onnx_dir(
    onnx_dir: Path, manifest: Manifest, precision: OnnxPrecision | None = None
) -> OnnxManifest:
    """Check that ``onnx_dir`` was exported from exactly the weights ``manifest`` lists
    (a bundle's), that every
    file (an int8 folder's probe included) matches its recorded sha256 and, when
    ``precision`` is given, that the folder holds that precision; returns the record or
    raises :class:`BundleError`."""
    record = read_onnx_manifest(onnx_dir)
    if record.format_version != ONNX_FORMAT_VERSION:
        raise BundleError(f"{onnx_dir / ONNX_MANIFEST}: format {record.format_version} unknown")
    if (record.precision == "int8") != (record.quantization is not None):
        raise BundleError(
            f"{onnx_dir / ONNX_MANIFEST}: precision {record.precision} with"
            f"{'out' if record.quantization is None else ''} a quantization record"
        )
    if precision is not None and record.precision != precision:
        raise BundleError(
            f"{onnx_dir}: holds {record.precision} graphs, not {precision}"
            + ("; make them with `sketchreid model quantize`" if precision == "int8" else "")
        )
    want = [(m.name, m.sha256) for m in manifest.members]
    have = [(m.name, m.source_sha256) for m in record.members]
    want_t = manifest.translator.sha256 if manifest.translator is not None else None
    have_t = record.translator.source_sha256 if record.translator is not None else None
    if want != have or want_t != have_t:
        raise BundleError(
            f"{onnx_dir}: exported from other weights than the bundle {manifest.name} "
            f"{manifest.version}; export it again"
        )
    files: list[OnnxFile] = [*record.members]
    if record.translator is not None:
        files.append(record.translator)
    for item in files:
        path = onnx_dir / item.file
        if Path(item.file).name != item.file or not path.is_file():
            raise BundleError(f"{path}: ONNX file missing")
        if _sha256(path) != item.sha256:
            raise BundleError(f"{path}: sha256 mismatch; the file is corrupt or was replaced")
    if record.quantization is not None:
        path = onnx_dir / PROBE_FILE
        if not path.is_file():
            raise BundleError(f"{path}: int8 probe file missing")
        if _sha256(path) != record.quantization.probe_sha256:
            raise BundleError(f"{path}: sha256 mismatch; the file is corrupt or was replaced")
    return record
