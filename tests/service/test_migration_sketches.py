"""Migration 0003 moves every existing search's one sketch into the ``sketches`` list and back,
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid

import sqlalchemy as sa
from alembic import command

from app.db import migrate
from app.db.session import make_engine


def _columns(engine: sa.Engine) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns("searches")}


def test_existing_searches_keep_their_sketch_across_0003(database_url: str) -> None:
    config = migrate.alembic_config(database_url)
    command.downgrade(config, "0002")
    engine = make_engine(database_url)
    search_id = uuid.uuid4()
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO searches (id, created_at, sketch_sha256, sketch_path, "
                    "parameters, results, model_name, model_version, translated_image_path) "
                    "VALUES (:id, :at, :sha, :path, :params, :results, 'm', '1', :tr)"
                ),
                {
                    "id": search_id.hex if engine.dialect.name == "sqlite" else search_id,
                    "at": "2025-01-01 00:00:00",
                    "sha": "a" * 64,
                    "path": f"{search_id}/sketch.png",
                    "params": json.dumps({"top_k": 10}),
                    "results": json.dumps([]),
                    "tr": f"{search_id}/translated.png",
                },
            )

        command.upgrade(config, "0003")
        assert {"sketch_sha256", "sketch_path", "translated_image_path"}.isdisjoint(
            _columns(engine)
        )
        table = sa.table("searches", sa.column("id", sa.Uuid()), sa.column("sketches", sa.JSON()))
        with engine.connect() as conn:
            stored = conn.execute(sa.select(table.c.sketches)).scalar_one()
        assert stored == [
            {
                "sha256": "a" * 64,
                "path": f"{search_id}/sketch.png",
                "translated_path": f"{search_id}/translated.png",
            }
        ]

        command.downgrade(config, "0002")
        assert "sketches" not in _columns(engine)
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT sketch_sha256, sketch_path, translated_image_path FROM searches")
            ).one()
        assert tuple(row) == ("a" * 64, f"{search_id}/sketch.png", f"{search_id}/translated.png")
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM searches"))
    finally:
        command.upgrade(config, "head")
        engine.dispose()
