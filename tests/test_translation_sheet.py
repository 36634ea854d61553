"""`sketchreid evaluate --translation-sheet`: one row a person with the sketch, the translator's
output for it and the person's true photos, on the session's random-weight bundle (whose
generator's output varies with its input) and 12-identity synthetic set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli.main import main
from app.ml.bundle.store import load_bundle
from app.ml.data.pku import load_pku_sketch
from app.ml.evaluation.ranklist import FRAME, GAP, HEADER, TILE, _fit
from app.ml.images import load_image

CELL = TILE[0] + 2 * FRAME  # one framed tile's width


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _tile(sheet: Image.Image, row: int, column: int, row_height: int) -> np.ndarray:
    """The picture inside tile ``column`` of ``row`` (0: sketch, 1: translation, 2: photo)."""
    x = GAP + column * (CELL + GAP) + FRAME + (3 * GAP if column >= 2 else 0)
    y = row * row_height + HEADER + FRAME
    return np.asarray(sheet.crop((x, y, x + TILE[0], y + TILE[1])))


def _evaluate(synth_root: Path, bundle_dir: Path, tmp_path: Path, *extra: str) -> int:
    return main(
        [
            "evaluate",
            "--data-root",
            str(synth_root),
            "--model",
            str(bundle_dir),
            "--test-ids",
            "all",
            *extra,
            "--json",
            str(tmp_path / "figures.json"),
        ]
    )


def test_sheet_shows_each_persons_sketch_its_translation_and_photos(
    synth_root: Path, random_bundle_dir: Path, tmp_path: Path
) -> None:
    sheet_path = tmp_path / "sheet.png"
    extra = ["--translation-sheet", str(sheet_path), "--sheet-people", "3"]
    assert _evaluate(synth_root, random_bundle_dir, tmp_path, *extra) == 0
    sheet = Image.open(sheet_path).convert("RGB")
    assert sheet.height % 3 == 0
    row_height = sheet.height // 3

    bundle = load_bundle(random_bundle_dir)
    assert bundle.translator is not None
    dataset = load_pku_sketch(synth_root)
    for row, pid in enumerate((1, 2, 3)):  # the first three identities, ascending
        sketch = load_image(next(s.path for s in dataset.sketches if s.pid == pid))
        photo = load_image(next(s.path for s in dataset.photos if s.pid == pid))
        want_sketch = np.asarray(_fit(sketch))
        want_translation = np.asarray(_fit(bundle.translator.translate(sketch)))
        assert not np.array_equal(want_sketch, want_translation)
        np.testing.assert_array_equal(_tile(sheet, row, 0, row_height), want_sketch)
        np.testing.assert_array_equal(_tile(sheet, row, 1, row_height), want_translation)
        np.testing.assert_array_equal(_tile(sheet, row, 2, row_height), np.asarray(_fit(photo)))


def test_sheet_without_translation_is_refused_before_any_work(
    synth_root: Path,
    random_bundle_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sheet_path = tmp_path / "sheet.png"
    extra = ["--no-translate", "--translation-sheet", str(sheet_path)]
    assert _evaluate(synth_root, random_bundle_dir, tmp_path, *extra) == 2
    assert "translation sheet needs translated sketches: drop --no-translate" in (
        capsys.readouterr().err
    )
    assert not sheet_path.exists() and not (tmp_path / "figures.json").exists()
