"""Identity splits of a PKU-Sketch dataset: random (stratified by drawing style), from a split
file, or everything-is-test; and the pid -> class index mapping used in training.

A test identity always has a sketch (the query) and at least one photo (the gallery). Identities
without a sketch are always training identities.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.errors import DataLayoutError, UserInputError
from app.ml.data.pku import PKUSketchDataset


@dataclass
class Split:
    """Train and test identities (sorted pids) and the seed that drew them (None: not random)."""

    train: list[int]
    test: list[int]
    seed: int | None = None


def relabel_pids(pids: Iterable[int]) -> dict[int, int]:
    """Map the distinct pids, in increasing order, to class indices 0..K-1."""
    return {pid: index for index, pid in enumerate(sorted(set(pids)))}


def all_test_split(dataset: PKUSketchDataset) -> Split:
    """Every identity with a sketch and a photo is a test identity; train is empty."""
    test = dataset.sketch_pids
    if not test:
        raise DataLayoutError(f"no identity in {dataset.root} has both a sketch and a photo")
    return Split(train=[], test=test, seed=None)


def random_splits(
    dataset: PKUSketchDataset, n_splits: int, seed: int, test_size: int | float = 1 / 3
) -> list[Split]:
    """``n_splits`` random train/test splits, stratified by drawing style.

    ``test_size`` is a number of identities (int) or a fraction (float in (0, 1)) of the
    identities that have a sketch. Each style gives the test set a share proportional to its
    size (largest-remainder rounding). Split ``i`` is drawn with its own seed, derived from
    ``seed`` and recorded in :attr:`Split.seed`; the same arguments give the same splits.
    """
    if n_splits < 1:
        raise UserInputError(f"the number of splits must be at least 1, not {n_splits}")
    candidates = dataset.sketch_pids
    n_test = _test_count(test_size, len(candidates))
    if n_test >= len(dataset.pids):
        raise UserInputError(
            f"a test set of {n_test} identities leaves no training identity "
            f"({len(dataset.pids)} identities in {dataset.root})"
        )
    by_style: dict[str, list[int]] = {}
    for pid in candidates:
        by_style.setdefault(dataset.style_of(pid), []).append(pid)
    quotas = _proportional_quotas({s: len(p) for s, p in by_style.items()}, n_test)

    seeds = np.random.SeedSequence(seed).generate_state(n_splits, dtype=np.uint32)
    splits = []
    for split_seed in (int(s) for s in seeds):
        rng = np.random.default_rng(split_seed)
        test: set[int] = set()
        for style in sorted(by_style):
            chosen = rng.choice(by_style[style], size=quotas[style], replace=False)
            test.update(int(pid) for pid in chosen)
        train = [pid for pid in dataset.pids if pid not in test]
        splits.append(Split(train=train, test=sorted(test), seed=split_seed))
    return splits


def _test_count(test_size: int | float, n_candidates: int) -> int:
    if n_candidates == 0:
        raise DataLayoutError("no identity has both a sketch and a photo: nothing to test on")
    if isinstance(test_size, bool) or not isinstance(test_size, int | float):
        raise UserInputError(f"test size must be a count or a fraction, not {test_size!r}")
    if isinstance(test_size, float):
        if not 0 < test_size < 1:
            raise UserInputError(f"a test fraction must be between 0 and 1, not {test_size}")
        n_test = max(1, round(test_size * n_candidates))
    else:
        n_test = test_size
    if not 1 <= n_test <= n_candidates:
        raise UserInputError(
            f"test size {n_test} is not between 1 and the {n_candidates} identities with a sketch"
        )
    return n_test


def _proportional_quotas(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Share ``total`` among groups in proportion to their sizes (largest remainder)."""
    n = sum(sizes.values())
    exact = {group: total * size / n for group, size in sizes.items()}
    quotas = {group: math.floor(value) for group, value in exact.items()}
    by_remainder = sorted(sizes, key=lambda g: (-(exact[g] - quotas[g]), -sizes[g], g))
    for group in by_remainder[: total - sum(quotas.values())]:
        quotas[group] += 1
    return quotas


def save_split_file(split: Split, path: str | Path) -> None:
    """Write ``{"train": [...], "test": [...], "seed": ...}`` as JSON (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"train": sorted(split.train), "test": sorted(split.test), "seed": split.seed}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def load_split_file(path: str | Path, dataset: PKUSketchDataset) -> Split:
    """Read a split file written by :func:`save_split_file` (or by hand) and check it against
    ``dataset``: known identities, test identities with a sketch, no overlap, a test set."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"split file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserInputError(f"split file {path} is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise UserInputError(
            f"split file {path} is not valid JSON: {exc.msg} (line {exc.lineno}, "
            f"column {exc.colno})"
        ) from exc
    if not isinstance(data, dict):
        raise UserInputError(
            f'split file {path} must hold an object {{"train": [...], "test": [...]}}'
        )
    unknown_keys = sorted(set(data) - {"train", "test", "seed"})
    if unknown_keys:
        raise UserInputError(
            f"split file {path} has unknown keys {unknown_keys}; allowed: train, test, seed"
        )
    if "test" not in data:
        raise UserInputError(f'split file {path} has no "test" list')
    train = _pid_list(data.get("train", []), "train", path)
    test = _pid_list(data["test"], "test", path)
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UserInputError(f'split file {path}: "seed" must be an integer or null')

    if not test:
        raise UserInputError(f"split file {path} has an empty test list")
    overlap = sorted(set(train) & set(test))
    if overlap:
        raise UserInputError(
            f"split file {path}: identities in both train and test: {_few(overlap)}"
        )
    known = set(dataset.pids)
    missing = sorted(set(train + test) - known)
    if missing:
        raise DataLayoutError(
            f"split file {path} names identities with no photo in {dataset.root}: {_few(missing)}"
        )
    no_sketch = sorted(set(test) - set(dataset.sketch_pids))
    if no_sketch:
        raise DataLayoutError(
            f"split file {path}: test identities without a sketch in {dataset.root}: "
            f"{_few(no_sketch)}"
        )
    return Split(train=sorted(train), test=sorted(test), seed=seed)


def _pid_list(value: object, key: str, path: Path) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise UserInputError(f'split file {path}: "{key}" must be a list of integer person ids')
    duplicates = sorted(pid for pid, n in Counter(value).items() if n > 1)
    if duplicates:
        raise UserInputError(f'split file {path}: "{key}" repeats {_few(duplicates)}')
    return list(value)


def _few(pids: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(p) for p in pids[:limit])
    return shown + (f" and {len(pids) - limit} more" if len(pids) > limit else "")
