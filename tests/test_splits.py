"""app.ml.data.splits: stratified random splits, split files, all-test split, relabelling."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from app.errors import DataLayoutError, UserInputError
from app.ml.data.pku import PKUSketchDataset, Sample
from app.ml.data.splits import (
    Split,
    all_test_split,
    load_split_file,
    random_splits,
    relabel_pids,
    save_split_file,
)


def dataset(styles: dict[str, int], no_sketch: int = 0) -> PKUSketchDataset:
    """In-memory dataset: ``styles[s]`` sketched identities per style, plus photo-only ones."""
    photos, sketches, style_of = [], [], {}
    pid = 0
    for style, count in styles.items():
        for _ in range(count):
            pid += 1
            sketches.append(Sample(Path(f"sketch/{pid}.jpg"), pid, -1, "sketch"))
            style_of[pid] = style
    for _ in range(no_sketch):
        pid += 1
        style_of[pid] = "?"
    for p in range(1, pid + 1):
        photos += [Sample(Path(f"photo/{p}_0{c}_1.jpg"), p, c, "photo") for c in (1, 2)]
    return PKUSketchDataset(Path("root"), photos, sketches, style_of)


DS = dataset({"a": 35, "b": 15, "c": 59, "d": 25, "e": 16}, no_sketch=5)  # like PKU: 155 ids


def test_random_splits_are_stratified_disjoint_and_complete() -> None:
    splits = random_splits(DS, n_splits=10, seed=0, test_size=50)
    assert len(splits) == 10
    sizes = {"a": 35, "b": 15, "c": 59, "d": 25, "e": 16}
    for split in splits:
        assert len(split.test) == 50
        assert set(split.train).isdisjoint(split.test)
        assert sorted(split.train + split.test) == DS.pids
        assert split.train == sorted(split.train) and split.test == sorted(split.test)
        per_style = Counter(DS.styles[p] for p in split.test)
        for style, n in sizes.items():
            assert abs(per_style[style] - 50 * n / 150) < 1  # proportional, rounded
        assert {151, 152, 153, 154, 155} <= set(split.train)  # no sketch: always train
    assert len({tuple(s.test) for s in splits}) == 10  # the splits differ
    assert len({s.seed for s in splits}) == 10


def test_random_splits_are_deterministic() -> None:
    first = random_splits(DS, 3, seed=7)
    assert first == random_splits(DS, 3, seed=7)
    assert first != random_splits(DS, 3, seed=8)
    assert random_splits(DS, 5, seed=7)[:3] == first  # split i does not depend on n_splits
    assert len(first[0].test) == 50  # default 1/3 of the 150 sketched identities


def test_fraction_and_bad_test_sizes() -> None:
    assert len(random_splits(DS, 1, 0, test_size=0.2)[0].test) == 30
    for bad in (0, 151, 0.0, 1.0, -3, True, "10"):
        with pytest.raises(UserInputError):
            random_splits(DS, 1, 0, test_size=bad)  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="at least 1"):
        random_splits(DS, 0, 0)
    only_sketched = dataset({"a": 4})
    with pytest.raises(UserInputError, match="leaves no training identity"):
        random_splits(only_sketched, 1, 0, test_size=4)


def test_all_test_split() -> None:
    split = all_test_split(DS)
    assert split == Split(train=[], test=list(range(1, 151)), seed=None)
    with pytest.raises(DataLayoutError, match=r"no identity .* has both a sketch and a photo"):
        all_test_split(dataset({}, no_sketch=3))


def test_relabel_pids() -> None:
    assert relabel_pids([40, 7, 40, 12]) == {7: 0, 12: 1, 40: 2}


def test_split_file_round_trip(tmp_path: Path) -> None:
    split = random_splits(DS, 1, seed=3)[0]
    path = tmp_path / "deep" / "split.json"
    save_split_file(split, path)
    assert load_split_file(path, DS) == split
    hand_written = tmp_path / "hand.json"
    hand_written.write_text('{"test": [3, 1]}')
    assert load_split_file(hand_written, DS) == Split(train=[], test=[1, 3], seed=None)


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ("{not json", UserInputError, r"is not valid JSON: .*\(line 1, column 2\)"),
        ("[1, 2]", UserInputError, "must hold an object"),
        ('{"train": [1]}', UserInputError, 'has no "test" list'),
        ('{"test": [1], "tset": [2]}', UserInputError, r"unknown keys \['tset'\]"),
        ('{"test": ["1"]}', UserInputError, '"test" must be a list of integer person ids'),
        ('{"test": [true]}', UserInputError, '"test" must be a list of integer'),
        ('{"test": [1, 1]}', UserInputError, '"test" repeats 1'),
        ('{"test": [], "train": [1]}', UserInputError, "empty test list"),
        ('{"test": [1, 2], "train": [2, 3]}', UserInputError, "in both train and test: 2"),
        ('{"test": [1, 999]}', DataLayoutError, "identities with no photo in root: 999"),
        ('{"test": [1, 152]}', DataLayoutError, "test identities without a sketch .*: 152"),
        ('{"test": [1], "seed": "x"}', UserInputError, '"seed" must be an integer'),
    ],
)
def test_split_file_errors(
    tmp_path: Path, content: str, error: type[Exception], message: str
) -> None:
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(error, match=message) as err:
        load_split_file(path, DS)
    assert "\n" not in str(err.value)


def test_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"^split file not found: "):
        load_split_file(tmp_path / "nope.json", DS)


def test_saved_file_is_plain_json(tmp_path: Path) -> None:
    save_split_file(Split(train=[3, 2], test=[1], seed=5), tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == {
        "train": [2, 3],
        "test": [1],
        "seed": 5,
    }
