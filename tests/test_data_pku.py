"""app.ml.data.pku: the PKU-Sketch layout reader."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from app.errors import DataLayoutError
from app.ml.data.pku import PKUSketchDataset, Sample, load_pku_sketch


def make_layout(
    root: Path,
    photos: Sequence[str],
    sketches: Sequence[str] = (),
    styles: dict[str, str] | None = None,
) -> Path:
    """Empty files are enough: the reader only looks at names."""
    (root / "photo").mkdir(parents=True)
    for name in photos:
        (root / "photo" / name).write_bytes(b"")
    if sketches:
        (root / "sketch").mkdir()
        for name in sketches:
            (root / "sketch" / name).write_bytes(b"")
    if styles is not None:
        (root / "styleAnnotation").mkdir()
        for name, text in styles.items():
            (root / "styleAnnotation" / name).write_text(text)
    return root


def test_reads_photos_sketches_and_styles(tmp_path: Path) -> None:
    root = make_layout(
        tmp_path,
        photos=["12_05_200.jpg", "12_03_100.JPG", "3_04_7.jpeg", "9_03_1.png"],
        sketches=["12.jpg", "3.png", "77.jpg"],
        styles={"a_2.txt": "12\n77\n", "b_1.txt": "3\r\n\n"},
    )
    ds = load_pku_sketch(root)
    assert ds.root == root
    assert [(s.pid, s.camid, s.path.name) for s in ds.photos] == [
        (3, 4, "3_04_7.jpeg"),
        (9, 3, "9_03_1.png"),
        (12, 3, "12_03_100.JPG"),
        (12, 5, "12_05_200.jpg"),
    ]
    assert all(s.modality == "photo" for s in ds.photos)
    assert [(s.pid, s.camid, s.modality) for s in ds.sketches] == [
        (3, -1, "sketch"),
        (12, -1, "sketch"),
        (77, -1, "sketch"),
    ]
    assert ds.pids == [3, 9, 12]  # 77 has a sketch but no photo: kept, not counted
    assert ds.sketch_pids == [3, 12]
    assert ds.styles == {3: "b", 9: "?", 12: "a", 77: "a"}
    assert ds.style_of(9) == "?"


def test_sample_is_frozen(tmp_path: Path) -> None:
    sample = Sample(tmp_path / "x.jpg", 1, 2, "photo")
    with pytest.raises(AttributeError):
        sample.pid = 3  # type: ignore[misc]


def test_subset(tmp_path: Path) -> None:
    root = make_layout(
        tmp_path,
        photos=["1_01_1.jpg", "1_02_1.jpg", "2_01_1.jpg", "3_01_1.jpg"],
        sketches=["1.jpg", "2.jpg", "3.jpg"],
        styles={"a_3.txt": "1\n2\n3\n"},
    )
    sub = load_pku_sketch(root).subset([1, 3])
    assert isinstance(sub, PKUSketchDataset)
    assert sub.pids == [1, 3]
    assert [s.pid for s in sub.photos] == [1, 1, 3]
    assert [s.pid for s in sub.sketches] == [1, 3]
    assert sub.styles == {1: "a", 3: "a"}


def test_optional_folders_and_hidden_files(tmp_path: Path) -> None:
    root = make_layout(tmp_path, photos=["1_01_1.jpg", ".DS_Store"])
    ds = load_pku_sketch(root)
    assert ds.pids == [1] and ds.sketches == [] and ds.styles == {1: "?"}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, r"^data folder not found: .*missing$"),
        (lambda root: root.mkdir(), r"^no photo/ folder in .*missing \(expected the PKU-Sketch"),
        (lambda root: (root / "photo").mkdir(parents=True), r"^no photos in .*photo$"),
    ],
)
def test_missing_root_photo_folder_and_photos(
    tmp_path: Path, setup: Callable[[Path], object], message: str
) -> None:
    root = tmp_path / "missing"
    setup(root)
    with pytest.raises(DataLayoutError, match=message):
        load_pku_sketch(root)


def test_unparseable_photo_name_is_named(tmp_path: Path) -> None:
    root = make_layout(tmp_path, photos=["1_01_1.jpg", "person1.jpg"])
    with pytest.raises(DataLayoutError, match=r"cannot parse photo file name .*person1\.jpg"):
        load_pku_sketch(root)


def test_unparseable_sketch_name_is_named(tmp_path: Path) -> None:
    root = make_layout(tmp_path, photos=["1_01_1.jpg"], sketches=["1_sketch.jpg"])
    with pytest.raises(DataLayoutError, match=r"cannot parse sketch file name .*1_sketch\.jpg"):
        load_pku_sketch(root)


def test_two_sketches_for_one_person(tmp_path: Path) -> None:
    root = make_layout(tmp_path, photos=["1_01_1.jpg"], sketches=["1.jpg", "01.png"])
    with pytest.raises(DataLayoutError, match="two sketches for person 1"):
        load_pku_sketch(root)


@pytest.mark.parametrize(
    ("styles", "message"),
    [
        ({"a_1.txt": "1\nabc\n"}, r"a_1\.txt line 2: expected a person id, got 'abc'"),
        ({"a_1.txt": "1\n", "b_1.txt": "1\n"}, "person 1 is annotated with two styles"),
        ({"artist-a.txt": "1\n"}, r"cannot parse style annotation file name .*artist-a\.txt"),
    ],
)
def test_bad_style_annotations(tmp_path: Path, styles: dict[str, str], message: str) -> None:
    root = make_layout(tmp_path, photos=["1_01_1.jpg"], styles=styles)
    with pytest.raises(DataLayoutError, match=message):
        load_pku_sketch(root)


@pytest.mark.realdata
def test_real_pku_sketch_dev(shared_data: Path) -> None:
    ds = load_pku_sketch(shared_data / "pku-sketch-dev")
    assert len(ds.pids) == 150
    assert len(ds.photos) == 300
    assert len(ds.sketches) == 145
    assert len(ds.sketch_pids) == 145
    assert set(ds.styles.values()) == {"a", "b", "c", "d", "e"}
    assert {s.camid for s in ds.photos} <= {3, 4, 5, 6, 7}
