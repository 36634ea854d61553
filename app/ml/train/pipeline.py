"""From data folders to a model bundle: pre-train, fine-tune, save; add a translator.

The CLI (``sketchreid train reid`` / ``train translator``), the cross-validation protocol
and the script that rebuilds the shipped bundle all go through these functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.errors import UserInputError
from app.ml.bundle.store import Manifest, load_bundle, resave, save_bundle
from app.ml.data.pku import PKUSketchDataset
from app.ml.data.splits import relabel_pids
from app.ml.infer.precision import Precision
from app.ml.models.cyclegan import GeneratorSpec, build_generator
from app.ml.models.resnet_cifar import MemberSpec, ResNetCifar, build_member, count_parameters
from app.ml.train.config import ModelConfig, Preset
from app.ml.train.pretrain import (
    health_check,
    load_pretrained,
    pretrain_sets,
    read_pretrained_manifest,
    split_pretrain_samples,
)
from app.ml.train.reid import (
    classifier_free_parameters,
    json_logger,
    new_member,
    train_stage,
)
from app.ml.train.tensorset import TensorSet, build_tensor_set, decode_samples
from app.ml.train.translator import train_translator

BundleMember = tuple[str, MemberSpec, ResNetCifar, dict[str, Any]]


@dataclass
class TrainPlan:
    """Everything one `train reid` run needs."""

    dataset: PKUSketchDataset
    train_pids: list[int]
    archs: list[str]
    preset: Preset
    seed: int = 0
    # Market-style folders to pre-train on (identities of different folders kept apart) ...
    pretrain_roots: list[Path] = field(default_factory=list)
    # ... or a folder of committed pre-trained backbones (model_store/pretrained) to start from.
    pretrained_dir: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Precision = "auto"
    workdir: Path = Path("runs")
    progress: bool = True
    # Pre-train with another head than the fine-tuned model's (e.g. share one pre-trained
    # backbone across an FC-d sweep); None: the preset's own model configuration.
    pretrain_model: ModelConfig | None = None
    # Health check of pre-training: identities of the first pre-training folder held out,
    # and how often (epochs) their photo->photo retrieval is measured.
    holdout: int = 100
    health_every: int = 5
    # Pre-training continues these backbones (a pre-trained folder) instead of starting afresh:
    # a warm restart, so pre-training accumulates run after run.
    pretrain_init: Path | None = None
    # Per-epoch checkpoints of fine-tuning (minutes on a CPU; a GPU run of seconds may skip them).
    finetune_checkpoints: bool = True


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def environment() -> dict[str, str]:
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    return {"torch": torch.__version__, "python": platform.python_version(), "device": device}


def member_spec(
    plan: TrainPlan, arch: str, num_classes: int, model: ModelConfig | None = None
) -> MemberSpec:
    m = model or plan.preset.model
    return MemberSpec(
        arch=arch,
        depth=int(arch.removeprefix("resnet")),
        fc_dim=m.fc_dim,
        spp=m.spp,
        bn_neck=m.bn_neck,
        dropout=m.dropout,
        num_classes=num_classes,
        input_size=m.input_size,
    )


def pretrain_member(
    plan: TrainPlan, arch: str, model_cfg: ModelConfig | None = None
) -> tuple[MemberSpec, ResNetCifar, dict[str, Any]]:
    """Pre-train ``arch`` on the plan's Market-style folders, with the health check.

    The result is cached in the work folder by configuration; an interrupted run resumes
    from its per-epoch checkpoint.
    """
    if not plan.pretrain_roots:
        raise UserInputError("pre-training needs at least one --pretrain-root folder")
    m = model_cfg or plan.pretrain_model or plan.preset.model
    roots = [Path(r) for r in plan.pretrain_roots]
    # The cache key needs only the file lists; images are decoded when training is due.
    samples, _, _ = split_pretrain_samples(roots, plan.holdout)
    spec = member_spec(plan, arch, len({(i, s.pid) for i, s in samples}), m)
    cfg = plan.preset.pretrain
    init_state, continued = _warm_start(plan, arch, spec)
    key = _digest(
        [str(r.resolve()) for r in roots],
        len(samples),
        plan.holdout,
        spec.model_dump(),
        cfg.model_dump(),
        plan.seed,
        *([continued["sha256"]] if continued else []),
    )
    out = plan.workdir / "pretrain" / f"{arch}-{key}.pt"
    if out.exists():
        cached = torch.load(out, weights_only=False)
        model = build_member(spec)
        model.load_state_dict(cached["state"])
        return spec, model.eval(), cached["info"]
    train, holdout, data_info = pretrain_sets(
        roots, plan.holdout, m.input_size, cache_dir=plan.workdir / "cache", progress=plan.progress
    )
    health = health_check(holdout, input_size=m.input_size, tta_flip=m.tta_flip, device=plan.device)
    curve: list[dict[str, Any]] = []
    log_file = json_logger(plan.workdir / "logs" / f"pretrain-{arch}-{key}.jsonl")

    def log(record: dict[str, Any]) -> None:
        log_file(record)
        if "health" in record:
            curve.append({"epoch": record["epoch"], **record["health"]})

    t0 = time.perf_counter()
    checkpoint = plan.workdir / "pretrain" / f"{arch}-{key}.ckpt"
    model = train_stage(
        new_member(spec, init_state, seed=plan.seed),
        train,
        cfg,
        device=plan.device,
        seed=plan.seed,
        desc=f"pretrain {arch}",
        log=log,
        checkpoint=checkpoint,
        progress=plan.progress,
        precision=plan.precision,
        health=health,
        health_every=plan.health_every,
    )
    info = {
        "data": data_info,
        "config": cfg.model_dump(mode="json"),
        "model": m.model_dump(mode="json"),
        "seed": plan.seed,
        "epochs": cfg.epochs,
        "epochs_total": cfg.epochs + (continued["epochs_total"] if continued else 0),
        "precision": plan.precision,
        "seconds": round(time.perf_counter() - t0, 1),
        "health": curve,
        "environment": environment(),
    }
    if continued:
        info["continued_from"] = continued
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"state": model.state_dict(), "info": info}, tmp)
    tmp.replace(out)
    checkpoint.unlink(missing_ok=True)
    return spec, model, info


def _warm_start(
    plan: TrainPlan, arch: str, spec: MemberSpec
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """The backbone a warm-restarted pre-training continues, and what it was: folder, sha256,
    epochs so far and its earlier runs (each with its health curve). The identity classifier
    is not stored with backbones, so it starts afresh (the preset's warm-up eases it in)."""
    if plan.pretrain_init is None:
        return None, None
    old_spec, model, old = load_pretrained(plan.pretrain_init, arch)
    differ = [
        f"{name} {getattr(old_spec, name)} -> {getattr(spec, name)}"
        for name in ("depth", "fc_dim", "spp", "bn_neck", "input_size")
        if getattr(old_spec, name) != getattr(spec, name)
    ]
    if differ:
        raise UserInputError(
            f"{plan.pretrain_init}: its {arch} differs from this run ({', '.join(differ)}); "
            "a warm restart continues the same architecture"
        )
    entry = next(
        e for e in read_pretrained_manifest(plan.pretrain_init)["members"] if e["arch"] == arch
    )
    earlier = {k: old.get(k) for k in ("epochs", "config", "health", "seconds", "precision")}
    history = [*old.get("continued_from", {}).get("runs", []), earlier]
    continued = {
        "folder": str(plan.pretrain_init),
        "sha256": entry["sha256"],
        "epochs_total": int(old.get("epochs_total", old.get("epochs", 0))),
        "runs": history,
    }
    return dict(model.backbone_state_dict()), continued


HEAD_PREFIXES = ("fc.", "neck.")
"""State-dict prefixes of the head between the pooled features and the classifier."""


def initial_state(
    plan: TrainPlan, arch: str
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """The weights a member starts fine-tuning from: a committed pre-trained backbone, a
    fresh pre-training on the plan's folders, or nothing (random initialisation)."""
    if plan.pretrained_dir is not None:
        spec, model, info = load_pretrained(plan.pretrained_dir, arch)
        wanted = member_spec(plan, arch, 1)
        state = dict(model.backbone_state_dict())
        differ = [
            f"{name} {getattr(spec, name)} -> {getattr(wanted, name)}"
            for name in ("fc_dim", "spp", "bn_neck")
            if getattr(spec, name) != getattr(wanted, name)
        ]
        if differ:
            # Another head (the paper's SPP variant, another FC size): the convolutional
            # trunk comes from the backbone, FC-d and the neck start fresh, as the paper
            # replaces the fully connected layers when it fine-tunes.
            state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
            info = {**info, "new_head": ", ".join(differ)}
        return state, {"from": str(plan.pretrained_dir), **info}
    if plan.pretrain_roots:
        _, model, info = pretrain_member(plan, arch)
        return dict(model.backbone_state_dict()), info
    return None, None


def _run_stage(
    plan: TrainPlan, model: ResNetCifar, train: TensorSet, stage: str, arch: str, key: str
) -> ResNetCifar:
    """Train one fine-tuning stage with its log and resumable checkpoint."""
    checkpoint = plan.workdir / stage / f"{arch}-{key}.ckpt" if plan.finetune_checkpoints else None
    model = train_stage(
        model,
        train,
        plan.preset.finetune,
        device=plan.device,
        seed=plan.seed,
        desc=f"{stage} {arch}",
        log=json_logger(plan.workdir / "logs" / f"{stage}-{arch}-{key}.jsonl"),
        checkpoint=checkpoint,
        progress=plan.progress,
        precision=plan.precision,
    )
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return model


def train_members(plan: TrainPlan) -> list[BundleMember]:
    """Pre-train (when asked) and fine-tune each architecture on the training identities."""
    if not plan.train_pids:
        raise UserInputError("no training identities: the split leaves nothing to train on")
    subset = plan.dataset.subset(plan.train_pids)
    samples = subset.photos + subset.sketches
    labels = relabel_pids(s.pid for s in samples)
    size = plan.preset.model.input_size
    train = build_tensor_set(
        samples, size, label_of=labels, cache_dir=plan.workdir / "cache", progress=plan.progress
    )
    run_key = _digest(
        sorted(plan.train_pids),
        plan.preset.model_dump(),
        plan.seed,
        [str(r) for r in plan.pretrain_roots],
        str(plan.pretrained_dir),
    )
    members: list[BundleMember] = []
    for arch in plan.archs:
        init, pre_info = initial_state(plan, arch)
        spec = member_spec(plan, arch, len(labels))
        t0 = time.perf_counter()
        model = _run_stage(
            plan, new_member(spec, init, seed=plan.seed), train, "finetune", arch, run_key
        )
        info = {
            "pretrain": pre_info,
            "finetune": {
                "data": str(plan.dataset.root),
                "identities": len(labels),
                "photos": len(subset.photos),
                "sketches": len(subset.sketches),
                "config": plan.preset.finetune.model_dump(mode="json"),
                "seconds": round(time.perf_counter() - t0, 1),
            },
            "seed": plan.seed,
            "embedding_parameters": classifier_free_parameters(model),
            "parameters": count_parameters(model),
        }
        members.append((arch, spec, model, info))
    return members


def save_members(
    out: Path,
    plan: TrainPlan,
    members: list[BundleMember],
    *,
    name: str,
    version: str,
    command: str,
) -> Manifest:
    return save_bundle(
        out,
        name=name,
        version=version,
        members=members,
        input_size=plan.preset.model.input_size,
        tta_flip=plan.preset.model.tta_flip,
        training={
            "command": command,
            "preset": plan.preset.model_dump(mode="json"),
            "seed": plan.seed,
            "data_root": str(plan.dataset.root),
            "train_pids": sorted(plan.train_pids),
            "pretrain_roots": [str(r) for r in plan.pretrain_roots],
            "pretrained": str(plan.pretrained_dir) if plan.pretrained_dir else None,
            "environment": environment(),
        },
        overwrite=True,
    )


def translator_for(
    dataset: PKUSketchDataset,
    train_pids: list[int],
    preset: Preset,
    *,
    seed: int,
    device: torch.device,
    workdir: Path,
    command: str = "",
    progress: bool = True,
) -> tuple[GeneratorSpec, nn.Module, dict[str, Any]]:
    """Train (or reuse from ``workdir``) the CycleGAN generator for these identities."""
    subset = dataset.subset(train_pids)
    if not subset.sketches:
        raise UserInputError("the training identities have no sketches to learn a translator from")
    cfg = preset.translator
    key = _digest(str(Path(dataset.root).resolve()), sorted(train_pids), cfg.model_dump(), seed)
    cached = workdir / "translator" / f"{key}.pt"
    if cached.exists():
        saved = torch.load(cached, weights_only=False)
        spec = GeneratorSpec.model_validate(saved["spec"])
        generator = build_generator(spec)
        generator.load_state_dict(saved["state"])
        return spec, generator.eval(), saved["info"]
    sketches = decode_samples(subset.sketches, cfg.input_size, cache_dir=workdir / "cache")
    photos = decode_samples(subset.photos, cfg.input_size, cache_dir=workdir / "cache")
    t0 = time.perf_counter()
    checkpoint = workdir / "translator" / f"{key}.ckpt"
    spec, generator = train_translator(
        sketches,
        photos,
        cfg,
        device=device,
        seed=seed,
        log=json_logger(workdir / "logs" / f"translator-{key}.jsonl"),
        checkpoint=checkpoint,
        progress=progress,
    )
    checkpoint.unlink(missing_ok=True)
    info = {
        "command": command,
        "data": str(dataset.root),
        "train_pids": sorted(train_pids),
        "sketches": len(subset.sketches),
        "photos": len(subset.photos),
        "config": cfg.model_dump(mode="json"),
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "environment": environment(),
    }
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    torch.save(
        {"spec": spec.model_dump(mode="json"), "state": generator.state_dict(), "info": info}, tmp
    )
    tmp.replace(cached)
    return spec, generator, info


def add_translator(
    bundle_dir: Path,
    dataset: PKUSketchDataset,
    train_pids: list[int],
    preset: Preset,
    *,
    seed: int,
    device: torch.device,
    workdir: Path,
    command: str,
    progress: bool = True,
) -> Manifest:
    """Train the sketch->photo CycleGAN on the training identities and add it to the bundle."""
    bundle = load_bundle(bundle_dir)
    translator = translator_for(
        dataset,
        train_pids,
        preset,
        seed=seed,
        device=device,
        workdir=workdir,
        command=command,
        progress=progress,
    )
    return resave(bundle, bundle_dir, translator=translator)
