"""Tests for app.ml.models.cyclegan."""

from __future__ import annotations

import itertools

import pydantic
import pytest
import torch

from app.ml.models.cyclegan import (
    GANLoss,
    GeneratorSpec,
    ImagePool,
    NLayerDiscriminator,
    ResnetGenerator,
    build_generator,
    from_gan_output,
    init_weights,
    linear_decay_lambda,
    to_gan_input,
)
from app.ml.models.resnet_cifar import count_parameters

torch.set_num_threads(1)


@pytest.mark.parametrize("size", [(128, 64), (64, 32)])
def test_generator_shapes(size: tuple[int, int]) -> None:
    gen = ResnetGenerator(ngf=8, n_blocks=2)
    y = gen(torch.randn(2, 3, *size))
    assert y.shape == (2, 3, *size)
    assert y.min() >= -1 and y.max() <= 1


def test_generator_reference_size_and_dropout() -> None:
    assert count_parameters(ResnetGenerator()) == 11_378_179  # reference 9-block ResNet G
    gen = ResnetGenerator(ngf=8, n_blocks=1, use_dropout=True, norm="batch")
    assert any(isinstance(m, torch.nn.Dropout) for m in gen.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in gen.modules())


def test_generator_rejects_sizes_not_divisible_by_4() -> None:
    with pytest.raises(ValueError):
        ResnetGenerator(ngf=4, n_blocks=1)(torch.randn(1, 3, 66, 32))


@pytest.mark.parametrize(("size", "patch"), [((128, 64), (14, 6)), ((64, 32), (6, 2))])
def test_discriminator_patch_output(size: tuple[int, int], patch: tuple[int, int]) -> None:
    disc = NLayerDiscriminator(ndf=8, n_layers=3)
    assert disc(torch.randn(2, 3, *size)).shape == (2, 1, *patch)


def test_gan_loss() -> None:
    loss = GANLoss("lsgan")
    ones, zeros = torch.ones(2, 1, 4, 3), torch.zeros(2, 1, 4, 3)
    assert loss(ones, True).item() == pytest.approx(0.0)
    assert loss(zeros, True).item() == pytest.approx(1.0)
    assert loss(zeros, False).item() == pytest.approx(0.0)
    assert GANLoss("vanilla")(torch.full((1, 1, 2, 2), 20.0), True).item() < 1e-6
    with pytest.raises(ValueError):
        GANLoss("wgan")  # type: ignore[arg-type]


def test_image_pool() -> None:
    assert ImagePool(0).query(x := torch.randn(3, 3, 4, 4)) is x
    pool = ImagePool(4, seed=0)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    torch.testing.assert_close(pool.query(first), first)  # filling: returned unchanged
    assert len(pool) == 4
    seen_old = False
    for step in range(10):
        new = torch.full((4, 1, 1, 1), 100.0 + step, requires_grad=True)
        out = pool.query(new)
        assert out.shape == new.shape and not out.requires_grad
        assert len(pool) == 4
        seen_old |= bool((out < 100.0 + step).any())
    assert seen_old  # history images come back


def test_linear_decay_lambda() -> None:
    rule = linear_decay_lambda(3, 4)
    assert [rule(e) for e in range(3)] == [1.0, 1.0, 1.0]
    assert rule(3) == pytest.approx(1 - 1 / 5)
    assert rule(6) == pytest.approx(1 / 5)
    values = [rule(e) for e in range(7)]
    assert all(a >= b for a, b in itertools.pairwise(values)) and values[-1] > 0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, rule)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * rule(4))  # last_epoch == 4
    assert sched.state_dict()["lr_lambdas"][0] == {"n_epochs_constant": 3, "n_epochs_decay": 4}


def test_init_weights_and_build_generator() -> None:
    net = init_weights(torch.nn.Sequential(torch.nn.Conv2d(3, 64, 5), torch.nn.BatchNorm2d(64)))
    assert abs(float(net[0].weight.detach().std()) - 0.02) < 0.003
    assert float(net[0].bias.detach().abs().max()) == 0.0
    assert abs(float(net[1].weight.detach().mean()) - 1.0) < 0.02
    with pytest.raises(ValueError):
        init_weights(torch.nn.Conv2d(1, 1, 1), "nope")
    spec = GeneratorSpec(ngf=8, n_blocks=1, input_size=(64, 32))
    gen = build_generator(spec)
    assert gen(torch.zeros(1, 3, 64, 32)).shape == (1, 3, 64, 32)
    with pytest.raises(pydantic.ValidationError):
        GeneratorSpec(input_size=(66, 32))
    with pytest.raises(pydantic.ValidationError):
        GeneratorSpec(extra=1)


def test_gan_io_round_trip() -> None:
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    y = to_gan_input(x)
    assert y.min() == -1 and y.max() == 1
    assert torch.equal(from_gan_output(y), x)
