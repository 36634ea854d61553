"""Casework: cases (searches.case_id), notes on searches and results, watchlists and their
alerts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def _key_fk(table: str, column: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], ["api_keys.id"], name=f"fk_{table}_{column}_api_keys", ondelete="SET NULL"
    )


def upgrade() -> None:
    op.create_table(
        "cases",
        sa.Column("id", Id, nullable=False),
        sa.Column("reference", sa.String(100), nullable=False),
        sa.Column("title", sa.String(300), nullable=True),
        sa.Column("api_key_id", Id, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cases"),
        sa.UniqueConstraint("api_key_id", "reference", name="uq_cases_api_key_id_reference"),
        _key_fk("cases", "api_key_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_cases_api_key_id", "cases", ["api_key_id"])

    with op.batch_alter_table("searches") as batch:
        batch.add_column(sa.Column("case_id", Id, nullable=True))
        batch.create_foreign_key(
            "fk_searches_case_id_cases", "cases", ["case_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_searches_case_id", ["case_id"])

    op.create_table(
        "notes",
        sa.Column("id", Id, nullable=False),
        sa.Column("search_id", sa.Uuid(), nullable=False),
        sa.Column("gallery_id", Id, nullable=True),
        sa.Column("text", sa.String(4000), nullable=False),
        sa.Column("api_key_id", Id, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_notes"),
        sa.ForeignKeyConstraint(
            ["search_id"],
            ["searches.id"],
            name="fk_notes_search_id_searches",
            ondelete="CASCADE",
        ),
        _key_fk("notes", "api_key_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_notes_search_id", "notes", ["search_id"])

    op.create_table(
        "watchlists",
        sa.Column("id", Id, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("api_key_id", Id, nullable=True),
        sa.Column("case_id", Id, nullable=True),
        sa.Column("search_id", sa.Uuid(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("camera_ids", sa.JSON(), nullable=False),
        sa.Column("min_score", sa.Float(), nullable=True),
        sa.Column("max_rank", sa.Integer(), nullable=True),
        sa.Column("embedding_key", sa.String(200), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_watchlists"),
        sa.CheckConstraint("status IN ('active', 'paused')", name="ck_watchlists_status"),
        _key_fk("watchlists", "api_key_id"),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name="fk_watchlists_case_id_cases", ondelete="SET NULL"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_watchlists_api_key_id", "watchlists", ["api_key_id"])

    op.create_table(
        "alerts",
        sa.Column("id", Id, nullable=False),
        sa.Column("watchlist_id", Id, nullable=False),
        sa.Column("gallery_id", Id, nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("acknowledged_at", TS, nullable=True),
        sa.Column("acknowledged_by", Id, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
        sa.UniqueConstraint("watchlist_id", "gallery_id", name="uq_alerts_watchlist_id_gallery_id"),
        sa.ForeignKeyConstraint(
            ["watchlist_id"],
            ["watchlists.id"],
            name="fk_alerts_watchlist_id_watchlists",
            ondelete="CASCADE",
        ),
        _key_fk("alerts", "acknowledged_by"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_alerts_watchlist_id", "alerts", ["watchlist_id"])
    op.create_index("ix_alerts_created_at", "alerts", ["created_at"])


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("watchlists")
    op.drop_table("notes")
    with op.batch_alter_table("searches") as batch:
        batch.drop_index("ix_searches_case_id")
        batch.drop_constraint("fk_searches_case_id_cases", type_="foreignkey")
        batch.drop_column("case_id")
    op.drop_table("cases")
