"""Pre-training: several folders kept apart, the held-out health check, the pre-trained folder,
fine-tuning that starts from it, and the schedule, precision and loss options it uses."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from app.cli.main import main
from app.errors import BundleError, UserInputError
from app.ml.bundle.store import load_bundle
from app.ml.data.synth import generate_synthetic
from app.ml.infer import precision
from app.ml.models.resnet_cifar import MemberSpec
from app.ml.train import augment
from app.ml.train.config import StageConfig
from app.ml.train.losses import batch_hard_triplet
from app.ml.train.pretrain import (
    PID_STRIDE,
    Holdout,
    holdout_retrieval,
    load_pretrained,
    pretrain_sets,
    save_pretrained,
    split_pretrain_samples,
)
from app.ml.train.reid import lr_factor, new_member


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def synth_market(root: Path, identities: int, seed: int) -> Path:
    """Synthetic people written in Market-1501 naming (pids 1..N, cameras 1 and 2)."""
    pku = root.parent / f"{root.name}-pku"
    dataset = generate_synthetic(pku, identities, seed=seed)
    folder = root / "bounding_box_train"
    folder.mkdir(parents=True)
    for i, s in enumerate(dataset.photos):
        shutil.copy(s.path, folder / f"{s.pid:04d}_c{s.camid}s1_{i:06d}_00.jpg")
    return root


@pytest.fixture(scope="module")
def markets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("markets")
    return synth_market(base / "a", 12, seed=1), synth_market(base / "b", 8, seed=2)


# --------------------------------------------------------------------------- data


def test_folders_are_kept_apart_and_the_last_ids_of_the_first_are_held_out(
    markets: tuple[Path, Path],
) -> None:
    a, b = markets
    train, held, info = split_pretrain_samples([a, b], holdout=3)
    assert {s.pid for i, s in held} == {10, 11, 12} and {i for i, _ in held} == {0}
    assert not {(0, s.pid) for _, s in held} & {(i, s.pid) for i, s in train}
    # pid 1 exists in both folders: two identities, not one.
    assert info["train_identities"] == 9 + 8
    assert info["holdout"]["identities"] == [10, 11, 12]
    assert info["folders"][1]["identities"] == 8

    train_set, holdout, _ = pretrain_sets([a, b], 3, (32, 16), cache_dir=None)
    assert train_set.num_classes == 17
    label_of_pid = {}
    for label, pid in zip(train_set.labels.tolist(), train_set.pids.tolist(), strict=True):
        assert label_of_pid.setdefault(pid, label) == label
    assert label_of_pid[1] != label_of_pid[PID_STRIDE + 1]
    assert holdout is not None and len(holdout.images) == 6
    assert set(holdout.camids.tolist()) == {1, 2}


def test_holding_out_every_identity_is_refused(markets: tuple[Path, Path]) -> None:
    with pytest.raises(UserInputError, match="hold out fewer"):
        split_pretrain_samples([markets[0]], holdout=12)


# --------------------------------------------------------------------------- health check


class _PixelId(nn.Module):
    """Embeds an image as the one-hot of the identity written into its first pixel."""

    embedding_dim = 8

    def __init__(self, scramble: bool = False) -> None:
        super().__init__()
        self.scramble = scramble
        self.dummy = nn.Parameter(torch.zeros(1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        ident = (x[:, 0, 0, 0] * 10).round().long().clamp(0, 7)
        if self.scramble:
            ident = (ident * 3 + torch.arange(len(ident))) % 8
        return nn.functional.one_hot(ident, 8).float() + 0.01 + self.dummy


def _holdout() -> Holdout:
    pids = np.repeat(np.arange(4), 2)
    images = torch.zeros((8, 3, 8, 4), dtype=torch.uint8)
    # normalise() maps the pixel back to roughly (v/255 - mean)/std; choose values whose
    # normalised first channel separates the identities.
    for i, pid in enumerate(pids):
        images[i, 0] = round(((pid / 10 * 0.229) + 0.485) * 255)
    return Holdout(images=images, pids=pids, camids=np.tile([1, 2], 4))


def test_the_health_check_measures_cross_camera_retrieval() -> None:
    cpu = torch.device("cpu")
    good = holdout_retrieval(_PixelId(), _holdout(), input_size=(8, 4), tta_flip=False, device=cpu)
    assert good["holdout_rank1"] == 1.0 and good["holdout_mAP"] == 1.0
    assert good["holdout_queries"] == 8
    bad = holdout_retrieval(
        _PixelId(scramble=True), _holdout(), input_size=(8, 4), tta_flip=False, device=cpu
    )
    assert bad["holdout_rank1"] < 0.5


# --------------------------------------------------------------------------- CLI and storage


def _cli(argv: list[str]) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def pretrained(markets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pre") / "pretrained"
    work = tmp_path_factory.mktemp("work")
    args = ["train", "pretrain", "--pretrain-root", markets[0], "--pretrain-root", markets[1]]
    args += ["--arch", "resnet20", "--preset", "smoke", "--epochs", "3", "--holdout", "4"]
    args += ["--health-every", "2", "--workdir", work, "--no-progress", "--out", out]
    assert _cli(args) == 0
    return out


def test_pretrain_writes_backbones_with_their_health_curve(pretrained: Path) -> None:
    manifest = json.loads((pretrained / "manifest.json").read_text())
    (entry,) = manifest["members"]
    assert entry["arch"] == "resnet20"
    info = entry["training"]
    assert [h["epoch"] for h in info["health"]] == [2, 3]  # every 2 epochs and the last
    for h in info["health"]:
        assert 0.0 <= h["holdout_rank1"] <= 1.0 and h["holdout_queries"] == 8
    assert info["data"]["train_identities"] == 8 + 8
    assert info["epochs"] == 3
    state = torch.load(pretrained / entry["weights"], weights_only=True)
    assert not any(k.startswith("classifier.") for k in state)
    spec, model, _ = load_pretrained(pretrained, "resnet20")
    assert spec.num_classes == 16
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value)


def test_a_tampered_or_missing_backbone_is_refused(pretrained: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(pretrained, copy)
    with pytest.raises(UserInputError, match="no pre-trained resnet56"):
        load_pretrained(copy, "resnet56")
    with (copy / "resnet20.pt").open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="sha256"):
        load_pretrained(copy, "resnet20")


def test_saving_another_member_keeps_the_first(pretrained: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(pretrained, copy)
    spec = MemberSpec(arch="resnet32", num_classes=5, fc_dim=128, input_size=(32, 16))
    save_pretrained(copy, [(spec, new_member(spec, None, seed=0), {"note": "x"})], training={})
    archs = [m["arch"] for m in json.loads((copy / "manifest.json").read_text())["members"]]
    assert archs == ["resnet20", "resnet32"]
    load_pretrained(copy, "resnet20")
    load_pretrained(copy, "resnet32")


def test_fine_tuning_starts_from_the_pretrained_backbone(
    pretrained: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = tmp_path_factory.mktemp("pku")
    generate_synthetic(data, 10, seed=3)
    out = tmp_path_factory.mktemp("b") / "bundle"
    args = ["train", "reid", "--data-root", data, "--pretrained", pretrained, "--arch"]
    args += ["resnet20", "--preset", "smoke", "--epochs", "1", "--set", "finetune.lr=1e-12"]
    args += ["--set", "finetune.weight_decay=0", "--workdir", tmp_path_factory.mktemp("w")]
    assert _cli([*args, "--no-progress", "--out", out]) == 0
    bundle = load_bundle(out)
    _, backbone, _ = load_pretrained(pretrained, "resnet20")
    tuned = bundle.members[0].state_dict()
    for key in ("conv1.weight", "layer3.2.conv2.weight", "fc.weight"):
        assert torch.allclose(tuned[key], backbone.state_dict()[key], atol=1e-6), key
    assert bundle.manifest.members[0].training["pretrain"]["from"] == str(pretrained)
    assert bundle.manifest.training["pretrained"] == str(pretrained)


def test_the_spp_variant_keeps_the_trunk_and_starts_a_new_head(
    pretrained: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The paper's spatial-pyramid-pooling variant (and another FC size) from a backbone
    pre-trained with global pooling: the convolutional trunk is the backbone's, FC-d and
    the neck are new (not the backbone's FC bias beside a fresh weight), and the manifest
    says so."""
    data = tmp_path_factory.mktemp("pku")
    generate_synthetic(data, 10, seed=3)
    out = tmp_path_factory.mktemp("b") / "bundle"
    args = ["train", "reid", "--data-root", data, "--pretrained", pretrained, "--arch"]
    args += ["resnet20", "--preset", "smoke", "--epochs", "1", "--set", "finetune.lr=1e-12"]
    args += ["--set", "finetune.weight_decay=0", "--set", "model.spp=true"]
    args += ["--workdir", tmp_path_factory.mktemp("w"), "--no-progress", "--out", out]
    assert _cli(args) == 0
    bundle = load_bundle(out)
    assert bundle.manifest.members[0].spec.spp
    _, backbone, _ = load_pretrained(pretrained, "resnet20")
    old, tuned = backbone.state_dict(), bundle.members[0].state_dict()
    for key in ("conv1.weight", "layer3.2.conv2.weight", "layer3.2.bn2.weight"):
        assert torch.allclose(tuned[key], old[key], atol=1e-6), key
    assert tuned["fc.weight"].shape[1] == 21 * old["fc.weight"].shape[1]  # levels 1+4+16
    assert not torch.allclose(tuned["fc.bias"], old["fc.bias"])
    pre = bundle.manifest.members[0].training["pretrain"]
    assert pre["from"] == str(pretrained) and "spp False -> True" in pre["new_head"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("finetune.lr", "expected SECTION.FIELD=VALUE"),
        ("trainer.lr=1", "SECTION one of"),
        ("finetune.learning_rate=1", "has no field 'learning_rate'"),
        ("finetune.lr=-1", "finetune.lr=-1"),
    ],
)
def test_bad_overrides_are_refused(
    override: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "pku"
    generate_synthetic(data, 3, seed=0)
    args = ["train", "reid", "--data-root", data, "--set", override, "--out", tmp_path / "o"]
    assert _cli(args) == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- options


def test_cosine_schedule_after_warm_up() -> None:
    cfg = StageConfig(epochs=10, warmup_epochs=2, schedule="cosine")
    factors = [lr_factor(e, cfg) for e in range(10)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2] == 1.0
    assert all(a > b for a, b in itertools.pairwise(factors[2:]))
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    step = StageConfig(epochs=10, step_size=4, gamma=0.1)
    assert [lr_factor(e, step) for e in (0, 3, 4, 8)] == pytest.approx([1, 1, 0.1, 0.01])


def test_precision_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert precision.autocast_dtype(cpu, "fp32") is None
    assert precision.autocast_dtype(cpu, "bf16") is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.autocast_dtype(cpu, "auto") is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.autocast_dtype(cpu, "auto") is None
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.autocast_dtype(cpu, "fp16")  # type: ignore[arg-type]


def test_random_grey_greys_photos_only() -> None:
    x = torch.rand(6, 3, 8, 4)
    is_photo = torch.tensor([True, True, True, False, False, True])
    out = augment.random_grey(x, 1.0, is_photo)
    assert torch.equal(out[~is_photo], x[~is_photo])
    photos = out[is_photo]
    assert torch.allclose(photos[:, 0], photos[:, 1]) and torch.allclose(photos[:, 1], photos[:, 2])
    assert torch.allclose(photos[:, :1], augment.grey(x[is_photo]))
    assert torch.equal(augment.random_grey(x, 0.0, is_photo), x)


def test_cross_modal_triplet_compares_sketches_with_photos_only() -> None:
    # identity 0: sketch s0 and photo p0; identity 1: photo p1 and photo q1.
    # s0 is nearest its own photo (cross-modal ranking right) but p1 is nearer p0 than q1 is
    # (photo-photo ranking wrong).
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    anchors = torch.tensor([True, False, False, False])
    assert batch_hard_triplet(emb, labels, 0.01, anchors=anchors).item() == 0.0
    assert batch_hard_triplet(emb, labels, 0.01).item() > 0.0
    # swap: now the sketch is nearer the other person's photo -> the cross-modal loss sees it.
    emb2 = emb[[0, 3, 1, 2]]
    assert batch_hard_triplet(emb2, labels, 0.01, anchors=anchors).item() > 0.0


def test_a_warm_restart_continues_the_backbone_and_keeps_the_earlier_run(
    pretrained: Path, markets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.mktemp("warm") / "pretrained"
    args = ["train", "pretrain", "--pretrain-root", markets[0], "--pretrain-root", markets[1]]
    args += ["--arch", "resnet20", "--preset", "smoke", "--epochs", "1", "--holdout", "4"]
    args += ["--set", "pretrain.lr=1e-12", "--set", "pretrain.weight_decay=0"]
    args += ["--init-from", pretrained, "--workdir", tmp_path_factory.mktemp("w")]
    assert _cli([*args, "--no-progress", "--out", out]) == 0
    _, before, _ = load_pretrained(pretrained, "resnet20")
    _, after, info = load_pretrained(out, "resnet20")
    for key in ("conv1.weight", "layer3.2.conv2.weight", "fc.weight"):
        assert torch.allclose(after.state_dict()[key], before.state_dict()[key], atol=1e-6), key
    assert info["epochs"] == 1 and info["epochs_total"] == 3 + 1
    first = json.loads((pretrained / "manifest.json").read_text())["members"][0]
    assert info["continued_from"]["sha256"] == first["sha256"]
    (earlier,) = info["continued_from"]["runs"]
    assert earlier["epochs"] == 3 and [h["epoch"] for h in earlier["health"]] == [2, 3]


def test_a_warm_restart_of_another_architecture_is_refused(
    pretrained: Path,
    markets: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["train", "pretrain", "--pretrain-root", markets[0], "--arch", "resnet20"]
    args += ["--preset", "smoke", "--epochs", "1", "--holdout", "4", "--fc", "64"]
    args += ["--init-from", pretrained, "--workdir", tmp_path / "w", "--out", tmp_path / "o"]
    assert _cli([*args, "--no-progress"]) == 2
    assert "fc_dim 128 -> 64" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_photos_drawn_as_pseudo_sketches_become_triplet_anchors_when_asked() -> None:
    from app.ml.train.reid import _augment

    x = torch.randint(0, 256, (8, 3, 16, 8), dtype=torch.uint8)
    is_photo = torch.tensor([True] * 6 + [False] * 2)
    cfg = StageConfig(pseudo_sketch=1.0, random_erasing=0.0)
    _, sketch_like = _augment(x, is_photo, cfg)
    assert torch.equal(sketch_like, ~is_photo), "by default only real sketches are anchors"
    anchored = cfg.model_copy(update={"pseudo_sketch_anchor": True})
    _, sketch_like = _augment(x, is_photo, anchored)
    assert sketch_like.all(), "every photo was drawn, so every image is sketch-like"
