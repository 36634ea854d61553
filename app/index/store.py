"""FAISS store: inner product on L2-normalised embeddings, ids = ``gallery_items.id``.

Index types (``INDEX_TYPE``):

* ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact.
* ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)``; HNSW cannot remove vectors, so deletions become
  tombstones excluded through an ``IDSelector`` until the next rebuild. That selector is built
  once per change of the tombstones (not per query: 85 ms at 200,000 tombstones of 1 M), and
  unfiltered searches then raise efSearch as filtered ones do, tombstones being graph nodes.
* ``ivf``: a bare ``IndexIVFFlat`` (its lists hold the ids; no ``IndexIDMap2``, whose removal
  gives wrong ids on IVF) trained on the vectors present at (re)build time; galleries smaller
  than ``IVF_MIN_TRAIN`` use an exact flat index until the next rebuild. A saved copy in the
  older ``IndexIDMap2(IndexIVFFlat)`` form is refused by ``load`` (so rebuilt).
* ``auto``: exact ``flat`` below ``auto_approx_min`` items at (re)build time, ``hnsw`` from
  there on (benchmarks/bench_index.py, docs/results.md: the fastest at a given recall).

The structure is chosen when the index is built (start-up, rebuild); a saved copy whose
structure is not the one its size calls for is refused by ``load``, so a gallery that grew
past a threshold is rebuilt at the next start.

Filters (``allowed_ids``) return only allowed items on every kind: the live ids among them
(never a tombstone) are the only ones a FAISS selector accepts, a bitmap over the id range
(``_selector``; an ``IDSelectorBatch`` for sparse ids). On ``hnsw``/``ivf`` a filter that
leaves at most ``exact_filter_max`` items is searched exactly among those items; a larger one
runs the approximate search restricted to them, and falls back to the exact search when that
finds fewer than ``k``. HNSW still walks through rejected nodes and keeps only accepted ones,
so a filtered HNSW search raises efSearch by ``sqrt(ntotal / allowed)`` (capped at
``hnsw_filter_ef_max``; ``_filtered_ef``): at 1/6 of the items allowed, 2.45x, for about
the unfiltered recall.

All public methods take one lock, so the store can be shared by request threads. The copy on
disk (``save``/``load``) is a cache: the database is the source of truth and ``load`` refuses a
file whose metadata, checksum or id set disagrees with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from app.core.files import atomic_write_bytes
from app.index.idset import IdSet, as_ids, unique_ids

log = logging.getLogger(__name__)

# faiss's bundled type stubs lag its SWIG API (search parameters, ownership flags, the
# one-array IDSelectorBitmap constructor).
_faiss: Any = faiss

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
INDEX_FILE = "gallery.faiss"
META_FILE = "gallery.json"
IVF_MIN_TRAIN = 1000
IVF_TRAIN_POINTS_PER_LIST = 64  # k-means trains on at most 64 sampled vectors a list
IVF_TRAIN_ROUNDS = 10
AUTO_APPROX_MIN = 25_000
EXACT_FILTER_MAX = 20_000
FILTER_EF_MAX = 1024  # the largest efSearch that a filtered HNSW search is raised to
_GATHER_ROWS = 2048  # vectors gathered at once (4 MiB at 512-d) by the exact search on HNSW
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Hit:
    id: int
    score: float  # cosine similarity


def ids_checksum(ids: Iterable[int] | np.ndarray) -> str:
    """sha256 of the sorted, de-duplicated ids as little-endian int64."""
    arr = unique_ids(as_ids(ids))
    return hashlib.sha256(arr.astype("<i8").tobytes()).hexdigest()


def ivf_nlist(n: int) -> int:
    """Inverted lists of an IVF index built over ``n`` vectors (~4 sqrt(n), >= 39 points each)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (score descending, then id ascending) of aligned 1-D arrays."""
    if scores.size > k:
        keep = np.argpartition(-scores, k - 1)[:k]
        scores, ids = scores[keep], ids[keep]
    order = np.lexsort((ids, -scores))
    return scores[order], ids[order]


def _selector(allowed: np.ndarray) -> Any:
    """A FAISS selector that accepts exactly ``allowed`` (sorted, unique ids).

    A bitmap over the ids ``0..allowed[-1]`` (one numpy pass, where ``IDSelectorBatch`` hashes
    every id into a set) while it takes at most 8 bytes an allowed id (+ 64 KiB); ids beyond
    its end are rejected by FAISS. Sparse or negative ids get an ``IDSelectorBatch``.
    """
    if allowed.size == 0 or allowed[0] < 0 or allowed[-1] >= 64 * allowed.size + 2**19:
        return faiss.IDSelectorBatch(allowed)
    mask = np.zeros(int(allowed[-1]) + 1, dtype=bool)
    mask[allowed] = True
    # FAISS reads id i as bit (i & 7) of byte (i >> 3): numpy's little bit order. The
    # selector keeps a reference to the array (faiss's referenced_objects).
    return _faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))


def _ivf_ids(index: Any) -> np.ndarray:
    """Every id held in the inverted lists of an IVF index (in list order, repeats kept)."""
    invlists = index.invlists
    parts = [np.zeros(0, np.int64)]
    for list_no in range(index.nlist):
        size = invlists.list_size(list_no)
        if size:
            ptr = invlists.get_ids(list_no)
            parts.append(np.array(faiss.rev_swig_ptr(ptr, size), dtype=np.int64))
            invlists.release_ids(list_no, ptr)
    return np.concatenate(parts)


class VectorIndex:
    def __init__(
        self,
        dim: int,
        index_type: str = "flat",
        *,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 40,
        hnsw_ef_search: int = 256,
        ivf_nprobe: int = 16,
        auto_approx_min: int = AUTO_APPROX_MIN,
        exact_filter_max: int = EXACT_FILTER_MAX,
        hnsw_filter_ef_max: int = FILTER_EF_MAX,
    ) -> None:
        if index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {index_type!r}: use {', '.join(INDEX_TYPES)}")
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.index_type = index_type
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.hnsw_ef_search = hnsw_ef_search
        self.ivf_nprobe = ivf_nprobe
        self.auto_approx_min = auto_approx_min
        self.exact_filter_max = exact_filter_max
        self.hnsw_filter_ef_max = hnsw_filter_ef_max
        self._lock = threading.RLock()
        self._ids = IdSet()  # live ids (tombstones excluded)
        self._deleted: set[int] = set()  # tombstones (HNSW only)
        self._live_selector: Any = None  # accepts all but the tombstones; built on first use
        self._kind = "flat"  # what is actually built: flat | hnsw | ivf
        self._index: Any = self._empty(self.kind_for(0))

    def kind_for(self, n: int) -> str:
        """The structure that a build over ``n`` vectors gets under this index type."""
        if self.index_type == "auto":
            return "hnsw" if n >= self.auto_approx_min else "flat"
        if self.index_type == "ivf":
            return "ivf" if n >= IVF_MIN_TRAIN else "flat"
        return self.index_type

    # -- construction -------------------------------------------------------------------
    def _empty(self, kind: str, nlist: int = 1) -> Any:
        base: Any
        if kind == "ivf":
            # No IndexIDMap2 around IVF: its remove_ids assumes that the base index shifts the
            # internal ids of the later vectors down (IndexFlat does), which IVF lists do not,
            # so the id map and the lists disagreed after any removal. IVF lists hold the
            # external ids themselves (add_with_ids, remove_ids and selectors work on them).
            quantizer: Any = faiss.IndexFlatIP(self.dim)
            ivf: Any = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST  # k-means on a sample
            ivf.cp.niter = IVF_TRAIN_ROUNDS
            ivf.own_fields = True
            quantizer.this.disown()
            self._kind = kind
            return ivf
        if kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = self.hnsw_ef_construction
        else:
            base = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIDMap2(base)
        index.own_fields = True
        base.this.disown()
        self._kind = kind
        return index

    def _check_vectors(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        if vectors.shape[0] != ids.shape[0]:
            raise ValueError(f"{ids.shape[0]} ids for {vectors.shape[0]} vectors")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or infinity")
        return vectors

    def build(self, ids: Iterable[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Replace the whole content with ``vectors`` (rows aligned with ``ids``)."""
        id_arr = as_ids(ids)
        vectors = self._check_vectors(id_arr, vectors)
        if len(unique_ids(id_arr)) != len(id_arr):
            raise ValueError("duplicate ids")
        with self._lock:
            n = len(id_arr)
            kind = self.kind_for(n)
            index = self._empty(kind, ivf_nlist(n))
            if kind == "ivf":
                index.train(vectors)
            if n:
                index.add_with_ids(vectors, id_arr)
            self._index = index
            self._ids = IdSet(id_arr)
            self._deleted = set()
            self._live_selector = None

    # -- mutation -----------------------------------------------------------------------
    def add(self, ids: Iterable[int] | np.ndarray, vectors: np.ndarray) -> None:
        id_arr = as_ids(ids)
        vectors = self._check_vectors(id_arr, vectors)
        with self._lock:
            dup = self._ids.present(id_arr)
            if dup.size or len(unique_ids(id_arr)) != len(id_arr):
                shown = dup.tolist()[:5] if dup.size else "repeated in the call"
                raise ValueError(f"ids already in the index: {shown}")
            if self._deleted.intersection(id_arr.tolist()):
                # an id cannot be in an HNSW graph twice: rebuild without it first
                self._compact()
            self._index.add_with_ids(vectors, id_arr)
            self._ids.add(id_arr)

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Remove ``ids`` (unknown ids are ignored); returns how many were removed."""
        with self._lock:
            present = self._ids.present(as_ids(ids))
            if not present.size:
                return 0
            self._ids.remove(present)
            if self._kind == "hnsw":
                self._deleted.update(present.tolist())
                self._live_selector = None
                if len(self._deleted) > max(1000, len(self._ids) // 5):
                    self._compact()
            else:
                self._index.remove_ids(present)
            return int(present.size)

    def _compact(self) -> None:
        """Rebuild without tombstones (HNSW)."""
        live = self._ids.array().copy()
        self.build(live, self._index.reconstruct_batch(live))

    # -- queries ------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def ids(self) -> np.ndarray:
        """The ids in the index, ascending (a copy)."""
        with self._lock:
            return self._ids.array().copy()

    def __contains__(self, item_id: object) -> bool:
        with self._lock:
            return item_id in self._ids

    def vectors(self, ids: Iterable[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found ids ascending, their vectors): the ones of ``ids`` held in memory.

        The vectors are the float32 rows given to ``build``/``add`` (or read by ``load``),
        bit for bit. An ``ivf`` index returns none: its lists keep no id -> vector map, so
        callers read those vectors elsewhere (the database).
        """
        with self._lock:
            found = self._ids.present(ids)  # live ids only: never an HNSW tombstone
            if self._kind == "ivf" or found.size == 0:
                return found[:0], np.zeros((0, self.dim), np.float32)
            return found, self._index.reconstruct_batch(found)

    @property
    def kind(self) -> str:
        """The structure actually built (an ``ivf`` request on a small gallery is ``flat``)."""
        return self._kind

    def search(
        self, query: np.ndarray, k: int, allowed_ids: Iterable[int] | np.ndarray | None = None
    ) -> list[Hit]:
        """The ``k`` best items by cosine similarity, best first.

        With ``allowed_ids`` only those ids can be returned (see the module docstring for how
        exact that is on each kind).
        """
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise ValueError(f"query has dimension {q.shape[1]}, the index {self.dim}")
        if k <= 0:
            return []
        with self._lock:
            if allowed_ids is None:
                scores, labels = self._search_all(q, min(k, len(self._ids)))
            else:
                allowed = self._ids.present(as_ids(allowed_ids))
                scores, labels = self._search_among(q, min(k, int(allowed.size)), allowed)
        return [Hit(int(i), float(s)) for s, i in zip(scores, labels, strict=True) if i >= 0]

    def _search_all(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        if not self._deleted:
            scores, labels = self._index.search(q, k, params=self._params(None))
            return scores[0], labels[0]
        if self._live_selector is None:  # once per change of the tombstones, not per query
            dead = np.fromiter(sorted(self._deleted), np.int64, len(self._deleted))
            inner = _selector(dead)
            self._live_selector = (inner, faiss.IDSelectorNot(inner))  # keeps inner alive
        params = self._params(self._live_selector[1], self._filtered_ef(len(self._ids)))
        scores, labels = self._index.search(q, k, params=params)
        return scores[0], labels[0]

    def _search_among(
        self, q: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if k == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        if self._kind != "flat" and allowed.size <= self.exact_filter_max:
            return self._exact_among(q, k, allowed)
        selector = _selector(allowed)
        params = self._params(selector, self._filtered_ef(int(allowed.size)))
        scores, labels = self._index.search(q, k, params=params)
        if self._kind != "flat" and int((labels[0] >= 0).sum()) < k:
            return self._exact_among(q, k, allowed)  # the approximate search came up short
        return scores[0], labels[0]

    def _exact_among(
        self, q: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` among ``allowed`` (live ids) on an approximate index."""
        if self._kind == "ivf":  # every list scanned; only allowed entries are scored
            selector = _selector(allowed)
            params = _faiss.SearchParametersIVF(sel=selector, nprobe=self._index.nlist)
            scores, labels = self._index.search(q, k, params=params)
            return scores[0], labels[0]
        best_scores, best_ids = np.zeros(0, np.float32), np.zeros(0, np.int64)
        for start in range(0, allowed.size, _GATHER_ROWS):
            chunk = allowed[start : start + _GATHER_ROWS]
            scores = self._index.reconstruct_batch(chunk) @ q[0]
            best_scores, best_ids = _top_k(
                np.concatenate([best_scores, scores]), np.concatenate([best_ids, chunk]), k
            )
        return best_scores, best_ids

    def _filtered_ef(self, n_allowed: int) -> int:
        """efSearch for an HNSW search whose selector accepts ``n_allowed`` graph nodes.

        HNSW walks through rejected nodes too and keeps only accepted ones, so with a share
        ``f`` accepted a fixed efSearch finds fewer of the filtered top k (docs/results.md,
        "Filtered HNSW"). ``efSearch / sqrt(f)`` gave about the unfiltered recall for ``f``
        from 1/3 to 1/50 (``efSearch / f`` overshot it at twice the time). ``f`` counts
        tombstones as nodes; at most ``hnsw_filter_ef_max``, never below ``hnsw_ef_search``.
        """
        ratio = self._index.ntotal / max(1, n_allowed)
        scaled = math.ceil(self.hnsw_ef_search * math.sqrt(ratio))
        return max(self.hnsw_ef_search, min(scaled, self.hnsw_filter_ef_max))

    def _params(self, selector: Any, ef_search: int | None = None) -> Any:
        if self._kind == "hnsw":
            ef = ef_search or self.hnsw_ef_search
            return _faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
        if self._kind == "ivf":
            return _faiss.SearchParametersIVF(sel=selector, nprobe=self.ivf_nprobe)
        return _faiss.SearchParameters(sel=selector) if selector is not None else None

    # -- persistence --------------------------------------------------------------------
    def save(self, directory: Path, model_version: str) -> None:
        """Write the index and its metadata atomically (tombstones are compacted first)."""
        with self._lock:
            if self._deleted:
                self._compact()
            data = faiss.serialize_index(self._index).tobytes()
            meta = {
                "format": FORMAT_VERSION,
                "model_version": model_version,
                "index_type": self.index_type,
                "kind": self._kind,
                "dim": self.dim,
                "count": len(self._ids),
                "ids_sha256": ids_checksum(self._ids.array()),
                "file_sha256": hashlib.sha256(data).hexdigest(),
            }
        atomic_write_bytes(directory / INDEX_FILE, data)
        atomic_write_bytes(directory / META_FILE, json.dumps(meta, indent=2).encode())

    def load(self, directory: Path, model_version: str, expected_ids: np.ndarray) -> str | None:
        """Load the saved copy; returns ``None`` on success, else why it was not usable.

        The copy is refused when it is missing or corrupt, was built for another model, index
        type or dimension, holds another id set than ``expected_ids`` (the database's), or is
        not the structure its size calls for (``kind_for``).
        """
        index_path, meta_path = directory / INDEX_FILE, directory / META_FILE
        if not index_path.is_file() or not meta_path.is_file():
            return "no saved index"
        try:
            meta = json.loads(meta_path.read_text())
            data = index_path.read_bytes()
        except (OSError, ValueError) as exc:
            return f"unreadable index metadata: {exc}"
        wanted = {
            "format": FORMAT_VERSION,
            "model_version": model_version,
            "index_type": self.index_type,
            "dim": self.dim,
        }
        for key, value in wanted.items():
            if meta.get(key) != value:
                return f"saved index has {key}={meta.get(key)!r}, need {value!r}"
        if hashlib.sha256(data).hexdigest() != meta.get("file_sha256"):
            return "saved index file does not match its checksum"
        expected = unique_ids(as_ids(expected_ids))
        if meta.get("count") != len(expected) or meta.get("ids_sha256") != ids_checksum(expected):
            return (
                f"saved index holds {meta.get('count')} items, the database {len(expected)} "
                "(or another id set)"
            )
        kind = self.kind_for(len(expected))
        if meta.get("kind") != kind:
            return (
                f"saved index is {meta.get('kind')!r}; {len(expected)} items call for {kind!r} "
                f"with index type {self.index_type!r}"
            )
        try:
            index: Any = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            return f"saved index cannot be read: {str(exc).splitlines()[0]}"
        if kind == "ivf" and not isinstance(index, faiss.IndexIVFFlat):
            # Copies saved in the older IndexIDMap2(IndexIVFFlat) form: wrong ids after removals.
            return f"saved ivf index is a {type(index).__name__}, need a bare IndexIVFFlat"
        if kind != "ivf" and not isinstance(index, faiss.IndexIDMap2):
            return f"saved {kind} index is a {type(index).__name__}, need an IndexIDMap2"
        held = _ivf_ids(index) if kind == "ivf" else faiss.vector_to_array(index.id_map)
        stored = unique_ids(held.astype(np.int64))
        if (
            index.d != self.dim
            or index.ntotal != len(held)
            or len(held) != len(stored)
            or not np.array_equal(stored, expected)
        ):
            return "saved index content differs from its metadata"
        with self._lock:
            self._index = index
            self._kind = kind
            self._ids = IdSet(stored)
            self._deleted = set()
            self._live_selector = None
        return None
