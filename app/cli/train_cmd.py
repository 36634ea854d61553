"""`sketchreid train reid` and `sketchreid train translator`."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.common import (
    arch_list,
    command_line,
    existing_dir,
    existing_file,
    fraction,
    load_dataset,
    positive_int,
    size_hw,
)
from app.errors import UserInputError
from app.ml.data.pku import PKUSketchDataset
from app.ml.data.splits import load_split_file
from app.ml.train.config import PRESETS, Preset, get_preset
from app.ml.train.pipeline import TrainPlan, add_translator, save_members, train_members
from app.ml.train.reid import pick_device


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train the re-id ensemble or the sketch->photo translator")
    tsub = train.add_subparsers(dest="train_command", metavar="WHAT", required=True)

    reid = tsub.add_parser(
        "reid",
        help="train the embedding ensemble and write a model bundle",
        description="Pre-train each member on a Market-style folder (optional), fine-tune on "
        "the photos and sketches of the training identities, and write a bundle.",
    )
    reid.add_argument(
        "--data-root", type=existing_dir, required=True, help="PKU-Sketch layout folder"
    )
    reid.add_argument("--pretrain-root", type=existing_dir, help="Market-1501-style folder")
    reid.add_argument(
        "--arch",
        type=arch_list,
        default=["resnet56", "resnet110"],
        help="comma-separated members (default: resnet56,resnet110)",
    )
    reid.add_argument("--fc", type=positive_int, help="embedding size FC-d (preset default)")
    reid.add_argument("--epochs", type=positive_int, help="fine-tuning epochs")
    reid.add_argument("--pretrain-epochs", type=positive_int, help="pre-training epochs")
    reid.add_argument("--random-erasing", type=fraction, help="random-erasing probability")
    reid.add_argument("--input-size", type=size_hw, help="HEIGHTxWIDTH, e.g. 64x32")
    reid.add_argument("--spp", action="store_true", help="spatial pyramid pooling variant")
    _common(reid)
    reid.set_defaults(func=run_reid)

    tr = tsub.add_parser(
        "translator",
        help="train the CycleGAN sketch->photo generator and add it to a bundle",
    )
    tr.add_argument(
        "--data-root", type=existing_dir, required=True, help="PKU-Sketch layout folder"
    )
    tr.add_argument(
        "--epochs", type=positive_int, help="total epochs (half constant, half linear decay)"
    )
    _common(tr)
    tr.set_defaults(func=run_translator)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--split-file",
        type=existing_file,
        help="train on this split's training identities (default: every identity)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="cpu",
        help="hyper-parameters: paper, cpu (default), best, smoke",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("runs"),
        help="checkpoints, logs and decoded-image caches (default ./runs)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, required=True, help="bundle folder")


def preset_from_args(args: argparse.Namespace) -> Preset:
    preset = get_preset(args.preset)
    model, pre, fine = preset.model, preset.pretrain, preset.finetune
    if getattr(args, "fc", None):
        model.fc_dim = args.fc
    if getattr(args, "input_size", None):
        model.input_size = args.input_size
    if getattr(args, "spp", False):
        model.spp = True
    if getattr(args, "epochs", None) and hasattr(args, "arch"):
        fine.epochs = args.epochs
        fine.step_size = min(fine.step_size, max(1, int(args.epochs * 0.4)))
    if getattr(args, "pretrain_epochs", None):
        pre.epochs = args.pretrain_epochs
        pre.step_size = min(pre.step_size, max(1, int(args.pretrain_epochs * 0.4)))
    if getattr(args, "random_erasing", None) is not None:
        pre.random_erasing = fine.random_erasing = args.random_erasing
    return preset


def _train_pids(args: argparse.Namespace, dataset: PKUSketchDataset) -> list[int]:
    if args.split_file is None:
        return dataset.pids
    return load_split_file(args.split_file, dataset).train


def plan_from_args(
    args: argparse.Namespace, dataset: PKUSketchDataset, train_pids: list[int]
) -> TrainPlan:
    """The training plan that `train reid` and `crossval` options describe."""
    return TrainPlan(
        dataset=dataset,
        train_pids=train_pids,
        archs=args.arch,
        preset=preset_from_args(args),
        seed=args.seed,
        pretrain_root=args.pretrain_root,
        device=pick_device(args.device),
        workdir=args.workdir,
        progress=not args.no_progress,
    )


def run_reid(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.data_root)
    plan = plan_from_args(args, dataset, _train_pids(args, dataset))
    members = train_members(plan)
    manifest = save_members(
        args.out,
        plan,
        members,
        name=args.out.name or "bundle",
        version="1",
        command=command_line(args),
    )
    params = sum(m.embedding_parameters for m in manifest.members)
    print(
        f"wrote {args.out}: {', '.join(plan.archs)}, {params:,} embedding parameters, "
        f"{len(plan.train_pids)} training identities"
    )
    return 0


def run_translator(args: argparse.Namespace) -> int:
    if not (args.out / "manifest.json").is_file():
        raise UserInputError(f"{args.out} is not a model bundle: train one with `train reid` first")
    dataset = load_dataset(args.data_root)
    preset = get_preset(args.preset)
    if args.epochs:
        preset.translator.epochs_constant = args.epochs - args.epochs // 2
        preset.translator.epochs_decay = args.epochs // 2
    manifest = add_translator(
        args.out,
        dataset,
        _train_pids(args, dataset),
        preset,
        seed=args.seed,
        device=pick_device(args.device),
        workdir=args.workdir,
        command=command_line(args),
        progress=not args.no_progress,
    )
    assert manifest.translator is not None
    print(f"added a translator ({manifest.translator.parameters:,} parameters) to {args.out}")
    return 0
