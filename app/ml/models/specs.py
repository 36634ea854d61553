"""The architectures a bundle manifest records, as plain data: a member's
(:class:`MemberSpec`) and the translator's (:class:`GeneratorSpec`). No PyTorch here, so a
manifest can be read where only ONNX Runtime serves (the networks themselves live in
:mod:`app.ml.models.resnet_cifar` and :mod:`app.ml.models.cyclegan`, which re-export these).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAMED_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110)
_ARCH_RE = re.compile(r"^resnet(\d+)$")
NormName = Literal["instance", "batch", "none"]


def blocks_per_stage(depth: int) -> int:
    """``n`` for a 6n+2 depth; raises ValueError for an invalid depth."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"ResNet-CIFAR depth must be 6n+2 with n >= 1 (20, 32, 56, ...), got {depth}"
        )
    return (depth - 2) // 6


class MemberSpec(BaseModel):
    """Architecture of one ensemble member (stored in the bundle manifest).

    ``arch`` and ``depth`` must agree ("resnet56" <-> 56); give either one and the other is
    filled in.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str
    depth: int
    fc_dim: int = Field(256, gt=0)
    spp: bool = False
    bn_neck: bool = False
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    num_classes: int = Field(gt=0)
    input_size: tuple[int, int] = (64, 32)

    @model_validator(mode="before")
    @classmethod
    def _fill_arch_depth(cls, data: object) -> object:
        if isinstance(data, dict):
            data = dict(data)
            if "arch" not in data and "depth" in data:
                data["arch"] = f"resnet{data['depth']}"
            elif "depth" not in data and isinstance(data.get("arch"), str):
                match = _ARCH_RE.match(data["arch"])
                if match:
                    data["depth"] = int(match.group(1))
        return data

    @model_validator(mode="after")
    def _check_arch(self) -> MemberSpec:
        blocks_per_stage(self.depth)
        match = _ARCH_RE.match(self.arch)
        if not match or int(match.group(1)) != self.depth:
            raise ValueError(f"arch {self.arch!r} does not match depth {self.depth}")
        return self

    @field_validator("input_size")
    @classmethod
    def _check_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 4:
            raise ValueError(f"input_size must be at least 4×4, got {value}")
        return value


class GeneratorSpec(BaseModel):
    """Architecture of the sketch -> photo generator (stored in the bundle manifest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ngf: int = Field(64, gt=0)
    n_blocks: int = Field(9, ge=0)
    norm: NormName = "instance"
    use_dropout: bool = False
    input_size: tuple[int, int] = (128, 64)

    @field_validator("input_size")
    @classmethod
    def _divisible_by_4(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] <= 0 or value[1] <= 0 or value[0] % 4 or value[1] % 4:
            raise ValueError(f"input_size (H, W) must be positive multiples of 4, got {value}")
        return value
