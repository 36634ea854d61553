"""Pre-training the members on person re-id photo sets, with a health check.

Several Market-1501-style folders can be combined; identities of different folders are kept
apart (folder index and pid make the class). The last ``holdout`` identities (by pid) of the
first folder are left out of training and serve as the **health check**: photo→photo
retrieval across cameras among the held-out crops (Market-1501 rules: a query's own camera
is not counted), logged every few epochs. A recipe that does not lift it well above chance in
a short run is not worth hours of training.

Pre-trained backbones are stored in a folder (``model_store/pretrained``): ``manifest.json``
plus one ``<arch>.pt`` per member holding every weight except the identity classifier. On load
the sha256 is checked and the weights are loaded strictly into the recorded architecture.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.errors import BundleError, UserInputError
from app.ml.bundle.store import _sha256
from app.ml.data.market import load_market
from app.ml.data.pku import Sample
from app.ml.infer.torch_embedder import Embedder
from app.ml.models.resnet_cifar import MemberSpec, ResNetCifar, build_member
from app.ml.retrieval.metrics import ranking_result
from app.ml.train.reid import HealthFn
from app.ml.train.tensorset import TensorSet, decode_samples

PID_STRIDE = 1_000_000  # global pid = folder index * PID_STRIDE + pid
PRETRAINED_FORMAT = 1


@dataclass
class Holdout:
    """Held-out crops for the health check: uint8 images, global pids and cameras."""

    images: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray


def _samples_by_root(roots: Sequence[Path]) -> list[list[Sample]]:
    if not roots:
        raise UserInputError("pre-training needs at least one --pretrain-root folder")
    return [load_market(root) for root in roots]


def split_pretrain_samples(
    roots: Sequence[Path], holdout: int
) -> tuple[list[tuple[int, Sample]], list[tuple[int, Sample]], dict[str, Any]]:
    """(training, held-out) samples as (folder index, sample), and a description.

    The held-out identities are the last ``holdout`` pids of the first folder.
    """
    per_root = _samples_by_root(roots)
    first_pids = sorted({s.pid for s in per_root[0]})
    if holdout < 0 or holdout >= len(first_pids):
        raise UserInputError(
            f"--holdout {holdout}: {roots[0]} has {len(first_pids)} identities; hold out fewer"
        )
    held = set(first_pids[len(first_pids) - holdout :]) if holdout else set()
    train: list[tuple[int, Sample]] = []
    test: list[tuple[int, Sample]] = []
    for i, samples in enumerate(per_root):
        for s in samples:
            (test if i == 0 and s.pid in held else train).append((i, s))
    info = {
        "folders": [
            {
                "path": str(root),
                "images": len(samples),
                "identities": len({s.pid for s in samples}),
            }
            for root, samples in zip(roots, per_root, strict=True)
        ],
        "train_images": len(train),
        "train_identities": len({(i, s.pid) for i, s in train}),
        "holdout": {
            "folder": str(roots[0]),
            "identities": sorted(held),
            "images": len(test),
        },
    }
    return train, test, info


def pretrain_sets(
    roots: Sequence[Path],
    holdout: int,
    size: tuple[int, int],
    *,
    cache_dir: Path | None,
    progress: bool = True,
) -> tuple[TensorSet, Holdout | None, dict[str, Any]]:
    """Decode the pre-training folders into a training set and a held-out set."""
    train, test, info = split_pretrain_samples(roots, holdout)
    keys = sorted({(i, s.pid) for i, s in train})
    label_of = {key: label for label, key in enumerate(keys)}
    images = decode_samples(
        [s for _, s in train],
        size,
        cache_dir=cache_dir,
        desc="decoding pre-training crops",
        progress=progress,
    )
    train_set = TensorSet(
        images=images,
        labels=torch.tensor([label_of[(i, s.pid)] for i, s in train], dtype=torch.int64),
        pids=torch.tensor([i * PID_STRIDE + s.pid for i, s in train], dtype=torch.int64),
        modality=torch.zeros(len(train), dtype=torch.int64),
    )
    held: Holdout | None = None
    if test:
        held = Holdout(
            images=decode_samples(
                [s for _, s in test], size, cache_dir=cache_dir, progress=progress
            ),
            pids=np.array([i * PID_STRIDE + s.pid for i, s in test], dtype=np.int64),
            camids=np.array([s.camid for _, s in test], dtype=np.int64),
        )
    return train_set, held, info


def holdout_retrieval(
    model: torch.nn.Module,
    holdout: Holdout,
    *,
    input_size: tuple[int, int],
    tta_flip: bool,
    device: torch.device,
    batch_size: int = 256,
) -> dict[str, float]:
    """Photo→photo cross-camera Rank-1/5 and mAP among the held-out crops, embedded through
    the project's one embedding path (:class:`app.ml.infer.torch_embedder.Embedder`)."""
    embedder = Embedder([model], input_size, tta_flip=tta_flip, device=device)
    chunks = [
        embedder.embed_tensor(holdout.images[i : i + batch_size]).float().cpu()
        for i in range(0, len(holdout.images), batch_size)
    ]
    feats = torch.cat(chunks).numpy()
    dist = np.clip(2.0 - 2.0 * feats @ feats.T, 0.0, 4.0).astype(np.float32)
    result = ranking_result(dist, holdout.pids, holdout.pids, holdout.camids, holdout.camids, 10)
    return {
        "holdout_rank1": round(result.rank1, 4),
        "holdout_rank5": round(result.rank5, 4),
        "holdout_mAP": round(result.mAP, 4),
        "holdout_queries": result.n_queries,
    }


def health_check(
    holdout: Holdout | None, *, input_size: tuple[int, int], tta_flip: bool, device: torch.device
) -> HealthFn | None:
    if holdout is None:
        return None

    def check(model: ResNetCifar) -> dict[str, Any]:
        return holdout_retrieval(
            model, holdout, input_size=input_size, tta_flip=tta_flip, device=device
        )

    return check


# --------------------------------------------------------------------------- storage


def save_pretrained(
    out_dir: Path,
    members: Sequence[tuple[MemberSpec, ResNetCifar, dict[str, Any]]],
    *,
    training: dict[str, Any],
) -> dict[str, Any]:
    """Write (or extend) a pre-trained folder: a member of the same arch is replaced.

    Files are written into a temporary folder that replaces ``out_dir`` at the end.
    """
    out_dir = Path(out_dir)
    manifest: dict[str, Any] = {"format_version": PRETRAINED_FORMAT, "members": []}
    if (out_dir / "manifest.json").is_file():
        manifest = read_pretrained_manifest(out_dir)
    new_archs = {spec.arch for spec, _, _ in members}
    kept = [m for m in manifest["members"] if m["arch"] not in new_archs]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the folder from a service running as another user
    try:
        for entry in kept:
            shutil.copy2(out_dir / entry["weights"], tmp / entry["weights"])
        entries = list(kept)
        for spec, model, info in members:
            file_name = f"{spec.arch}.pt"
            torch.save(dict(model.backbone_state_dict()), tmp / file_name)
            entries.append(
                {
                    "arch": spec.arch,
                    "spec": spec.model_dump(mode="json"),
                    "weights": file_name,
                    "sha256": _sha256(tmp / file_name),
                    "training": info,
                }
            )
        manifest = {
            "format_version": PRETRAINED_FORMAT,
            "members": sorted(entries, key=lambda e: e["arch"]),
            "training": training,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_pretrained_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not a pre-trained folder manifest ({exc})") from exc
    if manifest.get("format_version") != PRETRAINED_FORMAT:
        raise BundleError(f"{path}: unknown format_version {manifest.get('format_version')!r}")
    return manifest


def load_pretrained(folder: Path, arch: str) -> tuple[MemberSpec, ResNetCifar, dict[str, Any]]:
    """The pre-trained member ``arch`` of ``folder`` (sha256 and architecture checked)."""
    folder = Path(folder)
    manifest = read_pretrained_manifest(folder)
    entry = next((m for m in manifest["members"] if m["arch"] == arch), None)
    if entry is None:
        have = ", ".join(m["arch"] for m in manifest["members"]) or "none"
        raise UserInputError(f"{folder} has no pre-trained {arch} (it has: {have})")
    weights = folder / entry["weights"]
    if not weights.is_file() or _sha256(weights) != entry["sha256"]:
        raise BundleError(f"{weights}: missing or its sha256 does not match the manifest")
    spec = MemberSpec.model_validate(entry["spec"])
    model = build_member(spec)
    try:
        model.load_backbone_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"{weights}: does not fit {arch}: {exc}") from exc
    return spec, model.eval(), entry["training"]
