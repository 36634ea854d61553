"""The long trainings in one run on one GPU, inside a deadline, results written as they finish.

    python scripts/gpu_run.py --data DATA --out OUT --deadline 540 [--quick]

DATA holds ``pku-sketch-dev/`` and the Market-style pre-training folders (``cuhk03-market/``
first: its last identities are the health check's held-out set, then ``cuhk01-market/``).
Stages, each through the same functions as the ``sketchreid`` commands:

1. **Speed probe**: a few training steps of each member, to size the pre-training so that
   both members finish within ``--pretrain-share`` of the deadline (at most the preset's
   epochs; the chosen number is recorded in the pre-trained manifest).
2. **Pre-training** of each member (``sketchreid train pretrain``'s code path) with the health
   check; the backbones and their logs are written to OUT/pretrained.tar.gz at once.
3. **Cross-validation** of fine-tuning variants from those backbones (``sketchreid crossval``'s
   code path), most important first, every report added to OUT/results.json as soon as it
   finishes, then that variant's bundle trained on every identity (``sketchreid train reid``'s
   code path) into OUT/bundle-<variant>.tar.gz; no variant starts unless the time it is
   expected to take is left.

``--quick`` shrinks everything (a few hundred crops, 2 epochs, 2 splits) so the whole path
can be proven on a CPU in minutes before any GPU time is spent on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from app.cli.train_cmd import apply_override
from app.ml.data.pku import load_pku_sketch
from app.ml.data.splits import Split, random_splits
from app.ml.evaluation.crossval import cross_validate
from app.ml.evaluation.evaluate import RerankParams
from app.ml.train.config import get_preset
from app.ml.train.pipeline import (
    TrainPlan,
    environment,
    member_spec,
    pretrain_member,
    save_members,
    train_members,
)
from app.ml.train.pretrain import pretrain_sets, save_pretrained
from app.ml.train.reid import new_member, pick_device, train_stage
from app.ml.train.tensorset import TensorSet

ARCHS = ["resnet56", "resnet110"]
QUICK_ARCHS = ["resnet20", "resnet32"]  # toy scale on a CPU: same path, smaller members

# Fine-tuning variants, most important first: (name, preset overrides).
VARIANTS: list[tuple[str, list[str]]] = [
    ("ship", []),
    (
        "ship-xtriplet",
        [
            "finetune.triplet_weight=1.0",
            "finetune.triplet_cross_modal=true",
            "finetune.instances_per_id=4",
        ],
    ),
    ("ship-pseudo0.3", ["finetune.pseudo_sketch=0.3"]),
    ("ship-lr1e-4-ep60", ["finetune.lr=1e-4", "finetune.epochs=60"]),
]


class Clock:
    def __init__(self, deadline_s: float) -> None:
        self.t0 = time.perf_counter()
        self.deadline = deadline_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.deadline - self.elapsed()


def log(out: Path, record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)
    with (out / "progress.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def toy_subset(root: Path, n_ids: int, dst: Path) -> Path:
    """A Market-style folder of links to the crops of ``root``'s first ``n_ids`` identities."""
    from app.ml.data.market import load_market

    samples = load_market(root)
    keep = sorted({s.pid for s in samples})[:n_ids]
    folder = dst / "bounding_box_train"
    folder.mkdir(parents=True, exist_ok=True)
    for s in samples:
        link = folder / s.path.name
        if s.pid in keep and not link.exists():
            link.symlink_to(s.path.resolve())
    return dst


def probe_epoch_seconds(plan: TrainPlan, arch: str, steps: int) -> float:
    """Seconds one pre-training epoch of ``arch`` over the training crops is expected to take,
    from ``steps`` timed steps of the real training loop (after 3 warm-up steps; the timed
    run includes one health-free epoch end, i.e. one host synchronisation)."""
    cfg = plan.preset.pretrain.model_copy(update={"epochs": 1, "warmup_epochs": 0})
    m = plan.preset.model
    train, _, _ = pretrain_sets(
        plan.pretrain_roots, plan.holdout, m.input_size, cache_dir=plan.workdir / "cache"
    )
    spec = member_spec(plan, arch, train.num_classes)
    n = cfg.batch_size * steps

    def head(k: int) -> TensorSet:
        return TensorSet(train.images[:k], train.labels[:k], train.pids[:k], train.modality[:k])

    model = new_member(spec, None, seed=0)
    kwargs = {"device": plan.device, "seed": 0, "progress": False, "precision": plan.precision}
    train_stage(model, head(cfg.batch_size * 3), cfg, **kwargs)  # warm-up: kernels, allocator
    if plan.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_stage(model, head(n), cfg, **kwargs)
    if plan.device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - t0) / steps
    return per_step * len(train) / cfg.batch_size


def run_variant(
    plan: TrainPlan,
    splits: list[Split],
    name: str,
    overrides: list[str],
    out: Path,
    results: dict[str, Any],
) -> dict[str, Any]:
    """Cross-validate one fine-tuning variant, record it, then train its bundle on every
    identity and pack it into OUT."""
    flags = " ".join(f"--set {text}" for text in overrides)
    report = cross_validate(
        plan,
        splits,
        rerank=RerankParams(),
        per_member=True,
        command=f"gpu_run.py variant {name}: {flags}",
    )
    report["overrides"] = overrides
    results[name] = report
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    final = plan.workdir / f"bundle-{name}"
    full_plan = replace(plan, train_pids=plan.dataset.pids)
    save_members(
        final,
        full_plan,
        train_members(full_plan),
        name="sketchreid-default",
        version=f"gpu-{name}",
        command=f"gpu_run.py final bundle, variant {name}: {flags}",
    )
    with tarfile.open(out / f"bundle-{name}.tar.gz", "w:gz") as tar:
        tar.add(final, arcname=f"bundle-{name}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("runs/gpu"))
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds for everything")
    parser.add_argument("--pretrain-share", type=float, default=0.55)
    parser.add_argument("--max-pretrain-epochs", type=int, default=60)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="toy scale, to prove the path")
    args = parser.parse_args()
    clock = Clock(args.deadline)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = True  # fixed 64x32 shapes: let cuDNN pick its kernels
    log(out, {"stage": "start", "environment": environment(), "device": str(device)})

    preset = get_preset("ship")
    roots = [args.data / "cuhk03-market", args.data / "cuhk01-market"]
    holdout = 100
    if args.quick:  # toy scale: 40 identities of each folder, 10 held out, 2 splits
        roots = [toy_subset(root, 40, args.workdir / "toy" / root.name) for root in roots]
        holdout = 10
        args.splits = 2
    archs = QUICK_ARCHS if args.quick else ARCHS
    plan = TrainPlan(
        dataset=load_pku_sketch(args.data / "pku-sketch-dev"),
        train_pids=[],
        archs=archs,
        preset=preset,
        pretrain_roots=roots,
        device=device,
        workdir=args.workdir,
        progress=False,
        holdout=holdout,
        health_every=5,
    )

    # 1. Speed probe -> pre-training epochs that fit.
    per_epoch = {arch: probe_epoch_seconds(plan, arch, 3 if args.quick else 20) for arch in archs}
    budget = args.deadline * args.pretrain_share - clock.elapsed()
    # Health checks, checkpoints and the log cost about a tenth more than bare epochs.
    epochs = int(budget / (1.1 * sum(per_epoch.values())))
    epochs = max(2, min(args.max_pretrain_epochs, epochs))
    if args.quick:
        epochs = 2
    preset.pretrain.epochs = epochs
    log(
        out,
        {
            "stage": "probe",
            "seconds_per_epoch": per_epoch,
            "pretrain_epochs": epochs,
            "elapsed": round(clock.elapsed(), 1),
        },
    )

    # 2. Pre-training, both members, written out at once.
    members = []
    for arch in archs:
        spec, model, info = pretrain_member(plan, arch)
        members.append((spec, model, info))
        log(
            out,
            {
                "stage": f"pretrain {arch}",
                "seconds": info["seconds"],
                "health": info["health"],
                "elapsed": round(clock.elapsed(), 1),
            },
        )
    pretrained = args.workdir / "pretrained"
    save_pretrained(
        pretrained,
        members,
        training={
            "command": "python scripts/gpu_run.py " + " ".join(sys.argv[1:]),
            "environment": environment(),
            "sized_by": {"probe_seconds_per_epoch": per_epoch, "deadline_s": args.deadline},
        },
    )
    with tarfile.open(out / "pretrained.tar.gz", "w:gz") as tar:
        tar.add(pretrained, arcname="pretrained")
        for log_file in sorted((args.workdir / "logs").glob("pretrain-*.jsonl")):
            tar.add(log_file, arcname=f"logs/{log_file.name}")

    # 3. Cross-validated fine-tuning variants from the new backbones.
    test_size = min(50, max(1, len(plan.dataset.sketch_pids) // 3))  # as `crossval`
    splits = random_splits(plan.dataset, args.splits, seed=0, test_size=test_size)
    expected = None
    results: dict[str, Any] = {}
    for name, overrides in VARIANTS:
        if expected is not None and clock.left() < 1.2 * expected:
            log(out, {"stage": f"skip {name}", "left": round(clock.left(), 1)})
            continue
        t0 = time.perf_counter()
        variant_preset = get_preset("ship")
        variant_preset.pretrain = preset.pretrain
        for text in overrides:
            apply_override(variant_preset, text)
        if args.quick:
            variant_preset.finetune.epochs = 2
        variant_plan = replace(
            plan,
            preset=variant_preset,
            pretrain_roots=[],
            pretrained_dir=pretrained,
            workdir=args.workdir / f"cv-{name}",
            finetune_checkpoints=False,
        )
        try:
            report = run_variant(variant_plan, splits, name, overrides, out, results)
        except Exception:  # a failed variant must not lose the others
            log(out, {"stage": f"cv {name}", "error": traceback.format_exc()})
            continue
        expected = time.perf_counter() - t0
        summary = {
            v: {k: round(report["variants"][v][k]["mean"], 4) for k in ("rank1", "mAP")}
            for v in report["variants"]
        }
        log(
            out,
            {
                "stage": f"cv {name}",
                "seconds": round(expected, 1),
                "summary": summary,
                "elapsed": round(clock.elapsed(), 1),
            },
        )
    log(out, {"stage": "done", "elapsed": round(clock.elapsed(), 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
