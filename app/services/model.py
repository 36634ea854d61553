"""The served model: the bundle loaded with the configured precision and backend.

A bundle that carries prepared ONNX files for the precision asked (``BUNDLE/onnx/fp32``,
``BUNDLE/onnx/int8``: ``sketchreid model prepare``) is served from them by ONNX Runtime when
``BACKEND`` is onnx or auto, the device the CPU and the precision fp32 or int8: checked by
sha256 from the manifest down (:mod:`app.ml.bundle.prepared`), no export, no PyTorch imported,
ready in about a second. A prepared file that fails its check stops the start, as a bad weight
file does. Everything below is for bundles without prepared files (and needs PyTorch).

Without prepared files, with the ONNX backend the networks are exported once into
``DATA_DIR/onnx/<digest>`` (the digest names the bundle weights they come from) and, at every
start, checked against the bundle: the export's record must name the bundle's weight sha256s,
every ``.onnx`` file must match its own sha256 and the outputs must match the PyTorch networks
on a probe batch (:func:`app.ml.bundle.onnx_parity.with_onnx`). The bundle's weights themselves
are verified by :func:`app.ml.bundle.store.load_bundle` first, so every check ends at the
manifest. A missing, stale or altered export is made again from the verified weights.

``PRECISION=int8`` serves the int8 graphs of ``DATA_DIR/onnx/<digest>-int8``
(:mod:`app.ml.bundle.onnx_quantize`), quantised from that fp32 export and calibrated on
``INT8_CALIBRATION_DIR`` (or synthetic people) when the folder is absent, stale or altered,
and checked at every start by :func:`~app.ml.bundle.onnx_parity.with_onnx` (QDQ graphs, cosine
to PyTorch fp32 on its probe). A failure there stops the start: int8 asked for is never
silently served as fp32.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.config import Settings
from app.errors import BundleError, SketchReidError
from app.ml.bundle.manifest import Bundle

if TYPE_CHECKING:
    from app.ml.bundle.onnx_files import OnnxPrecision

TORCH_MODULES = ("torch", "torchvision")

log = logging.getLogger(__name__)


def onnx_cache_dir(settings: Settings, bundle: Bundle) -> Path:
    from app.ml.bundle.onnx_files import onnx_digest

    return settings.onnx_dir / onnx_digest(bundle.manifest)


def int8_cache_dir(settings: Settings, bundle: Bundle) -> Path:
    folder = onnx_cache_dir(settings, bundle)
    return folder.with_name(f"{folder.name}-int8")


def _export(settings: Settings, bundle: Bundle) -> Path:
    """Export ``bundle`` to ONNX into its cache folder (replacing what was there)."""
    from app.ml.bundle.onnx_export import export_logged

    folder = onnx_cache_dir(settings, bundle)
    export_logged(bundle, folder)
    return folder


def _onnx_bundle(settings: Settings, bundle: Bundle) -> Bundle:
    from app.ml.bundle.onnx_export import with_fp32_export

    return with_fp32_export(bundle, onnx_cache_dir(settings, bundle))


def _fp32_export(settings: Settings, bundle: Bundle) -> Path:
    """The bundle's verified fp32 export to quantise (files and sources checked; no sessions
    opened, no parity run: the quantiser checks the int8 graphs against PyTorch itself)."""
    from app.ml.bundle.onnx_files import verify_onnx_dir

    folder = onnx_cache_dir(settings, bundle)
    if folder.exists():
        try:
            verify_onnx_dir(folder, bundle.manifest, "fp32")
            return folder
        except BundleError as exc:
            log.warning("exporting the model to ONNX again: %s", exc)
    return _export(settings, bundle)


def _int8_bundle(settings: Settings, bundle: Bundle) -> Bundle:
    from app.ml.bundle.onnx_parity import with_onnx
    from app.ml.bundle.onnx_quantize import quantize_onnx
    from app.ml.data.calibration import calibration_images

    folder = int8_cache_dir(settings, bundle)
    if folder.exists():
        try:
            return with_onnx(bundle, folder, "int8")
        except BundleError as exc:
            log.warning("quantising the model to int8 again: %s", exc)
    fp32_dir = _fp32_export(settings, bundle)
    images = calibration_images(settings.INT8_CALIBRATION_DIR, settings.INT8_CALIBRATION_IMAGES)
    start = time.perf_counter()
    record = quantize_onnx(
        bundle,
        fp32_dir,
        folder,
        images.photos,
        images.sketches,
        source=images.source,
        overwrite=True,
    )
    log.info(
        "quantised the model to int8 in %.1f s into %s, calibrated on %s (parity %s)",
        time.perf_counter() - start,
        folder,
        images.source,
        record.parity,
    )
    return with_onnx(bundle, folder, "int8")


def _on_cpu(settings: Settings) -> bool:
    return settings.MODEL_DEVICE.startswith("cpu")


def _prepared_bundle(settings: Settings) -> Bundle | None:
    """The bundle served from its prepared ONNX files, or None when the settings ask for
    something else (PyTorch, bf16, a GPU) or the bundle carries none for the precision.
    ``auto`` on the CPU: the prepared int8 files on a CPU with 8-bit dot products (VNNI; the
    graphs are quantised for them), else the prepared fp32 files."""
    from app.ml.bundle.onnx_runtime import onnxruntime_available
    from app.ml.bundle.prepared import load_prepared
    from app.ml.infer.precision import cpu_has_vnni

    precision = settings.PRECISION
    if settings.BACKEND == "torch" or precision not in ("fp32", "int8", "auto"):
        return None
    if not _on_cpu(settings) or not onnxruntime_available():
        return None
    wanted: list[OnnxPrecision] = ["int8"] if precision == "int8" else ["fp32"]
    if precision == "auto" and cpu_has_vnni():
        wanted = ["int8", "fp32"]
    start = time.perf_counter()
    bundle = None
    for choice in wanted:
        bundle = load_prepared(settings.MODEL_DIR, choice, settings.INFERENCE_THREADS or None)
        if bundle is not None:
            break
    if bundle is not None:
        log.info(
            "serving the bundle's prepared %s ONNX files (checked in %.2f s)",
            bundle.embedder.precision,
            time.perf_counter() - start,
        )
    return bundle


def load_model(settings: Settings) -> Bundle:
    """Load and verify ``MODEL_DIR`` and run it as ``BACKEND`` / ``PRECISION`` say: from the
    bundle's prepared ONNX files when it carries them, else from its PyTorch weights."""
    prepared = _prepared_bundle(settings)
    if prepared is not None:
        return prepared
    try:
        return _torch_model(settings)
    except ModuleNotFoundError as exc:
        if exc.name not in TORCH_MODULES:
            raise
        raise SketchReidError(
            f"{settings.MODEL_DIR} carries no prepared ONNX files for BACKEND="
            f"{settings.BACKEND} PRECISION={settings.PRECISION}, and serving its PyTorch "
            "weights needs PyTorch, which is not installed: run `sketchreid model prepare "
            "BUNDLE` where PyTorch is, or pip install 'sketch-reid[train]'"
        ) from exc


def _torch_model(settings: Settings) -> Bundle:
    """The bundle loaded from its PyTorch weights (and exported/quantised into DATA_DIR/onnx
    for the ONNX backend)."""
    import torch

    from app.ml.bundle.onnx_runtime import onnxruntime_available
    from app.ml.bundle.store import load_bundle

    # Process-wide: PyTorch's passes, and ONNX Runtime's sessions take their count from it.
    if settings.INFERENCE_THREADS:
        torch.set_num_threads(settings.INFERENCE_THREADS)
    precision = settings.PRECISION
    if precision == "auto" and _on_cpu(settings):
        # On the CPU auto is int8 only from prepared files (above); PyTorch's bf16 is slower
        # than ONNX Runtime's fp32 here and changes top-10 lists (docs/results.md).
        precision = "fp32"
    bundle = load_bundle(
        settings.MODEL_DIR,
        device=settings.MODEL_DEVICE,
        precision="fp32" if precision == "int8" else precision,  # int8: PyTorch is the reference
    )
    if precision == "int8":
        if not onnxruntime_available():
            raise SketchReidError(
                "PRECISION=int8 needs onnx and onnxruntime: pip install 'sketch-reid[onnx]'"
            )
        return _int8_bundle(settings, bundle)
    if settings.BACKEND == "torch":
        return bundle
    if settings.BACKEND == "onnx":
        return _onnx_bundle(settings, bundle)
    if not onnxruntime_available():
        log.info("BACKEND=auto: onnxruntime is not installed, running PyTorch")
        return bundle
    if str(bundle.embedder.device) != "cpu" or bundle.embedder.precision != "fp32":
        return bundle
    try:
        return _onnx_bundle(settings, bundle)
    except BundleError as exc:
        log.warning("BACKEND=auto: ONNX Runtime not used, running PyTorch: %s", exc)
        return bundle
