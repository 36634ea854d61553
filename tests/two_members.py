"""Two random ResNet-8 members at 64x32 and asymmetric pictures to embed: shared by the tests of
how an ensemble's members become one vector (flip TTA for photos, member weights, modality
centering)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from app.ml.bundle.store import save_bundle
from app.ml.models.resnet_cifar import MemberSpec, build_member

SIZE = (64, 32)
SPEC = MemberSpec(arch="resnet8", num_classes=5, fc_dim=16, input_size=SIZE, bn_neck=True)


def picture(seed: int) -> Image.Image:
    """An asymmetric coloured picture (its mirror image embeds otherwise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse, "RGB").resize((32, 64), Image.Resampling.BILINEAR)


def two_members() -> list[torch.nn.Module]:
    """Two members with different random weights (seed 0), in eval mode."""
    torch.manual_seed(0)
    return [build_member(SPEC).eval(), build_member(SPEC).eval()]


def save_two(folder: Path, members: list[torch.nn.Module], name: str, **fields: Any) -> Path:
    """``members`` saved as the bundle ``name`` version 1 in ``folder`` (members m0, m1)."""
    parts = [(f"m{i}", SPEC, m, {}) for i, m in enumerate(members)]
    save_bundle(folder, name=name, version="1", members=parts, **fields)
    return folder
