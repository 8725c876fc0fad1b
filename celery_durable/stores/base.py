"""The store protocol every journal backend implements (the seed's ``IProcessStorage``).

Rules every store keeps (the contract suite in ``celery_durable.testing.contract`` checks
them on each implementation):

* :meth:`Store.create` is idempotent on the instance id: a second create returns the
  existing instance and ``False``.
* :meth:`Store.commit` is one transaction, applied only if the instance's version still
  equals ``expected_version``; it then bumps the version by one. Two commits against the
  same version never both succeed.
* An event's outcome is written only while the event is pending (first writer wins).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from celery_durable.engine.journal import Event, Failure, Instance, Signal, Status
from celery_durable.errors import ConfigurationError

Events = list[Event]
"""A run of journal events (an alias usable where a store's ``list`` method shadows ``list``)."""


@dataclass(frozen=True)
class Commit:
    """One orchestrator transaction.

    Attributes:
        instance_id: the instance to change.
        expected_version: the version the orchestrator read; the compare-and-set token.
        status: the instance's new status.
        output: the encoded result (COMPLETED).
        failure: the error (FAILED, STUCK); ``None`` clears it.
        new_events: events to insert (their ``seq`` values are new for this instance).
        outcomes: existing pending events whose outcome this commit journals (their
            ``state``, ``output``/``failure`` and ``completed_at`` are written, with
            ``attempts`` kept at the larger count and ``started_at`` when given).
        consumed: ``(signal id, seq)`` pairs: inbox signals this pass consumed; each is
            marked consumed by that seq, only if not consumed yet (else nothing is
            written and the commit returns ``False``), and the instance's ``inbox`` count
            drops accordingly.
        restart_input: ``continue_as_new``: when set, the instance's events are deleted
            and its ``input`` becomes this (``new_events`` are then the new run's), in
            the same transaction; ``cancel_requested`` is cleared. Unconsumed signals are
            kept for the new run; consumed ones (including those this commit's
            ``consumed`` marks, which must still be unconsumed as usual) belong to the
            old run and are deleted. Applied only if the compare-and-set matches. A
            restart commit with ``outcomes`` or ``resent`` is refused (``ValueError``):
            the events they name are the old run's.
        resent: seqs of pending steps sent again by this commit's pass (recovery): their
            ``heartbeat_at`` becomes ``updated_at``, ``started_at`` is cleared and the
            state goes back to scheduled; a step that had started (its worker is
            presumed lost) also counts one more in ``resends``.
        updated_at: the commit's time.
        wake_at: when the instance wants its orchestrator run next (a timer's due time),
            or ``None`` (cleared). Written by every commit, like ``status``.
        custom_status: the encoded value the workflow last set for observers, or
            ``None``. Written by every commit (replay recomputes it on each pass).
        note: why the instance is not moving, for people, or ``None``. Written by every
            commit.
        restart_input: (see above) also counts the instance's ``run`` one up.
        rewind_from: ``durable.retry`` of a failed instance: the events from this seq on
            are deleted (the failure point and everything after it) and the signals they
            consumed go back to the inbox (``inbox`` counts them again), in the same
            transaction and before the rest of the commit applies (its ``outcomes``,
            ``consumed`` and ``new_events`` are those of the journal left).
        waiting_at: where the workflow's code waits (``"file:line in function"``), or
            ``None``. Written by every commit.
        patches: the instance's patch ids after this commit (those its journal's PATCH
            markers name), or ``None`` to keep them as they are.
        code_version: the code version the run now starts on (a restart), or ``None`` to
            keep it.
    """

    instance_id: str
    expected_version: int
    status: Status
    updated_at: datetime
    output: str | None = None
    failure: Failure | None = None
    new_events: Sequence[Event] = field(default_factory=tuple)
    outcomes: Sequence[Event] = field(default_factory=tuple)
    wake_at: datetime | None = None
    custom_status: str | None = None
    resent: Sequence[int] = field(default_factory=tuple)
    consumed: Sequence[tuple[int, int]] = field(default_factory=tuple)
    restart_input: str | None = None
    note: str | None = None
    rewind_from: int | None = None
    waiting_at: str | None = None
    patches: Sequence[str] | None = None
    code_version: str | None = None


@dataclass(frozen=True)
class Ending:
    """How an instance ended, as a store's notification told it (``Store.wait_ended``).

    Attributes:
        version: the instance's version after the commit that ended it: an ending is news
            to a reader only if it is newer than the version that reader saw (a retry may
            have revived the instance since an old ending).
        status: completed, failed, cancelled or stuck.
        output: the encoded result of a completed instance.
        failure: the error of any other.
    """

    version: int
    status: Status
    output: str | None = None
    failure: Failure | None = None


@dataclass(frozen=True)
class StepStart:
    """What :meth:`Store.start_step` found, and whether it marked the step started.

    Attributes:
        journal: the instance and its events as they are after the mark (``None`` if
            there is no such instance).
        marked: ``True`` if the step was a pending step of that run and name, and is now
            marked started; ``False`` if it was not (already journaled, another run's,
            not a step of that name, or missing): the caller must not run it.
    """

    journal: tuple[Instance, list[Event]] | None
    marked: bool


class Store(Protocol):
    """Where instances and their journals live."""

    def create(self, instance: Instance, events: Sequence[Event] = ()) -> tuple[Instance, bool]:
        """Insert ``instance`` unless one with its id exists, with ``events`` (its journal
        from seq 0: the first pass, run before the instance is stored) in the same
        transaction; a duplicate id inserts nothing.

        Returns:
            The stored instance (the existing one on a duplicate id) and whether it was
            created by this call.
        """
        ...

    def get(self, instance_id: str) -> Instance | None:
        """The instance row alone (for status polling), or ``None``."""
        ...

    def load(self, instance_id: str) -> tuple[Instance, list[Event]] | None:
        """The instance and its events ordered by ``seq``, read consistently, or ``None``."""
        ...

    def commit(self, commit: Commit) -> bool:
        """Apply ``commit`` atomically if the version still matches.

        Returns:
            ``True`` if applied (the version is now ``expected_version + 1``); ``False`` if
            the instance changed (or vanished) since it was read, in which case nothing
            was written.
        """
        ...

    def start_step(
        self, instance_id: str, run: int, seq: int, name: str, at: datetime, wake_by: datetime
    ) -> StepStart:
        """Mark step ``seq`` of run ``run`` started by a worker, before its code runs.

        Applied only if the instance's ``run`` is ``run`` and event ``seq`` is a pending
        step named ``name``: the event becomes STARTED with ``started_at`` =
        ``heartbeat_at`` = ``at`` and ``attempts += 1`` (every run counts), the instance's
        ``wake_at`` is pulled to ``wake_by`` if later or unset (a live instance), and its
        version is bumped (a pass that read before the mark re-reads, so it can neither
        overwrite that ``wake_at`` nor take the step for one never started). One
        transaction, which locks the instance row first, as a commit does.

        Returns:
            The journal after the mark (read in the same transaction) and whether the
            mark was applied.
        """
        ...

    def reschedule_step(
        self, instance_id: str, run: int, seq: int, due: datetime, wake_by: datetime
    ) -> bool:
        """A running step asked Celery to retry it at ``due``: the pending step ``seq`` of
        run ``run`` goes back to SCHEDULED with ``heartbeat_at`` = ``due`` and
        ``started_at`` cleared, so recovery waits for the retry's message (until ``due``
        plus the step timeout) instead of sending the step again while it backs off. The
        instance's ``wake_at`` is pulled to ``wake_by`` if later or unset, and its version
        is bumped.

        Returns:
            ``True`` if applied; ``False`` if the step is no longer pending (or another
            run's).
        """
        ...

    def heartbeat(
        self, instance_id: str, run: int, seq: int, at: datetime, wake_by: datetime
    ) -> bool:
        """Record that a worker is running step ``seq`` of run ``run`` (``heartbeat_at`` =
        ``at``; on the first beat of a run, ``started_at`` unset, also ``started_at`` =
        ``at`` and ``attempts += 1``), and pull the instance's ``wake_at`` to ``wake_by``
        if it is later (or unset), so that recovery looks at the step if the beats stop.
        Nothing is written if the instance's run is another one, or if the step waits for
        a Celery retry (``reschedule_step`` set its ``heartbeat_at`` to the retry's due
        time, after ``at``): a late beat of the run that asked for the retry must not
        revive it.

        Only a pending or running instance's ``wake_at`` is pulled. A store may leave it
        while a concurrent transaction holds the instance (a commit, which writes its own
        ``wake_at``, or a claim): waiting for it could deadlock, and the next beat pulls.

        Does not change the version.

        Returns:
            ``True`` while the step is pending; ``False`` once its outcome is journaled or
            it does not exist (the caller stops beating).
        """
        ...

    def send_signal(
        self, instance_id: str, name: str, payload: str | None, at: datetime, wake_by: datetime
    ) -> Instance | None:
        """Put a signal in an unfinished instance's inbox (``inbox += 1``); for a pending
        or running one, also pull its ``wake_at`` to ``wake_by`` if later or unset, so
        recovery delivers the signal even if the message that should wake the instance is
        lost. A stuck instance keeps the signal for when it is retried. The version is
        bumped: an orchestrator pass that read the instance before the signal loses its
        compare-and-set and reads again, so it can neither miss the signal nor overwrite
        the ``wake_at`` pulled here.

        Returns:
            The instance as it was before the signal (a completed or failed one gets no
            signal: the caller reports it), or ``None`` if there is no such instance.
        """
        ...

    def request_cancel(self, instance_id: str, wake_by: datetime) -> Instance | None:
        """Flag an unfinished instance ``cancel_requested`` (version bumped, like a
        signal, so a pass that read it before re-reads), and for a pending or running one
        pull its ``wake_at`` to ``wake_by`` if later or unset.

        Returns:
            The instance as it was before (a finished one is left as it is: the caller
            reports it), or ``None`` if there is no such instance.
        """
        ...

    def pull_wake_at(self, instance_id: str, wake_by: datetime) -> bool:
        """Pull a pending or running instance's ``wake_at`` to ``wake_by`` if later or
        unset (version bumped, as a signal does): a message the instance needed could not
        be sent (the broker is down), so the tick must look at it as soon as it can.

        Returns:
            ``True`` if the instance is live (pending or running); ``False`` if it is
            stuck, finished, or missing (nothing written).
        """
        ...

    def beat_worker(
        self, worker_id: str, at: datetime, held: Sequence[tuple[str, int, int]]
    ) -> None:
        """Record that the worker ``worker_id`` (a main process) is alive at ``at`` and
        holds the messages of the steps ``held`` (``(instance_id, run, seq)``: prefetched
        or running)."""
        ...

    def forget_worker(self, worker_id: str) -> None:
        """Remove the row of a worker that stopped cleanly."""
        ...

    def held_steps(self, silent_since: datetime) -> tuple[set[tuple[str, int, int]], bool]:
        """The ``(instance_id, run, seq)`` steps every worker row lists (its worker alive
        or not), and whether any worker's beats stopped before ``silent_since``."""
        ...

    def release_orphaned_steps(
        self, silent_since: datetime, overdue_at: datetime, wake_by: datetime, slack: float
    ) -> int:
        """Release the later, still-scheduled steps of the instances a dead worker listed
        (sent at or after its last beat less ``slack`` seconds, listed by no worker):
        ``heartbeat_at`` = ``overdue_at``, instance ``wake_at`` <= ``wake_by``. Call it
        before :meth:`release_dead_workers` removes the dead rows.

        Returns:
            How many steps were released.
        """
        ...

    def release_dead_workers(
        self, silent_since: datetime, overdue_at: datetime, wake_by: datetime
    ) -> int:
        """Release the steps held by workers whose last beat is before ``silent_since``:
        each one still scheduled (never started, not sent again since that beat) gets
        ``heartbeat_at`` = ``overdue_at`` and its live instance ``wake_at`` <= ``wake_by``,
        so the next pass sends it again; the dead workers' rows go. Concurrent callers
        never release one worker twice.

        Returns:
            How many steps were released.
        """
        ...

    def get_many(self, instance_ids: Sequence[str]) -> list[Instance]:
        """The instances of these ids that exist (any order); one round trip."""
        ...

    def signals(self, instance_id: str) -> list[Signal]:
        """The instance's unconsumed signals, oldest first."""
        ...

    def claim_due(self, now: datetime, lease_until: datetime, limit: int) -> list[str]:
        """Claim up to ``limit`` pending or running instances whose ``wake_at <= now``.

        Each claimed instance's ``wake_at`` becomes ``lease_until`` (without a version
        change), so a concurrent claim (a second tick) does not take it, and so it comes
        due again if the pass it is claimed for never happens. Instances are taken oldest
        ``wake_at`` first; concurrent claimers never block each other on a row (PostgreSQL:
        ``FOR UPDATE SKIP LOCKED``).

        Returns:
            The claimed instance ids.
        """
        ...

    def list(
        self,
        *,
        status: Status | None = None,
        workflow: str | None = None,
        limit: int = 100,
        parent_id: str | None = None,
        code_version: str | None = None,
        id_prefix: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: tuple[datetime, str] | None = None,
        statuses: Sequence[Status] | None = None,
    ) -> list[Instance]:
        """Instances, newest (``created_at``, then id) first, optionally filtered.

        Args:
            status / statuses: one status, or any of several.
            workflow: the workflow name.
            limit: at most this many.
            parent_id: a parent's children.
            code_version: the code version the run started on.
            id_prefix: ids that start with this text (taken literally, no wildcards).
            since / until: created at or after ``since``, before ``until``.
            before: a page's cursor: only instances after ``(created_at, id)`` in this
                order (the last one of the previous page).
        """
        ...

    def count_by_status(
        self,
        *,
        workflow: str | None = None,
        id_prefix: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[Status, int]:
        """How many instances each status has (statuses with none are left out),
        filtered as :meth:`list` filters."""
        ...

    def pending_events(self, instance_ids: Sequence[str]) -> dict[str, Events]:
        """The pending (scheduled or started) events of each instance, by seq, in one
        read: what a listing shows each instance waiting on. Instances without any are
        left out."""
        ...

    def wait_ended(self, instance_id: str, timeout: float) -> Ending | None:
        """Block up to ``timeout`` seconds, returning as soon as the store learns that the
        instance ended (a store without notifications simply sleeps).

        Returns:
            How it ended, when the store's notification said so; ``None`` otherwise (no
            news, or news too large to carry): the caller looks at the instance again.
        """
        ...

    def close(self) -> None:
        """Release connections. The store may be used again afterwards (it reconnects)."""
        ...


DEFAULT_URL = "sqlite:///celery_durable.sqlite3"


def open_store(url: str | None = None) -> Store:
    """Open the store a URL names.

    ``sqlite:///path``, ``postgresql+psycopg://...`` (``postgresql://`` and ``postgres://``
    mean psycopg 3 too) and any other SQLAlchemy URL go to the SQLAlchemy store;
    ``redis://`` URLs are refused until the Redis store exists. ``None`` means
    :data:`DEFAULT_URL`, a SQLite file in the working directory (resolved when opened).

    Raises:
        ConfigurationError: the URL's scheme is unknown, or its driver is not installed
            (the message names the extra to install).
    """
    url = url or DEFAULT_URL
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"store URL {url!r}: the Redis store is not available in this version; "
            "use a SQLAlchemy URL such as 'sqlite:///durable.sqlite3' or "
            "'postgresql+psycopg://user@host/db'"
        )
    if scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        from celery_durable.stores.postgres import PostgresStore

        return PostgresStore(url)
    from celery_durable.stores.sqlalchemy import SQLAlchemyStore

    return SQLAlchemyStore(url)
