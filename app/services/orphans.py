"""Remove files that no database row references: the leftovers of a crash.

An image is written before its row is committed, and a search's sketch before its record, so
that an acknowledged item always has its file. A process killed in between (``kill -9``,
power loss) leaves a file with no row: personal data that no API lists or can delete. The
sweep removes such files once they are older than ``min_age`` seconds (the in-flight window:
younger files may belong to an upload that is about to commit, in this or another process).

An image file that looks orphaned is first renamed aside, then checked again (age and row)
and only then deleted. Together with :meth:`BlobStore.put`, which refreshes the time of an
existing file it re-uses (and writes it anew if it vanished meanwhile), this keeps a sweep
from deleting the file of an upload of the same bytes that commits while the sweep runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.db.models import GalleryItem, Search
from app.db.session import session_scope
from app.services.blobs import BlobStore, is_sha256

log = logging.getLogger(__name__)

_CHUNK = 500  # ids per IN (...) query


@dataclass
class SweepReport:
    images: list[str] = field(default_factory=list)  # relative blob paths removed
    temporary: list[str] = field(default_factory=list)  # interrupted writes removed
    searches: list[str] = field(default_factory=list)  # search folders removed

    def summary(self) -> str:
        return (
            f"removed {len(self.images)} image file(s), {len(self.temporary)} interrupted "
            f"write(s) and {len(self.searches)} search folder(s) that no row references"
        )


def _older_than(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime <= cutoff
    except FileNotFoundError:
        return False


def _referenced_blobs(session: Session, shas: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(shas), _CHUNK):
        chunk = shas[start : start + _CHUNK]
        found.update(
            session.scalars(select(GalleryItem.blob_path).where(GalleryItem.sha256.in_(chunk)))
        )
    return found


def _existing_searches(session: Session, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    found: set[uuid.UUID] = set()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        found.update(session.scalars(select(Search.id).where(Search.id.in_(chunk))))
    return found


def _sweep_images(
    blobs: BlobStore, sessions: sessionmaker[Session], cutoff: float, report: SweepReport
) -> None:
    if not blobs.root.is_dir():
        return
    candidates: dict[str, Path] = {}  # relative path -> file
    for path in blobs.root.rglob("*"):
        if not path.is_file():
            continue
        if path.name.startswith("."):  # a temporary file of an interrupted atomic write
            if _older_than(path, cutoff):
                path.unlink(missing_ok=True)
                report.temporary.append(str(path.relative_to(blobs.root)))
            continue
        if is_sha256(path.stem) and _older_than(path, cutoff):
            candidates[path.relative_to(blobs.root).as_posix()] = path
    if not candidates:
        return
    shas = sorted({Path(rel).stem for rel in candidates})
    with session_scope(sessions) as session:
        referenced = _referenced_blobs(session, shas)
    for relative, path in sorted(candidates.items()):
        if relative in referenced:
            continue
        aside = path.with_name(f".{path.name}.orphan")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        with session_scope(sessions) as session:
            now_referenced = bool(_referenced_blobs(session, [path.stem]) & {relative})
        if now_referenced or not _older_than(aside, cutoff):  # re-used meanwhile: put it back
            os.replace(aside, path)
            continue
        aside.unlink()
        report.images.append(relative)
        log.warning("removed image %s: no gallery item references it", relative)


def _sweep_searches(
    search_dir: Path, sessions: sessionmaker[Session], cutoff: float, report: SweepReport
) -> None:
    if not search_dir.is_dir():
        return
    folders: dict[uuid.UUID, Path] = {}
    for path in search_dir.iterdir():
        try:
            search_id = uuid.UUID(path.name)
        except ValueError:
            continue
        if path.is_dir() and str(search_id) == path.name and _older_than(path, cutoff):
            folders[search_id] = path
    if not folders:
        return
    with session_scope(sessions) as session:
        existing = _existing_searches(session, sorted(folders))
    for search_id, path in sorted(folders.items()):
        if search_id in existing:
            continue
        shutil.rmtree(path, ignore_errors=True)
        report.searches.append(path.name)
        log.warning("removed search folder %s: no search record references it", path.name)


def sweep_orphans(
    settings: Settings, sessions: sessionmaker[Session], min_age: float | None = None
) -> SweepReport:
    """Remove unreferenced image files, interrupted writes and search folders older than
    ``min_age`` seconds (default ``settings.ORPHAN_MIN_AGE_SECONDS``)."""
    age = settings.ORPHAN_MIN_AGE_SECONDS if min_age is None else min_age
    cutoff = time.time() - age
    report = SweepReport()
    _sweep_images(BlobStore(settings.blob_dir), sessions, cutoff, report)
    _sweep_searches(settings.search_dir, sessions, cutoff, report)
    if report.images or report.temporary or report.searches:
        log.warning("orphan sweep: %s", report.summary())
    return report
