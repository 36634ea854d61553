"""CycleGAN training: sketch (domain A) <-> photo (domain B), unpaired (Zhu et al., 2017).

LSGAN losses, cycle-consistency weight ``lambda_cycle``, identity weight ``lambda_identity``
(relative to the cycle weight, as in the reference implementation), image pools of 50 fakes,
Adam (2e-4, beta1 0.5), a constant learning rate then a linear decay to zero. Only the
sketch->photo generator is kept: it is what the service runs before embedding a sketch.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import torch
from tqdm import tqdm

from app.ml.models.cyclegan import (
    GANLoss,
    GeneratorSpec,
    ImagePool,
    NLayerDiscriminator,
    ResnetGenerator,
    build_generator,
    init_weights,
    linear_decay_lambda,
    to_gan_input,
)
from app.ml.train.augment import random_crop_flip
from app.ml.train.checkpoint import load_checkpoint, save_checkpoint
from app.ml.train.config import TranslatorConfig
from app.ml.train.reid import LogFn


def _views(batch_uint8: torch.Tensor) -> torch.Tensor:
    """Flip / small-shift augmentation, scaled to [-1, 1]."""
    x = to_gan_input(batch_uint8)
    return random_crop_flip(x, pad=max(1, x.shape[-2] // 32), flip=True)


def train_translator(
    sketches: torch.Tensor,
    photos: torch.Tensor,
    cfg: TranslatorConfig,
    *,
    device: torch.device,
    seed: int,
    log: LogFn | None = None,
    checkpoint: Path | None = None,
    progress: bool = True,
) -> tuple[GeneratorSpec, ResnetGenerator]:
    """Train on uint8 [N,3,H,W] grey ``sketches`` and colour ``photos`` at ``cfg.input_size``.

    Returns the sketch->photo generator (eval mode, CPU) and its spec.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    spec = GeneratorSpec(ngf=cfg.ngf, n_blocks=cfg.n_blocks, input_size=cfg.input_size)
    g_ab = build_generator(spec)  # sketch -> photo (build_generator initialises it)
    g_ab.to(device)
    g_ba = build_generator(spec).to(device)  # photo -> sketch
    d_a = init_weights(NLayerDiscriminator(ndf=cfg.ndf)).to(device)
    d_b = init_weights(NLayerDiscriminator(ndf=cfg.ndf)).to(device)
    gan = GANLoss("lsgan").to(device)
    l1 = torch.nn.L1Loss()
    opt_g = torch.optim.Adam(
        itertools.chain(g_ab.parameters(), g_ba.parameters()), lr=cfg.lr, betas=(cfg.beta1, 0.999)
    )
    opt_d = torch.optim.Adam(
        itertools.chain(d_a.parameters(), d_b.parameters()), lr=cfg.lr, betas=(cfg.beta1, 0.999)
    )
    schedule = linear_decay_lambda(cfg.epochs_constant, cfg.epochs_decay)
    pool_a = ImagePool(cfg.pool_size, seed=seed)
    pool_b = ImagePool(cfg.pool_size, seed=seed + 1)
    nets = {"g_ab": g_ab, "g_ba": g_ba, "d_a": d_a, "d_b": d_b}
    start = 0
    state = load_checkpoint(checkpoint, cfg, seed, device)
    if state is not None:
        for key, net in nets.items():
            net.load_state_dict(state[key])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        gen.set_state(state["generator"])
        start = int(state["epoch"])
    a_all, b_all = sketches.to(device), photos.to(device)
    n = max(len(a_all), len(b_all))
    epochs = cfg.epochs_constant + cfg.epochs_decay
    lam_idt = cfg.lambda_cycle * cfg.lambda_identity
    bar = tqdm(
        range(start, epochs), desc="translator", leave=False, disable=not progress, unit="ep"
    )
    for epoch in bar:
        t0 = time.perf_counter()
        factor = schedule(epoch)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * factor
        ia = torch.randint(len(a_all), (n,), generator=gen)
        ib = torch.randperm(len(b_all), generator=gen).repeat(n // len(b_all) + 1)[:n]
        sums = {"g": 0.0, "cycle": 0.0, "d": 0.0}
        steps = 0
        for s in range(0, n, cfg.batch_size):
            real_a = _views(a_all[ia[s : s + cfg.batch_size].to(device)])
            real_b = _views(b_all[ib[s : s + cfg.batch_size].to(device)])
            fake_b, fake_a = g_ab(real_a), g_ba(real_b)
            rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)
            for d in (d_a, d_b):
                d.requires_grad_(False)
            loss_idt = (l1(g_ab(real_b), real_b) + l1(g_ba(real_a), real_a)) * lam_idt
            loss_gan = gan(d_b(fake_b), True) + gan(d_a(fake_a), True)
            loss_cycle = (l1(rec_a, real_a) + l1(rec_b, real_b)) * cfg.lambda_cycle
            loss_g = loss_gan + loss_cycle + loss_idt
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            for d in (d_a, d_b):
                d.requires_grad_(True)
            pooled_b = pool_b.query(fake_b.detach())
            pooled_a = pool_a.query(fake_a.detach())
            loss_d = 0.5 * (gan(d_b(real_b), True) + gan(d_b(pooled_b), False))
            loss_d = loss_d + 0.5 * (gan(d_a(real_a), True) + gan(d_a(pooled_a), False))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            sums["g"] += float(loss_g.detach())
            sums["cycle"] += float(loss_cycle.detach())
            sums["d"] += float(loss_d.detach())
            steps += 1
        record = {
            "stage": "translator",
            "epoch": epoch + 1,
            "lr": cfg.lr * factor,
            **{f"loss_{k}": v / max(1, steps) for k, v in sums.items()},
            "seconds": round(time.perf_counter() - t0, 3),
        }
        bar.set_postfix(g=f"{record['loss_g']:.2f}", d=f"{record['loss_d']:.2f}")
        if log is not None:
            log(record)
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    **{k: v.state_dict() for k, v in nets.items()},
                    "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "generator": gen.get_state(),
                    "epoch": epoch + 1,
                },
                cfg,
                seed,
            )
    g_ab.cpu().eval()
    return spec, g_ab
