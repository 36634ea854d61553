"""Training speed: the bare model step against the whole training loop, fp32 against bf16.

    python benchmarks/bench_train.py [--archs resnet56 resnet110] [--batch 64] [--steps 20]

For each member and precision it prints images per second of

* the **bare step**: forward, cross-entropy, backward and AdamW step on one fixed,
  pre-normalised channels-last batch (what the hardware can do), and
* the **loop**: :func:`app.ml.train.reid.train_stage` (the code path of every training) over
  a synthetic uint8 set of ``steps`` batches, with its batch sampling, augmentation (random
  crop + flip, random erasing, grey and pseudo-sketch photos), logging and the per-epoch
  host synchronisation, timed from its second epoch (the first warms the allocator),

and the loop's share of the bare step, measured in the same run. ``--device cuda`` runs it on
a GPU. Figures on a machine that is busy with something else are pessimistic.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml.infer.precision import Precision, autocast_dtype
from app.ml.models.resnet_cifar import MemberSpec, build_member
from app.ml.train.config import get_preset
from app.ml.train.reid import make_optimizer, pick_device, train_stage
from app.ml.train.tensorset import TensorSet


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_step(
    spec: MemberSpec, batch: int, steps: int, device: torch.device, precision: Precision
) -> float:
    cfg = get_preset("ship").pretrain
    model = build_member(spec).to(device).to(memory_format=torch.channels_last).train()
    opt = make_optimizer(model, cfg)
    x = torch.randn(batch, 3, *spec.input_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec.num_classes, (batch,), device=device)
    amp = autocast_dtype(device, precision)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits, _ = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def loop(
    spec: MemberSpec, batch: int, steps: int, device: torch.device, precision: Precision
) -> float:
    cfg = get_preset("ship").pretrain.model_copy(
        update={"epochs": 2, "warmup_epochs": 0, "batch_size": batch}
    )
    n = batch * steps
    gen = torch.Generator().manual_seed(0)
    data = TensorSet(
        images=torch.randint(0, 256, (n, 3, *spec.input_size), dtype=torch.uint8, generator=gen),
        labels=torch.randint(0, spec.num_classes, (n,), generator=gen),
        pids=torch.arange(n),
        modality=torch.zeros(n, dtype=torch.int64),
    )
    seconds: list[float] = []
    train_stage(
        build_member(spec),
        data,
        cfg,
        device=device,
        seed=0,
        progress=False,
        precision=precision,
        log=lambda record: seconds.append(float(record["seconds"])),
    )
    return n / seconds[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", nargs="+", default=["resnet56", "resnet110"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--classes", type=int, default=1714)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "bf16"],
        choices=["fp32", "bf16"],
        help="bf16 on a CPU without bf16 units is emulated and very slow: skip it there",
    )
    args = parser.parse_args()
    device = pick_device(args.device)
    threads = torch.get_num_threads()
    print(f"device {device}, {threads} threads, batch {args.batch}, {args.steps} steps, 64x32")
    print(f"{'member':<10} {'precision':<9} {'bare img/s':>10} {'loop img/s':>10} {'loop/bare':>9}")
    for arch in args.archs:
        spec = MemberSpec(
            arch=arch, fc_dim=512, bn_neck=True, dropout=0.0, num_classes=args.classes
        )
        for precision in args.precisions:
            bare = bare_step(spec, args.batch, args.steps, device, precision)  # type: ignore[arg-type]
            full = loop(spec, args.batch, args.steps, device, precision)  # type: ignore[arg-type]
            print(f"{arch:<10} {precision:<9} {bare:>10.0f} {full:>10.0f} {full / bare:>9.2f}")
    print("auto precision here:", autocast_dtype(device, "auto") or "fp32")


if __name__ == "__main__":
    main()
