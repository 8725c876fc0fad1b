"""The PostgreSQL fast path's SQL: each hot call of :class:`PostgresStore` as one statement.

Every statement is its own transaction (autocommit) and one round trip; the commit's and
the start mark's writes are data-modifying CTEs hanging off a compare-and-set, so nothing
is written unless the instance is still as the caller read it. Builders are cached by
shape, so psycopg prepares each statement on the server after a few uses.
"""

from __future__ import annotations

import functools
from typing import Any

from celery_durable.engine.journal import Event, Kind, State
from celery_durable.stores.notify import CHANNEL, ENDING_INLINE
from celery_durable.stores.rows import aware, failure_text
from celery_durable.stores.schema import ACTIVE

INSTANCE_COLUMNS = (
    "id, workflow, status, input, serializer, version, created_at, updated_at, output, "
    "failure, wake_at, custom_status, parent_id, inbox, cancel_requested, run, note, "
    "parent_close, code_version, patches, waiting_at, trace_context"
)
EVENT_COLUMNS = (
    "seq, kind, name, input, state, output, failure, scheduled_at, started_at, "
    "completed_at, attempts, heartbeat_at, resends"
)
EVENTS_AT = len(INSTANCE_COLUMNS.split(","))
"""Where a :data:`LOAD` row's event columns start."""
PENDING = "('scheduled', 'started')"
UNFINISHED = "status NOT IN ('completed', 'failed', 'cancelled')"

INSTANCE_NULLS = ", ".join(["NULL"] * EVENTS_AT)
EVENT_NULLS = ", ".join(f"NULL AS {c.strip()}" for c in EVENT_COLUMNS.split(","))

# The instance row once, then its events (never the instance's columns, its input
# included, repeated on every event row): one statement, one snapshot. PostgreSQL types
# each NULL column of the first branch from the second.
LOAD = (
    f"SELECT {INSTANCE_COLUMNS}, {EVENT_NULLS} FROM durable_instances WHERE id = %(id)s"
    f" UNION ALL SELECT {INSTANCE_NULLS}, {EVENT_COLUMNS} FROM durable_events"
    " WHERE instance_id = %(id)s ORDER BY seq NULLS FIRST"
)


HEARTBEAT = (
    "WITH beat AS (UPDATE durable_events"
    " SET state = 'started', started_at = COALESCE(started_at, %(at)s),"
    " heartbeat_at = %(at)s,"
    # The first beat of a run (sent or sent again: started_at unset) counts an attempt.
    " attempts = attempts + CASE WHEN started_at IS NULL THEN 1 ELSE 0 END"
    " WHERE instance_id = %(id)s AND seq = %(seq)s"
    f" AND state IN {PENDING}"
    # Not a step waiting for a Celery retry: a late beat of the run that asked for it
    # must not revive it (its due time is ahead).
    " AND (state = 'started' OR heartbeat_at IS NULL OR heartbeat_at <= %(at)s)"
    " AND (SELECT run FROM durable_instances WHERE id = %(id)s) = %(run)s"
    " RETURNING instance_id),"
    # Writes only if `beat` did, and skips an instance row a commit holds: commits lock
    # the instance before its events, so waiting for it here could deadlock.
    " pulled AS (UPDATE durable_instances SET wake_at = %(wake_by)s WHERE id ="
    " (SELECT id FROM durable_instances WHERE id = %(id)s"
    f" AND {ACTIVE} AND (wake_at IS NULL OR wake_at > %(wake_by)s)"
    " AND EXISTS (SELECT 1 FROM beat) FOR UPDATE SKIP LOCKED))"
    # SET LOCAL, for the statement's own transaction: commit without the WAL flush.
    " SELECT (SELECT count(*) FROM beat), set_config('synchronous_commit', 'off', true)"
)

# The instance row is locked first (as a commit does) and read as it is before the signal;
# the signal is inserted after the lock, so one instance's signals are numbered in the
# order their statements commit. The UPDATE finds the row this statement locked (and, as
# READ COMMITTED re-reads a row that changed, computes from its latest version).
SEND_SIGNAL = (
    f"WITH before AS (SELECT {INSTANCE_COLUMNS} FROM durable_instances"
    " WHERE id = %(id)s FOR UPDATE),"
    " sent AS (INSERT INTO durable_signals (instance_id, name, payload, sent_at)"
    f" SELECT id, %(name)s, %(payload)s, %(at)s FROM before WHERE {UNFINISHED}"
    " RETURNING instance_id),"
    " bumped AS (UPDATE durable_instances i SET inbox = i.inbox + 1,"
    " version = i.version + 1, wake_at = CASE"
    f" WHEN i.{ACTIVE} AND (i.wake_at IS NULL"
    " OR i.wake_at > %(wake_by)s) THEN %(wake_by)s ELSE i.wake_at END"
    " FROM sent WHERE i.id = sent.instance_id)"
    f" SELECT {INSTANCE_COLUMNS} FROM before"
)

# As SEND_SIGNAL: the row locked and read first, then flagged unless finished.
REQUEST_CANCEL = (
    f"WITH before AS (SELECT {INSTANCE_COLUMNS} FROM durable_instances"
    " WHERE id = %(id)s FOR UPDATE),"
    " flagged AS (UPDATE durable_instances i SET cancel_requested = true,"
    " version = i.version + 1, wake_at = CASE"
    f" WHEN i.{ACTIVE} AND (i.wake_at IS NULL"
    " OR i.wake_at > %(wake_by)s) THEN %(wake_by)s ELSE i.wake_at END"
    f" FROM before WHERE i.id = before.id AND i.{UNFINISHED})"
    f" SELECT {INSTANCE_COLUMNS} FROM before"
)

# The instance row is locked first (as a commit does); the step is marked started only if
# the instance is on that run and the event is a pending step of that name; only then is
# the version bumped and wake_at pulled. The journal is read in the same statement (from
# its snapshot: before the mark, which the caller applies from the last columns). The
# snapshot predates a commit the lock waited for; the version of the row locked (the
# latest: READ COMMITTED re-reads a row that changed) tells the caller to read again.
START_STEP = (
    "WITH inst AS (SELECT id, version FROM durable_instances WHERE id = %(id)s AND run = %(run)s"
    f" AND {UNFINISHED} FOR UPDATE),"
    " mark AS (UPDATE durable_events e SET state = 'started', started_at = %(at)s,"
    " heartbeat_at = %(at)s, attempts = e.attempts + 1 FROM inst"
    " WHERE e.instance_id = inst.id AND e.seq = %(seq)s AND e.kind = 'step'"
    f" AND e.name = %(name)s AND e.state IN {PENDING} RETURNING e.attempts),"
    " bump AS (UPDATE durable_instances i SET version = i.version + 1, wake_at = CASE"
    f" WHEN i.{ACTIVE} AND (i.wake_at IS NULL OR i.wake_at > %(wake_by)s)"
    " THEN %(wake_by)s ELSE i.wake_at END FROM inst"
    " WHERE i.id = inst.id AND EXISTS (SELECT 1 FROM mark) RETURNING i.version, i.wake_at)"
    f" SELECT {INSTANCE_COLUMNS}, {EVENT_NULLS},"
    " (SELECT attempts FROM mark), (SELECT version FROM bump), (SELECT wake_at FROM bump),"
    " (SELECT version FROM inst),"
    # A lost start mark (a database crash) only delays recovery: no WAL flush wait.
    " set_config('synchronous_commit', 'off', true)"
    " FROM durable_instances WHERE id = %(id)s"
    # The events after the instance row, which is not repeated on each of them.
    f" UNION ALL SELECT {INSTANCE_NULLS}, {EVENT_COLUMNS}, NULL, NULL, NULL, NULL, NULL"
    " FROM durable_events WHERE instance_id = %(id)s ORDER BY seq NULLS FIRST"
)

GET_MANY = f"SELECT {INSTANCE_COLUMNS} FROM durable_instances WHERE id = ANY(%(ids)s::text[])"
GET = f"SELECT {INSTANCE_COLUMNS} FROM durable_instances WHERE id = %(id)s"

# One statement; a beat lost in a database crash is harmless (the next one comes within a
# heartbeat interval): no WAL flush wait, as for a step's heartbeat.
BEAT_WORKER = (
    "WITH beat AS (INSERT INTO durable_workers (worker_id, beat_at, reserved)"
    " VALUES (%(id)s, %(at)s, %(reserved)s) ON CONFLICT (worker_id) DO UPDATE"
    " SET beat_at = EXCLUDED.beat_at, reserved = EXCLUDED.reserved RETURNING 1)"
    " SELECT (SELECT count(*) FROM beat), set_config('synchronous_commit', 'off', true)"
)

SIGNALS = (
    "SELECT id, name, payload, sent_at FROM durable_signals"
    " WHERE instance_id = %(id)s AND consumed_seq IS NULL ORDER BY id"
)

CLAIM_DUE = (
    "WITH due AS (SELECT id, wake_at FROM durable_instances"
    f" WHERE {ACTIVE} AND wake_at <= %(now)s"
    " ORDER BY wake_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
    " claimed AS (UPDATE durable_instances i SET wake_at = %(lease_until)s FROM due"
    " WHERE i.id = due.id RETURNING i.id, due.wake_at)"
    " SELECT id FROM claimed ORDER BY wake_at"
)


def event_rows(count: int) -> str:
    """``VALUES`` rows for ``count`` new events, parameters ``n<i>_<column>``."""
    return ", ".join(
        f"(%(n{i}_seq)s::int, %(n{i}_kind)s::text, %(n{i}_name)s::text,"
        f" %(n{i}_input)s::text, %(n{i}_state)s::text, %(n{i}_output)s::text,"
        f" %(n{i}_failure)s::text, %(n{i}_scheduled_at)s::timestamptz,"
        f" %(n{i}_started_at)s::timestamptz, %(n{i}_completed_at)s::timestamptz,"
        f" %(n{i}_attempts)s::int, %(n{i}_heartbeat_at)s::timestamptz,"
        f" %(n{i}_resends)s::int)"
        for i in range(count)
    )


@functools.lru_cache(maxsize=64)
def commit_sql(
    outcomes: int,
    new_events: int,
    resent: bool,
    consumed: int = 0,
    restart: bool = False,
    ends: bool = False,
    patches: bool = False,
    versioned: bool = False,
) -> str:
    """The commit statement for this many outcomes, new events and consumed signals (and
    resent steps, a restart, new patch ids, a new code version)."""
    check = (
        f" AND (SELECT count(*) FROM durable_events WHERE instance_id = %(id)s"
        f" AND seq = ANY(%(outcome_seqs)s) AND state IN {PENDING}) = {outcomes}"
        if outcomes
        else ""
    )
    inbox = ""
    if consumed:
        # Every consumed signal must still be the instance's and unconsumed (a repeated id
        # counts once, so it fails the check too), or nothing is written.
        check += (
            " AND (SELECT count(*) FROM durable_signals WHERE instance_id = %(id)s"
            " AND id = ANY(%(signal_ids)s::bigint[]) AND consumed_seq IS NULL)"
            f" = {consumed}"
        )
        inbox = f", inbox = inbox - {consumed}"
    if restart:
        inbox += ", input = %(restart_input)s, cancel_requested = false, run = run + 1"
    if patches:
        inbox += ", patches = %(patches)s"
    if versioned:
        inbox += ", code_version = %(code_version)s"
    parts = [
        "WITH moved AS (UPDATE durable_instances SET version = version + 1,"
        " status = %(status)s, output = %(output)s, failure = %(failure)s,"
        " updated_at = %(updated_at)s, wake_at = %(wake_at)s, note = %(note)s,"
        " waiting_at = %(waiting_at)s,"
        f" custom_status = %(custom_status)s{inbox}"
        f" WHERE id = %(id)s AND version = %(expected)s{check} RETURNING id, version)"
    ]
    if restart:
        # The old run's journal and the signals it consumed go (those this commit consumes
        # too: checked unconsumed above, deleted rather than marked); the inbox stays.
        consumed_now = " OR s.id = ANY(%(signal_ids)s::bigint[])" if consumed else ""
        parts.append(
            "wiped AS (DELETE FROM durable_events e USING moved"
            " WHERE e.instance_id = moved.id RETURNING e.seq)"
        )
        parts.append(
            "dropped AS (DELETE FROM durable_signals s USING moved"
            f" WHERE s.instance_id = moved.id AND (s.consumed_seq IS NOT NULL{consumed_now}))"
        )
    elif consumed:
        parts.append(
            "consumed AS (UPDATE durable_signals AS s SET consumed_seq = v.seq"
            " FROM moved, unnest(%(signal_ids)s::bigint[], %(signal_seqs)s::int[])"
            " AS v(id, seq)"
            " WHERE s.instance_id = moved.id AND s.id = v.id AND s.consumed_seq IS NULL)"
        )
    if outcomes:
        rows = ", ".join(
            f"(%(o{i}_seq)s::int, %(o{i}_state)s::text, %(o{i}_output)s::text,"
            f" %(o{i}_failure)s::text, %(o{i}_completed_at)s::timestamptz,"
            f" %(o{i}_attempts)s::int, %(o{i}_started_at)s::timestamptz)"
            for i in range(outcomes)
        )
        parts.append(
            "outcome AS (UPDATE durable_events AS e SET state = v.state, output = v.output,"
            " failure = v.failure, completed_at = v.completed_at,"
            " attempts = GREATEST(e.attempts, v.attempts),"
            " started_at = COALESCE(v.started_at, e.started_at)"
            f" FROM moved, (VALUES {rows}) AS v(seq, state, output, failure, completed_at,"
            " attempts, started_at)"
            f" WHERE e.instance_id = moved.id AND e.seq = v.seq AND e.state IN {PENDING})"
        )
    if resent:
        parts.append(
            "resent AS (UPDATE durable_events AS e SET heartbeat_at = %(updated_at)s,"
            " started_at = NULL, state = 'scheduled',"
            # A started step sent again: its worker was lost.
            " resends = e.resends + CASE WHEN e.state = 'started' THEN 1 ELSE 0 END"
            " FROM moved WHERE e.instance_id = moved.id"
            f" AND e.seq = ANY(%(resent)s::int[]) AND e.state IN {PENDING})"
        )
    if new_events:
        rows = event_rows(new_events)
        # After a restart's DELETE has run to its end (the count is computed before the
        # first row is inserted), so the new seqs do not collide with the old run's.
        after_wipe = " WHERE (SELECT count(*) FROM wiped) >= 0" if restart else ""
        parts.append(
            f"inserted AS (INSERT INTO durable_events (instance_id, {EVENT_COLUMNS})"
            f" SELECT moved.id, v.* FROM moved, (VALUES {rows}) AS v({EVENT_COLUMNS})"
            f"{after_wipe})"
        )
    if ends:
        # Wakes handle.result() waiters (stores/notify.py) when the transaction commits.
        # The ending itself rides along when it fits in a notification (8000 bytes).
        parts.append(
            f"ended AS (SELECT pg_notify('{CHANNEL}', CASE WHEN"
            " coalesce(octet_length(%(output)s::text), 0)"
            f" + coalesce(octet_length(%(failure)s::text), 0) < {ENDING_INLINE}"
            " THEN json_build_array(id, version, %(status)s::text, %(output)s::text,"
            " %(failure)s::text)::text ELSE json_build_array(id)::text END) FROM moved)"
        )
        return (
            ", ".join(parts) + " SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM ended)"
        )
    return ", ".join(parts) + " SELECT count(*) FROM moved"


@functools.lru_cache(maxsize=16)
def create_sql(new_events: int) -> str:
    """Insert an instance (nothing on a duplicate id) and its first events, one statement."""
    columns = [c.strip() for c in INSTANCE_COLUMNS.split(",")]
    sql = (
        f"WITH made AS (INSERT INTO durable_instances ({', '.join(columns)})"
        f" VALUES ({', '.join(f'%(i_{c})s' for c in columns)})"
        " ON CONFLICT (id) DO NOTHING RETURNING id)"
    )
    if new_events:
        rows = event_rows(new_events)
        sql += (
            f", inserted AS (INSERT INTO durable_events (instance_id, {EVENT_COLUMNS})"
            f" SELECT made.id, v.* FROM made, (VALUES {rows}) AS v({EVENT_COLUMNS}))"
        )
    return sql + " SELECT count(*) FROM made"


def event_params(prefix: str, e: Event) -> dict[str, Any]:
    return {
        f"{prefix}_seq": e.seq,
        f"{prefix}_kind": Kind(e.kind).value,
        f"{prefix}_name": e.name,
        f"{prefix}_input": e.input,
        f"{prefix}_state": State(e.state).value,
        f"{prefix}_output": e.output,
        f"{prefix}_failure": failure_text(e.failure),
        f"{prefix}_scheduled_at": aware(e.scheduled_at, "scheduled_at"),
        f"{prefix}_started_at": aware(e.started_at, "started_at"),
        f"{prefix}_completed_at": aware(e.completed_at, "completed_at"),
        f"{prefix}_attempts": e.attempts,
        f"{prefix}_heartbeat_at": aware(e.heartbeat_at, "heartbeat_at"),
        f"{prefix}_resends": e.resends,
    }
