"""A bundle's prepared ONNX files: what the service runs, checked by sha256, without PyTorch.

``sketchreid model prepare BUNDLE`` exports the bundle's networks into ``BUNDLE/onnx/fp32``
(parity with the PyTorch networks checked at export, :mod:`app.ml.bundle.onnx_export`) and,
with ``--int8``, quantises them into ``BUNDLE/onnx/int8`` (:mod:`app.ml.bundle.onnx_quantize`),
then records the sha256 of each folder's ``onnx.json`` in the manifest (``onnx``). The chain
of checks at load ends at the manifest, like the weights' own:

1. the manifest's weight files have their recorded sha256 (:func:`check_weight_files`);
2. the folder's ``onnx.json`` has the sha256 the manifest records for that precision;
3. ``onnx.json`` names exactly the manifest's weight sha256s as its sources, and every file
   it lists (and an int8 folder's probe) has the sha256 it records
   (:func:`app.ml.bundle.onnx_files.verify_onnx_dir`);
4. int8 only: every member graph is quantised (:func:`app.ml.bundle.onnx_int8.
   check_quantized_graph`: fp32 graphs behind an int8 label are refused).

No parity run at load, against PyTorch or between precisions: that was measured when the files
were written (export parity; int8 cosine to PyTorch fp32 on the probe) and the sha256s tie the
files to that measurement. (Re-measuring int8 on its probe against the fp32 graphs took ~3 s of
a loaded 2-core start, to learn what the checksums already say.) So a bundle with prepared
files starts in seconds and needs no PyTorch; a bundle without them is served as before
(:mod:`app.services.model`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from app.errors import BundleError
from app.ml.bundle.manifest import (
    Bundle,
    Manifest,
    _sha256,
    check_weight_files,
    read_manifest,
    update_manifest,
)
from app.ml.bundle.onnx_files import ONNX_MANIFEST, OnnxManifest, OnnxPrecision, verify_onnx_dir
from app.ml.bundle.onnx_int8 import check_quantized_graph, float_ends_of
from app.ml.bundle.onnx_runtime import load_sessions

PREPARED_DIR = "onnx"
"""The folder inside a bundle that holds its prepared ONNX folders, one per precision."""


def prepared_dir(bundle_dir: str | os.PathLike[str], precision: OnnxPrecision) -> Path:
    """Where a bundle keeps its prepared files of ``precision``: ``BUNDLE/onnx/<precision>``."""
    return Path(bundle_dir) / PREPARED_DIR / precision


def verify_prepared(
    bundle_dir: str | os.PathLike[str], manifest: Manifest, precision: OnnxPrecision
) -> OnnxManifest:
    """Checks 2 and 3 of the module docstring for the prepared folder of ``precision``;
    returns its record or raises :class:`BundleError`."""
    want = manifest.onnx.get(precision)
    folder = prepared_dir(bundle_dir, precision)
    if want is None:
        raise BundleError(
            f"{Path(bundle_dir)}: the bundle carries no prepared {precision} ONNX files "
            "(`sketchreid model prepare`)"
        )
    path = folder / ONNX_MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: missing, but the bundle's manifest lists it")
    if _sha256(path) != want:
        raise BundleError(
            f"{path}: sha256 differs from the one the bundle's manifest records; the file is "
            "corrupt or was replaced (prepare the bundle again)"
        )
    return verify_onnx_dir(folder, manifest, precision)


def load_prepared(
    bundle_dir: str | os.PathLike[str], precision: OnnxPrecision, threads: int | None = None
) -> Bundle | None:
    """The bundle at ``bundle_dir`` served by ONNX Runtime from its prepared ``precision``
    files after the checks of the module docstring, or None when the bundle carries none of
    that precision. Imports no PyTorch; ``members`` is empty and ``generator`` None."""
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    if precision not in manifest.onnx:
        return None
    check_weight_files(root, manifest)
    record = verify_prepared(root, manifest, precision)
    folder = prepared_dir(root, precision)
    embedder, translator = load_sessions(folder, record, manifest, threads)
    if precision == "int8":
        for member in record.members:
            check_quantized_graph(folder / member.file, float_ends=float_ends_of(record))
    if manifest.translator is not None and translator is None:
        raise BundleError(f"{folder}: the bundle has a translator but the ONNX files do not")
    return Bundle(root, manifest, [], embedder, translator, None)


def record_prepared(
    bundle_dir: str | os.PathLike[str], precisions: list[OnnxPrecision]
) -> Manifest:
    """Record the sha256 of the prepared folders of ``precisions`` in the manifest (they
    must verify against it) and remove prepared folders of other precisions."""
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    digests: dict[str, str] = {}
    for precision in precisions:
        folder = prepared_dir(root, precision)
        verify_onnx_dir(folder, manifest, precision)
        digests[precision] = _sha256(folder / ONNX_MANIFEST)
    updated = update_manifest(root, onnx=digests)
    for stale in ("fp32", "int8"):
        if stale not in digests:
            shutil.rmtree(prepared_dir(root, stale), ignore_errors=True)
    return updated
