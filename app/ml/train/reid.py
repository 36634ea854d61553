"""Training one ensemble member: pre-training on photos, fine-tuning on photos and sketches.

The loop is plain PyTorch on tensors already in memory (:mod:`app.ml.train.tensorset`):
augment whole batches on the device, cross-entropy (plus an optional batch-hard triplet
term), SGD, Adam or AdamW, step or cosine decay after an optional linear warm-up. It runs
under bf16 autocast with channels-last tensors where the hardware has bf16 units
(:mod:`app.ml.infer.precision`) and never waits on the device inside an epoch: per-batch figures
are summed on the device and read once per epoch. Each epoch appends one JSON line to the
log and, when ``checkpoint`` is given, saves a checkpoint from which an interrupted run
resumes with the same result. An optional ``health`` callback (e.g. held-out retrieval
figures) runs every ``health_every`` epochs and after the last one; its figures join that
epoch's log record.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from app.ml.infer.precision import Precision, autocast_dtype
from app.ml.models.resnet_cifar import MemberSpec, ResNetCifar, build_member
from app.ml.train import augment
from app.ml.train.checkpoint import load_checkpoint, save_checkpoint
from app.ml.train.config import StageConfig
from app.ml.train.losses import batch_hard_triplet
from app.ml.train.sampler import identity_balanced_batches, shuffled_batches
from app.ml.train.tensorset import PHOTO, TensorSet
from app.ml.transforms import DEFAULT_MEAN, DEFAULT_STD

LogFn = Callable[[dict[str, Any]], None]
HealthFn = Callable[[ResNetCifar], dict[str, Any]]


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(epoch: int, cfg: StageConfig) -> float:
    """Learning-rate multiplier for ``epoch`` (0-based): linear warm-up, then step decay or a
    cosine from 1 towards 0 over the remaining epochs (set once per epoch)."""
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return (epoch + 1) / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        span = max(1, cfg.epochs - cfg.warmup_epochs)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    return cfg.gamma ** (epoch // cfg.step_size)


def _batches(train: TensorSet, cfg: StageConfig, gen: torch.Generator) -> list[torch.Tensor]:
    if cfg.triplet_weight > 0:
        return list(
            identity_balanced_batches(train.labels, cfg.batch_size, cfg.instances_per_id, gen)
        )
    return list(shuffled_batches(len(train), cfg.batch_size, gen))


def _augment(
    x_uint8: torch.Tensor, is_photo: torch.Tensor, cfg: StageConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmented, normalised batch and a mask of its sketch-like images: the real
    sketches, plus the photos drawn as whole pseudo-sketches when ``pseudo_sketch_anchor``."""
    x = augment.to_unit(x_uint8)
    x, drawn = augment.pseudo_sketch(
        x, cfg.pseudo_sketch, is_photo, cfg.sketch_styles, cfg.sketch_local
    )
    sketch_like = ~is_photo | drawn if cfg.pseudo_sketch_anchor else ~is_photo
    x = augment.random_grey(x, cfg.grey, is_photo)
    pad = cfg.crop_pad if cfg.crop_pad is not None else max(1, x.shape[-2] // 16)
    x = augment.random_crop_flip(x, pad, cfg.flip)
    mean = torch.tensor(DEFAULT_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(DEFAULT_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    x = augment.random_erasing(x, cfg.random_erasing)
    return x.contiguous(memory_format=torch.channels_last), sketch_like


def make_optimizer(model: nn.Module, cfg: StageConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def new_member(
    spec: MemberSpec, init_state: dict[str, torch.Tensor] | None, *, seed: int
) -> ResNetCifar:
    """Build a member with initial weights drawn from ``seed`` (the global generator is left
    as it was); copy every pre-trained weight whose name and shape match."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_member(spec)
    if init_state:
        own = model.state_dict()
        compatible = {k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape}
        own.update(compatible)
        model.load_state_dict(own)
    return model


def train_stage(
    model: ResNetCifar,
    train: TensorSet,
    cfg: StageConfig,
    *,
    device: torch.device,
    seed: int,
    desc: str = "train",
    log: LogFn | None = None,
    checkpoint: Path | None = None,
    progress: bool = True,
    precision: Precision = "auto",
    health: HealthFn | None = None,
    health_every: int = 0,
) -> ResNetCifar:
    """Train ``model`` on ``train`` in place and return it (in eval mode, on the CPU)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    model.to(memory_format=torch.channels_last)
    data = train.to(device)
    opt = make_optimizer(model, cfg)
    start_epoch = 0
    state = load_checkpoint(checkpoint, cfg, seed, device)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = int(state["epoch"])
    amp = autocast_dtype(device, precision)
    bar = tqdm(
        range(start_epoch, cfg.epochs), desc=desc, leave=False, disable=not progress, unit="ep"
    )
    for epoch in bar:
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(epoch, cfg)
        sums = torch.zeros(4, device=device)  # loss, ce, triplet, correct (per-image sums)
        seen = 0
        for index in _batches(train, cfg, gen):
            index = index.to(device, non_blocking=True)
            is_photo = data.modality[index] == PHOTO
            x, sketch_like = _augment(data.images[index], is_photo, cfg)
            y = data.labels[index]
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits, emb = model(x)
            ce = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            loss = ce
            tri = torch.zeros((), device=device)
            if cfg.triplet_weight > 0:
                anchors = sketch_like if cfg.triplet_cross_modal else None
                tri = batch_hard_triplet(emb, y, cfg.triplet_margin, anchors=anchors)
                loss = loss + cfg.triplet_weight * tri
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = len(y)
            correct = (logits.detach().argmax(1) == y).sum()
            sums += torch.stack([loss.detach() * n, ce.detach() * n, tri.detach() * n, correct])
            seen += n
        totals = (sums / max(1, seen)).tolist()  # the one host synchronisation of the epoch
        record: dict[str, Any] = {
            "stage": desc,
            "epoch": epoch + 1,
            "lr": opt.param_groups[0]["lr"],
            "loss": totals[0],
            "ce": totals[1],
            "triplet": totals[2],
            "train_acc": totals[3],
            "images": seen,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"{desc}: loss became {record['loss']} at epoch {epoch + 1}")
        last = epoch + 1 == cfg.epochs
        if health is not None and (last or (health_every and (epoch + 1) % health_every == 0)):
            record["health"] = health(model)
            model.train()
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.2f}")
        if log is not None:
            log(record)
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "epoch": epoch + 1,
                },
                cfg,
                seed,
            )
    return model.cpu().to(memory_format=torch.contiguous_format).eval()


def json_logger(path: Path) -> LogFn:
    """Append each record as one JSON line to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(record: dict[str, Any]) -> None:
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    return write


def classifier_free_parameters(model: nn.Module) -> int:
    """Parameters that produce the embedding (everything but the identity classifier)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("classifier."))
