"""Tests for app.ml.models.resnet_cifar."""

from __future__ import annotations

import copy
import pickle

import pydantic
import pytest
import torch

from app.ml.models.resnet_cifar import (
    MemberSpec,
    PadShortcut,
    ResNetCifar,
    build_member,
    count_parameters,
)

torch.set_num_threads(1)


def backbone_params(model: ResNetCifar) -> int:
    head = count_parameters(model.fc) + count_parameters(model.neck)
    return count_parameters(model) - head - count_parameters(model.classifier)


@pytest.mark.parametrize("size", [(64, 32), (128, 64)])
@pytest.mark.parametrize("spp", [False, True])
def test_shapes(size: tuple[int, int], spp: bool) -> None:
    model = ResNetCifar(8, num_classes=7, fc_dim=32, spp=spp).eval()
    logits, emb = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 7)
    assert emb.shape == (2, 32)
    assert model.pooled_features == (64 * 21 if spp else 64)
    torch.testing.assert_close(
        model.embed(torch.zeros(1, 3, *size)), model(torch.zeros(1, 3, *size))[1]
    )


@pytest.mark.parametrize(("depth", "expected"), [(56, 0.85e6), (110, 1.7e6)])
def test_parameter_counts(depth: int, expected: float) -> None:
    model = ResNetCifar(depth, num_classes=10, fc_dim=256)
    assert abs(backbone_params(model) - expected) / expected < 0.02
    assert model.fc.in_features == 64


def test_head_layout_and_dropout() -> None:
    model = ResNetCifar(20, num_classes=5, fc_dim=128, bn_neck=True)
    assert isinstance(model.neck, torch.nn.BatchNorm1d)
    assert model.dropout.p == 0.5
    assert model.classifier.in_features == 128 and model.classifier.out_features == 5
    keys = model.state_dict().keys()
    assert "neck.running_mean" in keys and "fc.weight" in keys
    shortcuts = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert len(shortcuts) == 2  # one per stage transition


@pytest.mark.parametrize("depth", [7, 10, 21, 0])
def test_invalid_depth(depth: int) -> None:
    with pytest.raises(ValueError):
        ResNetCifar(depth, num_classes=2)


def test_any_valid_depth_and_block_count() -> None:
    model = ResNetCifar(14, num_classes=2)  # n = 2
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 2


def test_picklable_and_deepcopy() -> None:
    model = ResNetCifar(8, num_classes=3, fc_dim=16).eval()
    x = torch.randn(2, 3, 64, 32)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(clone.eval()(x)[1], model(x)[1])


def test_state_dict_names_and_backbone_transfer() -> None:
    source = ResNetCifar(8, num_classes=10, fc_dim=16).eval()
    assert not any(k.startswith("module.") for k in source.state_dict())
    backbone = source.backbone_state_dict()
    assert backbone and not any(k.startswith("classifier.") for k in backbone)
    target = ResNetCifar(8, num_classes=4, fc_dim=16).eval()
    target.load_backbone_state_dict(source.state_dict())
    x = torch.randn(3, 3, 64, 32)
    torch.testing.assert_close(target.embed(x), source.embed(x))
    assert target(x)[0].shape == (3, 4)
    with pytest.raises(ValueError):
        ResNetCifar(8, num_classes=4, fc_dim=16, bn_neck=True).load_backbone_state_dict(backbone)


def test_replace_classifier_keeps_embedding() -> None:
    model = ResNetCifar(8, num_classes=10, fc_dim=16).eval()
    x = torch.randn(2, 3, 64, 32)
    before = model.embed(x)
    model.replace_classifier(3)
    logits, emb = model(x)
    assert logits.shape == (2, 3) and model.num_classes == 3
    torch.testing.assert_close(emb, before)


def test_member_spec_and_build() -> None:
    spec = MemberSpec(arch="resnet20", num_classes=9, fc_dim=64, spp=True)
    assert spec.depth == 20 and spec.input_size == (64, 32) and spec.dropout == 0.5
    assert MemberSpec(depth=32, num_classes=2).arch == "resnet32"
    model = build_member(spec)
    assert model.depth == 20 and model.classifier.out_features == 9 and model.fc_dim == 64
    round_trip = MemberSpec.model_validate_json(spec.model_dump_json())
    assert round_trip == spec
    with pytest.raises(pydantic.ValidationError):
        MemberSpec(arch="resnet20", depth=32, num_classes=2)
    with pytest.raises(pydantic.ValidationError):
        MemberSpec(arch="resnet20", num_classes=2, colour="red")
    with pytest.raises(pydantic.ValidationError):
        MemberSpec(arch="resnet21", num_classes=2)
