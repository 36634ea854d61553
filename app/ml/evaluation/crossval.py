"""Cross-validation over identity splits: train on each split's training identities, evaluate
on its test identities, report mean ± standard deviation.

This is the protocol that chooses settings: a bundle trained on every identity cannot be
evaluated honestly on those identities, so each split gets its own models.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.errors import UserInputError
from app.ml.bundle.store import Bundle, combine_bundles, load_bundle, read_manifest
from app.ml.data.splits import Split
from app.ml.evaluation.distractors import (
    DistractorOptions,
    distractors_for,
    score_by_gallery_size,
)
from app.ml.evaluation.evaluate import RerankParams, embed_test_set, score
from app.ml.evaluation.testset import fused_queries
from app.ml.infer.torch_embedder import Embedder
from app.ml.retrieval.metrics import mean_std
from app.ml.train.pipeline import TrainPlan, add_translator, save_members, train_members


def cross_validate(
    plan: TrainPlan,
    splits: Sequence[Split],
    *,
    with_translator: bool = False,
    rerank: RerankParams | None = None,
    keep_bundles: bool = False,
    per_member: bool = False,
    reuse: Sequence[Path] = (),
    indices: Sequence[int] | None = None,
    command: str = "",
    distractors: DistractorOptions | None = None,
) -> dict[str, Any]:
    """Train and evaluate one model per split. Returns per-split figures and, per variant
    (plain / rerank, and with a translator translated / fused and their +rerank: queries
    embedded as their translations, or as the sketch's and the translation's embeddings
    fused), their mean and std.

    ``reuse``: instead of training, take each split's bundle from the ``splits/splitNN``
    folder of these earlier work folders (kept with ``keep_bundles``) and, when there are
    several, evaluate the ensemble of all their members. Each reused bundle must have been
    trained on exactly the split's training identities.

    ``indices``: the position of each split in the full draw (default 0, 1, ...), so that a
    run over some of the splits (``--only-splits``) names its folders and rows as the full
    run would, and runs over disjoint parts of one draw can be reused together.

    ``distractors``: each variant is also scored with that many distractors in the gallery
    (variants ``NAME@SIZE``; re-ranked ones as the service re-ranks, over each query's top
    candidates), the distractor embeddings cached per bundle in ``WORKDIR/distractor-cache``."""
    if indices is None:
        indices = range(len(splits))
    if len(indices) != len(splits):
        raise ValueError("one index per split")
    rows: dict[str, list[dict[str, Any]]] = {}
    distractor_sets: list[dict[str, Any]] = []
    if distractors is not None and distractors.cache_dir is None:
        distractors = replace(distractors, cache_dir=plan.workdir / "distractor-cache")
    timings = []
    archs: list[str] = list(plan.archs)
    preset: dict[str, Any] = plan.preset.model_dump(mode="json")
    presets: list[dict[str, Any] | None] = []
    for i, split in zip(indices, splits, strict=True):
        t0 = time.perf_counter()
        if reuse:
            bundle, train_seconds = reused_bundle(reuse, i, split, plan)
            archs = [e.spec.arch for e in bundle.manifest.members]
            presets = reused_presets(reuse, i)
            preset = presets[0] or preset
        else:
            bundle_dir = plan.workdir / "splits" / f"split{i:02d}"
            _train_split(plan, split, i, bundle_dir, with_translator, command)
            train_seconds = time.perf_counter() - t0
            bundle = load_bundle(bundle_dir, device=plan.device)
        if per_member and len(bundle.members) > 1:
            m = bundle.manifest
            for entry, model in zip(m.members, bundle.members, strict=True):
                alone = Embedder(
                    [model],
                    m.input_size,
                    m.mean,
                    m.std,
                    sketch_grey=m.sketch_grey,
                    tta_flip=m.tta_flip,
                    photo_flip=m.photo_tta_flip,
                    device=plan.device,
                )
                embedded = embed_test_set(alone, None, plan.dataset, split.test, translate=False)
                for rr in (None, rerank) if rerank else (None,):
                    result = score(embedded, rerank=rr)
                    result.update(split=i, seed=split.seed)
                    rows.setdefault(entry.name + ("+rerank" if rr else ""), []).append(result)
        views = {"plain": embed_test_set(bundle.embedder, None, plan.dataset, split.test)}
        if with_translator:
            if bundle.translator is None:
                raise UserInputError(
                    f"split {i}'s bundle has no translator: drop --translator, or reuse "
                    "bundles kept by a run with --translator"
                )
            views["translated"] = embed_test_set(
                bundle.embedder, bundle.translator, plan.dataset, split.test
            )
            views["fused"] = fused_queries(views["plain"], views["translated"])
        loaded = distractors_for(bundle, distractors) if distractors is not None else None
        for view, embedded in views.items():
            for rr in (None, rerank) if rerank else (None,):
                name = "rerank" if view == "plain" and rr else view + ("+rerank" if rr else "")
                result = score(embedded, rerank=rr)
                result.update(split=i, seed=split.seed, train_seconds=round(train_seconds, 1))
                rows.setdefault(name, []).append(result)
            if distractors is not None:
                triple = (rerank.k1, rerank.k2, rerank.lambda_value) if rerank else None
                sized = score_by_gallery_size(
                    bundle, embedded, distractors, rerank=triple, loaded=loaded
                )
                distractor_sets.append(sized["set"])
                for size, row in sized["by_size"].items():
                    for variant in ("plain", "rerank"):
                        if variant not in row:
                            continue
                        name = view if variant == "plain" else f"{view}+rerank"
                        name = "rerank" if name == "plain+rerank" else name
                        result = {**row[variant], "split": i, "seed": split.seed}
                        rows.setdefault(f"{name}@{size}", []).append(result)
        timings.append(train_seconds)
        if not keep_bundles and not reuse:
            shutil.rmtree(bundle_dir, ignore_errors=True)
    report: dict[str, Any] = {
        "protocol": {
            "data_root": str(plan.dataset.root),
            "n_splits": len(splits),
            "split_indices": list(indices),
            "split_seeds": [s.seed for s in splits],
            "test_identities": [len(s.test) for s in splits],
            "train_identities": [len(s.train) for s in splits],
        },
        "archs": archs,
        "reused": [str(r) for r in reuse],
        "reused_presets": presets,
        "preset": preset,
        "rerank_params": vars(rerank) if rerank else None,
        "pretrain_roots": [str(r) for r in plan.pretrain_roots],
        "pretrained": str(plan.pretrained_dir) if plan.pretrained_dir else None,
        "seed": plan.seed,
        "train_seconds_mean": round(sum(timings) / len(timings), 1),
        "variants": {name: {**mean_std(r), "splits": r} for name, r in rows.items()},
    }
    if distractors is not None:
        report["distractors"] = {
            **distractor_sets[0],
            "rerank_candidates": distractors.rerank_candidates,
            "sizes": sorted({int(n.rpartition("@")[2]) for n in rows if "@" in n}),
        }
    return report


def _train_split(
    plan: TrainPlan,
    split: Split,
    i: int,
    bundle_dir: Path,
    with_translator: bool,
    command: str,
) -> None:
    split_plan = replace(plan, train_pids=list(split.train))
    members = train_members(split_plan)
    save_members(
        bundle_dir, split_plan, members, name=f"cv-split{i}", version="cv", command=command
    )
    if with_translator:
        add_translator(
            bundle_dir,
            plan.dataset,
            list(split.train),
            plan.preset,
            seed=plan.seed,
            device=plan.device,
            workdir=plan.workdir,
            command=command,
            progress=plan.progress,
        )


def reused_bundle(
    workdirs: Sequence[Path], i: int, split: Split, plan: TrainPlan
) -> tuple[Bundle, float]:
    """Split ``i``'s kept bundles from earlier cross-validation runs, combined into one
    ensemble, and the seconds their members' fine-tuning took (summed)."""
    bundles = []
    seconds = 0.0
    for workdir in workdirs:
        folder = Path(workdir) / "splits" / f"split{i:02d}"
        if not folder.is_dir():
            raise UserInputError(
                f"{folder} not found: run crossval with --keep-bundles into {workdir} first"
            )
        bundle = load_bundle(folder, device=plan.device)
        trained = sorted(bundle.manifest.training.get("train_pids") or [])
        if trained != sorted(split.train):
            raise UserInputError(
                f"{folder} was trained on other identities than split {i} "
                f"(seed {split.seed}): same --splits/--split-seed/--test-size as that run?"
            )
        for entry in bundle.manifest.members:
            seconds += float((entry.training.get("finetune") or {}).get("seconds", 0.0))
        bundles.append(bundle)
    if len(bundles) == 1:
        return bundles[0], seconds
    return combine_bundles(bundles, device=plan.device), seconds


def reused_presets(workdirs: Sequence[Path], i: int) -> list[dict[str, Any] | None]:
    """The preset each reused run trained split ``i`` with (from its manifest)."""
    out = []
    for workdir in workdirs:
        manifest = read_manifest(Path(workdir) / "splits" / f"split{i:02d}")
        out.append(manifest.training.get("preset"))
    return out
