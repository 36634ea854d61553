"""Reproduce the paper's tables (and ours) on PKU-Sketch with cross-validated identity splits,
and build the shipped bundles, in one run that fills a GPU with parallel workers.

    python scripts/paper_tables.py --data-root DATA/pku-sketch-dev \\
        --pretrain-root DATA/cuhk03-market --workdir runs/tables --out results/ \\
        [--workers 2] [--deadline 480] [--quick]

Stage 1 pre-trains every member on the Market-style folder and trains the CycleGAN of each
split; stage 2 trains the final bundles with the project's own CLI and runs every
cross-validation job (one experiment × one split), most important first. Each finished job is
written to OUT/results.json at once, so a run cut short keeps what it finished; past
``--deadline`` seconds no new job starts. ``--quick`` shrinks everything to a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAPER_PRETRAIN_EPOCHS = 30  # the paper's 100 pre-training epochs, cut to fit one GPU session


@dataclass
class Experiment:
    """One row group of the tables: a preset, its overrides and the members it trains."""

    name: str
    preset: str
    archs: list[str]
    splits: int
    pretrain: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    translator: bool = False
    per_member: bool = True
    pretrain_shared: bool = False  # pre-train with the preset's default head (FC/SPP sweeps)


R56_R110 = ["resnet56", "resnet110"]


def experiments(quick: bool) -> list[Experiment]:
    n10, n5 = (2, 2) if quick else (10, 5)
    paper = {"pretrain_epochs": PAPER_PRETRAIN_EPOCHS}
    rows = [
        Experiment("best", "best", R56_R110, n10, translator=True),
        Experiment("paper", "paper", R56_R110, n10, overrides=paper),
        Experiment("cpu", "cpu", R56_R110, n10),
        Experiment("paper-nopretrain", "paper", R56_R110, n10, pretrain=False),
        Experiment("best-nopretrain", "best", R56_R110, n5, pretrain=False),
        Experiment(
            "paper-spp",
            "paper",
            R56_R110,
            n10,
            overrides={**paper, "spp": True},
            pretrain_shared=True,
        ),
        Experiment("best-lr0.01", "best", R56_R110, n5, overrides={"lr": 0.01}),
        Experiment("best-nopseudo", "best", R56_R110, n5, overrides={"pseudo_sketch": 0.0}),
        Experiment(
            "best-dropout0.5",
            "best",
            R56_R110,
            n5,
            overrides={"dropout": 0.5},
            pretrain_shared=True,
        ),
    ]
    for fc in (128, 256, 768, 1024):
        rows.append(
            Experiment(
                f"paper-fc{fc}",
                "paper",
                R56_R110,
                n5,
                overrides={**paper, "fc": fc},
                pretrain_shared=True,
            )
        )
    for re in (0.0, 0.1, 0.2, 0.3, 0.4):
        rows.append(
            Experiment(
                f"paper-re{re:.1f}",
                "paper",
                ["resnet56"],
                n5,
                overrides={**paper, "random_erasing": re},
            )
        )
    return rows


# --------------------------------------------------------------------------- worker side


def _preset(exp: Experiment, quick: bool):  # type: ignore[no-untyped-def]
    from app.cli.train_cmd import preset_from_args

    o = exp.overrides
    ns = argparse.Namespace(
        preset=exp.preset,
        fc=o.get("fc"),
        input_size=None,
        spp=o.get("spp", False),
        epochs=None,
        arch=exp.archs,
        pretrain_epochs=o.get("pretrain_epochs"),
        random_erasing=o.get("random_erasing"),
    )
    preset = preset_from_args(ns)
    if "lr" in o:
        preset.finetune.lr = o["lr"]
    if "pseudo_sketch" in o:
        preset.finetune.pseudo_sketch = o["pseudo_sketch"]
    if "dropout" in o:
        preset.model.dropout = o["dropout"]
    if quick:
        for stage in (preset.pretrain, preset.finetune):
            stage.epochs, stage.step_size, stage.warmup_epochs = 2, 1, 0
        preset.translator.epochs_constant = preset.translator.epochs_decay = 1
    return preset


def _plan(exp: Experiment, args: argparse.Namespace, train_pids: list[int]):  # type: ignore[no-untyped-def]
    import torch

    from app.ml.data.pku import load_pku_sketch
    from app.ml.train.pipeline import TrainPlan

    torch.set_num_threads(2)
    preset = _preset(exp, args.quick)
    return TrainPlan(
        dataset=load_pku_sketch(args.data_root),
        train_pids=train_pids,
        archs=exp.archs,
        preset=preset,
        seed=0,
        pretrain_root=Path(args.pretrain_root) if exp.pretrain else None,
        device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
        workdir=Path(args.workdir),
        progress=False,
        pretrain_model=_preset(Experiment("", exp.preset, [], 0), args.quick).model
        if exp.pretrain_shared
        else None,
    )


def job_pretrain(exp: Experiment, arch: str, args: argparse.Namespace) -> dict[str, Any]:
    from app.ml.train.pipeline import pretrain_member

    t0 = time.time()
    _, info = pretrain_member(_plan(exp, args, []), arch)
    return {
        "kind": "pretrain",
        "experiment": exp.name,
        "arch": arch,
        "info": info,
        "wall": time.time() - t0,
    }


def job_translator(
    exp: Experiment, split: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    from app.ml.train.pipeline import translator_for

    plan = _plan(exp, args, split["train"])
    t0 = time.time()
    translator_for(
        plan.dataset,
        split["train"],
        plan.preset,
        seed=plan.seed,
        device=plan.device,
        workdir=plan.workdir,
    )
    return {
        "kind": "translator",
        "experiment": exp.name,
        "split": split.get("index"),
        "wall": time.time() - t0,
    }


def job_cv(exp: Experiment, split: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from app.ml.crossval import cross_validate
    from app.ml.data.splits import Split
    from app.ml.evaluate import RerankParams
    from app.ml.models.resnet_cifar import MemberSpec, build_member, count_parameters

    plan = _plan(exp, args, [])
    plan.workdir = Path(args.workdir) / "cv" / f"{exp.name}-{split['index']}"
    plan.workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("pretrain", "translator", "cache"):  # share caches across jobs
        link = plan.workdir / sub
        if not link.exists():
            link.symlink_to(Path(args.workdir).resolve() / sub, target_is_directory=True)
    t0 = time.time()
    report = cross_validate(
        plan,
        [Split(split["train"], split["test"], split["seed"])],
        with_translator=exp.translator,
        rerank=RerankParams(),
        per_member=exp.per_member,
    )
    m = plan.preset.model
    params = {
        arch: count_parameters(
            build_member(
                MemberSpec(
                    arch=arch, fc_dim=m.fc_dim, spp=m.spp, num_classes=1, input_size=m.input_size
                )
            )
        )
        for arch in exp.archs
    }
    return {
        "kind": "cv",
        "experiment": exp.name,
        "split": split["index"],
        "wall": time.time() - t0,
        "variants": {k: v["splits"][0] for k, v in report["variants"].items()},
        "parameters": params,
        "preset": report["preset"],
        "pretrain": exp.pretrain,
    }


def job_final(exp: Experiment, args: argparse.Namespace) -> dict[str, Any]:
    """Train a shipped bundle with the project's own CLI (train reid + train translator)."""
    from app.cli import train_cmd

    parser = argparse.ArgumentParser(prog="sketchreid")
    train_cmd.register(parser.add_subparsers(dest="command"))
    out = Path(args.workdir) / "final" / exp.name
    argv = [
        "train",
        "reid",
        "--data-root",
        args.data_root,
        "--pretrain-root",
        args.pretrain_root,
        "--arch",
        ",".join(exp.archs),
        "--preset",
        exp.preset,
        "--workdir",
        args.workdir,
        "--no-progress",
        "--out",
        str(out),
    ]
    if "pretrain_epochs" in exp.overrides:
        argv += ["--pretrain-epochs", str(exp.overrides["pretrain_epochs"])]
    if args.quick:
        argv += ["--epochs", "2", "--pretrain-epochs", "2"]
    t0 = time.time()
    commands = []
    translator = [
        "train",
        "translator",
        "--data-root",
        args.data_root,
        "--preset",
        exp.preset,
        "--workdir",
        args.workdir,
        "--no-progress",
        "--out",
        str(out),
    ]
    translator += ["--epochs", "2"] if args.quick else []
    for cmd in [argv, translator] if exp.translator else [argv]:
        ns = parser.parse_args(cmd)
        ns.argv = cmd
        ns.func(ns)
        commands.append("sketchreid " + " ".join(cmd))
    return {
        "kind": "final",
        "experiment": exp.name,
        "bundle": str(out),
        "commands": commands,
        "wall": time.time() - t0,
    }


def run_job(kind: str, *payload: Any) -> dict[str, Any]:
    try:
        return {"ok": True, **globals()[f"job_{kind}"](*payload)}
    except Exception:
        return {
            "ok": False,
            "kind": kind,
            "error": traceback.format_exc()[-3000:],
            "experiment": getattr(payload[0], "name", "?"),
        }


# --------------------------------------------------------------------------- driver side


def pretrain_jobs(exps: list[Experiment], args: argparse.Namespace) -> dict[str, tuple]:
    """One pre-training job per distinct (architecture, pre-training configuration)."""
    from app.ml.data.market import load_market
    from app.ml.data.splits import relabel_pids
    from app.ml.train.pipeline import member_spec, pretrain_key

    samples = load_market(args.pretrain_root)
    classes = len(relabel_pids(s.pid for s in samples))
    jobs: dict[str, tuple] = {}
    for e in exps:
        if not e.pretrain:
            continue
        plan = _plan(e, args, [])
        for arch in e.archs:
            spec = member_spec(plan, arch, classes, plan.pretrain_model)
            jobs.setdefault(f"{arch}-{pretrain_key(plan, spec, len(samples))}", (e, arch))
    return jobs


def export_bundle(bundle: Path, out: Path) -> None:
    """Tar a bundle into OUT in parts of at most 15 MiB (the device returns files <= 16 MiB)."""
    tar_path = bundle.with_suffix(".tar")
    with tarfile.open(tar_path, "w") as tar:
        tar.add(bundle, arcname=bundle.name)
    data = tar_path.read_bytes()
    chunk = 15 * 2**20
    for i in range(0, len(data), chunk):
        (out / f"bundle-{bundle.name}.tar.{i // chunk}").write_bytes(data[i : i + chunk])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--pretrain-root", required=True)
    parser.add_argument("--workdir", default="runs/tables")
    parser.add_argument("--out", type=Path, required=True)
    # Measured on one H200: with 8 processes sharing the GPU a ResNet-56 step at 64x32 took
    # ~133 ms; one process alone took 50-73 ms at 128x64 (4x the pixels). Keep it small.
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=480.0, help="seconds; no new job after")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma-separated experiment names")
    args = parser.parse_args()

    from app.ml.data.pku import load_pku_sketch
    from app.ml.data.splits import random_splits

    start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = load_pku_sketch(args.data_root)
    test_size = min(50, len(dataset.sketch_pids) // 3)
    splits = [
        {"index": i, "train": s.train, "test": s.test, "seed": s.seed}
        for i, s in enumerate(random_splits(dataset, 10, seed=0, test_size=test_size))
    ]
    exps = experiments(args.quick)
    if args.only:
        keep = set(args.only.split(","))
        exps = [e for e in exps if e.name in keep]
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "splits": splits,
        "test_size": test_size,
        "jobs": [],
        "experiments": [vars(e) for e in exps],
    }

    def save() -> None:
        tmp = args.out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(args.out / "results.json")

    def drain(futures: dict[Future, str], block_all: bool) -> None:
        while futures:
            done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            for f in done:
                label = futures.pop(f)
                res = f.result()
                res["label"] = label
                res["t"] = round(time.time() - start, 1)
                results["jobs"].append(res)
                status = "ok" if res["ok"] else "FAILED\n" + res["error"]
                if res["ok"] and res["kind"] == "final":
                    export_bundle(Path(res["bundle"]), args.out)
                print(f"[{res['t']:7.1f}s] {label}: {status}", flush=True)
                save()
            if not block_all:
                return

    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        stage1: dict[Future, str] = {}
        finals = [e for e in exps if e.name in ("best", "paper")]
        for key, (e, arch) in pretrain_jobs(exps, args).items():
            stage1[pool.submit(run_job, "pretrain", e, arch, args)] = f"pretrain {arch} {key}"
        for e in exps:
            if e.translator:
                for s in splits[: e.splits]:
                    stage1[pool.submit(run_job, "translator", e, s, args)] = (
                        f"translator {e.name} split{s['index']}"
                    )
                all_ids = {"index": "all", "train": dataset.pids, "test": [], "seed": None}
                stage1[pool.submit(run_job, "translator", e, all_ids, args)] = (
                    f"translator {e.name} all"
                )
        drain(stage1, block_all=True)

        stage2: dict[Future, str] = {}
        queue: list[tuple[str, tuple[Any, ...], str]] = [
            ("final", (e, args), f"final {e.name}") for e in finals
        ]
        main_rows = [e for e in exps if e.name in ("best", "paper")]
        for e in main_rows:
            for s in splits[: e.splits]:
                queue.append(("cv", (e, s, args), f"cv {e.name} split{s['index']}"))
        for s in splits:  # the other rows split by split, so a cut-short run stays balanced
            for e in exps:
                if e not in main_rows and s["index"] < e.splits:
                    queue.append(("cv", (e, s, args), f"cv {e.name} split{s['index']}"))
        while queue or stage2:
            while queue and len(stage2) < args.workers and time.time() - start < args.deadline:
                kind, payload, label = queue.pop(0)
                stage2[pool.submit(run_job, kind, *payload)] = label
            if not stage2:
                break
            drain(stage2, block_all=False)
        results["skipped"] = [label for _, _, label in queue]
    results["seconds"] = round(time.time() - start, 1)
    save()
    with tarfile.open(args.out / "logs.tar.gz", "w:gz") as tar:
        logs = Path(args.workdir) / "logs"
        if logs.exists():
            tar.add(logs, arcname="logs")
    print(f"done in {results['seconds']}s; skipped {len(results['skipped'])} jobs", flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
