"""Rank-list pictures: the crops in ranked order, framed green when they show the query's
person and red when not, the query's sketch and translation first, junk left out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.ml.evaluation.ranklist import (
    CAPTION,
    FRAME,
    GAP,
    GREEN,
    GREY,
    HEADER,
    RED,
    TILE,
    write_ranklists,
)
from app.ml.evaluation.testset import Embedded
from app.ml.retrieval.distances import distances


def _image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (30, 60)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def _colours(n: int) -> list[tuple[int, int, int]]:
    """Distinct, recognisable fill colours (none of them a frame colour)."""
    return [(40 + 20 * k, 90, 200 - 15 * k) for k in range(n)]


def _tiles(picture: Image.Image, n_queries: int, n: int) -> list[tuple[Any, Any]]:
    """(frame colour, centre colour) of each of the ``n`` tiles, left to right."""
    cell = TILE[0] + 2 * FRAME
    out = []
    for k in range(n):
        x = GAP + k * (cell + GAP) + (3 * GAP if k >= n_queries else 0)
        frame = picture.getpixel((x + 1, HEADER + 1))
        centre = picture.getpixel((x + cell // 2, HEADER + FRAME + TILE[1] // 2))
        out.append((frame, centre))
    return out


def _embedded(tmp_path: Path, translated: bool) -> Embedded:
    """Two queries (persons 0 and 1) and six photos, three per person from cameras 1 to 3;
    every picture is one flat colour, so a tile's centre pixel says which picture it shows."""
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(6, 8))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    query = np.stack([gallery[1] + 0.1 * gallery[3], gallery[4] + 0.2 * gallery[0]])
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    colours = _colours(8)
    g_paths = [_image(tmp_path / f"g{k}.png", colours[k]) for k in range(6)]
    q_paths = [_image(tmp_path / f"q{k}.png", colours[6 + k], (40, 80)) for k in range(2)]
    return Embedded(
        query=query.astype(np.float32),
        gallery=gallery.astype(np.float32),
        q_pids=np.array([0, 1]),
        g_pids=np.array([0, 0, 0, 1, 1, 1]),
        q_camids=np.array([-1, 2]),  # the second query comes from camera 2: its c2 photo is junk
        g_camids=np.array([1, 2, 3, 1, 2, 3]),
        translated=translated,
        q_paths=q_paths,
        g_paths=g_paths,
        translations=[Image.new("RGB", (16, 32), (255, 255, 0))] * 2 if translated else [],
    )


def test_crops_in_ranked_order_framed_by_correctness(tmp_path: Path) -> None:
    e = _embedded(tmp_path, translated=True)
    dist = distances(e.query, e.gallery)
    written = write_ranklists(e, dist, tmp_path / "out", top=4)
    assert [p.name for p in written] == ["0.png", "1.png"]
    colours = _colours(8)
    for i, path in enumerate(written):
        picture = Image.open(path).convert("RGB")
        order = [j for j in np.argsort(dist[i], kind="stable") if not (i == 1 and j == 4)][:4]
        tiles = _tiles(picture, 2, 6)
        assert tiles[0] == (GREY, colours[6 + i])  # the sketch
        assert tiles[1] == (GREY, (255, 255, 0))  # its translation
        for (frame, centre), j in zip(tiles[2:], order, strict=True):
            assert centre == colours[j], "crops in ranked order"
            assert frame == (GREEN if e.g_pids[j] == e.q_pids[i] else RED)
        assert picture.height == HEADER + TILE[1] + 2 * FRAME + CAPTION
    # The junk photo (person 1, camera 2: index 4) never appears in person 1's list.
    centres = [c for _, c in _tiles(Image.open(written[1]).convert("RGB"), 2, 6)]
    assert colours[4] not in centres


def test_no_translation_tile_when_not_translated(tmp_path: Path) -> None:
    e = _embedded(tmp_path, translated=False)
    dist = distances(e.query, e.gallery)
    [first, _] = write_ranklists(e, dist, tmp_path / "out", top=3)
    with_translation = write_ranklists(
        _embedded(tmp_path, translated=True), dist, tmp_path / "t", top=3
    )[0]
    cell = TILE[0] + 2 * FRAME + GAP
    assert Image.open(with_translation).width - Image.open(first).width == cell
    tiles = _tiles(Image.open(first).convert("RGB"), 1, 4)
    assert tiles[0][0] == GREY and all(frame in (GREEN, RED) for frame, _ in tiles[1:])
