"""api_keys.created_by and revoked_by: which key created and which revoked a key (NULL: on the
server's command line, or before this revision).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
COLUMNS = ("created_by", "revoked_by")


def upgrade() -> None:
    # SQLite recreates the table: keep its AUTOINCREMENT (ids are never handed out again).
    with op.batch_alter_table("api_keys", table_kwargs={"sqlite_autoincrement": True}) as batch:
        for column in COLUMNS:
            batch.add_column(sa.Column(column, Id, nullable=True))
            batch.create_foreign_key(
                f"fk_api_keys_{column}_api_keys",
                "api_keys",
                [column],
                ["id"],
                ondelete="SET NULL",
            )


def downgrade() -> None:
    with op.batch_alter_table("api_keys", table_kwargs={"sqlite_autoincrement": True}) as batch:
        for column in COLUMNS:
            batch.drop_constraint(f"fk_api_keys_{column}_api_keys", type_="foreignkey")
            batch.drop_column(column)
