"""app.ml.data.synth: the synthetic PKU-layout generator."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.errors import UserInputError
from app.ml.data.pku import load_pku_sketch
from app.ml.data.synth import PHOTO_HEIGHTS, SKETCH_SIZE, draw_person, generate_synthetic
from app.ml.images import load_image


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_counts_and_image_properties(tmp_path: Path) -> None:
    ds = generate_synthetic(tmp_path / "d", identities=8, seed=1, cameras=3, photos_per_camera=2)
    assert ds.pids == list(range(1, 9))
    assert len(ds.photos) == 8 * 3 * 2
    assert [s.pid for s in ds.sketches] == list(range(1, 9))
    assert {s.camid for s in ds.photos} == {1, 2, 3}
    assert set(ds.styles.values()) <= {"a", "b", "c"}
    assert ds == load_pku_sketch(tmp_path / "d")
    for name in (tmp_path / "d" / "styleAnnotation").iterdir():
        _style, count = name.stem.split("_")
        assert len(name.read_text().split()) == int(count)
    for photo in ds.photos:
        with Image.open(photo.path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            width, height = im.size
            assert PHOTO_HEIGHTS[0] <= height <= PHOTO_HEIGHTS[1] and width == height // 2
        assert photo.path.name.startswith(f"{photo.pid}_{photo.camid:02d}_")
    for sketch in ds.sketches:
        with Image.open(sketch.path) as im:
            assert im.format == "JPEG" and im.mode == "L" and im.size == SKETCH_SIZE
            arr = np.asarray(im)
        assert np.median(arr) > 230  # white paper
        assert arr.min() < 80  # dark lines
        rgb = np.asarray(load_image(sketch.path))
        assert (rgb[..., 0] == rgb[..., 2]).all()  # no colour


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = files(generate_synthetic(tmp_path / "1", identities=4, seed=5).root)
    again = files(generate_synthetic(tmp_path / "2", identities=4, seed=5).root)
    other = files(generate_synthetic(tmp_path / "3", identities=4, seed=6).root)
    assert first == again
    assert first.keys() != other.keys() or first != other
    assert first["sketch/1.jpg"] != other["sketch/1.jpg"]


def test_more_identities_keep_the_first_ones(tmp_path: Path) -> None:
    small = files(generate_synthetic(tmp_path / "1", identities=2, seed=9).root)
    large = files(generate_synthetic(tmp_path / "2", identities=4, seed=9).root)
    assert all(large[name] == data for name, data in small.items() if "styleAnnotation" not in name)


def test_people_differ_in_what_the_sketch_shows() -> None:
    people = [draw_person(random.Random(i)) for i in range(60)]
    looks = {(p.pattern, p.bag, p.hair, p.bottom_kind, p.long_sleeves, p.top) for p in people}
    assert len(looks) >= 55
    for attribute in ("pattern", "bag", "hair", "bottom_kind", "style"):
        assert len({getattr(p, attribute) for p in people}) >= 3, attribute


def test_refuses_existing_data_unless_overwrite(tmp_path: Path) -> None:
    generate_synthetic(tmp_path, identities=3, seed=0)
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(UserInputError, match="already holds a data set"):
        generate_synthetic(tmp_path, identities=2, seed=0)
    ds = generate_synthetic(tmp_path, identities=2, seed=0, overwrite=True)
    assert ds.pids == [1, 2] and len(ds.sketches) == 2  # no stale person 3
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "kwargs",
    [{"identities": 0}, {"identities": 2, "cameras": 0}, {"identities": 2, "photos_per_camera": 0}],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(UserInputError):
        generate_synthetic(tmp_path, seed=0, **kwargs)  # type: ignore[arg-type]
