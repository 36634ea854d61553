"""Gallery: ingest person crops, list, read, delete. Called by the API, the CLI and tests.

An item is acknowledged only once it is in the database *and* the index: the blob is written,
the rows are inserted in a transaction, the vector is added to the index, then the transaction
commits. Any failure rolls back, takes the vector out of the index and removes the blob if no
committed item uses it, so a rejected upload leaves no row, file or index entry behind.

With a broker (``BROKER_URL``, the cluster profile) an upload is checked and decoded as above
but not embedded: the blob and the row (``status = 'pending'``) are committed, then the item is
published to the ingestion queue and acknowledged (202); `sketchreid worker` embeds it
(:mod:`app.services.indexing`). When the broker does not take the message, the items just
committed are removed again (row and blob) and the upload is refused with 503.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
from PIL import Image
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import GalleryItem
from app.db.session import release
from app.db.types import MAX_ID, UTCDateTime, is_valid_id
from app.errors import ImageError, SketchReidError, UserInputError
from app.ml.images import DecodeBusyError
from app.ml.infer.batching import QueueClosedError, QueueFullError
from app.queue.producer import BrokerUnavailableError
from app.services import audit
from app.services.blobs import CONTENT_TYPES, sha256_hex, sniff_extension
from app.services.context import ServiceContext
from app.services.errors import (
    InsufficientStorageError,
    NotFoundError,
    OutOfRangeError,
    PayloadTooLargeError,
    input_error_status,
)
from app.services.imagecheck import trailing_bytes
from app.services.outages import as_outage, check_free_space
from app.services.text import check_text, display_name
from app.services.timeparse import parse_timestamp

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 500
TEXT_LIMITS = {"camera_id": 100, "location": 500, "external_id": 200}
# Market-1501 style names: 0001_c1s1_001051_00.jpg -> camera "c1".
_MARKET_CAMERA = re.compile(r"^-?\d+_c(\d+)(?:s\d+)?_", re.IGNORECASE)

# Same-content uploads are serialised (striped by hash) so that concurrent duplicates resolve
# to one item and a failing upload never removes a blob that another upload is committing.
_SHA_LOCKS = [threading.Lock() for _ in range(64)]


def _sha_lock(sha256: str) -> threading.Lock:
    return _SHA_LOCKS[int(sha256[:4], 16) % len(_SHA_LOCKS)]


@dataclass(frozen=True)
class ItemMetadata:
    camera_id: str | None = None
    captured_at: datetime | None = None
    location: str | None = None
    external_id: str | None = None


def make_metadata(
    camera_id: str | None = None,
    captured_at: str | datetime | None = None,
    location: str | None = None,
    external_id: str | None = None,
) -> ItemMetadata:
    """Validate user-supplied metadata: trims text, empty means absent, timestamps need a zone."""
    values: dict[str, str | None] = {}
    for name, value in (
        ("camera_id", camera_id),
        ("location", location),
        ("external_id", external_id),
    ):
        if value is not None and not isinstance(value, str):
            raise UserInputError(f"{name} must be a string, got {type(value).__name__}")
        text = value.strip() if value else None
        if text and len(text) > TEXT_LIMITS[name]:
            raise UserInputError(f"{name} is longer than {TEXT_LIMITS[name]} characters")
        if text and any(ord(c) < 32 for c in text):
            raise UserInputError(f"{name} contains control characters")
        if text:
            check_text(text, name)  # lone surrogates (NUL is a control character above)
        values[name] = text or None
    when = parse_timestamp(captured_at, "captured_at")
    return ItemMetadata(
        camera_id=values["camera_id"],
        captured_at=when,
        location=values["location"],
        external_id=values["external_id"],
    )


# Why a file is refused when its camera is to come from its name and the name holds none (a
# name like 999_04_1234.png: a bare number is not read as a camera, it could be anything).
NO_CAMERA_IN_NAME = (
    "camera_from_filename is on but the name holds no camera: a Market-1501 name reads "
    "PERSONID_cCAMsSEQ_FRAME_NN.jpg (e.g. 0001_c1s1_001051_00.jpg); give this file a "
    "camera_id in its metadata, or upload it with the option off"
)


def camera_from_filename(name: str) -> str | None:
    """Camera id from a Market-1501 style file name (``0001_c3s1_...`` -> ``"c3"``)."""
    match = _MARKET_CAMERA.match(name.rsplit("/", 1)[-1])
    return f"c{int(match.group(1))}" if match else None


def camera_from_filename_or_refuse(name: str | None) -> str:
    """:func:`camera_from_filename`, refusing (UserInputError) a name that holds no camera:
    with the option on, a file is never stored without one (the API and `sketchreid ingest`)."""
    camera = camera_from_filename(name or "")
    if camera is None:
        raise UserInputError(NO_CAMERA_IN_NAME)
    return camera


@dataclass
class IngestOutcome:
    """The result for one uploaded file."""

    filename: str | None
    status: Literal["created", "exists", "error"]
    item: GalleryItem | None = None
    error: str | None = None
    http_status: int = 201
    sha256: str | None = None


# An upload's bytes, or a function that reads them (again) from where they wait, e.g. the
# temporary file a multipart upload was spooled to: a batch then holds one file at a time.
ByteSource = bytes | Callable[[], bytes]


def _read(source: ByteSource) -> bytes:
    return source() if callable(source) else source


@dataclass
class _Prepared:
    filename: str | None
    source: ByteSource
    sha256: str
    meta: ItemMetadata
    image: Image.Image
    size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)


def _stored_size(data: bytes, decoded: Image.Image) -> tuple[int, int]:
    """Width and height of the upload as displayed (EXIF orientation applied)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                orientation = im.getexif().get(0x0112, 1)
    except Exception:  # load_image already accepted the data; fall back to what it decoded
        return decoded.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def check_upload(ctx: ServiceContext, data: bytes, filename: str | None = None) -> None:
    where = f" ({filename})" if filename else ""
    limit = ctx.settings.max_upload_bytes
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"file{where} is {len(data) / 1048576:.1f} MB, over the limit of "
            f"{ctx.settings.MAX_UPLOAD_MB:g} MB"
        )
    if not data:
        raise ImageError(f"empty file{where} (0 bytes)")
    tail = trailing_bytes(data)
    if tail is not None:
        fmt, count = tail
        raise ImageError(
            f"file{where} has {count} bytes after the end of the {fmt} image; "
            "send the image alone (data appended to an image is refused, not stored)"
        )


def _prepare(
    ctx: ServiceContext,
    data: bytes,
    meta: ItemMetadata,
    filename: str | None,
    source: ByteSource | None = None,
) -> _Prepared:
    """Check and decode ``data``; the result keeps ``source`` (default: ``data``) to read the
    bytes again when they are stored."""
    check_upload(ctx, data, filename)
    t0 = time.perf_counter()
    try:
        image = ctx.decode(data)
    except ImageError as exc:
        raise ImageError(f"{filename}: {exc}" if filename else str(exc)) from None
    decode_ms = (time.perf_counter() - t0) * 1000
    return _Prepared(
        filename=filename,
        source=data if source is None else source,
        sha256=sha256_hex(data),
        meta=meta,
        image=ctx.bundle.embedder.network_image(image, "photo"),
        size=_stored_size(data, image),
        timings={"decode": decode_ms},
    )


def find_by_sha(session: Session, sha256: str) -> GalleryItem | None:
    return session.scalars(select(GalleryItem).where(GalleryItem.sha256 == sha256)).first()


def _heal_blob(ctx: ServiceContext, item: GalleryItem, data: bytes) -> None:
    """Re-write a missing blob when the same bytes are uploaded again."""
    if not ctx.blobs.exists(item.blob_path):
        ctx.blobs.put(item.sha256, item.blob_path.rsplit(".", 1)[-1], data)


def _store(
    ctx: ServiceContext,
    session: Session,
    prep: _Prepared,
    vector: np.ndarray | None,
    created_by: int | None,
) -> tuple[GalleryItem, bool]:
    """Store one prepared upload with its embedding; ``vector`` None: pending (queued)."""
    with _sha_lock(prep.sha256):
        data = _read(prep.source)
        existing = find_by_sha(session, prep.sha256)
        if existing is not None:
            _heal_blob(ctx, existing, data)
            return existing, False
        ext = sniff_extension(data)
        check_free_space(ctx.settings.DATA_DIR, len(data), ctx.settings.MIN_FREE_DISK_MB)
        relative, new_blob = ctx.blobs.put(prep.sha256, ext, data)  # checks the sha256 again
        del data
        item_id: int | None = None
        in_index = False
        try:
            item = GalleryItem(
                sha256=prep.sha256,
                blob_path=relative,
                content_type=CONTENT_TYPES.get(ext, "application/octet-stream"),
                width=prep.size[0],
                height=prep.size[1],
                camera_id=prep.meta.camera_id,
                captured_at=prep.meta.captured_at,
                location=prep.meta.location,
                external_id=prep.meta.external_id,
                filename=display_name(prep.filename),
                created_by=created_by,
                status="indexed" if vector is not None else "pending",
            )
            session.add(item)
            session.flush()
            item_id = int(item.id)
            if vector is not None:
                ctx.add_embedding(session, item_id, vector)
            if ctx.faiss is not None and vector is not None:
                ctx.faiss.add([item_id], vector.reshape(1, -1))
                in_index = True
            session.commit()
            camera_id = item.camera_id
        except BaseException as exc:
            session.rollback()
            if in_index and item_id is not None and ctx.faiss is not None:
                ctx.faiss.remove([item_id])
            if as_outage(exc) is not None:
                # The database may not answer the lookup either (or may yet commit a stalled
                # transaction): a new blob stays for the orphan sweep, which removes it if no
                # row ever names it.
                raise
            if find_by_sha(session, prep.sha256) is None and new_blob:
                ctx.blobs.remove(relative)
            if isinstance(exc, IntegrityError):  # another process stored the same bytes
                again = find_by_sha(session, prep.sha256)
                if again is not None:
                    return again, False
            raise
        if ctx.watcher is not None and vector is not None:  # never raises: a failure is logged
            ctx.watcher.on_indexed(int(item.id), camera_id, vector)
        return item, True


def ingest_image(
    ctx: ServiceContext,
    session: Session,
    data: bytes,
    meta: ItemMetadata | None = None,
    *,
    created_by: int | None = None,
    filename: str | None = None,
) -> tuple[GalleryItem, bool]:
    """Store one crop; returns (item, created). The same bytes again return the stored item.

    Raises ``ImageError`` / ``PayloadTooLargeError`` / ``UserInputError`` for bad input; nothing
    is left behind in that case.
    """
    meta = meta or ItemMetadata()
    check_upload(ctx, data, filename)
    existing = find_by_sha(session, sha256_hex(data))
    if existing is not None:
        _heal_blob(ctx, existing, data)
        return existing, False
    release(session)  # no connection held while decoding and embedding
    prep = _prepare(ctx, data, meta, filename)
    if ctx.queue is not None:
        item, created = _store(ctx, session, prep, None, created_by)
        if created:
            _publish_or_discard(ctx, session, [item])
        return item, created
    vector = ctx.inference.embed(ctx.bundle.embedder, [prep.image], modality="photo")[0]
    return _store(ctx, session, prep, vector, created_by)


def _publish_or_discard(ctx: ServiceContext, session: Session, items: list[GalleryItem]) -> None:
    """Queue the pending ``items`` just committed; when the broker does not take them, remove
    them again (rows, and blobs no other item uses) and raise ``BrokerUnavailableError``."""
    assert ctx.queue is not None
    try:
        ctx.queue.publish([int(item.id) for item in items])
    except BrokerUnavailableError:
        for item in items:
            with _sha_lock(item.sha256):
                session.delete(item)
                session.commit()
                if find_by_sha(session, item.sha256) is None:
                    ctx.blobs.remove(item.blob_path)
        raise


# Files of a batch decoded at once before one embedding call (each kept at the model's input
# size): the memory of a batch is one encoded file, one decode, and two such chunks (one
# being embedded, one being stored).
BATCH_DECODE_CHUNK = 16
# A batch upload's chunk waits this long for room in a full inference queue (searches and
# single uploads are refused at once); then it and the files after it are refused (503 each).
BATCH_QUEUE_WAIT_S = 2.0


def _take(
    ctx: ServiceContext,
    session: Session,
    position: int,
    name: str | None,
    source: ByteSource,
    meta: ItemMetadata,
    first_of: dict[str, int],
) -> tuple[IngestOutcome, _Prepared | None]:
    """Read, check and decode one file of a batch; its bytes are dropped on return."""
    try:
        data = _read(source)
        check_upload(ctx, data, name)
        sha = sha256_hex(data)
        existing = find_by_sha(session, sha)
        if existing is not None:
            _heal_blob(ctx, existing, data)
            return IngestOutcome(name, "exists", existing, http_status=200, sha256=sha), None
        if sha in first_of:
            return IngestOutcome(name, "exists", None, http_status=200, sha256=sha), None
        release(session)  # no connection held while decoding
        prep = _prepare(ctx, data, meta, name, source)
        first_of[sha] = position
        return IngestOutcome(name, "created", None, sha256=sha), prep
    except UserInputError as exc:
        message = str(exc)
        if name and name not in message:
            message = f"{name}: {message}"
        status = input_error_status(exc)
        return IngestOutcome(name, "error", error=message, http_status=status), None


def _embed(ctx: ServiceContext, prepared: list[tuple[int, _Prepared]]) -> np.ndarray:
    return ctx.inference.embed(
        ctx.bundle.embedder,
        [p.image for _, p in prepared],
        modality="photo",
        wait_s=BATCH_QUEUE_WAIT_S,
    )


def _store_chunk(
    ctx: ServiceContext,
    session: Session,
    prepared: list[tuple[int, _Prepared]],
    vectors: np.ndarray,
    outcomes: list[IngestOutcome],
    created_by: int | None,
) -> None:
    for (position, prep), vector in zip(prepared, vectors, strict=True):
        outcome = outcomes[position]
        try:
            item, created = _store(ctx, session, prep, vector, created_by)
        except InsufficientStorageError:
            raise  # the disk: this file and the rest (ingest_many)
        except SketchReidError as exc:
            outcome.status, outcome.error, outcome.http_status = "error", str(exc), 400
            continue
        except Exception as exc:
            if as_outage(exc) is not None:  # database or disk: this file and the rest
                raise
            # another server fault: this file only, logged
            log.exception("storing %s failed", prep.filename or prep.sha256)
            outcome.status, outcome.http_status = "error", 500
            outcome.error = "internal error while storing the file; it was not stored"
            continue
        outcome.item = item
        if not created:
            outcome.status, outcome.http_status = "exists", 200


def _store_queued(
    ctx: ServiceContext,
    session: Session,
    prepared: list[tuple[int, _Prepared]],
    outcomes: list[IngestOutcome],
    created_by: int | None,
) -> None:
    """Store a chunk as pending items and queue them in one message (one batch for a worker);
    ``BrokerUnavailableError`` when the broker does not take it (nothing of the chunk stays)."""
    created: list[GalleryItem] = []
    for position, prep in prepared:
        outcome = outcomes[position]
        try:
            item, is_new = _store(ctx, session, prep, None, created_by)
        except InsufficientStorageError:
            raise  # the disk: this file and the rest (ingest_many)
        except Exception as exc:
            if as_outage(exc) is not None:  # database or disk: this file and the rest
                raise
            # another server fault: this file only, logged
            log.exception("storing %s failed", prep.filename or prep.sha256)
            outcome.status, outcome.http_status = "error", 500
            outcome.error = "internal error while storing the file; it was not stored"
            continue
        outcome.item = item
        if is_new:
            outcome.http_status = 202
            created.append(item)
        else:
            outcome.status, outcome.http_status = "exists", 200
    _publish_or_discard(ctx, session, created)


def _refused(
    name: str | None, why: str, status: int = 503, sha256: str | None = None
) -> IngestOutcome:
    prefix = f"{name}: " if name else ""
    return IngestOutcome(
        name,
        "error",
        error=f"{prefix}not stored, send it again: {why}",
        http_status=status,
        sha256=sha256,
    )


def _refuse_rest(
    outcomes: list[IngestOutcome],
    files: Sequence[tuple[str | None, ByteSource, ItemMetadata]],
    start: int,
    stop: int,
    busy: tuple[str, int],
) -> None:
    """The files of the chunk ``start:stop`` that were not stored: refused with ``busy``."""
    outcomes.extend(_refused(files[p][0], *busy) for p in range(len(outcomes), stop))
    for position in range(start, stop):
        outcome = outcomes[position]
        if outcome.status == "created" and outcome.item is None:
            outcomes[position] = _refused(outcome.filename, *busy, sha256=outcome.sha256)


@dataclass
class _Chunk:
    """Files ``start:stop`` of a batch, decoded, with their embedding under way (None: nothing
    to embed, or the cluster profile, where workers embed)."""

    start: int
    stop: int
    prepared: list[tuple[int, _Prepared]]
    vectors: Future[np.ndarray] | None = None


def _refusal(exc: BaseException) -> tuple[str, int] | None:
    """Why the rest of a batch is not tried after ``exc``, and the status each file not tried
    gets; None for an error that is not about capacity or an outage."""
    if isinstance(exc, QueueFullError | QueueClosedError | DecodeBusyError):
        return str(exc), 503  # the model or the decoding budget stayed busy
    if isinstance(exc, BrokerUnavailableError):
        return str(exc), 503
    outage = as_outage(exc) if isinstance(exc, Exception) else None
    if outage is None:
        return None
    return str(outage), 507 if isinstance(outage, InsufficientStorageError) else 503


def ingest_many(
    ctx: ServiceContext,
    session: Session,
    files: Sequence[tuple[str | None, ByteSource, ItemMetadata]],
    *,
    created_by: int | None = None,
) -> list[IngestOutcome]:
    """Store several crops, one transaction each; a bad file fails alone.

    Files are taken ``BATCH_DECODE_CHUNK`` at a time: each is read, checked and decoded (its
    bytes dropped again when they come from a reader, its picture kept at the model's input
    size), then the chunk is embedded in one call and stored file by file (reading the bytes
    again to write the blob). A chunk is embedded while the chunk before it is stored and the
    one after it decoded, so the model never waits for the disk and the database. With a
    broker (the cluster profile) a chunk is stored as pending items and queued as one message
    instead. When the inference queue stays full (:data:`BATCH_QUEUE_WAIT_S`) or the decoding
    budget stays spent, that chunk and the files after it are refused with status 503 each;
    the files before it stay stored. So are they when the database fails (503, or 507 when its
    disk is full), the disk fills (507) or the broker does not take a chunk (503): the file
    being stored and the ones after it are refused, not tried one by one.
    """
    outcomes: list[IngestOutcome] = []
    first_of: dict[str, int] = {}  # sha256 -> position of its first occurrence in this batch
    # Why the rest of the batch is not tried, and the status each file not tried gets.
    refused: list[tuple[str, int]] = []

    def refuse(chunk: _Chunk, why: tuple[str, int]) -> None:
        if not refused:
            refused.append(why)
        _refuse_rest(outcomes, files, chunk.start, chunk.stop, refused[0])

    def finish(chunk: _Chunk) -> None:
        """Store a decoded chunk (after its embedding), or refuse what of it is not stored."""
        if refused:  # an earlier chunk was refused: this one is not stored either
            _refuse_rest(outcomes, files, chunk.start, chunk.stop, refused[0])
            return
        try:
            if ctx.queue is not None:
                _store_queued(ctx, session, chunk.prepared, outcomes, created_by)
            elif chunk.vectors is not None:
                vectors = chunk.vectors.result()
                _store_chunk(ctx, session, chunk.prepared, vectors, outcomes, created_by)
        except Exception as exc:
            why = _refusal(exc)
            if why is None:
                raise
            session.rollback()
            refuse(chunk, why)
            if isinstance(exc, BrokerUnavailableError):
                # the chunk's new rows and blobs were discarded: none of it is stored
                for position, prep in chunk.prepared:
                    outcomes[position] = _refused(prep.filename, *why, sha256=prep.sha256)

    waiting: _Chunk | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="ingest-embed") as embedding:
        try:
            for start in range(0, len(files), BATCH_DECODE_CHUNK):
                chunk = _Chunk(start, min(start + BATCH_DECODE_CHUNK, len(files)), [])
                if refused:
                    _refuse_rest(outcomes, files, chunk.start, chunk.stop, refused[0])
                    continue
                try:
                    for position in range(chunk.start, chunk.stop):
                        name, source, meta = files[position]
                        outcome, prep = _take(ctx, session, position, name, source, meta, first_of)
                        outcomes.append(outcome)
                        if prep is not None:
                            chunk.prepared.append((position, prep))
                except Exception as exc:
                    why = _refusal(exc)
                    if why is None:
                        raise
                    session.rollback()
                    if waiting is not None:  # the chunk before was decoded whole: store it
                        finish(waiting)
                        waiting = None
                    refuse(chunk, why)
                    continue
                if ctx.queue is None and chunk.prepared:
                    chunk.vectors = embedding.submit(_embed, ctx, chunk.prepared)
                if waiting is not None:
                    finish(waiting)
                waiting = chunk
            if waiting is not None:
                finish(waiting)
        except BaseException:
            if waiting is not None and waiting.vectors is not None:
                waiting.vectors.cancel()
            raise
    # Later copies of a file stored earlier in the same batch point at that item.
    by_sha = {o.sha256: o.item for o in outcomes if o.item is not None and o.sha256}
    for outcome in outcomes:
        if outcome.status == "exists" and outcome.item is None:
            outcome.item = by_sha.get(outcome.sha256 or "")
            if outcome.item is None:  # the first copy failed: this copy fails the same way
                first = outcomes[first_of[outcome.sha256 or ""]]
                outcome.status, outcome.error = "error", first.error
                outcome.http_status = first.http_status
    return outcomes


# How deep a batch's ``metadata`` JSON may nest arrays and objects. A valid one needs 2 (a list
# of objects); the limit refuses deeper input before it is parsed, so that no nesting can
# exhaust the parser's recursion (a 1,000-deep list was a 500).
MAX_METADATA_DEPTH = 32
# A JSON string (skipped whole: brackets inside it do not nest) or a bracket.
_JSON_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def json_nesting_over(text: str, limit: int) -> bool:
    """Whether the JSON ``text`` nests arrays and objects more than ``limit`` levels deep
    (a scan of brackets outside strings; the text need not be valid JSON)."""
    depth = 0
    for match in _JSON_NESTING.finditer(text):
        char = match.group()[0]
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def parse_batch_metadata(text: str | None, count: int) -> list[object]:
    """A batch's ``metadata`` field: a JSON list with one entry (an object or null) per file;
    left out or blank, no metadata for any file. ``UserInputError`` (400) otherwise."""
    if text is None or not text.strip():
        return [None] * count
    if json_nesting_over(text, MAX_METADATA_DEPTH):
        raise UserInputError(
            f"metadata nests more than {MAX_METADATA_DEPTH} levels deep; it must be a JSON list "
            "of objects (or null), one per file"
        )
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise UserInputError(f"metadata is not valid JSON: {exc}") from None
    if not isinstance(parsed, list) or len(parsed) != count:
        raise UserInputError(
            f"metadata must be a JSON list with one entry per file ({count} files)"
        )
    return parsed


@dataclass
class BatchEntry:
    """One file of a batch upload: its bytes or a reader of them, and its metadata."""

    filename: str | None
    source: ByteSource
    metadata: object = None  # a JSON object of ItemMetadata fields, or None


_META_FIELDS = ("camera_id", "captured_at", "location", "external_id")


def _entry_metadata(entry: BatchEntry, camera_from_name: bool) -> ItemMetadata:
    raw = entry.metadata
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserInputError(f"metadata must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_META_FIELDS))
    if unknown:  # quoted as Python writes them: a NUL or a lone surrogate shows as an escape
        raise UserInputError(
            f"unknown metadata field(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(_META_FIELDS)})"
        )
    values = {k: raw.get(k) for k in _META_FIELDS}
    for key in ("camera_id", "location", "external_id", "captured_at"):
        if values[key] is not None and not isinstance(values[key], str):
            raise UserInputError(f"metadata {key} must be a string")
    if camera_from_name and not values["camera_id"]:
        values["camera_id"] = camera_from_filename_or_refuse(entry.filename)
    return make_metadata(**values)  # type: ignore[arg-type]


def ingest_batch(
    ctx: ServiceContext,
    session: Session,
    entries: Sequence[BatchEntry],
    *,
    camera_from_name: bool = False,
    created_by: int | None = None,
) -> list[IngestOutcome]:
    """A batch upload: per-file metadata checks, then :func:`ingest_many`; order is kept."""
    if len(entries) > ctx.settings.MAX_BATCH_FILES:
        raise UserInputError(
            f"{len(entries)} files in one batch, the limit is {ctx.settings.MAX_BATCH_FILES}"
        )
    outcomes: list[IngestOutcome | None] = [None] * len(entries)
    todo: list[tuple[int, tuple[str | None, ByteSource, ItemMetadata]]] = []
    for position, entry in enumerate(entries):
        try:
            meta = _entry_metadata(entry, camera_from_name)
            todo.append((position, (entry.filename, entry.source, meta)))
        except UserInputError as exc:
            status = input_error_status(exc)
            message = f"{entry.filename}: {exc}" if entry.filename else str(exc)
            outcomes[position] = IngestOutcome(
                entry.filename, "error", error=message, http_status=status
            )
    stored = ingest_many(ctx, session, [t for _, t in todo], created_by=created_by)
    for (position, _), outcome in zip(todo, stored, strict=True):
        outcomes[position] = outcome
    return [o for o in outcomes if o is not None]


def get_item(session: Session, item_id: int) -> GalleryItem:
    item = session.get(GalleryItem, item_id) if is_valid_id(item_id) else None
    if item is None:
        deleted = audit.deletions(session, [item_id]).get(item_id) if is_valid_id(item_id) else None
        if deleted is not None:
            raise NotFoundError(f"gallery item {item_id} {audit.describe_deletion(deleted)}")
        raise NotFoundError(f"gallery item {item_id} does not exist")
    return item


def list_items(
    session: Session,
    *,
    limit: int = 50,
    offset: int = 0,
    camera_ids: Sequence[str] = (),
    captured_after: datetime | None = None,
    captured_before: datetime | None = None,
    newest_first: bool = False,
) -> tuple[list[GalleryItem], int]:
    """A page of items ordered by id (the order they were stored in; ``newest_first``: the
    reverse), and the total matching the filters.

    ``captured_after`` is inclusive, ``captured_before`` exclusive; items without a capture
    time are excluded as soon as either bound is given.
    """
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise OutOfRangeError(
            f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}", field="limit"
        )
    if not 0 <= offset <= MAX_ID:
        raise OutOfRangeError(
            f"offset must be between 0 and {MAX_ID}, got {offset}", field="offset"
        )
    check_range(captured_after, captured_before)
    conditions = filter_conditions(camera_ids, captured_after, captured_before)
    total = session.scalar(select(func.count(GalleryItem.id)).where(*conditions))
    items = list(
        session.scalars(
            select(GalleryItem)
            .where(*conditions)
            .order_by(GalleryItem.id.desc() if newest_first else GalleryItem.id)
            .limit(limit)
            .offset(offset)
        )
    )
    return items, int(total or 0)


def check_range(after: datetime | None, before: datetime | None) -> None:
    if after is not None and before is not None and after >= before:
        raise UserInputError(
            f"captured_after ({after.isoformat()}) must be earlier than "
            f"captured_before ({before.isoformat()})"
        )


def camera_filter(camera_ids: Sequence[str]) -> list[str]:
    """The camera ids of a filter: trimmed, blanks dropped, each one text the database can
    compare (``UnstorableTextError`` for a NUL or a lone surrogate, field ``camera_id``)."""
    return [check_text(c.strip(), "camera_id") for c in camera_ids if c and c.strip()]


def filter_conditions(
    camera_ids: Sequence[str], after: datetime | None, before: datetime | None
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    cams = camera_filter(camera_ids)
    if cams:
        conditions.append(GalleryItem.camera_id.in_(cams))
    if after is not None:
        conditions.append(GalleryItem.captured_at >= after)
    if before is not None:
        conditions.append(GalleryItem.captured_at < before)
    return conditions


MAX_REASON_LENGTH = 500


def delete_item(
    ctx: ServiceContext,
    session: Session,
    item_id: int,
    *,
    deleted_by: int | None = None,
    actor: audit.Actor = "api",
    reason: str | None = None,
) -> None:
    """Delete an item: row and embeddings, index entry at once, blob when unreferenced.

    The deletion is recorded (who, when, why, and the image's sha256 and capture metadata) in
    the same transaction, so search records that listed the item can say it was deleted.
    """
    reason = (reason or "").strip() or None
    if reason is not None and len(reason) > MAX_REASON_LENGTH:
        raise OutOfRangeError(
            f"reason is longer than {MAX_REASON_LENGTH} characters", field="reason"
        )
    if reason is not None and any(ord(c) < 32 for c in reason):
        raise UserInputError("reason contains control characters")
    if reason is not None:
        check_text(reason, "reason")
    item = get_item(session, item_id)
    sha, relative = item.sha256, item.blob_path
    with _sha_lock(sha):
        audit.record(
            session,
            audit.GALLERY_DELETE,
            api_key_id=deleted_by,
            actor=actor,
            gallery_id=item_id,
            details={
                "sha256": sha,
                "camera_id": item.camera_id,
                "captured_at": item.captured_at.isoformat() if item.captured_at else None,
                "external_id": item.external_id,
                "created_at": item.created_at.isoformat(),
                "created_by": item.created_by,
                "reason": reason,
            },
        )
        session.delete(item)
        session.commit()
        if ctx.faiss is not None:
            ctx.faiss.remove([item_id])
        if find_by_sha(session, sha) is None:
            ctx.blobs.remove(relative)


def read_image(ctx: ServiceContext, item: GalleryItem) -> bytes:
    try:
        return ctx.blobs.read(item.blob_path)
    except FileNotFoundError:
        raise NotFoundError(
            f"the image of gallery item {item.id} is missing from storage"
        ) from None


def list_cameras(session: Session) -> list[tuple[str, int, datetime | None, datetime | None]]:
    """Each camera the gallery holds crops of: (camera id, crops, first and last capture time),
    by camera id. Crops without a camera are not listed."""
    stmt = (
        select(
            GalleryItem.camera_id,
            func.count(GalleryItem.id),
            func.min(GalleryItem.captured_at, type_=UTCDateTime()),
            func.max(GalleryItem.captured_at, type_=UTCDateTime()),
        )
        .where(GalleryItem.camera_id.is_not(None))
        .group_by(GalleryItem.camera_id)
        .order_by(GalleryItem.camera_id)
    )
    return [(str(c), int(n), first, last) for c, n, first, last in session.execute(stmt)]
