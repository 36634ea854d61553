"""The ONNX files that live beside a bundle: the record ``onnx.json`` that ties each file to the
bundle weights it was exported from, and its verification. Shared by the exporter
(:mod:`app.ml.bundle.onnx_export`) and the runtime (:mod:`app.ml.bundle.onnx_runtime`), so
neither imports the other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from app.errors import BundleError
from app.ml.bundle.store import Bundle, _sha256

ONNX_MANIFEST = "onnx.json"
ONNX_FORMAT_VERSION = 1
OPSET = 17
TRANSLATOR_ONNX = "translator.onnx"


class OnnxFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    sha256: str
    source_sha256: str


class OnnxMember(OnnxFile):
    name: str
    dim: int


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


def verify_onnx_dir(onnx_dir: Path, bundle: Bundle) -> OnnxManifest:
    """Check that ``onnx_dir`` was exported from exactly ``bundle``'s weights and that every
    file matches its recorded sha256; returns the record or raises :class:`BundleError`."""
    record = read_onnx_manifest(onnx_dir)
    manifest = bundle.manifest
    if record.format_version != ONNX_FORMAT_VERSION:
        raise BundleError(f"{onnx_dir / ONNX_MANIFEST}: format {record.format_version} unknown")
    want = [(m.name, m.sha256) for m in manifest.members]
    have = [(m.name, m.source_sha256) for m in record.members]
    want_t = manifest.translator.sha256 if manifest.translator is not None else None
    have_t = record.translator.source_sha256 if record.translator is not None else None
    if want != have or want_t != have_t:
        raise BundleError(
            f"{onnx_dir}: exported from other weights than the bundle {manifest.name} "
            f"{manifest.version} at {bundle.path}; export it again"
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
    return record
