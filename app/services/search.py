"""Sketch search: decode, translate and embed each sketch (both through the dynamic
batching queue, :mod:`app.ml.infer.batching`, so concurrent searches share forward passes), fuse
them with the relevance feedback into one query
(:func:`app.ml.retrieval.feedback.build_query`), FAISS top-k, optional k-reciprocal
re-ranking, and the audit record of every search.
"""

from __future__ import annotations

import io
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
from PIL import Image
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.files import atomic_write_bytes
from app.db.models import ApiKey, GalleryItem, Search
from app.db.session import release
from app.db.types import utcnow
from app.errors import UserInputError
from app.index.pgvector import PgVectorIndex
from app.ml.bundle.manifest import Manifest
from app.ml.infer.query_views import QueryView, check_choice, embed_queries, resolve_view
from app.ml.retrieval.feedback import FeedbackWeights, build_query
from app.ml.retrieval.rerank import DEFAULT_K1, DEFAULT_K2, DEFAULT_LAMBDA, rerank_candidates
from app.services import audit
from app.services.blobs import sha256_hex, sniff_extension
from app.services.context import ServiceContext
from app.services.errors import NotFoundError, OutOfRangeError
from app.services.feedback import Feedback, combine, feedback_vectors
from app.services.gallery import camera_filter, check_range, check_upload, filter_conditions
from app.services.outages import check_free_space
from app.services.text import display_name
from app.services.vectors import candidate_vectors

MAX_TOP_K = 100
# Sketches of one suspect in one search (e.g. one per witness).
MAX_SKETCHES = 5
# Rocchio weights of the service's queries (see app.ml.retrieval.feedback).
FEEDBACK_WEIGHTS = FeedbackWeights()
STAGES = ("decode", "translate", "embed", "search", "rerank")


@dataclass(frozen=True)
class SearchParams:
    top_k: int = 10
    translate: bool | None = None  # None: as the bundle's view says (app.ml.infer.query_views)
    view: QueryView | None = None  # sketch, translated or fused; None: the bundle's view
    rerank: bool | None = None  # None: automatic, by the searched gallery's size
    k1: int = DEFAULT_K1
    k2: int = DEFAULT_K2
    lambda_value: float = DEFAULT_LAMBDA
    camera_ids: tuple[str, ...] = ()
    captured_after: datetime | None = None
    captured_before: datetime | None = None

    def validate(self) -> None:
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise OutOfRangeError(
                f"top_k must be between 1 and {MAX_TOP_K}, got {self.top_k}", field="top_k"
            )
        if not 1 <= self.k1 <= 100:
            raise OutOfRangeError(f"k1 must be between 1 and 100, got {self.k1}", field="k1")
        if not 1 <= self.k2 <= self.k1:
            raise OutOfRangeError(
                f"k2 must be between 1 and k1 ({self.k1}), got {self.k2}", field="k2"
            )
        if not 0.0 <= self.lambda_value <= 1.0:
            raise OutOfRangeError(
                f"lambda_value must be between 0 and 1, got {self.lambda_value}",
                field="lambda_value",
            )
        check_range(self.captured_after, self.captured_before)
        camera_filter(self.camera_ids)  # before any sketch is decoded
        try:
            check_choice(self.view, self.translate)
        except UserInputError as exc:
            raise OutOfRangeError(str(exc), field="view") from None

    def as_json(self) -> dict[str, Any]:
        return {
            "top_k": self.top_k,
            "translate": self.translate,
            "view_requested": self.view,
            "rerank": self.rerank,
            "k1": self.k1,
            "k2": self.k2,
            "lambda_value": self.lambda_value,
            "camera_id": list(self.camera_ids),
            "captured_after": self.captured_after.isoformat() if self.captured_after else None,
            "captured_before": self.captured_before.isoformat() if self.captured_before else None,
        }


@dataclass
class SearchHit:
    rank: int
    gallery_id: int
    score: float  # cosine similarity of the query and the item embeddings
    distance: float | None  # re-ranked distance (smaller = better) when re-ranking ran
    item: GalleryItem | None


@dataclass
class SearchOutcome:
    record: Search
    hits: list[SearchHit]
    timings_ms: dict[str, float]
    feedback: Feedback
    notes: list[str] = field(default_factory=list)
    gallery_size: int = 0  # crops in the index
    filtered_size: int | None = None  # crops left by the filters (None: no filters)


@dataclass(frozen=True)
class SketchUpload:
    data: bytes
    filename: str | None = None


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def allowed_ids(session: Session, key: str, params: SearchParams) -> list[int] | None:
    """Gallery ids that pass the filters, or None when there are no filters."""
    conditions = filter_conditions(params.camera_ids, params.captured_after, params.captured_before)
    if not conditions:
        return None
    return [int(i) for i in session.scalars(select(GalleryItem.id).where(*conditions))]


def model_weights(manifest: Manifest) -> dict[str, str]:
    """The sha256 of each weights file of the model (its members, its translator): what a
    search was made with, for the record and the result sheet."""
    weights = {f"member {m.name}": m.sha256 for m in manifest.members}
    if manifest.translator is not None:
        weights["translator"] = manifest.translator.sha256
    return weights


def filter_notes(
    session: Session, params: SearchParams, gallery_size: int, allowed: int, found: int
) -> list[str]:
    """Why a filtered search found fewer results than asked: cameras the gallery holds no
    crop of, a time window holding none, and how many crops the filters left out."""
    if found >= params.top_k:
        return []
    notes: list[str] = []
    cameras = camera_filter(params.camera_ids)
    unknown: list[str] = []
    if cameras:
        held = set(
            session.scalars(
                select(GalleryItem.camera_id).where(GalleryItem.camera_id.in_(cameras)).distinct()
            )
        )
        unknown = [c for c in cameras if c not in held]
        if unknown:
            notes.append(
                f"the gallery holds no crops from camera(s) {', '.join(unknown)}"
                + ("" if held else ": check the camera names (GET /api/v1/cameras lists them)")
            )
    windowed = params.captured_after is not None or params.captured_before is not None
    if windowed and allowed == 0 and len(unknown) < len(cameras or [None]):
        where = " from those cameras" if cameras else ""
        notes.append(f"no crop{where} was captured in the time window")
    excluded = gallery_size - allowed
    notes.append(
        f"{excluded:,} of the gallery's {gallery_size:,} crops were left out by the filters; "
        f"{allowed:,} were searched"
    )
    return notes


def rerank_choice(
    requested: bool | None, gallery_items: int, auto_min: int, *, at_least: bool = False
) -> tuple[bool, str]:
    """Whether a search re-ranks, and a note when it did so without being asked: on when the
    searched gallery holds at least ``auto_min`` items (``RERANK_AUTO_MIN_ITEMS``; 0: never).
    (A search left in cosine order says so by ``reranked: false``, without a note.)
    ``at_least``: ``gallery_items`` was counted up to a cap and there are more."""
    if requested is not None:
        return requested, ""
    if 0 < auto_min <= gallery_items:
        more = "more than " if at_least else ""
        return True, (
            f"re-ranked automatically: the searched gallery holds {more}{gallery_items:,} items "
            f"(from {auto_min:,} on, re-ranking the top candidates finds more of the right person)"
        )
    return False, ""


def check_sketch_count(count: int) -> None:
    if count > MAX_SKETCHES:
        raise OutOfRangeError(
            f"at most {MAX_SKETCHES} sketches per search, got {count}", field="sketch"
        )


def _labelled(exc: UserInputError, index: int, filename: str | None) -> UserInputError:
    """The same error, saying which sketch it is about."""
    name = f" ({filename})" if filename else ""
    message = f"sketch {index + 1}{name}: {exc}"
    if isinstance(exc, OutOfRangeError):
        return OutOfRangeError(message, field=exc.field)
    return type(exc)(message)


def _sketches_of(
    ctx: ServiceContext, sketches: Sequence[SketchUpload], refine: Search | None
) -> list[SketchUpload]:
    """The uploaded sketches, checked; without any, those of the refined search."""
    check_sketch_count(len(sketches))
    if not sketches:
        if refine is None:
            raise OutOfRangeError(
                "send at least one sketch (or refine an earlier search to reuse its sketches)",
                field="sketch",
            )
        return [
            SketchUpload(read_search_file(ctx, refine, "sketch", i), None)
            for i in range(len(refine.sketches))
        ]
    for i, sketch in enumerate(sketches):
        try:
            check_upload(ctx, sketch.data, sketch.filename)
        except UserInputError as exc:
            if len(sketches) == 1:
                raise
            raise _labelled(exc, i, sketch.filename) from None
    return list(sketches)


def run_search(
    ctx: ServiceContext,
    session: Session,
    sketches: Sequence[SketchUpload],
    params: SearchParams,
    *,
    api_key_id: int | None = None,
    confirmed: Sequence[int] = (),
    rejected: Sequence[int] = (),
    refine: Search | None = None,
    case_id: int | None = None,
) -> SearchOutcome:
    """Search the gallery with one or more sketches of one suspect, moved by the feedback
    (confirmed and rejected gallery ids, and ``refine``'s feedback and marks), and record the
    search. Without sketches, ``refine``'s are used. Judged items are left out of the results.
    """
    params.validate()
    uploads = _sketches_of(ctx, sketches, refine)
    feedback = combine(confirmed, rejected, refine, session)
    release(session)  # no connection held while decoding, translating and embedding
    timings = dict.fromkeys(STAGES, 0.0)
    notes: list[str] = []
    bundle = ctx.bundle

    t = time.perf_counter()
    images = []
    for i, upload in enumerate(uploads):
        try:
            images.append(ctx.decode(upload.data))
        except UserInputError as exc:
            if len(uploads) == 1:
                raise
            raise _labelled(exc, i, upload.filename) from None
    timings["decode"] = _ms(t)

    view, view_notes = resolve_view(
        bundle.view, bundle.translator is not None, view=params.view, translate=params.translate
    )
    notes.extend(view_notes)
    translator = bundle.translator

    def translate(sketches: Sequence[Image.Image]) -> list[Image.Image]:
        assert translator is not None
        t = time.perf_counter()
        out = ctx.inference.translate(translator, sketches)
        timings["translate"] = _ms(t)
        return out

    t = time.perf_counter()
    embedded, translated = embed_queries(
        images,
        view,
        lambda batch, modality: ctx.inference.embed(bundle.embedder, batch, modality=modality),
        translate if translator is not None else None,
        bundle.manifest.translation_weight,
    )
    positives, negatives = feedback_vectors(ctx, session, feedback)
    query = build_query(embedded, positives, negatives, FEEDBACK_WEIGHTS)
    timings["embed"] = round(_ms(t) - timings["translate"], 3)

    t = time.perf_counter()
    judged = set(feedback.ids)
    # (gallery size, crops the filters let through: None without filters), for the notes on a
    # short result and the response
    scope: tuple[int, int | None]
    if isinstance(ctx.index, PgVectorIndex):
        conditions = filter_conditions(
            params.camera_ids, params.captured_after, params.captured_before
        )
        settings = ctx.settings
        cap = max(settings.INDEX_EXACT_FILTER_MAX, settings.RERANK_AUTO_MIN_ITEMS)
        searched, more = ctx.index.count(session, conditions, cap)
        do_rerank, why = rerank_choice(
            params.rerank, searched, settings.RERANK_AUTO_MIN_ITEMS, at_least=more
        )
        n_candidates = max(params.top_k, settings.RERANK_CANDIDATES) if do_rerank else params.top_k
        hits_found = ctx.index.search(
            session,
            query,
            n_candidates + len(judged),
            conditions,
            exact=searched <= settings.INDEX_EXACT_FILTER_MAX and not more,
        )
        total = ctx.index.total(session)
        if not conditions:
            scope = (total, None)
        else:  # the count above stops at ``cap``; the response gives the exact one
            scope = (total, ctx.index.count(session, conditions, total)[0] if more else searched)
    else:
        allowed = allowed_ids(session, ctx.embedding_key, params)
        do_rerank, why = rerank_choice(
            params.rerank,
            len(ctx.index) if allowed is None else len(allowed),
            ctx.settings.RERANK_AUTO_MIN_ITEMS,
        )
        n_candidates = (
            max(params.top_k, ctx.settings.RERANK_CANDIDATES) if do_rerank else params.top_k
        )
        hits_found = ctx.index.search(query, n_candidates + len(judged), allowed)
        scope = (len(ctx.index), None if allowed is None else len(allowed))
    if why:
        notes.append(why)
    found = [h for h in hits_found if h.id not in judged][:n_candidates]
    timings["search"] = _ms(t)

    ranked: list[tuple[int, float, float | None]] = [(h.id, h.score, None) for h in found]
    reranked = False
    if do_rerank and len(found) >= 2:
        t = time.perf_counter()
        ids, vectors = candidate_vectors(ctx, session, [h.id for h in found])
        if len(ids):
            rr = rerank_candidates(
                query, vectors, k1=params.k1, k2=params.k2, lambda_value=params.lambda_value
            )
            cos = vectors @ query
            order = np.argsort(rr, kind="stable")
            ranked = [(int(ids[i]), float(cos[i]), float(rr[i])) for i in order]
            reranked = True
        timings["rerank"] = _ms(t)
    elif do_rerank:
        notes.append("re-ranking skipped: it needs at least 2 candidates")
    ranked = ranked[: params.top_k]
    if scope[1] is not None:
        notes.extend(filter_notes(session, params, scope[0], scope[1], len(ranked)))

    items = {
        int(it.id): it
        for it in session.scalars(
            select(GalleryItem).where(GalleryItem.id.in_([r[0] for r in ranked]))
        )
    }
    hits: list[SearchHit] = []
    for gallery_id, score, dist in ranked:
        item = items.get(gallery_id)
        if item is None:  # deleted while this search ran
            continue
        hits.append(SearchHit(len(hits) + 1, gallery_id, score, dist, item))
    release(session)  # nor while the files are written

    search_id = uuid.uuid4()
    folder = ctx.settings.search_dir / str(search_id)
    files: list[tuple[str, bytes]] = []
    stored: list[dict[str, Any]] = []
    for i, upload in enumerate(uploads):
        name = f"sketch-{i + 1}.{sniff_extension(upload.data)}"
        files.append((name, upload.data))
        entry: dict[str, Any] = {"sha256": sha256_hex(upload.data), "path": f"{search_id}/{name}"}
        entry["filename"] = display_name(upload.filename) or (
            refine.sketches[i].get("filename") if refine is not None and not sketches else None
        )
        entry["translated_path"] = None
        if translated:
            files.append((f"translated-{i + 1}.png", _png(translated[i])))
            entry["translated_path"] = f"{search_id}/translated-{i + 1}.png"
        stored.append(entry)
    parameters = params.as_json() | {
        **feedback.as_json(),
        "refine": str(refine.id) if refine is not None else None,
        "sketches_from_refine": not sketches,
        "feedback_weights": FEEDBACK_WEIGHTS.as_json() if feedback else None,
        "translated": bool(translated),
        "view": view,
        "reranked": reranked,
        "rerank_auto": params.rerank is None,
        "rerank_candidates": len(found) if do_rerank else None,
        "index": ctx.index.kind,
        "embedding_key": ctx.embedding_key,
        "model_weights": model_weights(bundle.manifest),
        "timings_ms": dict(timings),
        "notes": notes,
    }
    record = Search(
        id=search_id,
        api_key_id=api_key_id,
        sketches=stored,
        parameters=parameters,
        results=[
            {"rank": h.rank, "gallery_id": h.gallery_id, "score": h.score, "distance": h.distance}
            for h in hits
        ],
        model_name=bundle.name,
        model_version=bundle.version,
        case_id=case_id,
    )
    check_free_space(
        ctx.settings.DATA_DIR, sum(len(d) for _, d in files), ctx.settings.MIN_FREE_DISK_MB
    )
    try:
        for name, data in files:
            atomic_write_bytes(folder / name, data)
        session.add(record)
        session.commit()
    except BaseException:
        session.rollback()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return SearchOutcome(
        record,
        hits,
        timings,
        feedback,
        notes,
        gallery_size=scope[0],
        filtered_size=scope[1],
    )


# What of a search a key reads: the record, a sketch or its translation, or the search itself
# to mark its results or refine it.
SearchUse = Literal[
    "record", "sketch", "translated", "mark", "refine", "report", "note", "case", "watchlist"
]


def get_search(
    session: Session,
    search_id: uuid.UUID,
    key: ApiKey,
    *,
    use: SearchUse,
    index: int | None = None,
) -> Search:
    """A stored search. Admins see every search, others only the ones made with their key.

    An admin opening a search made with another key is audited (``search.open``: the search,
    its owner, ``use`` and the sketch ``index``), committed before the search is returned."""
    record = session.get(Search, search_id)
    if record is None or (key.role != "admin" and record.api_key_id != key.id):
        raise NotFoundError(f"search {search_id} does not exist")
    if record.api_key_id != key.id:
        details: dict[str, Any] = {
            "search_id": str(record.id),
            "owner": record.api_key_id,
            "what": use,
        }
        if index is not None:
            details["index"] = index
        audit.record(session, audit.SEARCH_OPEN, api_key_id=key.id, actor="api", details=details)
        session.commit()
    return record


def read_search_file(
    ctx: ServiceContext, record: Search, which: Literal["sketch", "translated"], index: int = 0
) -> bytes:
    """The bytes of the ``index``-th (0-based) sketch of a search, or of its translation."""
    count = len(record.sketches)
    if not 0 <= index < count:
        raise NotFoundError(
            f"search {record.id} has {count} sketch{'es' if count != 1 else ''}: "
            f"index {index} does not exist (indexes start at 0)"
        )
    entry = record.sketches[index]
    relative = entry.get("translated_path") if which == "translated" else entry["path"]
    if not relative:
        raise NotFoundError(
            f"search {record.id} has no translated image (the sketch was not translated)"
        )
    path = (ctx.settings.search_dir / relative).resolve()
    if not path.is_relative_to(ctx.settings.search_dir.resolve()) or not path.is_file():
        raise NotFoundError(f"the {which} image of search {record.id} is missing from storage")
    return path.read_bytes()


@dataclass
class PurgeReport:
    count: int
    cutoff: datetime
    oldest: datetime | None
    newest: datetime | None


def purge_searches(
    settings: Settings, session: Session, older_than_days: int, *, dry_run: bool = False
) -> PurgeReport:
    """Remove the searches made before ``older_than_days`` days ago: rows, then their files.

    The purge itself is recorded (how many, which period, when; not what they were). Files of
    a purge interrupted after the commit are removed by the orphan sweep.
    """
    if older_than_days < 1:
        raise OutOfRangeError(
            f"the retention period must be at least 1 day, got {older_than_days}",
            field="older_than_days",
        )
    cutoff = utcnow() - timedelta(days=older_than_days)
    old = select(Search.id, Search.created_at).where(Search.created_at < cutoff)
    rows = session.execute(old.order_by(Search.created_at)).all()
    report = PurgeReport(
        count=len(rows),
        cutoff=cutoff,
        oldest=rows[0][1] if rows else None,
        newest=rows[-1][1] if rows else None,
    )
    if dry_run or not rows:
        return report
    ids = [row[0] for row in rows]
    for start in range(0, len(ids), 500):
        session.execute(delete(Search).where(Search.id.in_(ids[start : start + 500])))
    audit.record(
        session,
        audit.SEARCHES_PURGE,
        api_key_id=None,
        actor="cli",
        details={
            "older_than_days": older_than_days,
            "cutoff": cutoff.isoformat(),
            "count": report.count,
            "oldest": report.oldest.isoformat() if report.oldest else None,
            "newest": report.newest.isoformat() if report.newest else None,
        },
    )
    session.commit()
    for search_id in ids:
        shutil.rmtree(settings.search_dir / str(search_id), ignore_errors=True)
    return report


def query_of_search(ctx: ServiceContext, session: Session, record: Search) -> np.ndarray:
    """The query of a stored search under the active model: its sketches embedded in its view,
    moved by its feedback and by the marks made on it since (as a search refining it would
    be). What a watchlist made from the search keeps scoring new crops against."""
    bundle = ctx.bundle
    images = [
        ctx.decode(read_search_file(ctx, record, "sketch", i)) for i in range(len(record.sketches))
    ]
    view, _ = resolve_view(
        bundle.view, bundle.translator is not None, view=record.parameters.get("view")
    )
    translator = bundle.translator

    def translate(sketches: Sequence[Image.Image]) -> list[Image.Image]:
        assert translator is not None
        return ctx.inference.translate(translator, sketches)

    embedded, _ = embed_queries(
        images,
        view,
        lambda batch, modality: ctx.inference.embed(bundle.embedder, batch, modality=modality),
        translate if translator is not None else None,
        bundle.manifest.translation_weight,
    )
    feedback = combine((), (), record, session)
    positives, negatives = feedback_vectors(ctx, session, feedback)
    return build_query(embedded, positives, negatives, FEEDBACK_WEIGHTS)
