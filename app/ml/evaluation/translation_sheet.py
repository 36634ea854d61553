"""A picture of what the translator does: one row per person, with the sketch, the synthetic
photo the translator made of it (the very image the evaluation embedded) and the person's true
photos from the gallery. `sketchreid evaluate --translation-sheet` draws it (docs/results.md
describes one; pictures of real people stay out of the repository).

Drawn with the rank-list tiles (:mod:`app.ml.evaluation.ranklist`): the sketch and its
translation on the left, a gap, then the photos, each captioned with its camera.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from app.ml.evaluation.ranklist import GREY, Tile, draw_ranklist
from app.ml.evaluation.testset import Embedded
from app.ml.images import load_image

__all__ = ["draw_translation_sheet", "write_translation_sheet"]

MAX_PHOTOS = 4  # true photos shown a row


def draw_translation_sheet(e: Embedded, people: int) -> Image.Image:
    """Rows for the first ``people`` identities (ascending) among ``e``'s queries."""
    if not e.translated or len(e.translations) != len(e.q_paths) or not e.q_paths:
        raise ValueError("a translation sheet needs translated queries (embed_test_set)")
    if people < 1:
        raise ValueError("a translation sheet needs at least one person")
    first: dict[int, int] = {}
    for i, pid in enumerate(e.q_pids.tolist()):
        first.setdefault(int(pid), i)
    rows = []
    for pid in sorted(first)[:people]:
        i = first[pid]
        queries = [
            Tile(load_image(e.q_paths[i]), "sketch", GREY),
            Tile(e.translations[i], "translation", GREY),
        ]
        photos = np.flatnonzero(e.g_pids == pid)[:MAX_PHOTOS]
        results = [
            Tile(load_image(e.g_paths[j]), f"photo, cam {e.g_camids[j]}", GREY) for j in photos
        ]
        rows.append(draw_ranklist(queries, results, f"person {pid}"))
    width = max(row.width for row in rows)
    sheet = Image.new("RGB", (width, sum(row.height for row in rows)), (255, 255, 255))
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    return sheet


def write_translation_sheet(e: Embedded, path: Path, people: int = 8) -> Path:
    """:func:`draw_translation_sheet` saved as a PNG at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_translation_sheet(e, people).save(path, format="PNG")
    return path
