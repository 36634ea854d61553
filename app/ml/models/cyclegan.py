"""CycleGAN building blocks for sketch -> photo translation.

Follows junyanz/pytorch-CycleGAN-and-pix2pix ``models/networks.py``: the ResNet generator
(reflection padding, two stride-2 downsamplings, residual blocks, two transposed-conv
upsamplings, tanh), the PatchGAN discriminator, the LSGAN/vanilla GAN loss, the image
history pool and the constant-then-linear-decay learning-rate rule. Images enter and leave
the generator in [-1, 1]; :func:`to_gan_input` and :func:`from_gan_output` convert from and
to uint8 so training and the service share one convention. The training loop lives in
``app.ml.train``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from app.ml.models.specs import GeneratorSpec as GeneratorSpec
from app.ml.models.specs import NormName as NormName


def norm_layer(norm: NormName, channels: int) -> nn.Module:
    """The normalisation layer used throughout (instance norm has no affine/running stats)."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r} (instance, batch or none)")


class ResnetBlock(nn.Module):
    """Residual block: reflect-pad, conv, norm, ReLU, [dropout], reflect-pad, conv, norm."""

    def __init__(self, dim: int, norm: NormName, use_dropout: bool, use_bias: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, padding=0, bias=use_bias),
            norm_layer(norm, dim),
            nn.ReLU(True),
        ]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, padding=0, bias=use_bias),
            norm_layer(norm, dim),
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """ResNet-based generator; H and W must be divisible by 4."""

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: NormName = "instance",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        if n_blocks < 0:
            raise ValueError("n_blocks must be >= 0")
        use_bias = norm != "batch"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, 7, padding=0, bias=use_bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            mult = 2**i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=use_bias),
                norm_layer(norm, ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4, norm, use_dropout, use_bias) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult,
                    ngf * mult // 2,
                    3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                    bias=use_bias,
                ),
                norm_layer(norm, ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(
                f"generator input H and W must be divisible by 4, got {tuple(x.shape)}"
            )
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator: a map of real/fake logits, one per overlapping patch."""

    def __init__(
        self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: NormName = "instance"
    ) -> None:
        super().__init__()
        use_bias = norm != "batch"
        kw, padw = 4, 1
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, True),
        ]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_prev, nf_mult = nf_mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * nf_prev, ndf * nf_mult, kw, stride=2, padding=padw, bias=use_bias),
                norm_layer(norm, ndf * nf_mult),
                nn.LeakyReLU(0.2, True),
            ]
        nf_prev, nf_mult = nf_mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * nf_prev, ndf * nf_mult, kw, stride=1, padding=padw, bias=use_bias),
            norm_layer(norm, ndf * nf_mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * nf_mult, 1, kw, stride=1, padding=padw),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GANLoss(nn.Module):
    """GAN objective against a constant real (1.0) or fake (0.0) target map.

    ``"lsgan"`` is the mean squared error used by CycleGAN; ``"vanilla"`` is BCE on logits.
    """

    loss: nn.Module
    real_label: torch.Tensor
    fake_label: torch.Tensor

    def __init__(
        self,
        gan_mode: Literal["lsgan", "vanilla"] = "lsgan",
        target_real_label: float = 1.0,
        target_fake_label: float = 0.0,
    ) -> None:
        super().__init__()
        self.register_buffer("real_label", torch.tensor(target_real_label))
        self.register_buffer("fake_label", torch.tensor(target_fake_label))
        self.gan_mode = gan_mode
        if gan_mode == "lsgan":
            self.loss = nn.MSELoss()
        elif gan_mode == "vanilla":
            self.loss = nn.BCEWithLogitsLoss()
        else:
            raise ValueError(f"unsupported gan_mode {gan_mode!r} (lsgan or vanilla)")

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        target = self.real_label if target_is_real else self.fake_label
        return self.loss(prediction, target.to(prediction.dtype).expand_as(prediction))


class ImagePool:
    """History of generated images (Shrivastava et al.) fed to the discriminator.

    Until the pool is full every image is stored and returned unchanged; afterwards each
    image is, with probability 1/2, swapped for a random stored one (which is returned).
    ``pool_size=0`` disables the pool.
    """

    def __init__(self, pool_size: int = 50, seed: int | None = None) -> None:
        self.pool_size = int(pool_size)
        self.images: list[torch.Tensor] = []
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image.clone())
                out.append(image)
            elif self._rng.random() > 0.5:
                idx = self._rng.randrange(self.pool_size)
                out.append(self.images[idx].clone())
                self.images[idx] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)


@dataclass(frozen=True)
class LinearDecay:
    """LR factor: 1 for ``n_epochs_constant`` epochs, then linearly towards 0.

    Same rule as the CycleGAN reference with ``epoch_count=1``: for the 0-based epoch ``e``
    the factor is ``1 - max(0, e + 1 - n_epochs_constant) / (n_epochs_decay + 1)``.
    A dataclass (not a closure) so ``LambdaLR.state_dict()`` can save it.
    """

    n_epochs_constant: int
    n_epochs_decay: int

    def __call__(self, epoch: int) -> float:
        decayed = max(0, epoch + 1 - self.n_epochs_constant)
        return 1.0 - decayed / float(self.n_epochs_decay + 1)


def linear_decay_lambda(n_epochs_constant: int, n_epochs_decay: int) -> LinearDecay:
    """``lr_lambda`` for ``torch.optim.lr_scheduler.LambdaLR`` (stepped once per epoch)."""
    if n_epochs_constant < 0 or n_epochs_decay < 0:
        raise ValueError("epoch counts must be >= 0")
    return LinearDecay(n_epochs_constant, n_epochs_decay)


def init_weights(net: nn.Module, init_type: str = "normal", init_gain: float = 0.02) -> nn.Module:
    """Initialise conv/linear weights (``normal``, ``xavier``, ``kaiming``, ``orthogonal``).

    Biases become 0; BatchNorm weights ~ N(1, init_gain). Returns ``net``.
    """

    def init_func(m: nn.Module) -> None:
        name = m.__class__.__name__
        weight = getattr(m, "weight", None)
        bias = getattr(m, "bias", None)
        if not isinstance(weight, torch.Tensor):
            return
        if "Conv" in name or "Linear" in name:
            if init_type == "normal":
                nn.init.normal_(weight, 0.0, init_gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(weight, gain=init_gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(weight, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                nn.init.orthogonal_(weight, gain=init_gain)
            else:
                raise ValueError(f"initialisation method {init_type!r} is not implemented")
            if isinstance(bias, torch.Tensor):
                nn.init.zeros_(bias)
        elif "BatchNorm2d" in name:
            nn.init.normal_(weight, 1.0, init_gain)
            if isinstance(bias, torch.Tensor):
                nn.init.zeros_(bias)

    net.apply(init_func)
    return net


def to_gan_input(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float32 in [-1, 1] (same device)."""
    return batch_uint8.to(torch.float32).div(127.5).sub_(1.0)


def from_gan_output(batch: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 (rounded, clamped; same device)."""
    return batch.add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


def build_generator(spec: GeneratorSpec) -> ResnetGenerator:
    """A :class:`ResnetGenerator` for ``spec``, initialised N(0, 0.02) like the reference."""
    net = ResnetGenerator(
        3, 3, ngf=spec.ngf, n_blocks=spec.n_blocks, norm=spec.norm, use_dropout=spec.use_dropout
    )
    init_weights(net, "normal", 0.02)
    return net
