"""CIFAR-style ResNet (He et al. 2016) with the paper's FC-d embedding head.

Follows akamaster/pytorch_resnet_cifar10: depth 6n+2, three stages of 16/32/64 channels,
BasicBlocks, the parameter-free "option A" shortcut (stride-2 subsampling plus zero channel
padding) and Kaiming-normal initialisation. The shortcut is the named module
:class:`PadShortcut` (not a lambda) so models pickle, deep-copy and save cleanly.

After global average pooling (or spatial pyramid pooling with ``spp=True``) comes the head
of Rachmadi et al.: ``fc`` (Linear 64 -> d, the embedding), optional ``neck``
(BatchNorm1d, off by default), ``dropout`` (p=0.5) and ``classifier`` (Linear d -> classes).

Parameter names: the backbone is ``conv1``/``bn1``/``layer1..3``; the head is ``fc``,
``neck`` (only when ``bn_neck``) and ``classifier``. :meth:`ResNetCifar.backbone_state_dict`
returns everything except ``classifier`` so a pre-trained member can be transferred to a
new set of identities with :meth:`ResNetCifar.load_backbone_state_dict` or
:meth:`ResNetCifar.replace_classifier`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from app.ml.models.specs import NAMED_DEPTHS as NAMED_DEPTHS
from app.ml.models.specs import MemberSpec as MemberSpec
from app.ml.models.specs import blocks_per_stage as blocks_per_stage

SPP_LEVELS: tuple[int, ...] = (1, 2, 4)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (trainable or not) in ``module``."""
    return sum(p.numel() for p in module.parameters())


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad ``pad`` channels on each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = int(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity or :class:`PadShortcut` skip."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SpatialPyramidPool(nn.Module):
    """Adaptive average pooling at several grid sizes, flattened and concatenated."""

    def __init__(self, levels: tuple[int, ...] = SPP_LEVELS) -> None:
        super().__init__()
        self.levels = tuple(int(level) for level in levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [F.adaptive_avg_pool2d(x, level).flatten(1) for level in self.levels]
        return torch.cat(pooled, dim=1)

    def output_features(self, channels: int) -> int:
        return channels * sum(level * level for level in self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


class GlobalAvgPool(nn.Module):
    """Global average pooling to ``[N, C]`` (works for any H×W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def output_features(self, channels: int) -> int:
        return channels


def _kaiming_init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _classifier_init(layer: nn.Linear) -> None:
    """Small identity-classifier weights (std 0.001, the usual re-id head initialisation).

    Kaiming-initialised logits start several nats above log(classes); with SGD at lr 0.1 that
    first shock drove whole networks into a constant output on PKU-size data.
    """
    nn.init.normal_(layer.weight, std=0.001)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for small person crops with an FC-d embedding head.

    ``forward(x)`` returns ``(logits, embedding)``; the embedding is the FC-d output (after
    the optional BatchNorm neck, before dropout). The network is fully convolutional up to
    the pooling, so ``input_size`` is recorded for reference and any H×W >= 4×4 works.
    """

    def __init__(
        self,
        depth: int = 56,
        num_classes: int = 1000,
        fc_dim: int = 256,
        *,
        spp: bool = False,
        bn_neck: bool = False,
        dropout: float = 0.5,
        input_size: tuple[int, int] = (64, 32),
    ) -> None:
        super().__init__()
        n = blocks_per_stage(depth)
        if fc_dim <= 0 or num_classes <= 0:
            raise ValueError("fc_dim and num_classes must be positive")
        self.depth = depth
        self.fc_dim = fc_dim
        self.embedding_dim = fc_dim
        self.num_classes = num_classes
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self._in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.pool: SpatialPyramidPool | GlobalAvgPool = (
            SpatialPyramidPool() if spp else GlobalAvgPool()
        )
        self.pooled_features = self.pool.output_features(64)
        self.fc = nn.Linear(self.pooled_features, fc_dim)
        self.neck: nn.Module = nn.BatchNorm1d(fc_dim) if bn_neck else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(fc_dim, num_classes)
        self.apply(_kaiming_init)
        _classifier_init(self.classifier)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self._in_planes, planes, s))
            self._in_planes = planes
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``[N, pooled_features]``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.pool(out)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding ``[N, fc_dim]`` (FC-d output, after the optional neck)."""
        return self.neck(self.fc(self.features(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(x)
        logits = self.classifier(self.dropout(embedding))
        return logits, embedding

    def backbone_state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """State dict without the ``classifier.*`` entries (backbone + FC-d + neck)."""
        return OrderedDict(
            (k, v) for k, v in self.state_dict().items() if not k.startswith("classifier.")
        )

    def load_backbone_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load every non-classifier weight from ``state_dict`` (strict on those keys).

        Classifier entries in ``state_dict`` are ignored, so a full state dict of a model
        trained on other identities works too.
        """
        state = {
            k.removeprefix("module."): v
            for k, v in state_dict.items()
            if not k.removeprefix("module.").startswith("classifier.")
        }
        own = self.backbone_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"backbone state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.load_state_dict({**state, **self._classifier_state()}, strict=True)

    def _classifier_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith("classifier.")}

    def replace_classifier(self, num_classes: int) -> None:
        """Re-create the classifier (Kaiming init) for ``num_classes`` identities."""
        if num_classes <= 0:
            raise ValueError("num_classes must be positive")
        old = self.classifier.weight
        self.classifier = nn.Linear(self.fc_dim, num_classes).to(device=old.device, dtype=old.dtype)
        _classifier_init(self.classifier)
        self.num_classes = num_classes


def build_member(spec: MemberSpec) -> ResNetCifar:
    """A freshly initialised :class:`ResNetCifar` as described by ``spec``."""
    return ResNetCifar(
        depth=spec.depth,
        num_classes=spec.num_classes,
        fc_dim=spec.fc_dim,
        spp=spec.spp,
        bn_neck=spec.bn_neck,
        dropout=spec.dropout,
        input_size=spec.input_size,
    )
