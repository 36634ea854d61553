"""Rank-list pictures, as re-identification toolboxes draw them: one PNG per query with the
sketch, its translation (when the query was translated) and the top-ranked gallery crops, each
framed green when it shows the query's person and red when it does not.

Drawn with Pillow alone (no display, no pyplot state), from the same distance matrix the
figures are computed from, with the same rule: gallery items of the query's person *and* camera
(junk under the Market-1501 rules) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from app.ml.evaluation.testset import Embedded
from app.ml.images import load_image

__all__ = ["Tile", "draw_ranklist", "ranked_items", "write_ranklists"]

TILE = (64, 128)  # width, height of one picture inside its frame
FRAME = 4
GAP = 6
CAPTION = 30  # caption band under a tile
HEADER = 22
GREEN = (0, 170, 0)
RED = (220, 0, 0)
GREY = (150, 150, 150)
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class Tile:
    image: Image.Image
    caption: str
    frame: tuple[int, int, int]


def _fit(image: Image.Image) -> Image.Image:
    """``image`` scaled to fit ``TILE``, centred on a light grey background."""
    w, h = TILE
    scale = min(w / image.width, h / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = Image.new("RGB", TILE, (235, 235, 235))
    canvas.paste(
        image.convert("RGB").resize(size, Image.Resampling.BILINEAR),
        (
            (w - size[0]) // 2,
            (h - size[1]) // 2,
        ),
    )
    return canvas


def draw_ranklist(queries: Sequence[Tile], results: Sequence[Tile], title: str) -> Image.Image:
    """One picture: ``queries`` (sketch, translation) on the left, a gap, then ``results``."""
    font = ImageFont.load_default(size=11)
    cell_w, cell_h = TILE[0] + 2 * FRAME, TILE[1] + 2 * FRAME
    n = len(queries) + len(results)
    width = GAP + n * (cell_w + GAP) + (3 * GAP if results else 0)
    height = HEADER + cell_h + CAPTION
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    draw.text((GAP, 4), title, fill=(0, 0, 0), font=font)
    x = GAP
    for k, tile in enumerate([*queries, *results]):
        if k == len(queries):
            x += 3 * GAP  # a wider gap between the query and its results
        draw.rectangle((x, HEADER, x + cell_w - 1, HEADER + cell_h - 1), fill=tile.frame)
        picture.paste(_fit(tile.image), (x + FRAME, HEADER + FRAME))
        for line, text in enumerate(tile.caption.split("\n")[:2]):
            draw.text((x, HEADER + cell_h + 2 + 13 * line), text, fill=(0, 0, 0), font=font)
        x += cell_w + GAP
    return picture


def ranked_items(e: Embedded, dist: np.ndarray, query: int, top: int) -> list[int]:
    """Gallery indexes of the ``top`` best items for ``query``, junk left out."""
    order = np.argsort(dist[query], kind="stable")
    junk = (e.g_pids[order] == e.q_pids[query]) & (e.g_camids[order] == e.q_camids[query])
    return [int(j) for j in order[~junk][:top]]


def write_ranklists(
    e: Embedded, dist: np.ndarray, out_dir: Path, *, top: int = 10, reranked: bool = False
) -> list[Path]:
    """One PNG per query of ``e`` (``<pid>.png``, ranked by ``dist``) into ``out_dir``."""
    if not e.q_paths or not e.g_paths:
        raise ValueError("rank lists need the image files of the test set (embed_test_set)")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, pid in enumerate(e.q_pids.tolist()):
        queries = [Tile(load_image(e.q_paths[i]), "sketch", GREY)]
        if e.translations:
            queries.append(Tile(e.translations[i], "translation", GREY))
        results = []
        for rank, j in enumerate(ranked_items(e, dist, i, top), 1):
            value = f"d {dist[i, j]:.3f}" if reranked else f"cos {1 - dist[i, j] / 2:.2f}"
            correct = int(e.g_pids[j]) == pid
            results.append(
                Tile(
                    load_image(e.g_paths[j]),
                    f"{rank}. id {e.g_pids[j]}\n{value} c{e.g_camids[j]}",
                    GREEN if correct else RED,
                )
            )
        found = sum(r.frame == GREEN for r in results)
        title = f"query: person {pid} - {found} of the top {len(results)} are this person"
        path = out_dir / f"{pid}.png"
        draw_ranklist(queries, results, title).save(path, format="PNG")
        written.append(path)
    return written
