"""`sketchreid data`: make a synthetic data set, or describe a data folder.

sketchreid data synth --out DIR --identities N --seed S [--cameras C] [--photos-per-camera K]
sketchreid data inspect --data-root DIR [--layout pku|market] [--subset bounding_box_train]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from app.errors import UserInputError
from app.ml.data.market import DISTRACTOR_PID, JUNK_PID, load_market
from app.ml.data.pku import load_pku_sketch
from app.ml.data.synth import generate_synthetic


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``data`` command and its ``synth`` and ``inspect`` actions."""
    data = subparsers.add_parser(
        "data", help="make or inspect data sets", description="Make or inspect data sets."
    )
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = actions.add_parser(
        "synth",
        help="write a synthetic data set in the PKU-Sketch layout",
        description="Write procedurally drawn people (photos and sketches) in the PKU-Sketch "
        "layout: photo/, sketch/, styleAnnotation/.",
    )
    synth.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    synth.add_argument("--identities", type=int, default=50, help="number of people (50)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (0)")
    synth.add_argument("--cameras", type=int, default=2, help="cameras per person (2)")
    synth.add_argument("--photos-per-camera", type=int, default=1, help="photos per camera (1)")
    synth.add_argument("--force", action="store_true", help="write into a non-empty folder")
    synth.set_defaults(func=run_synth)

    inspect = actions.add_parser(
        "inspect",
        help="count identities, photos, sketches, cameras and styles in a data folder",
        description="Read a data folder and print what it holds.",
    )
    inspect.add_argument("--data-root", type=Path, required=True, help="the data folder")
    inspect.add_argument("--layout", choices=("pku", "market"), default="pku", help="(pku)")
    inspect.add_argument(
        "--subset", default="bounding_box_train", help="market layout: sub-folder to read"
    )
    inspect.set_defaults(func=run_inspect)


def run_synth(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise UserInputError(f"--out folder is not empty: {out} (use --force to write into it)")
    dataset = generate_synthetic(
        out,
        args.identities,
        args.seed,
        photos_per_camera=args.photos_per_camera,
        cameras=args.cameras,
        overwrite=args.force,
    )
    styles = Counter(dataset.style_of(s.pid) for s in dataset.sketches)
    print(
        f"wrote {len(dataset.pids)} identities, {len(dataset.photos)} photos and "
        f"{len(dataset.sketches)} sketches (styles {_counts(styles)}) to {out}"
    )
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    root: Path = args.data_root
    if args.layout == "market":
        samples = load_market(root, args.subset, include_junk=True, include_distractors=True)
        pids = Counter(s.pid for s in samples)
        junk, distractors = pids.pop(JUNK_PID, 0), pids.pop(DISTRACTOR_PID, 0)
        cameras = Counter(s.camid for s in samples)
        print(f"{root} (Market-1501 layout, {args.subset}/)")
        print(f"identities: {len(pids)}")
        print(f"images: {len(samples)} ({junk} junk, {distractors} distractors)")
        print(f"cameras: {_counts(cameras)}")
        return 0

    dataset = load_pku_sketch(root)
    cameras = Counter(s.camid for s in dataset.photos)
    styles = Counter(dataset.style_of(s.pid) for s in dataset.sketches)
    without = len(dataset.pids) - len(dataset.sketch_pids)
    print(f"{root} (PKU-Sketch layout)")
    print(f"identities: {len(dataset.pids)} ({without} without a sketch)")
    print(f"photos: {len(dataset.photos)}")
    print(f"sketches: {len(dataset.sketches)}")
    print(f"cameras: {_counts(cameras)}")
    print(f"styles: {_counts(styles) or 'none'}")
    return 0


def _counts(counter: Counter[Any]) -> str:
    """'a: 35, b: 15', sorted by key."""
    return ", ".join(f"{key}: {n}" for key, n in sorted(counter.items()))
