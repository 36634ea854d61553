"""Argument helpers shared by the training and evaluation commands."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

from app.errors import UserInputError
from app.ml.data.pku import PKUSketchDataset, load_pku_sketch
from app.ml.data.splits import Split, all_test_split, load_split_file, random_splits
from app.ml.models.specs import blocks_per_stage

_ARCH = re.compile(r"^resnet(\d+)$")


def existing_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"folder not found: {value}")
    return path


def existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file not found: {value}")
    return path


def arch_list(value: str) -> list[str]:
    archs = [a.strip().lower() for a in value.split(",") if a.strip()]
    if not archs:
        raise argparse.ArgumentTypeError("give at least one architecture, e.g. resnet56")
    for arch in archs:
        match = _ARCH.match(arch)
        try:
            if not match:
                raise ValueError
            blocks_per_stage(int(match.group(1)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"unknown architecture {arch!r}: use resnet<6n+2>, e.g. resnet20, resnet56, "
                "resnet110"
            ) from None
    if len(set(archs)) != len(archs):
        raise argparse.ArgumentTypeError(f"an architecture is listed twice: {value}")
    return archs


def size_hw(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[x×](\d+)", value.strip())
    if not match or int(match.group(1)) < 8 or int(match.group(2)) < 8:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 64x32, got {value!r}")
    return int(match.group(1)), int(match.group(2))


def fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return number


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def add_split_options(
    parser: argparse.ArgumentParser, *, required: bool, heldout: bool = False
) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(
        "--test-ids",
        choices=["all", "heldout"] if heldout else ["all"],
        help="all: every identity is a test identity"
        + ("; heldout: those each bundle was not trained on (its manifest)" if heldout else ""),
    )
    group.add_argument(
        "--split-file", type=existing_file, help='JSON {"train": [...], "test": [...]}'
    )
    group.add_argument("--splits", type=positive_int, metavar="N", help="N random splits")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the random splits")
    parser.add_argument(
        "--test-size",
        type=positive_int,
        default=None,
        help="test identities per random split (default: 50, at most a third of the identities)",
    )


def load_dataset(root: Path) -> PKUSketchDataset:
    return load_pku_sketch(root)


def resolve_splits(args: argparse.Namespace, dataset: PKUSketchDataset) -> list[Split]:
    if getattr(args, "test_ids", None) == "all":
        return [all_test_split(dataset)]
    if getattr(args, "split_file", None) is not None:
        return [load_split_file(args.split_file, dataset)]
    if getattr(args, "splits", None):
        test_size = args.test_size or min(50, max(1, len(dataset.sketch_pids) // 3))
        splits = random_splits(dataset, args.splits, seed=args.split_seed, test_size=test_size)
        seeds = ", ".join(str(s.seed) for s in splits)
        print(
            f"{len(splits)} splits of {test_size} test identities, seeds: {seeds}", file=sys.stderr
        )
        return splits
    raise UserInputError("choose the test identities: --test-ids all, --split-file F or --splits N")


def command_line(args: argparse.Namespace) -> str:
    """The command as typed, for the manifest."""
    return "sketchreid " + " ".join(shlex.quote(a) for a in args.argv)
