"""Alembic, run from code: ``upgrade``, the current and head revisions, the start-up check.

The scripts live in the repository's ``migrations/`` folder; no ``alembic.ini`` is needed.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import app
from app.errors import SketchReidError


def migrations_dir() -> Path:
    candidates = [Path(app.__file__).resolve().parents[1] / "migrations", Path.cwd() / "migrations"]
    for path in candidates:
        if (path / "env.py").is_file():
            return path
    raise SketchReidError(
        "cannot find the migrations folder (looked in "
        + ", ".join(str(p) for p in candidates)
        + "); run from the repository root"
    )


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # Percent signs in passwords would otherwise be read as interpolation.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def head_revision() -> str:
    script = ScriptDirectory(str(migrations_dir()))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def ensure_up_to_date(engine: Engine) -> None:
    """Raise ``SketchReidError`` saying what to run when the database is behind head."""
    try:
        current = current_revision(engine)
    except Exception as exc:  # unreachable server, bad credentials, ...
        raise SketchReidError(
            f"cannot reach the database {engine.url.render_as_string(hide_password=True)}: "
            f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        ) from None
    head = head_revision()
    if current != head:
        state = "empty (no tables)" if current is None else f"at revision {current}"
        raise SketchReidError(
            f"the database is {state} but this version needs revision {head}: "
            "run `sketchreid db upgrade` first"
        )
