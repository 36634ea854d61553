"""Resumable training checkpoints, tied to the configuration and seed that wrote them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel


def save_checkpoint(path: Path, state: dict[str, Any], cfg: BaseModel, seed: int) -> None:
    """Write ``state`` atomically, stamped with ``cfg`` and ``seed``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({**state, "config": cfg.model_dump(mode="json"), "seed": seed}, tmp)
    tmp.replace(path)


def load_checkpoint(
    path: Path | None, cfg: BaseModel, seed: int, device: torch.device
) -> dict[str, Any] | None:
    """The saved state if ``path`` holds one written with the same configuration and seed.

    Tensors come back on the CPU whatever ``device`` trains: ``load_state_dict`` copies them
    to the model's and optimiser's device, and random-generator states must be CPU byte
    tensors (``Generator.set_state`` rejects a CUDA tensor).
    """
    del device  # kept for the callers; see above
    if path is None or not path.exists():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("config") != cfg.model_dump(mode="json") or state.get("seed") != seed:
        return None
    return state
