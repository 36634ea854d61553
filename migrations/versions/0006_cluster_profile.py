"""The cluster profile: gallery_items.status (pending | indexed | failed) and status_reason for
queued ingestion; on PostgreSQL with pgvector, the extension and the embeddings.vec halfvec
column (app.db.pgvector: created when the server has pgvector, required when
SKETCHREID_INDEX_BACKEND=pgvector). Rows that exist already are indexed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09
"""

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db import pgvector

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "status IN ('pending', 'indexed', 'failed')"


def upgrade() -> None:
    # SQLite recreates the table: keep its AUTOINCREMENT (ids are never handed out again).
    with op.batch_alter_table(
        "gallery_items", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.add_column(
            sa.Column("status", sa.String(20), nullable=False, server_default="indexed")
        )
        batch.add_column(sa.Column("status_reason", sa.String(500), nullable=True))
        batch.create_check_constraint("ck_gallery_items_status", STATUSES)
        batch.create_index("ix_gallery_items_status", ["status"])
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        required = os.environ.get("SKETCHREID_INDEX_BACKEND", "").strip().lower() == "pgvector"
        pgvector.install(bind, required=required)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        pgvector.uninstall(bind)
    with op.batch_alter_table(
        "gallery_items", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.drop_index("ix_gallery_items_status")
        batch.drop_constraint("ck_gallery_items_status", type_="check")
        batch.drop_column("status_reason")
        batch.drop_column("status")
