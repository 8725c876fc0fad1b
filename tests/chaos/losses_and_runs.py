"""The verdict's checks of lost steps, runs and workflow ids (issue 9), on the soak's mix.

* **Continue-as-new under stragglers** (``mix.renewed``): the instance ends on run 2 with
  run 2's own result, whose step ran under run 2's idempotency key (``<id>:0~2``, where
  run 1's was ``<id>:0``), with another ``ctx.uuid4()`` than run 1's; no audit row of
  run 2 carries run 1's outcome; and no run of run 1's step starts after the restart (a
  message of an older run is never run). How often run 1's step really was a straggler
  (still running at the restart, and ending after it) is counted.
* **Poison step** (``mix.poisoned``): the saga fails with ``StepLost`` after exactly
  ``durable_max_resends`` + 1 runs of the poison step (the journal's ``resends`` at the
  limit) and its compensation takes effect once. A run count off by one is counted and
  explained only with evidence: the audit shows the step sent again on heartbeat silence
  while the worker that lost it still lived (:data:`LATE_REPORT`; a library weakness,
  see :func:`_resent_on_silence`), or the round's fault could change it
  (:data:`POISON_DEVIATIONS`); anything else fails the run.
* **Short steps killed** (``mix.short_steps``, steps shorter than one heartbeat interval):
  for every one a worker-kill fault killed, the time from the kill to the journal's
  re-send and to its next run; a next run later than ``durable_heartbeat_interval`` x 5 +
  ``durable_tick_interval`` x 2 + :data:`SHORT_MARGIN` fails the run.
* **Workflow ids**: a start under an existing id with the same arguments returned the
  same handle, one with other arguments raised ``WorkflowIdConflict``; the instance still
  holds its first arguments, and the store holds no instance nobody planned.
* **Nothing else is lost for good**: no step outside ``mix.poisoned`` failed with
  ``StepLost``; the most re-sends any of them needed is reported.
* **Idempotency keys** are never shared by two different steps (across runs included).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from celery_durable import Durable
from celery_durable.engine.journal import Event, Instance
from celery_durable.runtime.recovery import HEARTBEAT_MISSES
from celery_durable.runtime.steps import parse_step_task_id, step_task_id
from chaos.mix import POISON, PROBE, SHORT
from chaos.plans import SHORT_SECONDS, Planned
from chaos.runlog import RACE_MARGIN, Run, root_of
from chaos.soak import Round

#: Allowance, on top of heartbeats x 5 + two ticks, for a killed short step's next run:
#: the re-sent message waits for a free pool process (one worker is gone, its replacement
#: starting) on a loaded two-core machine.
SHORT_MARGIN = 2.5

KILLS = ("worker_group_kill", "pool_child_kill")

#: How a round's fault may legitimately change the poison step's run count: fault ->
#: (sign of runs - (durable_max_resends + 1), why). The fault must come while the poison
#: step is being lost (``duplicates`` lasts the whole round).
POISON_DEVIATIONS: dict[str, tuple[int, str]] = {
    # Two copies run at once: the second death finds the step already re-sent (not
    # started any more), so it is not counted as a loss.
    "duplicates": (+1, "copies of its message ran at once (one loss counted for two)"),
    # The worker's main process could not journal the loss while the store was down;
    # Celery requeued the message all the same.
    "postgres_restart": (+1, "a loss the store could not journal during its outage"),
    # Killed after its start mark and before its first log line: a loss with no run.
    "worker_group_kill": (-1, "a run killed between its start mark and its code"),
    "pool_child_kill": (-1, "a run killed between its start mark and its code"),
}


@dataclass
class Evidence:
    """What the checks read: the plan, the journal, the run log and the audit trail."""

    durable: Durable
    rounds: list[Round]
    planned: dict[str, Planned]
    instances: dict[str, Instance]
    all_instances: list[Instance]
    runs: list[Run]
    audit: list[dict[str, Any]]

    def __post_init__(self) -> None:
        self.round_of = {p.id: r for r in self.rounds for p in r.planned}
        roots = sorted(self.planned, key=len, reverse=True)
        self.runs_of: dict[str, list[Run]] = defaultdict(list)
        for r in self.runs:
            root = root_of(r.idem, roots)
            if root is not None:
                self.runs_of[root].append(r)

    def journal(self, instance_id: str) -> list[Event]:
        loaded = self.durable.store.load(instance_id)
        return loaded[1] if loaded else []


@dataclass
class Findings:
    """Violations and figure lines of these checks."""

    violations: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def renewed_result(p: Planned, result: Any) -> str:
    """The problem with a ``mix.renewed`` result, or ``""``: run 1's race won by the timer
    and a uuid of its own; run 2's number, another uuid, and its step's result under run
    2's idempotency key."""
    key = step_task_id(p.id, 0, 2)
    try:
        (run1, timer, uuid1), (run2, uuid2, probe) = result
    except (TypeError, ValueError):
        return f"result {result!r}, planned [[1, 1, uuid], [2, other uuid, 'probe 1 {key}']]"
    if (run1, timer, run2, probe) != (1, 1, 2, f"{PROBE} 1 {key}") or uuid1 == uuid2:
        return (
            f"result {result!r}: planned run 1 (its timer winning the race) then run 2 with "
            f"another ctx.uuid4() and the result '{PROBE} 1 {key}' (its own step's)"
        )
    return ""


def check(e: Evidence) -> Findings:
    """Every check of this module, in order."""
    f = Findings()
    _continue_as_new(e, f)
    _poison(e, f)
    _short_kills(e, f)
    _workflow_ids(e, f)
    _nothing_else_lost(e, f)
    _keys_unique(e, f)
    return f


def _continue_as_new(e: Evidence, f: Findings) -> None:
    restarts = {
        row["instance_id"]: row["at"].timestamp()
        for row in e.audit
        if row["tbl"] == "instances" and row["new_state"] == "2"
    }
    renewed = [p for p in e.planned.values() if p.workflow == "mix.renewed"]
    still_running = ended_after = leaked = late = 0
    for p in renewed:
        instance = e.instances.get(p.id)
        if instance is None or instance.status.value != "completed":
            continue  # reported by the end-state check
        if instance.run != 2:
            f.violations.append(f"{p.id}: ended on run {instance.run}, planned run 2")
        restart = restarts.get(p.id)
        if restart is None:
            f.violations.append(f"{p.id}: the audit saw no move to run 2")
            continue
        old, new = step_task_id(p.id, 0, 1), step_task_id(p.id, 0, 2)
        for r in e.runs_of[p.id]:
            expected = {f"{PROBE}0": old, f"{PROBE}1": new}.get(r.label)
            if r.idem != expected:
                f.violations.append(
                    f"{p.id}: step {r.label} ran under key {r.idem}, planned {expected}"
                )
        stragglers = [r for r in e.runs_of[p.id] if r.label == f"{PROBE}0"]
        if any(r.start < restart and (r.end is None or r.end > restart) for r in stragglers):
            still_running += 1
        if any(r.start < restart and r.end is not None and r.end > restart for r in stragglers):
            ended_after += 1
        for r in stragglers:
            if r.start > restart + RACE_MARGIN:
                late += 1
                f.violations.append(
                    f"{p.id}: run 1's step {r.idem} started {r.start - restart:.2f} s after "
                    "the instance continued as new (an old run's message was run)"
                )
        for row in e.audit:
            if row["instance_id"] != p.id or row["tbl"] != "events" or (row["run"] or 1) < 2:
                continue
            output = row["output"] or ""
            if f"{PROBE} 0 " in output or (output and new not in output):
                leaked += 1
                f.violations.append(f"{p.id}: run 2's journal got {output!r} (seq {row['seq']})")
    if renewed:
        f.lines.append(
            f"continue-as-new: {len(renewed)} instances moved to run 2 and ended with run 2's "
            f"own result (idempotency key <id>:0~2, another uuid4); run 1's step was still "
            f"running at the restart in {still_running}, and ended after it in "
            f"{ended_after}; run 1 outcomes journaled into run 2: {leaked}; run 1 steps "
            f"started after the restart: {late}"
        )


def _poison(e: Evidence, f: Findings) -> None:
    limit = e.durable.settings.max_resends
    silence = e.durable.settings.heartbeat_interval * HEARTBEAT_MISSES
    planned_runs = limit + 1
    poisoned = [p for p in e.planned.values() if p.workflow == "mix.poisoned"]
    counts: Counter[int] = Counter()
    explained: Counter[str] = Counter()
    for p in poisoned:
        events = [ev for ev in e.journal(p.id) if ev.name == "mix.poison"]
        if not events:
            continue  # reported by the end-state check
        event = events[0]
        failure = event.failure.type if event.failure else None
        if event.state.value != "failed" or failure != "StepLost" or event.resends != limit:
            f.violations.append(
                f"{p.id}: poison step {event.state.value} ({failure}) after {event.resends} "
                f"re-sends, planned failed (StepLost) after {limit}"
            )
        runs = [r for r in e.runs_of[p.id] if r.label == POISON]
        counts[len(runs)] += 1
        off = len(runs) - planned_runs
        if off == 0:
            continue
        rnd = e.round_of[p.id]
        first = min((r.start for r in runs), default=rnd.started_at)
        lost_at = event.completed_at.timestamp() if event.completed_at else first
        silent = _resent_on_silence(e, p.id, event.seq, runs, silence)
        sign, why = POISON_DEVIATIONS.get(rnd.fault, (0, ""))
        during = rnd.fault == "duplicates" or (
            rnd.fault_at is not None
            and first - RACE_MARGIN <= rnd.fault_at <= lost_at + RACE_MARGIN
        )
        if abs(off) <= silent:
            explained[LATE_REPORT] += 1
        elif sign and off * sign > 0 and during:
            explained[f"{rnd.fault}: {why}"] += 1
        else:
            at = rnd.fault_at or rnd.started_at
            f.violations.append(
                f"{p.id}: the poison step ran {len(runs)} times, planned {planned_runs} "
                f"(durable_max_resends={limit}; round fault {rnd.fault} at 0.0 s; runs at "
                + ", ".join(f"{r.start - at:+.2f} s (pid {r.pid})" for r in runs)
                + f"; StepLost at {lost_at - at:+.2f} s; re-sent on silence {silent} times)"
            )
    if poisoned:
        f.lines.append(
            f"poison step: {len(poisoned)} sagas failed with StepLost and compensated; "
            f"planned durable_max_resends + 1 = {planned_runs} runs of the poison step, seen "
            + ", ".join(f"{n} runs in {k}" for n, k in sorted(counts.items()))
        )
        f.lines += [f"  other counts, explained: {n} {why}" for why, n in explained.most_common()]


#: Why a poison step may run once more (or less) than planned in any round: see
#: :func:`_resent_on_silence`.
LATE_REPORT = (
    "by a death the worker's main process reported after the heartbeat silence limit "
    "(the step was sent again on silence, then Celery requeued the old message too: two "
    "copies; or the late report counted a newer run's start as a loss)"
)


def _resent_on_silence(
    e: Evidence, instance_id: str, seq: int, runs: list[Run], silence: float
) -> int:
    """How often the step was sent again because it fell silent (the audit's
    started -> scheduled change, a silence limit or more after the latest run's start)
    rather than because the worker's main process reported its pool process dead (that
    comes within milliseconds, unless Celery notices the death only at its next pool
    check, up to 5 s later: a process that dies right after taking a task may not have
    acknowledged it yet). Each such re-send while that main process lives makes a
    second copy: Celery requeues the original message when it does notice."""
    starts = sorted(r.start for r in runs)
    late = 0
    for row in e.audit:
        if (
            row["tbl"] == "events"
            and row["instance_id"] == instance_id
            and row["seq"] == seq
            and row["old_state"] == "started"
            and row["new_state"] == "scheduled"
        ):
            at = row["at"].timestamp()
            before = [s for s in starts if s <= at]
            if before and at - before[-1] >= silence - 0.2:
                late += 1
    return late


def _short_kills(e: Evidence, f: Findings) -> None:
    settings = e.durable.settings
    heartbeats = settings.heartbeat_interval * HEARTBEAT_MISSES
    bound = heartbeats + settings.tick_interval * 2 + SHORT_MARGIN
    resent_after: list[float] = []
    ran_after: list[float] = []
    by_fault: Counter[str] = Counter()
    for rnd in e.rounds:
        if rnd.fault not in KILLS or rnd.fault_at is None:
            continue
        killed_at = rnd.fault_at
        killed = [
            r
            for r in e.runs
            if r.label.startswith(SHORT)
            and r.pid in rnd.killed_pids
            and r.start <= killed_at
            and r.end is None
        ]
        for r in killed:
            by_fault[rnd.fault] += 1
            identity = parse_step_task_id(r.idem)
            assert identity is not None
            instance_id, _run, seq = identity
            resent = [
                row["at"].timestamp()
                for row in e.audit
                if row["tbl"] == "events"
                and row["instance_id"] == instance_id
                and row["seq"] == seq
                and row["old_state"] == "started"
                and row["new_state"] == "scheduled"
                and row["at"].timestamp() >= killed_at - RACE_MARGIN
            ]
            if resent:
                resent_after.append(min(resent) - killed_at)
            later = [x.start for x in e.runs if x.idem == r.idem and x.start > killed_at]
            if not later:
                f.violations.append(f"short step {r.idem}, killed by {rnd.fault}, never ran again")
                continue
            delay = min(later) - killed_at
            ran_after.append(delay)
            if delay > bound:
                f.violations.append(
                    f"short step {r.idem}, killed by {rnd.fault} in round {rnd.number}, ran "
                    f"again {delay:.1f} s later (bound {bound:.1f} s)"
                )
    f.lines.append(
        f"short steps ({SHORT_SECONDS:g} s, under one {settings.heartbeat_interval:g} s "
        f"heartbeat) killed by a worker kill: {len(ran_after)}"
        + (
            " (" + ", ".join(f"{k} {n}" for k, n in sorted(by_fault.items())) + ")"
            if by_fault
            else ""
        )
    )
    if ran_after:
        f.lines.append(
            f"  kill -> journaled lost and sent again: {_spread(resent_after)}; kill -> ran "
            f"again: {_spread(ran_after)} (bound {heartbeats:g} + 2 x "
            f"{settings.tick_interval:g} + {SHORT_MARGIN:g} = {bound:g} s)"
        )


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.1f} s / max {max(values):.1f} s"


def _workflow_ids(e: Evidence, f: Findings) -> None:
    checks = [c for r in e.rounds for c in r.id_checks]
    same = refused = 0
    for c in checks:
        p = e.planned[c.id]
        if c.same_args == c.id:
            same += 1
        else:
            f.violations.append(f"{c.id}: started again with its arguments: {c.same_args}")
        if c.other_args == "refused":
            refused += 1
        else:
            f.violations.append(f"{c.id}: started again with other arguments: {c.other_args}")
        instance = e.instances.get(c.id)
        if instance is not None:
            stored = e.durable.codec(instance.serializer).loads(instance.input)
            if instance.workflow != p.workflow or stored != [list(p.args), {}]:
                f.violations.append(
                    f"{c.id}: holds {instance.workflow} {stored!r} after a conflicting start, "
                    f"planned {p.workflow} {[list(p.args), {}]!r}"
                )
    stray = [
        i.id for i in e.all_instances if i.id not in e.planned and i.parent_id not in e.planned
    ]
    if stray:
        f.violations.append(f"instances nobody started: {stray[:10]}")
    if checks:
        f.lines.append(
            f"starts under an existing id: {same} of {len(checks)} with the same arguments "
            f"returned the same handle; {refused} of {len(checks)} with other arguments "
            "raised WorkflowIdConflict; the instances kept their arguments, no other "
            f"instance stored: {'yes' if not stray else 'NO'}"
        )


def _nothing_else_lost(e: Evidence, f: Findings) -> None:
    most = 0
    for instance in e.all_instances:
        root = instance.parent_id or instance.id
        if e.planned.get(root) is None or e.planned[root].workflow == "mix.poisoned":
            continue
        for event in e.journal(instance.id):
            most = max(most, event.resends)
            if event.failure is not None and event.failure.type == "StepLost":
                f.violations.append(
                    f"{instance.id}: step {event.name} (seq {event.seq}) failed StepLost "
                    f"after {event.resends} re-sends"
                )
    f.lines.append(
        f"most re-sends of one step outside the poison saga: {most} (StepLost past "
        f"durable_max_resends={e.durable.settings.max_resends})"
    )


def _keys_unique(e: Evidence, f: Findings) -> None:
    labels: dict[str, set[str]] = defaultdict(set)
    for r in e.runs:
        labels[r.idem].add(r.label)
    for idem, names in labels.items():
        if len(names) > 1:
            f.violations.append(f"idempotency key {idem} used by steps {sorted(names)}")
