"""Distractors: crops of people who are in no test split, added to every split's gallery.

An investigator's gallery is a day of footage, thousands to tens of thousands of crops of
strangers; a 100-photo gallery flatters every model. ``sketchreid evaluate`` and ``crossval``
add the crops of ``--distractors`` folders (Market-1501 style, or plain folders of images)
to each split's gallery as non-matching identities and report the figures at each gallery
size asked (the first N of one seeded shuffle, so a larger size holds the smaller ones).

**Which distractors are fair.** Crops of identities the model's pre-training saw are easier
to push away than strangers: the network has learnt them. Each distractor taken from a
folder a member was pre-trained on is marked ``seen`` unless its identity was held out of that
pre-training (the held-out identities recorded in the bundle's manifest); the report says how
many of each were used, and ``unseen_only`` keeps only the others.

Distractor embeddings are cached per bundle (the sha256 of every weights file, the view's
input settings) and per file list, so a re-evaluation embeds nothing again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import DataLayoutError, UserInputError
from app.ml.bundle.manifest import vector_shaping
from app.ml.bundle.store import Bundle
from app.ml.data.market import MARKET_SUBSETS, load_market
from app.ml.data.pku import IMAGE_SUFFIXES
from app.ml.evaluation.testset import Embedded
from app.ml.images import load_image
from app.ml.infer.embedder import BaseEmbedder
from app.ml.retrieval.distances import distances
from app.ml.retrieval.metrics import mean_std, ranking_result
from app.ml.retrieval.rerank import rerank_top_candidates

DISTRACTOR_PID_BASE = 1_000_000_000
"""Distractor i gets identity DISTRACTOR_PID_BASE + i: it matches no query."""
DISTRACTOR_CAMID = 0
"""Their camera: queries are sketches (camera -1), so no distractor is ever removed as a
same-camera match."""
EMBED_CHUNK = 256
MAX_RANK = 100  # CMC up to rank 100: "is the suspect in the first page of a large gallery"


@dataclass(frozen=True)
class DistractorOptions:
    """What `--distractors` and its companions ask for."""

    folders: tuple[Path, ...]
    max_items: int | None = None  # --distractors-max: at most this many (after the shuffle)
    sizes: tuple[int, ...] | None = None  # --distractor-sizes; None: 0 and every one
    unseen_only: bool = False  # --distractors-unseen
    cache_dir: Path | None = None
    rerank_candidates: int = 100  # re-ranked at query time, as the service's RERANK_CANDIDATES
    seed: int = 0


@dataclass(frozen=True)
class Distractor:
    path: Path
    folder: Path  # the folder given on the command line
    pid: int | None  # Market-style identity, None for a plain folder


@dataclass
class DistractorSet:
    """Distractors in their seeded order, with which ones a bundle's pre-training saw."""

    items: list[Distractor]
    seen: np.ndarray  # bool per item
    folders: list[str]
    seed: int

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, used: int) -> dict[str, object]:
        used_seen = int(self.seen[:used].sum())
        return {
            "folders": self.folders,
            "seed": self.seed,
            "available": len(self.items),
            "used": used,
            "seen_by_pretraining": used_seen,
            "unseen": used - used_seen,
        }


def _folder_items(folder: Path) -> list[Distractor]:
    subsets = [folder / s for s in MARKET_SUBSETS if (folder / s).is_dir()]
    if subsets:
        return [
            Distractor(s.path, folder, s.pid)
            for sub in subsets
            for s in load_market(folder, sub.name)
        ]
    if not folder.is_dir():
        raise DataLayoutError(f"distractor folder not found: {folder}")
    paths = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not paths:
        raise DataLayoutError(f"no images in distractor folder {folder}")
    return [Distractor(p, folder, None) for p in paths]


def _pretraining_record(bundle: Bundle) -> list[tuple[Path, set[int]]]:
    """(folder, its pids held out of pre-training) for each folder any member was pre-trained
    on."""
    seen: list[tuple[Path, set[int]]] = []
    for entry in bundle.manifest.members:
        data = (entry.training.get("pretrain") or {}).get("data") or {}
        holdout = data.get("holdout") or {}
        held_folder = Path(holdout["folder"]).resolve() if holdout.get("folder") else None
        held = {int(p) for p in holdout.get("identities") or []}
        for folder in data.get("folders") or []:
            path = Path(folder["path"]).resolve()
            seen.append((path, held if held_folder == path else set()))
    return seen


def seen_by_pretraining(items: Sequence[Distractor], bundle: Bundle) -> np.ndarray:
    """True for each distractor whose identity some member's pre-training trained on."""
    record = _pretraining_record(bundle)
    out = np.zeros(len(items), dtype=bool)
    for i, item in enumerate(items):
        folder = item.folder.resolve()
        for path, held in record:
            if folder == path and (item.pid is None or item.pid not in held):
                out[i] = True
                break
    return out


def load_distractors(
    folders: Sequence[Path],
    bundle: Bundle,
    *,
    limit: int | None = None,
    unseen_only: bool = False,
    seed: int = 0,
) -> DistractorSet:
    """The crops of ``folders`` in one seeded shuffle (at most ``limit``), marked seen or
    unseen by ``bundle``'s pre-training; ``unseen_only`` drops the seen ones first."""
    if not folders:
        raise UserInputError("no distractor folder given")
    items = [d for folder in folders for d in _folder_items(Path(folder))]
    order = np.random.default_rng(seed).permutation(len(items))
    items = [items[i] for i in order]
    seen = seen_by_pretraining(items, bundle)
    if unseen_only:
        items = [d for d, s in zip(items, seen, strict=True) if not s]
        seen = np.zeros(len(items), dtype=bool)
        if not items:
            raise UserInputError(
                "every distractor is of an identity the bundle's pre-training saw; "
                "drop --distractors-unseen or give other folders"
            )
    if limit is not None:
        items, seen = items[:limit], seen[:limit]
    return DistractorSet(items, seen, [str(f) for f in folders], seed)


def bundle_key(bundle: Bundle, *, units: bool = False) -> str:
    """What a distractor embedding depends on: the weights and how images are embedded
    (``units=True``: what the members' unit embeddings depend on, less the members' shares
    and the centering, which the cache applies to them)."""
    shaping = vector_shaping(bundle.manifest)
    if units:
        shaping.pop("member_weights", None)
        shaping.pop("centering", None)
    parts: list[Any] = [shaping, bundle.inference]
    graphs = getattr(bundle.embedder, "graphs", None)
    if graphs:  # int8: the graphs of one calibration
        parts.append(graphs)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _list_key(items: Sequence[Distractor]) -> str:
    h = hashlib.sha256()
    for d in items:
        stat = d.path.stat()
        h.update(f"{d.path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def embed_distractors(
    embedder: BaseEmbedder,
    key: str,
    dset: DistractorSet,
    cache_dir: Path | None,
) -> np.ndarray:
    """Photo embeddings of every distractor of ``dset`` (float32, one row each), from the
    cache in ``cache_dir`` when an earlier run embedded the same files with the same bundle.

    The cache holds the members' unit embeddings (``key``: :func:`bundle_key` with
    ``units=True``) and :meth:`BaseEmbedder.combine_units` makes the bundle's vectors of them,
    so bundles that differ only in their members' weights or their centering share one
    embedding of the distractors."""
    if not dset.items:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    cache = cache_dir / f"units-{key}-{_list_key(dset.items)}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        cached = np.load(cache)
        if cached.shape == (len(dset.items), embedder.dim):
            return embedder.combine_units(cached.astype(np.float32, copy=False))
    rows = []
    for start in range(0, len(dset.items), EMBED_CHUNK):
        chunk = dset.items[start : start + EMBED_CHUNK]
        rows.append(embedder.embed_units([load_image(d.path) for d in chunk], modality="photo"))
    units = np.concatenate(rows).astype(np.float32, copy=False)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, units)
        tmp.replace(cache)
    return embedder.combine_units(units)


def distractor_ids(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Identities and cameras of ``n`` distractors (see DISTRACTOR_PID_BASE)."""
    pids = DISTRACTOR_PID_BASE + np.arange(n, dtype=np.int64)
    return pids, np.full(n, DISTRACTOR_CAMID, dtype=np.int64)


def with_distractors(e: Embedded, vectors: np.ndarray) -> Embedded:
    """``e`` with ``vectors`` appended to its gallery as non-matching identities."""
    pids, cams = distractor_ids(len(vectors))
    return replace(
        e,
        gallery=np.concatenate([e.gallery, vectors]) if len(vectors) else e.gallery,
        g_pids=np.concatenate([e.g_pids, pids]),
        g_camids=np.concatenate([e.g_camids, cams]),
        g_paths=[],
    )


def _figures(dist: np.ndarray, e: Embedded) -> dict[str, Any]:
    result = ranking_result(dist, e.q_pids, e.g_pids, e.q_camids, e.g_camids, MAX_RANK).to_dict()
    cmc = result["cmc"]
    result["rank100"] = float(cmc[min(len(cmc), MAX_RANK) - 1])
    return result


def distractors_for(bundle: Bundle, opts: DistractorOptions) -> tuple[DistractorSet, np.ndarray]:
    """The distractors ``opts`` asks for, marked for ``bundle``, and their embeddings."""
    dset = load_distractors(
        opts.folders,
        bundle,
        limit=opts.max_items,
        unseen_only=opts.unseen_only,
        seed=opts.seed,
    )
    key = bundle_key(bundle, units=True)
    return dset, embed_distractors(bundle.embedder, key, dset, opts.cache_dir)


def score_by_gallery_size(
    bundle: Bundle,
    e: Embedded,
    opts: DistractorOptions,
    *,
    rerank: tuple[int, int, float] | None = None,
    loaded: tuple[DistractorSet, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Figures of one embedded test set with 0..N distractors added to its gallery, at each
    size of ``opts.sizes``: ``plain`` (cosine) and, with ``rerank`` (k1, k2, lambda), the
    service's query-time re-ranking of each query's top ``opts.rerank_candidates``.
    ``loaded``: :func:`distractors_for` of this bundle, when the caller scores several views
    of one bundle (listed and embedded once)."""
    dset, vectors = loaded if loaded is not None else distractors_for(bundle, opts)
    sizes = sorted({min(n, len(dset)) for n in (opts.sizes or (0, len(dset)))})
    by_size: dict[str, Any] = {}
    for n in sizes:
        big = with_distractors(e, vectors[:n])
        dist = distances(big.query, big.gallery)
        row: dict[str, Any] = {
            "distractors": n,
            "n_gallery": len(big.g_pids),
            "seen_by_pretraining": int(dset.seen[:n].sum()),
            "plain": _figures(dist, big),
        }
        if rerank is not None:
            k1, k2, lam = rerank
            rr = rerank_top_candidates(
                big.query, big.gallery, dist, opts.rerank_candidates, k1=k1, k2=k2, lambda_value=lam
            )
            row["rerank"] = _figures(rr, big)
        by_size[str(n)] = row
    return {"set": dset.describe(len(dset)), "by_size": by_size}


SIZE_METRICS = ("rank1", "rank5", "rank10", "rank100", "mAP")


def summarize_sizes(per_split: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over splits of :func:`score_by_gallery_size` reports, size by size."""
    out: dict[str, Any] = {}
    for size in per_split[0]["by_size"]:
        rows = [p["by_size"][size] for p in per_split if size in p["by_size"]]
        entry: dict[str, Any] = {"distractors": int(size), "n_splits": len(rows)}
        for variant in ("plain", "rerank"):
            if all(variant in r for r in rows):
                stats = mean_std([r[variant] for r in rows])
                entry[variant] = {k: stats[k] for k in SIZE_METRICS}
        out[size] = entry
    return out
