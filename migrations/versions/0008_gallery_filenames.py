"""gallery_items.filename: the name a crop was uploaded under (its base name, as a person named
it), shown on the page's gallery cards; null for crops stored before it was kept.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite recreates the table: keep its AUTOINCREMENT (ids are never handed out again).
    with op.batch_alter_table(
        "gallery_items", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.add_column(sa.Column("filename", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table(
        "gallery_items", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.drop_column("filename")
