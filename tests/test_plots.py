"""plot_cmc writes a readable PNG and rejects bad curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from app.errors import UserInputError
from app.ml.evaluation.plots import plot_cmc

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_writes_png_with_several_curves(tmp_path: Path) -> None:
    curves: dict[str, Sequence[float] | np.ndarray] = {
        "baseline": np.linspace(0.3, 0.9, 50),
        "re-ranked": [0.4, 0.55, 0.6, 0.7, 0.8],  # shorter than max_rank
    }
    out = plot_cmc(curves, tmp_path / "sub" / "cmc.png", title="PKU-Sketch", max_rank=20)
    assert out == tmp_path / "sub" / "cmc.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # something was drawn


def test_accepts_str_path_and_no_title(tmp_path: Path) -> None:
    out = plot_cmc({"one": [1.0]}, str(tmp_path / "a.png"))
    assert out.is_file() and out.stat().st_size > 0


@pytest.mark.parametrize(
    ("curves", "max_rank", "message"),
    [
        ({}, 20, "at least one"),
        ({"x": []}, 20, "empty"),
        ({"x": [55.0, 80.0]}, 20, "fractions"),
        ({"x": [float("nan")]}, 20, "fractions"),
        ({"x": [0.5]}, 0, "max_rank"),
    ],
)
def test_bad_input(
    tmp_path: Path, curves: dict[str, list[float]], max_rank: int, message: str
) -> None:
    with pytest.raises(UserInputError, match=message):
        plot_cmc(curves, tmp_path / "x.png", max_rank=max_rank)
    assert not (tmp_path / "x.png").exists()
