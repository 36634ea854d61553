"""Images to calibrate int8 graphs on (:mod:`app.ml.bundle.onnx_quantize`): photos and sketches
from a PKU-Sketch-layout folder, optionally of some identities only, or from the synthetic
generator when there is no folder.

Both pick at most ``images`` photos and ``images`` sketches by a seeded draw and load them into
memory (RGB, as :func:`app.ml.images.load_image` reads every image); ``source`` says where
they came from, for the int8 folder's record.
"""

from __future__ import annotations

import hashlib
import random
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from app.errors import DataLayoutError, UserInputError
from app.ml.data.pku import Sample, load_pku_sketch
from app.ml.data.synth import generate_synthetic
from app.ml.images import load_image

DEFAULT_CALIBRATION_IMAGES = 64
SYNTHETIC_SEED = 0


@dataclass
class CalibrationSet:
    photos: list[Image.Image]
    sketches: list[Image.Image]
    source: str


def _draw(samples: list[Sample], images: int, seed: int) -> list[Sample]:
    if len(samples) <= images:
        return samples
    return sorted(random.Random(seed).sample(samples, images), key=lambda s: s.path.name)


def _check(images: int) -> None:
    if images < 1:
        raise UserInputError(f"calibration needs at least 1 image of each kind, not {images}")


def folder_calibration(
    root: str | Path, images: int, pids: Iterable[int] | None = None, seed: int = 0
) -> CalibrationSet:
    """At most ``images`` photos and ``images`` sketches of ``root`` (PKU-Sketch layout), of
    the identities ``pids`` only when given; :class:`DataLayoutError` when either kind is
    missing."""
    _check(images)
    dataset = load_pku_sketch(root)
    what = f"{Path(root)}"
    if pids is not None:
        keep = sorted(set(pids))
        dataset = dataset.subset(keep)
        digest = hashlib.sha256(" ".join(map(str, keep)).encode()).hexdigest()[:12]
        what += f" ({len(keep)} identities, pids sha256 {digest})"
    if not dataset.photos or not dataset.sketches:
        raise DataLayoutError(
            f"{Path(root)}: int8 calibration needs photos and sketches"
            + (" of the chosen identities" if pids is not None else "")
            + f"; found {len(dataset.photos)} photo(s) and {len(dataset.sketches)} sketch(es)"
        )
    photos = _draw(dataset.photos, images, seed)
    sketches = _draw(dataset.sketches, images, seed)
    return CalibrationSet(
        [load_image(s.path) for s in photos],
        [load_image(s.path) for s in sketches],
        f"{what}: {len(photos)} photos and {len(sketches)} sketches, draw seed {seed}",
    )


def synthetic_calibration(images: int, seed: int = SYNTHETIC_SEED) -> CalibrationSet:
    """``images`` synthetic people (:func:`generate_synthetic`, written to a temporary folder
    and read back): their sketches and ``images`` of their photos."""
    _check(images)
    with tempfile.TemporaryDirectory(prefix="sketchreid-calibration-") as work:
        generate_synthetic(work, images, seed=seed)
        drawn = folder_calibration(work, images, seed=seed)
    drawn.source = (
        f"synthetic generator, {images} people seed {seed}: {len(drawn.photos)} photos "
        f"and {len(drawn.sketches)} sketches"
    )
    return drawn


def calibration_images(root: str | Path | None, images: int) -> CalibrationSet:
    """The photos and sketches of ``root`` when given (:func:`folder_calibration`), else
    synthetic people (:func:`synthetic_calibration`): the service's and `model quantize`'s
    rule."""
    if root is not None:
        return folder_calibration(root, images)
    return synthetic_calibration(images)
