"""Evaluation through ONNX Runtime graphs: int8 (``sketchreid evaluate --precision int8``)
and fp32 (``--backend onnx``, what ``sketchreid serve`` runs by default).

The calibration rule: an int8 model must not have been calibrated on the people it is tested
on. Each bundle is calibrated on the photos and sketches of its own training identities in the
evaluation's data folder (``training.train_pids`` of its manifest) less every identity it is
tested on in this evaluation; when the manifest records none, or none of them has both photos
and sketches there, on synthetic people (:func:`app.ml.data.calibration.synthetic_calibration`).

Quantised folders are cached in ``cache_dir/<weights digest>-int8`` (``-int8-<method>`` for a
calibration method other than MinMax) and reused when they pass
:func:`app.ml.bundle.onnx_parity.with_onnx`'s int8 checks and were calibrated on the same
images (the record's calibration source) by the same method; otherwise they are made again.
fp32 exports are cached in ``cache_dir/<weights digest>-fp32`` and reused when they pass the
fp32 parity check.
"""

from __future__ import annotations

from pathlib import Path

from app.errors import BundleError
from app.ml.bundle.onnx_export import with_fp32_export
from app.ml.bundle.onnx_files import (
    Calibration,
    calibrate_method_name,
    onnx_digest,
    read_onnx_manifest,
)
from app.ml.bundle.onnx_parity import with_onnx
from app.ml.bundle.onnx_quantize import quantize_bundle
from app.ml.bundle.store import Bundle
from app.ml.data.calibration import CalibrationSet, folder_calibration, synthetic_calibration
from app.ml.data.pku import PKUSketchDataset
from app.ml.data.splits import Split


def calibration_for(
    bundle: Bundle, dataset: PKUSketchDataset, tested: set[int], images: int
) -> CalibrationSet:
    """The calibration images of ``bundle`` under the rule of the module docstring."""
    trained = bundle.manifest.training.get("train_pids")
    if isinstance(trained, list):
        allowed = {int(p) for p in trained} - tested
        with_photo = {s.pid for s in dataset.photos if s.pid in allowed}
        pids = sorted(with_photo & {s.pid for s in dataset.sketches})
        if pids:
            return folder_calibration(dataset.root, images, pids=pids)
    return synthetic_calibration(images)


def int8_bundle(
    bundle: Bundle,
    calibration: CalibrationSet,
    cache_dir: Path,
    method: Calibration = "minmax",
    float_ends: bool = False,
) -> tuple[Bundle, Path]:
    """``bundle`` running int8 graphs from ``cache_dir`` (made there when needed), calibrated
    on ``calibration``'s images by ``method`` (``float_ends``: the first convolution and the
    embedding layer kept in float)."""
    suffix = ("" if method == "minmax" else f"-{method}") + ("-float-ends" if float_ends else "")
    folder = cache_dir / f"{onnx_digest(bundle.manifest)}-int8{suffix}"
    if folder.exists():
        try:
            record = read_onnx_manifest(folder)
            q = record.quantization
            if (
                q is not None
                and q.calibration.source == calibration.source
                and q.calibrate_method == calibrate_method_name(method)
                and q.float_ends == float_ends
            ):
                return with_onnx(bundle, folder, "int8"), folder
        except BundleError:
            pass
    quantize_bundle(
        bundle,
        folder,
        calibration.photos,
        calibration.sketches,
        source=calibration.source,
        overwrite=True,
        calibration=method,
        float_ends=float_ends,
    )
    return with_onnx(bundle, folder, "int8"), folder


def int8_runs(
    runs: list[tuple[Bundle, Split]],
    dataset: PKUSketchDataset,
    cache_dir: Path,
    images: int,
    method: Calibration = "minmax",
    float_ends: bool = False,
) -> tuple[list[tuple[Bundle, Split]], dict[str, str]]:
    """``runs`` with every bundle running int8 graphs; and, per bundle folder, where its
    calibration images came from."""
    tested: dict[Path, set[int]] = {}
    for bundle, split in runs:
        tested.setdefault(bundle.path, set()).update(split.test)
    served: dict[Path, Bundle] = {}
    sources: dict[str, str] = {}
    for bundle, _ in runs:
        if bundle.path not in served:
            calibration = calibration_for(bundle, dataset, tested[bundle.path], images)
            served[bundle.path], _folder = int8_bundle(
                bundle, calibration, cache_dir, method, float_ends
            )
            sources[str(bundle.path)] = calibration.source
    return [(served[b.path], split) for b, split in runs], sources


def fp32_onnx_runs(runs: list[tuple[Bundle, Split]], cache_dir: Path) -> list[tuple[Bundle, Split]]:
    """``runs`` with every bundle running its ONNX Runtime fp32 graphs (exported into
    ``cache_dir`` when needed): the function the service serves."""
    served: dict[Path, Bundle] = {}
    for bundle, _ in runs:
        if bundle.path not in served:
            folder = cache_dir / f"{onnx_digest(bundle.manifest)}-fp32"
            served[bundle.path] = with_fp32_export(bundle, folder)
    return [(served[b.path], split) for b, split in runs]
