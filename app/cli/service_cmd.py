"""Service commands: `serve`, `db upgrade|current`, `apikey create|list|revoke`, `ingest DIR`,
`sweep-orphans`.

Settings come from ``SKETCHREID_*`` environment variables (see docs/service.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings, get_settings
from app.db import migrate
from app.db.models import ROLES
from app.db.session import make_engine, make_session_factory, session_scope
from app.errors import UserInputError
from app.services import apikeys
from app.services.blobs import sha256_hex

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser("serve", help="run the HTTP retrieval service")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    serve.add_argument(
        "--migrate",
        action="store_true",
        help="apply pending database migrations first, in this process (`db upgrade`; the "
        "container's default: one interpreter start instead of two)",
    )
    serve.set_defaults(func=cmd_serve)

    db = subparsers.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_sub.add_parser("upgrade", help="apply all migrations (safe to repeat)")
    up.set_defaults(func=cmd_db_upgrade)
    cur = db_sub.add_parser("current", help="print the database and code revisions")
    cur.set_defaults(func=cmd_db_current)

    key = subparsers.add_parser("apikey", help="create, list and revoke API keys")
    key_sub = key.add_subparsers(dest="apikey_command", metavar="ACTION", required=True)
    create = key_sub.add_parser("create", help="create a key and print it (last line)")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument(
        "--expires-in-days",
        type=int,
        metavar="N",
        help="the key stops working N days from now (default: never; it works until revoked)",
    )
    create.set_defaults(func=cmd_apikey_create)
    listing = key_sub.add_parser("list", help="list keys (never the keys themselves)")
    listing.set_defaults(func=cmd_apikey_list)
    revoke = key_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", type=int, metavar="ID")
    revoke.add_argument(
        "--force",
        action="store_true",
        help="revoke even the last active admin key (e.g. a leaked one; create a new one after)",
    )
    revoke.set_defaults(func=cmd_apikey_revoke)

    searches = subparsers.add_parser("searches", help="stored searches: retention")
    searches_sub = searches.add_subparsers(dest="searches_command", metavar="ACTION", required=True)
    purge = searches_sub.add_parser(
        "purge", help="remove searches older than the retention period (audited)"
    )
    purge.add_argument(
        "--older-than-days",
        type=int,
        default=None,
        metavar="DAYS",
        help="default SKETCHREID_SEARCH_RETENTION_DAYS",
    )
    purge.add_argument("--dry-run", action="store_true", help="only say how many would go")
    purge.set_defaults(func=cmd_searches_purge)

    sweep = subparsers.add_parser(
        "sweep-orphans",
        help="remove image files and search folders that no database row references",
    )
    sweep.add_argument(
        "--min-age",
        type=float,
        default=None,
        metavar="SECONDS",
        help="only files older than this (default SKETCHREID_ORPHAN_MIN_AGE_SECONDS); 0 is "
        "safe only when nothing is ingesting",
    )
    sweep.set_defaults(func=cmd_sweep_orphans)

    ingest = subparsers.add_parser(
        "ingest", help="bulk-ingest a folder of person crops (resumable)"
    )
    ingest.add_argument("folder", type=Path, metavar="DIR")
    ingest.add_argument("--recursive", action="store_true", help="include sub-folders")
    ingest.add_argument(
        "--camera-from-filename",
        action="store_true",
        help="camera id from Market-1501 style names (0001_c3s1_000151_01.jpg -> c3)",
    )
    ingest.add_argument("--camera-id", default=None, help="camera id for every file")
    ingest.add_argument("--location", default=None, help="location for every file")
    ingest.add_argument("--batch-size", type=int, default=64, help="files per batch (64)")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    ingest.set_defaults(func=cmd_ingest)


def _check_database(settings: Settings) -> None:
    engine = make_engine(settings.DATABASE_URL)
    try:
        migrate.ensure_up_to_date(engine)
    finally:
        engine.dispose()


def initial_admin_key(settings: Settings) -> str | None:
    """Create an admin key when the key table is empty; returns it (only that once)."""
    engine = make_engine(settings.DATABASE_URL)
    try:
        with session_scope(make_session_factory(engine)) as session:
            return apikeys.ensure_initial_admin(session)
    finally:
        engine.dispose()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.api.main import create_app
    from app.services.model import load_model

    settings = get_settings()
    if not (Path(settings.MODEL_DIR) / "manifest.json").is_file():
        raise UserInputError(
            f"no model bundle in {settings.MODEL_DIR} (no manifest.json): build one with "
            "scripts/build_default_bundle.sh (docs/reproduce.md) or set SKETCHREID_MODEL_DIR "
            "to a bundle folder"
        )
    if args.migrate:
        print(f"database at revision {upgrade_database(settings)} (head)", flush=True)
    _check_database(settings)  # refuses a database behind head, saying what to run
    # Load (and verify) the model here so a bad bundle is a one-line error, not a traceback.
    bundle = load_model(settings)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO))
    # One worker: the vector index lives in this process.
    app = create_app(settings, bundle=bundle)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"The web page: http://{shown}:{args.port}/ (sign in with an API key); "
        f"API documentation: http://{shown}:{args.port}/docs",
        flush=True,
    )
    # The admin key comes last: it is the output's last line (`... | tail -1`).
    key = initial_admin_key(settings)
    if key is not None:
        print(
            "No API keys existed, so an admin key was created. It is shown this once; "
            "store it now:\n" + key,
            flush=True,
        )
    # SIGTERM: stop accepting, let requests finish for SHUTDOWN_TIMEOUT_SECONDS, then cut the
    # ones still running (a slow client's upload) and run the lifespan's shutdown, which saves
    # the index (app.api.main).
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        # Typed int by uvicorn, used as an asyncio timeout: fractions of a second work.
        timeout_graceful_shutdown=settings.SHUTDOWN_TIMEOUT_SECONDS,  # type: ignore[arg-type]
    )
    return 0


def upgrade_database(settings: Settings) -> str:
    """Apply every pending migration (safe to repeat); the revision the database is at."""
    migrate.upgrade(settings.DATABASE_URL)
    engine = make_engine(settings.DATABASE_URL)
    try:
        if settings.INDEX_BACKEND == "pgvector":
            # A database migrated before the server had pgvector gets the column now (the
            # step of revision 0006, idempotent).
            from app.db import pgvector
            from app.db.bounded import maintenance

            with engine.begin() as conn, maintenance(conn):
                pgvector.install(conn, required=True)
        return str(migrate.current_revision(engine))
    finally:
        engine.dispose()


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    print(f"database at revision {upgrade_database(get_settings())} (head)")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    settings = get_settings()
    engine = make_engine(settings.DATABASE_URL)
    try:
        current = migrate.current_revision(engine)
    finally:
        engine.dispose()
    head = migrate.head_revision()
    print(f"database: {current or 'empty'}\ncode:     {head}")
    return 0 if current == head else 1


def _with_session(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    _check_database(settings)
    engine = make_engine(settings.DATABASE_URL)
    return engine, make_session_factory(engine)


def cmd_apikey_create(args: argparse.Namespace) -> int:
    engine, factory = _with_session(get_settings())
    try:
        with session_scope(factory) as session:
            row, key = apikeys.create_key(
                session, args.name, args.role, expires_in_days=args.expires_in_days
            )
            expiry = f", expires {row.expires_at:%Y-%m-%d %H:%M} UTC" if row.expires_at else ""
            print(
                f"created key {row.id} ({row.role}{expiry}) for {row.name!r}; "
                "it is shown only once:"
            )
            print(key)
    finally:
        engine.dispose()
    return 0


def cmd_apikey_list(args: argparse.Namespace) -> int:
    engine, factory = _with_session(get_settings())
    try:
        with session_scope(factory) as session:
            rows = apikeys.list_keys(session)
            print(
                f"{'ID':>4}  {'ROLE':<12}  {'PREFIX':<10}  {'CREATED':<20}  {'LAST USED':<20}  "
                f"{'EXPIRES':<20}  STATUS   NAME"
            )
            for row in rows:
                last = row.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if row.last_used_at else "-"
                ends = row.expires_at.strftime("%Y-%m-%d %H:%M:%S") if row.expires_at else "never"
                print(
                    f"{row.id:>4}  {row.role:<12}  {row.key_prefix:<10}  "
                    f"{row.created_at:%Y-%m-%d %H:%M:%S}  {last:<20}  {ends:<20}  "
                    f"{apikeys.key_status(row):<8} {row.name}"
                )
    finally:
        engine.dispose()
    return 0


def cmd_apikey_revoke(args: argparse.Namespace) -> int:
    engine, factory = _with_session(get_settings())
    try:
        with session_scope(factory) as session:
            row = apikeys.revoke_key(session, args.key_id, allow_last_admin=args.force)
            print(
                f"key {row.id} ({row.role}, {row.name!r}) revoked at "
                f"{row.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
            )
    finally:
        engine.dispose()
    return 0


def cmd_searches_purge(args: argparse.Namespace) -> int:
    from app.services.search import purge_searches

    settings = get_settings()
    days = args.older_than_days
    if days is None:
        days = settings.SEARCH_RETENTION_DAYS
    if days < 1:
        raise UserInputError(
            "no retention period: set SKETCHREID_SEARCH_RETENTION_DAYS or pass "
            "--older-than-days (at least 1)"
        )
    engine, factory = _with_session(settings)
    try:
        with session_scope(factory) as session:
            report = purge_searches(settings, session, days, dry_run=args.dry_run)
    finally:
        engine.dispose()
    span = (
        f" (made {report.oldest:%Y-%m-%d %H:%M} to {report.newest:%Y-%m-%d %H:%M} UTC)"
        if report.oldest and report.newest
        else ""
    )
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {report.count} search(es) older than {days} days, made before "
        f"{report.cutoff:%Y-%m-%d %H:%M} UTC{span}"
    )
    return 0


def cmd_sweep_orphans(args: argparse.Namespace) -> int:
    from app.services.orphans import sweep_orphans

    if args.min_age is not None and args.min_age < 0:
        raise UserInputError("--min-age must be 0 or more")
    settings = get_settings()
    engine, factory = _with_session(settings)
    try:
        report = sweep_orphans(settings, factory, args.min_age)
    finally:
        engine.dispose()
    for line in report.images + report.temporary:
        print(f"removed {settings.blob_dir / line}")
    for line in report.searches:
        print(f"removed {settings.search_dir / line}")
    print(report.summary())
    return 0


def list_image_files(folder: Path, recursive: bool) -> tuple[list[Path], int]:
    """Image files (by extension) under ``folder``, sorted; and how many other files there were."""
    if not folder.is_dir():
        raise UserInputError(f"folder not found: {folder}")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    images, others = [], 0
    for path in candidates:
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            others += 1
    return sorted(images), others


def cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.services import gallery
    from app.services.context import close_context, open_context

    settings = get_settings()
    if args.batch_size < 1:
        raise UserInputError("--batch-size must be at least 1")
    files, others = list_image_files(args.folder, args.recursive)
    meta_base = gallery.make_metadata(camera_id=args.camera_id, location=args.location)
    ctx = open_context(settings)
    created = existing = 0
    failures: list[str] = []
    try:
        bar = tqdm(total=len(files), unit="file", disable=args.no_progress, file=sys.stderr)
        with session_scope(ctx.sessions) as session:
            for start in range(0, len(files), args.batch_size):
                chunk = files[start : start + args.batch_size]
                todo: list[tuple[str | None, bytes, gallery.ItemMetadata]] = []
                for path in chunk:
                    try:
                        data = path.read_bytes()
                    except OSError as exc:
                        failures.append(f"{path}: cannot read: {exc.strerror}")
                        continue
                    if gallery.find_by_sha(session, sha256_hex(data)) is not None:
                        existing += 1  # resumable: already stored by an earlier run
                        continue
                    camera = meta_base.camera_id
                    if args.camera_from_filename and camera is None:
                        try:
                            camera = gallery.camera_from_filename_or_refuse(path.name)
                        except UserInputError as exc:
                            failures.append(f"{path}: {exc}")
                            continue
                    meta = gallery.ItemMetadata(camera_id=camera, location=meta_base.location)
                    todo.append((str(path), data, meta))
                for outcome in gallery.ingest_many(ctx, session, todo):
                    if outcome.status == "created":
                        created += 1
                    elif outcome.status == "exists":
                        existing += 1
                    else:
                        failures.append(outcome.error or f"{outcome.filename}: failed")
                bar.update(len(chunk))
        bar.close()
    finally:
        close_context(ctx)
    for line in failures:
        print(f"skipped {line}", file=sys.stderr)
    extra = f", {others} non-image file(s) ignored" if others else ""
    print(
        f"ingested {created} new, {existing} already stored, {len(failures)} failed "
        f"(of {len(files)} image files in {args.folder}{extra})"
    )
    return 1 if failures else 0
