"""Modality centering: each member's mean unit embedding of photos and of sketches, taken from
a bundle's training identities and stored in its manifest (:class:`Centering`).

Sketches and photos of everyone share directions that say "sketch" or "photo" rather than
who it is; subtracting each kind's mean from each member's embedding (the embedder does it,
:class:`app.ml.infer.embedder.BaseEmbedder`) leaves what tells people apart. On the 10-split
protocol it pays where the gallery is large (docs/results.md, "Modality centering").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.errors import UserInputError
from app.ml.bundle.manifest import Bundle, Centering
from app.ml.data.pku import PKUSketchDataset
from app.ml.images import load_image
from app.ml.infer.embedder import BaseEmbedder, Modality

CHUNK = 64


def member_units(embedder: BaseEmbedder, paths: Sequence[Path], modality: Modality) -> np.ndarray:
    """Each member's unit embedding of the images at ``paths`` (concatenated in member
    order), without the bundle's centering or member weights."""
    rows = [np.zeros((0, embedder.dim), dtype=np.float32)]
    for start in range(0, len(paths), CHUNK):
        images = [load_image(p) for p in paths[start : start + CHUNK]]
        rows.append(embedder.embed_units(images, modality=modality))
    return np.concatenate(rows)


def modality_means(bundle: Bundle, dataset: PKUSketchDataset, pids: Sequence[int]) -> Centering:
    """The photo and sketch means of ``bundle``'s members over the identities ``pids`` of
    ``dataset`` (those with both photos and sketches)."""
    part = dataset.subset(pids)
    people = sorted({s.pid for s in part.photos} & {s.pid for s in part.sketches})
    if not people:
        raise UserInputError(
            f"none of the {len(pids)} identities has both photos and sketches in "
            f"{dataset.root}: nothing to take the means from"
        )
    part = dataset.subset(people)
    photos = member_units(bundle.embedder, [s.path for s in part.photos], "photo")
    sketches = member_units(bundle.embedder, [s.path for s in part.sketches], "sketch")
    return Centering(
        photo=[round(float(v), 6) for v in photos.mean(0)],
        sketch=[round(float(v), 6) for v in sketches.mean(0)],
        source=f"{dataset.root}: {len(people)} identities",
        identities=len(people),
        photos=len(photos),
        sketches=len(sketches),
    )
