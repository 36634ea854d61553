"""FAISS store: inner product on L2-normalised embeddings, ids = ``gallery_items.id``.

* ``flat`` (default): ``IndexIDMap2(IndexFlatIP)``, exact, filters exact too (``IDSelectorBatch``).
* ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)``; HNSW cannot remove vectors, so deletions become
  tombstones excluded through an ``IDSelector`` until the next rebuild.
* ``ivf``: ``IndexIDMap2(IndexIVFFlat)`` trained on the vectors present at (re)build time;
  galleries smaller than ``IVF_MIN_TRAIN`` use an exact flat index until the next rebuild.

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

log = logging.getLogger(__name__)

# faiss's bundled type stubs lag its SWIG API (search parameters, ownership flags).
_faiss: Any = faiss

INDEX_FILE = "gallery.faiss"
META_FILE = "gallery.json"
IVF_MIN_TRAIN = 1000
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Hit:
    id: int
    score: float  # cosine similarity


def ids_checksum(ids: Iterable[int] | np.ndarray) -> str:
    """sha256 of the sorted, de-duplicated ids as little-endian int64."""
    arr = np.unique(_as_ids(ids))
    return hashlib.sha256(arr.astype("<i8").tobytes()).hexdigest()


def _as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    if isinstance(ids, np.ndarray):
        return np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    return np.fromiter((int(i) for i in ids), dtype=np.int64)


class VectorIndex:
    def __init__(
        self,
        dim: int,
        index_type: str = "flat",
        *,
        hnsw_m: int = 32,
        hnsw_ef_search: int = 128,
        ivf_nprobe: int = 16,
    ) -> None:
        if index_type not in ("flat", "hnsw", "ivf"):
            raise ValueError(f"unknown index type {index_type!r}: use flat, hnsw or ivf")
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.index_type = index_type
        self.hnsw_m = hnsw_m
        self.hnsw_ef_search = hnsw_ef_search
        self.ivf_nprobe = ivf_nprobe
        self._lock = threading.RLock()
        self._ids: set[int] = set()
        self._deleted: set[int] = set()  # tombstones (HNSW only)
        self._kind = "flat"  # what is actually built: flat | hnsw | ivf
        self._index: Any = self._empty("flat" if index_type == "ivf" else index_type)

    # -- construction -------------------------------------------------------------------
    def _empty(self, kind: str, nlist: int = 1) -> Any:
        base: Any
        if kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        elif kind == "ivf":
            quantizer: Any = faiss.IndexFlatIP(self.dim)
            base = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            base.own_fields = True
            quantizer.this.disown()
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
        id_arr = _as_ids(ids)
        vectors = self._check_vectors(id_arr, vectors)
        if len(np.unique(id_arr)) != len(id_arr):
            raise ValueError("duplicate ids")
        with self._lock:
            n = len(id_arr)
            if self.index_type == "ivf" and n >= IVF_MIN_TRAIN:
                nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
                index = self._empty("ivf", nlist)
                index.index.train(vectors)
            else:
                index = self._empty("flat" if self.index_type == "ivf" else self.index_type)
            if n:
                index.add_with_ids(vectors, id_arr)
            self._index = index
            self._ids = set(id_arr.tolist())
            self._deleted = set()

    # -- mutation -----------------------------------------------------------------------
    def add(self, ids: Iterable[int] | np.ndarray, vectors: np.ndarray) -> None:
        id_arr = _as_ids(ids)
        vectors = self._check_vectors(id_arr, vectors)
        with self._lock:
            dup = self._ids.intersection(id_arr.tolist())
            if dup:
                raise ValueError(f"ids already in the index: {sorted(dup)[:5]}")
            revived = self._deleted.intersection(id_arr.tolist())
            if revived:  # an id cannot be in an HNSW graph twice: rebuild without it first
                self._compact()
            self._index.add_with_ids(vectors, id_arr)
            self._ids.update(id_arr.tolist())

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Remove ``ids`` (unknown ids are ignored); returns how many were removed."""
        id_arr = _as_ids(ids)
        with self._lock:
            present = [i for i in id_arr.tolist() if i in self._ids]
            if not present:
                return 0
            if self._kind == "hnsw":
                self._deleted.update(present)
                if len(self._deleted) > max(1000, len(self._ids) // 5):
                    self._ids.difference_update(present)
                    self._compact()
                    return len(present)
            else:
                self._index.remove_ids(np.asarray(present, dtype=np.int64))
            self._ids.difference_update(present)
            return len(present)

    def _compact(self) -> None:
        """Rebuild without tombstones (HNSW)."""
        live = np.asarray(sorted(self._ids), dtype=np.int64)
        vectors = self._reconstruct(live)
        self.build(live, vectors)

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if self._kind == "ivf":
            self._index.index.make_direct_map()
        for row, i in enumerate(ids.tolist()):
            out[row] = self._index.reconstruct(int(i))
        return out

    # -- queries ------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def ids(self) -> np.ndarray:
        with self._lock:
            return np.asarray(sorted(self._ids), dtype=np.int64)

    def __contains__(self, item_id: object) -> bool:
        with self._lock:
            return item_id in self._ids

    @property
    def kind(self) -> str:
        """The structure actually built (an ``ivf`` request on a small gallery is ``flat``)."""
        return self._kind

    def search(
        self, query: np.ndarray, k: int, allowed_ids: Iterable[int] | np.ndarray | None = None
    ) -> list[Hit]:
        """The ``k`` best items by cosine similarity, best first.

        ``allowed_ids`` restricts the search to those ids (exact with the flat index).
        """
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise ValueError(f"query has dimension {q.shape[1]}, the index {self.dim}")
        if k <= 0:
            return []
        with self._lock:
            selector: Any = None
            keep: list[Any] = []  # SWIG objects referenced by the selector must outlive search
            if allowed_ids is not None:
                allowed = np.intersect1d(
                    _as_ids(allowed_ids), np.fromiter(self._ids, np.int64, len(self._ids))
                )
                if allowed.size == 0:
                    return []
                k = min(k, int(allowed.size))
                selector = faiss.IDSelectorBatch(allowed)
                keep.append(allowed)
            elif self._deleted:
                inner = faiss.IDSelectorBatch(np.asarray(sorted(self._deleted), np.int64))
                selector = faiss.IDSelectorNot(inner)
                keep.append(inner)
            k = min(k, len(self._ids))
            if k == 0:
                return []
            params = self._params(selector)
            scores, labels = self._index.search(q, k, params=params)
            del keep
        hits = []
        for score, label in zip(scores[0].tolist(), labels[0].tolist(), strict=True):
            if label >= 0:
                hits.append(Hit(int(label), float(score)))
        return hits

    def _params(self, selector: Any) -> Any:
        if self._kind == "hnsw":
            return _faiss.SearchParametersHNSW(sel=selector, efSearch=self.hnsw_ef_search)
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
                "ids_sha256": ids_checksum(np.fromiter(self._ids, np.int64, len(self._ids))),
                "file_sha256": hashlib.sha256(data).hexdigest(),
            }
        atomic_write_bytes(directory / INDEX_FILE, data)
        atomic_write_bytes(directory / META_FILE, json.dumps(meta, indent=2).encode())

    def load(self, directory: Path, model_version: str, expected_ids: np.ndarray) -> str | None:
        """Load the saved copy; returns ``None`` on success, else why it was not usable.

        The copy is refused when it is missing or corrupt, was built for another model, index
        type or dimension, or holds another id set than ``expected_ids`` (the database's).
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
        expected = np.unique(_as_ids(expected_ids))
        if meta.get("count") != len(expected) or meta.get("ids_sha256") != ids_checksum(expected):
            return (
                f"saved index holds {meta.get('count')} items, the database {len(expected)} "
                "(or another id set)"
            )
        try:
            index: Any = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            return f"saved index cannot be read: {str(exc).splitlines()[0]}"
        stored = np.unique(faiss.vector_to_array(index.id_map).astype(np.int64))
        if index.d != self.dim or not np.array_equal(stored, expected):
            return "saved index content differs from its metadata"
        with self._lock:
            self._index = index
            self._kind = str(meta.get("kind", self.index_type))
            self._ids = set(stored.tolist())
            self._deleted = set()
        return None
