"""The soak's audit trail: PostgreSQL triggers that record every journal write.

Every journal record inserted or changing state, every signal consumed and every new run
of an instance (``continue_as_new``) becomes a row of ``chaos_audit`` with the database's
clock, so the verdict can tell a record written twice, a final record changed again, a
step run after its outcome's commit, or an outcome of one run journaled into another.
An event's row carries the run its instance was on when the row was written (the
statement's own view: a restart's new records are the new run's) and its new output.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine

AUDIT_DDL = """
CREATE TABLE IF NOT EXISTS chaos_audit (
    id bigserial PRIMARY KEY,
    tbl text NOT NULL,
    instance_id text NOT NULL,
    run integer,
    seq integer,
    kind text,
    old_state text,
    new_state text,
    output text,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION chaos_audit_events() RETURNS trigger AS $$
DECLARE
    current_run integer := (SELECT run FROM durable_instances WHERE id = NEW.instance_id);
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO chaos_audit (tbl, instance_id, run, seq, kind, old_state, new_state, output)
        VALUES ('events', NEW.instance_id, current_run, NEW.seq, NEW.kind, NULL, NEW.state,
                NEW.output);
    ELSIF OLD.state IS DISTINCT FROM NEW.state OR OLD.output IS DISTINCT FROM NEW.output
          OR OLD.failure IS DISTINCT FROM NEW.failure THEN
        INSERT INTO chaos_audit (tbl, instance_id, run, seq, kind, old_state, new_state, output)
        VALUES ('events', NEW.instance_id, current_run, NEW.seq, NEW.kind, OLD.state,
                NEW.state, NEW.output);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER chaos_audit_events AFTER INSERT OR UPDATE ON durable_events
    FOR EACH ROW EXECUTE FUNCTION chaos_audit_events();
CREATE OR REPLACE FUNCTION chaos_audit_signals() RETURNS trigger AS $$
BEGIN
    IF OLD.consumed_seq IS DISTINCT FROM NEW.consumed_seq THEN
        INSERT INTO chaos_audit (tbl, instance_id, seq, kind, old_state, new_state)
        VALUES ('signals', NEW.instance_id, NEW.consumed_seq, NEW.name,
                OLD.consumed_seq::text, NEW.consumed_seq::text);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER chaos_audit_signals AFTER UPDATE ON durable_signals
    FOR EACH ROW EXECUTE FUNCTION chaos_audit_signals();
CREATE OR REPLACE FUNCTION chaos_audit_runs() RETURNS trigger AS $$
BEGIN
    IF OLD.run IS DISTINCT FROM NEW.run THEN
        INSERT INTO chaos_audit (tbl, instance_id, run, seq, kind, old_state, new_state)
        VALUES ('instances', NEW.id, NEW.run, NULL, 'run', OLD.run::text, NEW.run::text);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER chaos_audit_runs AFTER UPDATE ON durable_instances
    FOR EACH ROW EXECUTE FUNCTION chaos_audit_runs();
"""


def install_audit(store_url: str) -> None:
    """Add the audit triggers to the store's database (its schema must exist)."""
    engine = create_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(AUDIT_DDL)
    finally:
        engine.dispose()


def read_audit(store_url: str) -> list[dict[str, Any]]:
    """Every audit row, oldest first, as a dict of its columns."""
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT tbl, instance_id, run, seq, kind, old_state, new_state, output, at "
                "FROM chaos_audit ORDER BY id"
            )
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()
