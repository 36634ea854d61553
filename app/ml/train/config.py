"""Hyper-parameters of one training stage, and the named presets.

``paper`` is Rachmadi et al.'s recipe (SGD lr 0.1, ×0.1 every 40 epochs, 100 epochs, random
crop, random erasing, cross-entropy only, 64×32 input). ``cpu`` is the same recipe cut to
finish on a 2-core machine. ``best`` adds what lifts sketch→photo retrieval while keeping the
networks light: 128×64 input, pseudo-sketch augmentation of photos, batch-hard triplet loss
with identity-balanced batches, label smoothing and flip test-time augmentation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SketchStyle = Literal["grey", "pencil", "edge", "xdog"]
DEFAULT_SKETCH_STYLES: tuple[SketchStyle, ...] = ("grey", "pencil", "edge")


class StageConfig(BaseModel):
    """One training stage of one ensemble member (pre-training or fine-tuning)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=2)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    step_size: int = Field(40, ge=1)
    gamma: float = 0.1
    warmup_epochs: int = Field(0, ge=0)
    schedule: Literal["step", "cosine"] = Field(
        "step", description="after warm-up: x gamma every step_size epochs, or cosine to 0"
    )
    random_erasing: float = Field(0.5, ge=0, le=1)
    crop_pad: int | None = Field(None, ge=0, description="default: input height / 16")
    flip: bool = True
    pseudo_sketch: float = Field(0.0, ge=0, le=1)
    sketch_styles: list[SketchStyle] = Field(
        default_factory=lambda: list(DEFAULT_SKETCH_STYLES),
        min_length=1,
        description="pseudo-sketch styles, drawn uniformly",
    )
    sketch_local: float = Field(
        0.0, ge=0, le=1, description="probability a pseudo-sketch covers one body band only"
    )
    pseudo_sketch_anchor: bool = Field(
        False,
        description="photos drawn as whole pseudo-sketches count as sketches for the "
        "cross-modal triplet (cross-modal pre-training on photo-only folders)",
    )
    grey: float = Field(0.0, ge=0, le=1, description="probability a photo is turned grey")
    triplet_weight: float = Field(0.0, ge=0)
    triplet_margin: float = 0.3
    triplet_cross_modal: bool = Field(
        False, description="triplet anchors are sketches, positives and negatives photos"
    )
    instances_per_id: int = Field(4, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class ModelConfig(BaseModel):
    """What each member looks like (the architectures come from the CLI's ``--arch``)."""

    model_config = ConfigDict(extra="forbid")

    fc_dim: int = Field(512, gt=0)
    spp: bool = False
    bn_neck: bool = False
    dropout: float = Field(0.5, ge=0, lt=1)
    input_size: tuple[int, int] = (64, 32)
    tta_flip: bool = False


class TranslatorConfig(BaseModel):
    """CycleGAN sketch→photo translator training (Zhu et al. 2017 defaults)."""

    model_config = ConfigDict(extra="forbid")

    input_size: tuple[int, int] = (128, 64)
    ngf: int = Field(64, ge=4)
    ndf: int = Field(64, ge=4)
    n_blocks: int = Field(9, ge=1)
    epochs_constant: int = Field(100, ge=0)
    epochs_decay: int = Field(100, ge=0)
    batch_size: int = Field(1, ge=1)
    lr: float = 2e-4
    beta1: float = 0.5
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["ship", "paper", "cpu", "best", "smoke"]
    description: str
    model: ModelConfig
    pretrain: StageConfig
    finetune: StageConfig
    translator: TranslatorConfig


_PAPER_STAGE = StageConfig()

PRESETS: dict[str, Preset] = {
    "ship": Preset(
        name="ship",
        description=(
            "the shipped recipe: pre-training with AdamW 1e-3, 2-epoch warm-up then cosine, "
            "label-smoothed cross-entropy, BN neck after FC-512, random crop + flip + random "
            "erasing + 20 % grey + 20 % pseudo-sketch photos; fine-tuning AdamW 3e-4 cosine on "
            "photos and grey sketches with half the photos grey; flip test-time augmentation"
        ),
        model=ModelConfig(fc_dim=512, bn_neck=True, dropout=0.0, tta_flip=True),
        pretrain=StageConfig(
            epochs=40,
            batch_size=64,
            optimizer="adamw",
            lr=1e-3,
            weight_decay=0.01,
            warmup_epochs=2,
            schedule="cosine",
            label_smoothing=0.1,
            random_erasing=0.5,
            grey=0.2,
            pseudo_sketch=0.2,
        ),
        finetune=StageConfig(
            epochs=30,
            batch_size=32,
            optimizer="adamw",
            lr=3e-4,
            weight_decay=0.01,
            schedule="cosine",
            label_smoothing=0.1,
            random_erasing=0.5,
            grey=0.5,
        ),
        translator=TranslatorConfig(
            input_size=(64, 32),
            ngf=32,
            ndf=32,
            n_blocks=6,
            epochs_constant=100,
            epochs_decay=100,
            batch_size=4,
        ),
    ),
    "paper": Preset(
        name="paper",
        description="Rachmadi et al.: SGD 0.1, x0.1 every 40 epochs, 100 epochs, 64x32, CE only",
        model=ModelConfig(),
        pretrain=_PAPER_STAGE,
        finetune=_PAPER_STAGE,
        translator=TranslatorConfig(),
    ),
    "cpu": Preset(
        name="cpu",
        description=(
            "what a 2-core CPU can train in under an hour: Adam 1e-3, cross-entropy, random "
            "erasing, pseudo-sketches while fine-tuning, no dropout, flip test-time augmentation"
        ),
        model=ModelConfig(fc_dim=512, dropout=0.0, tta_flip=True),
        pretrain=StageConfig(
            epochs=2, step_size=2, batch_size=64, optimizer="adam", lr=1e-3, weight_decay=5e-4
        ),
        finetune=StageConfig(
            epochs=20,
            step_size=15,
            batch_size=32,
            optimizer="adam",
            lr=1e-3,
            weight_decay=5e-4,
            pseudo_sketch=0.3,
        ),
        translator=TranslatorConfig(
            input_size=(64, 32), ngf=16, ndf=16, n_blocks=3, epochs_constant=3, epochs_decay=3
        ),
    ),
    "best": Preset(
        name="best",
        description=(
            "128x64 input, pseudo-sketch augmentation, batch-hard triplet + label-smoothed CE, "
            "warm-up, flip test-time augmentation"
        ),
        model=ModelConfig(fc_dim=512, input_size=(128, 64), tta_flip=True, dropout=0.0),
        pretrain=StageConfig(
            epochs=40,
            step_size=30,
            warmup_epochs=3,
            triplet_weight=1.0,
            label_smoothing=0.1,
            pseudo_sketch=0.3,
            instances_per_id=4,
            batch_size=64,
        ),
        finetune=StageConfig(
            epochs=100,
            step_size=40,
            lr=0.05,
            warmup_epochs=5,
            triplet_weight=1.0,
            label_smoothing=0.1,
            pseudo_sketch=0.5,
            instances_per_id=4,
            batch_size=64,
        ),
        translator=TranslatorConfig(
            ngf=32, ndf=64, n_blocks=6, epochs_constant=30, epochs_decay=30, batch_size=8
        ),
    ),
    "smoke": Preset(
        name="smoke",
        description=(
            "seconds-long run for tests and demos on synthetic data: 32x16 input, Adam 1e-3, "
            "60 epochs, cross-entropy, pseudo-sketches, no random erasing (tests/test_learning.py)"
        ),
        # Measured on 80 synthetic identities (60 to train, 20 held out), one CPU core: about
        # 25 s of fine-tuning, held-out sketch->photo Rank-1 0.20-0.25 (chance 0.05) and mAP
        # 0.28-0.34 (random 0.10). 64x32 input, the batch-hard triplet term, random erasing
        # or SGD each learnt too slowly to generalise within that time.
        model=ModelConfig(fc_dim=128, input_size=(32, 16), tta_flip=True, dropout=0.0),
        pretrain=StageConfig(epochs=2, step_size=10, batch_size=32, optimizer="adam", lr=1e-3),
        finetune=StageConfig(
            epochs=60,
            step_size=45,
            batch_size=16,
            optimizer="adam",
            lr=1e-3,
            random_erasing=0.0,
            pseudo_sketch=0.5,
        ),
        translator=TranslatorConfig(
            input_size=(64, 32),
            ngf=8,
            ndf=8,
            n_blocks=1,
            epochs_constant=1,
            epochs_decay=1,
            batch_size=4,
        ),
    ),
}


def get_preset(name: str) -> Preset:
    from app.errors import UserInputError

    try:
        return PRESETS[name].model_copy(deep=True)
    except KeyError:
        raise UserInputError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}"
        ) from None
