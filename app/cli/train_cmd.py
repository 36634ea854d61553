"""`sketchreid train pretrain`, `train reid` and `train translator`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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
from app.ml.infer.precision import PRECISIONS
from app.ml.train.config import PRESETS, Preset, get_preset
from app.ml.train.pipeline import (
    TrainPlan,
    add_translator,
    environment,
    pretrain_member,
    save_members,
    train_members,
)
from app.ml.train.pretrain import save_pretrained
from app.ml.train.reid import pick_device

DEFAULT_PRESET = "ship"


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train the re-id ensemble or the sketch->photo translator")
    tsub = train.add_subparsers(dest="train_command", metavar="WHAT", required=True)

    pre = tsub.add_parser(
        "pretrain",
        help="pre-train members on Market-style photo folders (with a health check)",
        description="Pre-train each member on one or more Market-1501-style folders "
        "(identities of different folders kept apart), hold out the last --holdout identities "
        "of the first folder and log their photo->photo cross-camera Rank-1/mAP every "
        "--health-every epochs; write the backbones into a pre-trained folder "
        "(model_store/pretrained), replacing members of the same architecture.",
    )
    pre.add_argument(
        "--pretrain-root",
        type=existing_dir,
        action="append",
        required=True,
        help="Market-1501-style folder (repeat for several)",
    )
    pre.add_argument("--arch", type=arch_list, default=["resnet56", "resnet110"])
    pre.add_argument("--epochs", type=positive_int, help="pre-training epochs (preset default)")
    pre.add_argument(
        "--init-from",
        type=existing_dir,
        help="warm restart: continue the backbones of this pre-trained folder (e.g. "
        "model_store/pretrained) for --epochs more; the manifest keeps the earlier runs",
    )
    _model_options(pre)
    add_run_options(pre)
    pre.add_argument("--out", type=Path, required=True, help="pre-trained folder")
    pre.set_defaults(func=run_pretrain)

    reid = tsub.add_parser(
        "reid",
        help="train the embedding ensemble and write a model bundle",
        description="Start each member from committed pre-trained backbones (--pretrained) "
        "or pre-train it on Market-style folders (--pretrain-root), fine-tune on the photos "
        "and sketches of the training identities, and write a bundle.",
    )
    reid.add_argument(
        "--data-root", type=existing_dir, required=True, help="PKU-Sketch layout folder"
    )
    add_member_options(reid)
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
    tr.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=_translator_override,
        metavar="translator.FIELD=VALUE",
        help="override one field of the preset's translator, e.g. translator.ngf=16 (repeat)",
    )
    _common(tr)
    tr.set_defaults(func=run_translator)


def add_member_options(p: argparse.ArgumentParser) -> None:
    """Options of `train reid` and `crossval`: where members start, what they look like."""
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--pretrained",
        type=existing_dir,
        help="start from this pre-trained folder, e.g. model_store/pretrained",
    )
    start.add_argument(
        "--pretrain-root",
        type=existing_dir,
        action="append",
        help="pre-train on this Market-1501-style folder first (repeat for several)",
    )
    p.add_argument(
        "--arch",
        type=arch_list,
        default=["resnet56", "resnet110"],
        help="comma-separated members (default: resnet56,resnet110)",
    )
    p.add_argument("--epochs", type=positive_int, help="fine-tuning epochs")
    p.add_argument("--pretrain-epochs", type=positive_int, help="pre-training epochs")
    _model_options(p)


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fc", type=positive_int, help="embedding size FC-d (preset default)")
    p.add_argument("--random-erasing", type=fraction, help="random-erasing probability")
    p.add_argument("--input-size", type=size_hw, help="HEIGHTxWIDTH, e.g. 64x32")
    p.add_argument("--spp", action="store_true", help="spatial pyramid pooling variant")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one preset field, e.g. finetune.lr=1e-4 or model.bn_neck=false "
        "(sections: model, pretrain, finetune, translator; VALUE is JSON or a bare string)",
    )
    p.add_argument("--holdout", type=int, default=100, help="pre-training identities held out")
    p.add_argument(
        "--health-every", type=int, default=5, help="epochs between pre-training health checks"
    )


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=DEFAULT_PRESET,
        help=f"hyper-parameters: {', '.join(PRESETS)} (default {DEFAULT_PRESET})",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (default): bf16 autocast where the CPU or GPU has bf16 units, else fp32",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("runs"),
        help="checkpoints, logs and decoded-image caches (default ./runs)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--split-file",
        type=existing_file,
        help="train on this split's training identities (default: every identity)",
    )
    add_run_options(p)
    p.add_argument("--out", type=Path, required=True, help="bundle folder")


def _translator_override(text: str) -> str:
    """`train translator --set`: only the translator section is this command's to change."""
    if not text.startswith("translator."):
        raise argparse.ArgumentTypeError(
            f"{text!r}: `train translator` only takes translator.FIELD=VALUE overrides"
        )
    return text


def apply_override(preset: Preset, text: str) -> None:
    """Set ``section.field`` of ``preset`` from ``SECTION.FIELD=VALUE`` (validated)."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    sections = ("model", "pretrain", "finetune", "translator")
    if not sep or not dot or section not in sections:
        raise UserInputError(
            f"--set {text!r}: expected SECTION.FIELD=VALUE with SECTION one of "
            f"{', '.join(sections)}"
        )
    target = getattr(preset, section)
    if name not in type(target).model_fields:
        raise UserInputError(
            f"--set {text!r}: {section} has no field {name!r} "
            f"(fields: {', '.join(type(target).model_fields)})"
        )
    value: Any
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    data = target.model_dump()
    data[name] = value
    try:
        setattr(preset, section, type(target).model_validate(data))
    except ValueError as exc:
        first = str(exc).splitlines()
        raise UserInputError(f"--set {text!r}: {' '.join(first[1:3]) or exc}") from None


def preset_from_args(args: argparse.Namespace) -> Preset:
    preset = get_preset(args.preset)
    model, pre, fine = preset.model, preset.pretrain, preset.finetune
    if getattr(args, "fc", None):
        model.fc_dim = args.fc
    if getattr(args, "input_size", None):
        model.input_size = args.input_size
    if getattr(args, "spp", False):
        model.spp = True
    if getattr(args, "epochs", None) and getattr(args, "func", None) is run_pretrain:
        pre.epochs = args.epochs
        pre.step_size = min(pre.step_size, max(1, int(args.epochs * 0.4)))
    elif getattr(args, "epochs", None) and hasattr(args, "arch"):
        fine.epochs = args.epochs
        fine.step_size = min(fine.step_size, max(1, int(args.epochs * 0.4)))
    if getattr(args, "pretrain_epochs", None):
        pre.epochs = args.pretrain_epochs
        pre.step_size = min(pre.step_size, max(1, int(args.pretrain_epochs * 0.4)))
    if getattr(args, "random_erasing", None) is not None:
        pre.random_erasing = fine.random_erasing = args.random_erasing
    for text in getattr(args, "overrides", None) or []:
        apply_override(preset, text)
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
        pretrain_roots=list(args.pretrain_root or []),
        pretrained_dir=getattr(args, "pretrained", None),
        device=pick_device(args.device),
        precision=args.precision,
        workdir=args.workdir,
        progress=not args.no_progress,
        holdout=args.holdout,
        health_every=args.health_every,
        pretrain_init=getattr(args, "init_from", None),
    )


def run_pretrain(args: argparse.Namespace) -> int:
    plan = plan_from_args(args, PKUSketchDataset(root=Path("."), photos=[], sketches=[]), [])
    members = []
    for arch in plan.archs:
        spec, model, info = pretrain_member(plan, arch)
        members.append((spec, model, info))
        last = info["health"][-1] if info["health"] else {}
        print(
            f"{arch}: {info['epochs']} epochs ({info['epochs_total']} in all) in "
            f"{info['seconds']:.0f} s; held-out "
            f"photo->photo Rank-1 {100 * last.get('holdout_rank1', 0):.1f}%, "
            f"mAP {100 * last.get('holdout_mAP', 0):.1f}%"
        )
    save_pretrained(
        args.out,
        members,
        training={"command": command_line(args), "environment": environment()},
    )
    print(f"wrote {args.out}: {', '.join(plan.archs)}")
    return 0


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
    preset = preset_from_args(args)
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
