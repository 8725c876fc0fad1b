"""Bringing an older journal schema up to :data:`~celery_durable.stores.schema.SCHEMA_VERSION`.

Every change so far only adds columns that have a server default (or allow NULL), and
indexes, so an upgrade adds each column and index the database lacks, in the transaction
(and, on PostgreSQL, under the advisory lock) that checks the schema; then it records the
new version. Old rows get the defaults: run 1, no note, no parent-close policy, no
resends, no code version, no patches.
"""

from __future__ import annotations

from sqlalchemy import Connection, inspect, text, update
from sqlalchemy.schema import CreateColumn

from celery_durable.stores.schema import SCHEMA_VERSION, meta, metadata


def upgrade(conn: Connection, recorded: int) -> None:
    """Add the columns newer than schema version ``recorded``; record the current version."""
    if recorded >= SCHEMA_VERSION:
        return
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            ddl = CreateColumn(column).compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
        indexed = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexed:
                index.create(conn)
    conn.execute(
        update(meta).where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
    )
