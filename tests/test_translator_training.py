"""Tests for app.ml.train.translator: a short CycleGAN run on tiny synthetic data learns.

Eight synthetic sketches and eight photos at 64×32, the smoke preset's tiny networks (8
filters, one residual block), batch 4, Adam at 1e-3 for 5 epochs (10 generator steps): the
generator loss falls from about 19 to about 10 in that time. A run of 0 epochs with the same
seed returns the generator as it was before its first step, to compare against.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from app.cli.main import main
from app.ml.bundle.store import read_manifest
from app.ml.data.pku import load_pku_sketch
from app.ml.images import load_image
from app.ml.infer.torch_embedder import Translator
from app.ml.models.cyclegan import to_gan_input
from app.ml.train.config import TranslatorConfig
from app.ml.train.translator import train_translator
from app.ml.transforms import image_to_uint8

SIZE = (64, 32)
CFG = TranslatorConfig(
    input_size=SIZE,
    ngf=8,
    ndf=8,
    n_blocks=1,
    epochs_constant=5,
    epochs_decay=0,
    batch_size=4,
    lr=1e-3,
)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images(synth_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [8,3,64,32] grey sketches and colour photos, as the training pipeline decodes them."""
    torch.set_num_threads(1)
    data = load_pku_sketch(synth_root)
    sketches = [image_to_uint8(load_image(s.path), SIZE, grey=True) for s in data.sketches[:8]]
    photos = [image_to_uint8(load_image(s.path), SIZE) for s in data.photos[:8]]
    return torch.stack(sketches), torch.stack(photos)


@pytest.mark.slow
def test_a_short_training_lowers_the_losses_and_moves_the_generator(
    images: tuple[torch.Tensor, torch.Tensor],
) -> None:
    sketches, photos = images
    untrained_cfg = CFG.model_copy(update={"epochs_constant": 0})
    _, before = train_translator(
        sketches, photos, untrained_cfg, device=CPU, seed=0, progress=False
    )
    log: list[dict[str, Any]] = []
    spec, after = train_translator(
        sketches, photos, CFG, device=CPU, seed=0, log=log.append, progress=False
    )
    assert spec.input_size == SIZE
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5]
    first, last = log[0], log[-1]
    assert last["loss_g"] < first["loss_g"], [round(r["loss_g"], 2) for r in log]
    assert last["loss_cycle"] < first["loss_cycle"], [round(r["loss_cycle"], 2) for r in log]

    # Every weight of the sketch->photo generator moved.
    initial = dict(before.named_parameters())
    for name, param in after.named_parameters():
        assert not torch.equal(param, initial[name]), f"{name} did not change in training"

    # What the losses ask of it shows outside the training loop too: the generator now keeps a
    # real photo closer to itself (identity term) than it did before training ...
    x = to_gan_input(photos)
    with torch.no_grad():
        idt_before = float((before(x) - x).abs().mean())
        idt_after = float((after(x) - x).abs().mean())
    assert idt_after < idt_before, (idt_before, idt_after)
    # ... and the service's translation of a sketch is a different picture.
    old = Translator(before, SIZE).translate_tensor(sketches)
    new = Translator(after, SIZE).translate_tensor(sketches)
    assert (old.float() - new.float()).abs().mean() > 1.0


@pytest.mark.slow
def test_train_translator_cli_takes_translator_overrides_only(
    synth_root: Path, random_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(random_bundle_dir, out)
    argv = ["train", "translator", "--data-root", str(synth_root), "--preset", "smoke"]
    argv += ["--workdir", str(tmp_path / "w"), "--no-progress", "--out", str(out)]
    with pytest.raises(SystemExit) as refused:
        main([*argv, "--set", "model.spp=true"])
    assert refused.value.code == 2 and "only takes translator." in capsys.readouterr().err
    sizes = ["translator.ngf=6", "translator.n_blocks=1", "translator.epochs_constant=1"]
    sizes.append("translator.epochs_decay=0")
    assert main([*argv, *(a for s in sizes for a in ("--set", s))]) == 0
    spec = read_manifest(out).translator
    assert spec is not None and (spec.spec.ngf, spec.spec.n_blocks) == (6, 1)
