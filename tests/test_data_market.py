"""app.ml.data.market: Market-1501-style folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import DataLayoutError
from app.ml.data.market import load_market

NAMES = [
    "0002_c1s1_000451_03.jpg",
    "0002_c3s1_000551_01.jpg",
    "0007_c2s3_070952_01.jpg",
    "-1_c1s1_000401_03.jpg",  # junk
    "0000_c6s2_000101_01.jpg",  # distractor
    "0005_c2_f0046985.jpg",  # DukeMTMC-reID naming
]


def make_market(root: Path, names: list[str], subset: str = "bounding_box_train") -> Path:
    folder = root / subset
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return root


def test_reads_market_and_duke_names(tmp_path: Path) -> None:
    root = make_market(tmp_path, [*NAMES, "Thumbs.db", ".hidden.jpg"])
    samples = load_market(root)
    assert [(s.pid, s.camid) for s in samples] == [(2, 1), (2, 3), (5, 2), (7, 2)]
    assert all(s.modality == "photo" and s.path.is_file() for s in samples)


def test_junk_and_distractors_on_request(tmp_path: Path) -> None:
    root = make_market(tmp_path, NAMES)
    pids = [s.pid for s in load_market(root, include_junk=True, include_distractors=True)]
    assert sorted(pids) == [-1, 0, 2, 2, 5, 7]
    assert -1 in [s.pid for s in load_market(root, include_junk=True)]
    assert 0 not in [s.pid for s in load_market(root, include_junk=True)]


def test_other_subsets_and_the_subset_folder_itself(tmp_path: Path) -> None:
    root = make_market(tmp_path, ["0001_c1s1_000001_00.jpg"], subset="query")
    assert len(load_market(root, subset="query")) == 1
    assert len(load_market(root / "query", subset="query")) == 1


def test_missing_root_and_subset(tmp_path: Path) -> None:
    with pytest.raises(DataLayoutError, match=r"^data folder not found: "):
        load_market(tmp_path / "nope")
    with pytest.raises(DataLayoutError, match=r"^no bounding_box_train/ folder in "):
        load_market(tmp_path)


def test_no_usable_images(tmp_path: Path) -> None:
    root = make_market(tmp_path, ["-1_c1s1_000401_03.jpg", "readme.txt"])
    with pytest.raises(DataLayoutError, match=r"no usable images in .*\(1 junk/distractor"):
        load_market(root)


def test_unparseable_name(tmp_path: Path) -> None:
    root = make_market(tmp_path, ["0001_c1s1_000001_00.jpg", "img_0001.jpg"])
    with pytest.raises(DataLayoutError, match=r"cannot parse image file name .*img_0001\.jpg"):
        load_market(root)


@pytest.mark.realdata
def test_real_cuhk03_market(shared_data: Path) -> None:
    root = shared_data / "cuhk03-market"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    samples = load_market(root)
    assert len(samples) == 16354  # labelled (s1) and detected (s2) boxes of the same frames
    assert len({s.pid for s in samples}) == 843
    assert {s.camid for s in samples} == {1, 2}
