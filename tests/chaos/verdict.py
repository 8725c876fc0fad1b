"""What a soak run did, checked: every workflow's end, the journal's audit trail, the run
log; and the figures, as printed lines.

The checks (``Verdict.violations`` lists every breach; a sound run has none):

* every workflow reaches the terminal state and result it must (none lost);
* no journal record is written twice: a record, once final (completed or failed), is
  never changed again (the audit trigger sees every change), and each record is inserted
  once; so every timer fires once and every outcome is journaled once;
* no step runs again after its outcome was journaled: no run log ``start`` comes more than
  :data:`RACE_MARGIN` after the audit's commit of that step's outcome (a run that began
  just before the commit, say a duplicate delivery's, is a race, counted not failed);
* every step ran at least once, and took effect exactly once under its idempotency key;
* every signal is consumed exactly once (the audit), and delivered in the order sent (the
  results);
* lost steps, runs and workflow ids (``chaos.losses_and_runs``): continue-as-new under
  stragglers, the poison step's ``StepLost`` after exactly ``durable_max_resends`` + 1
  runs, how soon a short step killed with its worker runs again, starts under an
  existing workflow id, no other step lost for good, no idempotency key shared.

Journal records are keyed by instance, run and seq (a run that continues as new starts
again at seq 0). Extra step runs are counted and explained: the run before it was killed,
ran at the same time (a duplicate delivery), or ended without its outcome being journaled
(a crash between the two, or a store outage at the commit). Planned Celery retries and
the poison step's runs are counted apart.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from celery_durable import Durable
from celery_durable.engine.awaitables import CANCEL_BEFORE_COMMANDS as CANCEL_BEFORE
from celery_durable.engine.journal import Instance
from celery_durable.runtime.steps import step_task_id
from chaos import losses_and_runs
from chaos.audit import read_audit
from chaos.mix import POISON, MixConfig, make_mix_app
from chaos.plans import Planned
from chaos.runlog import RACE_MARGIN, Run, read_runs, root_of
from chaos.soak import SoakRun

FINAL = ("completed", "failed")


@dataclass
class Verdict:
    """The checks' outcome and the figures."""

    violations: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    started: int = 0
    children: int = 0
    completed_as_planned: int = 0
    lost: list[str] = field(default_factory=list)
    extra_runs: Counter[str] = field(default_factory=Counter)
    extra_by_fault: Counter[str] = field(default_factory=Counter)
    cancels_too_late: Counter[str] = field(default_factory=Counter)
    """Cancelled sagas that completed first, by the fault of their round."""
    retries: int = 0
    poison_runs: int = 0
    races: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations


def judge(run: SoakRun, durable: Durable) -> Verdict:
    """Check ``run`` against the journal, the audit trail and the run log."""
    v = Verdict()
    store = durable.store
    planned: dict[str, Planned] = {p.id: p for r in run.rounds for p in r.planned}
    ids = list(planned)
    instances = {i.id: i for i in store.get_many(ids)}
    all_instances = store.list(limit=100_000)
    children = [i for i in all_instances if i.parent_id in planned]
    v.started, v.children = len(planned), len(children)
    runs, _crashes = read_runs(run.config.log.read_text() if run.config.log.exists() else "")
    audit = read_audit(run.config.store)

    # 1. Every workflow ends as planned.
    fault_of = {p.id: r.fault for r in run.rounds for p in r.planned}
    for p in planned.values():
        instance = instances.get(p.id)
        if _finished_before_its_cancel(p, instance, durable):
            # A cancel is thrown before the workflow issues a new command, or where it
            # waits; one that ends without issuing another is not interrupted. So this
            # is legitimate only if no pass ran between the cancel request and the end
            # of the saga's last step: a fault delayed or lost the cancel's pass.
            v.cancels_too_late[fault_of[p.id]] += 1
            if fault_of[p.id] == "none":
                v.violations.append(f"{p.id}: completed despite its cancel, without a fault")
            else:
                v.completed_as_planned += 1
            continue
        problem = _check_end(p, instance, durable)
        if problem:
            v.violations.append(f"{p.id}: {problem}")
            if instances.get(p.id) is None or not instances[p.id].status.is_terminal:
                v.lost.append(p.id)
        else:
            v.completed_as_planned += 1
    for child in children:
        if child.status.value != "completed":
            v.violations.append(f"child {child.id}: {child.status.value}, not completed")

    # 2. No journal record written twice; timers and outcomes once.
    inserts: Counter[tuple[str, int, int]] = Counter()
    finals: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
    consumed: Counter[tuple[str, int]] = Counter()
    for row in audit:
        if row["tbl"] == "instances":
            continue  # a new run (checked by chaos.losses_and_runs)
        if row["tbl"] == "signals":
            signal = (row["instance_id"], row["seq"])
            if row["old_state"] is not None:
                v.violations.append(f"signal of {signal} consumed again: {row}")
            consumed[signal] += 1
            continue
        key = (row["instance_id"], row["run"], row["seq"])
        if row["old_state"] is None:
            inserts[key] += 1
        elif row["old_state"] in FINAL:
            v.violations.append(f"journal record {key} rewritten after it was final: {row}")
        if row["new_state"] in FINAL and row["old_state"] not in FINAL:
            finals[key].append(row)
    for key, count in inserts.items():
        if count > 1:
            v.violations.append(f"journal record {key} inserted {count} times")
    timers = [rows for rows in finals.values() if rows[0]["kind"] == "timer"]
    twice = [rows for rows in finals.values() if len(rows) > 1]
    v.violations += [f"outcome journaled {len(rows)} times: {rows}" for rows in twice]

    # 3. No run after the outcome was journaled; extra runs explained, and only in rounds
    #    with a fault.
    final_at: dict[str, float] = {
        step_task_id(instance_id, seq, run_number): rows[0]["at"].timestamp()
        for (instance_id, run_number, seq), rows in finals.items()
    }
    roots = sorted(planned, key=len, reverse=True)
    by_key: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_key[r.idem].append(r)
        done = final_at.get(r.idem)
        if done is not None and r.start > done:
            if r.start - done > RACE_MARGIN:
                v.violations.append(
                    f"step {r.idem} ({r.label}) ran {r.start - done:.2f} s after its outcome "
                    "was journaled"
                )
            else:
                v.races += 1
    for idem, key_runs in by_key.items():
        root = root_of(idem, roots)
        fault = fault_of.get(root or "", "?")
        if key_runs[0].label == POISON:
            v.poison_runs += len(key_runs)  # every run dies: chaos.losses_and_runs counts them
            continue
        for before, after in itertools.pairwise(key_runs):
            if before.raised and before.label == "flaky":
                v.retries += 1
                continue
            if before.end is None:
                why = "the run before it was killed"
            elif after.start < before.end:
                why = "ran alongside another copy of its message"
            elif idem in final_at and final_at[idem] - before.end <= RACE_MARGIN:
                why = "started while the run before was journaling its outcome"
            else:
                why = "the run before ended but its outcome was not journaled"
            v.extra_runs[why] += 1
            v.extra_by_fault[fault] += 1
            if fault == "none":
                v.violations.append(f"step {idem} ran again ({why}) in a round without fault")

    # 4. At least once; exactly once in effect.
    effects: dict[str, Counter[str]] = defaultdict(Counter)
    ran: dict[str, set[str]] = defaultdict(set)
    killed: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in runs:
        root = root_of(r.idem, roots)
        if root is None:
            continue
        ran[root].add(r.label)
        if r.effect:
            effects[root][r.label] += 1
        elif r.end is None:
            killed[(root, r.label)].add(r.idem)
    # A run killed between applying its effect (the O_EXCL marker) and logging it took
    # effect all the same: the marker on disk says so, and the next run logged "dedup".
    for (root, label), idems in killed.items():
        if effects[root][label] == 0 and any(
            (run.config.effects / idem.replace("/", "_")).exists() for idem in idems
        ):
            effects[root][label] = 1
    effect_keys = 0
    for p in planned.values():
        if p.id in v.lost:
            continue
        for label in p.effects:
            effect_keys += 1
            if label not in ran[p.id]:
                v.violations.append(f"{p.id}: step {label} never ran")
            elif effects[p.id][label] != 1:
                v.violations.append(
                    f"{p.id}: step {label} took effect {effects[p.id][label]} times"
                )
        for label in p.optional:
            if effects[p.id][label] > 1:
                v.violations.append(
                    f"{p.id}: step {label} took effect {effects[p.id][label]} times"
                )
        if p.check == "compensated_if_held":
            v.violations += [f"{p.id}: {x}" for x in _compensation(p, durable, effects[p.id])]
        unexpected = set(effects[p.id]) - set(p.effects) - set(p.optional)
        if unexpected:
            v.violations.append(f"{p.id}: unexpected effects {sorted(unexpected)}")

    # 5. Signals: each consumed once (audit), delivered in order (results, checked above).
    sent = sum(len(p.signals) for p in planned.values())
    signal_instances = {p.id for p in planned.values() if p.signals}
    consumed_total = sum(n for (iid, _), n in consumed.items() if iid in signal_instances)
    if consumed_total != sent:
        v.violations.append(f"signals: {sent} sent, {consumed_total} consumptions journaled")

    # 6. Lost steps, runs and workflow ids.
    found = losses_and_runs.check(
        losses_and_runs.Evidence(
            durable, run.rounds, planned, instances, all_instances, runs, audit
        )
    )
    v.violations += found.violations

    v.lines = _figures(run, v, runs, audit, timers, effect_keys, sent, consumed_total, found.lines)
    return v


def judge_run(run: SoakRun) -> Verdict:
    """:func:`judge` with an app of its own (the soak's is closed when the run ends)."""
    mix = make_mix_app(MixConfig.from_env(run.config.env()))
    try:
        return judge(run, mix.durable)
    finally:
        mix.durable.store.close()
        mix.app.close()


def _compensation(p: Planned, durable: Durable, effects: Counter[str]) -> list[str]:
    """The cancelled saga compensated exactly when the journal says it must.

    The compensation is registered once ``hold`` returned in the workflow, so it must run
    when the cancel was thrown after that: before ``held`` was issued (a ``cancel
    before`` event right after ``hold``) or while the saga waited on ``held``. Thrown while
    it waited on ``hold`` (a ``cancel`` event right after it), or before ``hold`` was even
    issued, nothing is compensated, and ``hold`` may run or not (a cancelled instance
    sends nothing again)."""
    history = durable.handle(p.id).history()
    by_name = {e.name: e for e in history}
    cancel = next((e for e in history if e.kind.value == "cancel"), None)
    hold = by_name.get("mix.hold")
    problems = []
    if hold is not None and hold.state.value == "completed" and effects["hold"] != 1:
        problems.append(f"hold journaled as completed, took effect {effects['hold']} times")
    if cancel is None:
        return problems  # completed: see _finished_before_its_cancel
    must = hold is not None and (cancel.seq >= 2 or cancel.name == CANCEL_BEFORE)
    if must != ("mix.unhold" in by_name):
        problems.append(
            f"cancel journaled at seq {cancel.seq} ({cancel.name!r}): compensation "
            f"{'expected' if must else 'not expected'}, journal has "
            f"{[e.name for e in history]}"
        )
    if "mix.unhold" in by_name and effects["unhold"] != 1:
        problems.append("compensation journaled but took no effect")
    return problems


def _finished_before_its_cancel(p: Planned, instance: Instance | None, durable: Durable) -> bool:
    """The cancelled saga completed: the cancel was requested, but no pass ran between the
    request and the end of its last step, and the pass that journaled that step's outcome
    found the workflow ending without a new command: nowhere to throw the cancel (the
    engine's rule, issue 9 included: a cancel is thrown before a new command or where the
    workflow waits, and a workflow ending without one is not interrupted)."""
    if p.check != "compensated_if_held" or instance is None:
        return False
    if instance.status.value != "completed":
        return False
    history = durable.handle(p.id).history()
    result = durable.codec(instance.serializer).loads(instance.output) if instance.output else None
    return result == "not cancelled" and all(e.kind.value != "cancel" for e in history)


def _check_end(p: Planned, instance: Instance | None, durable: Durable) -> str:
    if instance is None:
        return "not in the store"
    status = instance.status.value
    if status != p.status:
        failure = instance.failure
        why = f" ({failure.type}: {failure.message[:200]})" if failure else ""
        return f"ended {status}{why}, planned {p.status}"
    if p.status in ("failed", "cancelled"):
        failure = instance.failure
        if failure is None or failure.type != p.failure_type:
            return f"failed with {failure}, planned {p.failure_type}"
        return ""
    result = durable.codec(instance.serializer).loads(instance.output) if instance.output else None
    if p.check == "renewed":
        return losses_and_runs.renewed_result(p, result)
    if p.check == "token_then_flaky":
        history = durable.handle(p.id).history()
        token = next(e.result for e in history if e.kind.value == "run")
        if result != [token, "flaky-ok"]:
            return f"result {result!r}, planned [{token!r}, 'flaky-ok'] (journaled token)"
        return ""
    if result != p.result:
        return f"result {result!r}, planned {p.result!r}"
    return ""


def _figures(
    run: SoakRun,
    v: Verdict,
    runs: list[Run],
    audit: list[dict[str, Any]],
    timers: list[Any],
    effect_keys: int,
    sent: int,
    consumed: int,
    more: list[str],
) -> list[str]:
    rounds = run.rounds
    minutes = (run.finished - run.started) / 60
    faults = Counter(r.fault for r in rounds if r.fault != "none")
    lines = [
        f"soak: {len(rounds)} rounds in {minutes:.1f} min; PostgreSQL + {run.broker}, "
        "2 prefork workers x 2 processes, 2 beats",
        f"workflows: started {v.started} (+{v.children} children), ended as planned "
        f"{v.completed_as_planned}, lost {len(v.lost)}",
        "faults injected: "
        + (", ".join(f"{kind} {n}" for kind, n in sorted(faults.items())) or "none"),
    ]
    baseline = [r.ended_at - r.started_at for r in rounds if r.fault == "none" and r.ended_at]
    if baseline:
        lines.append(
            f"round without fault: all ended {statistics.median(baseline):.1f} s after start "
            f"(median of {len(baseline)})"
        )
    by_fault: dict[str, list[float]] = defaultdict(list)
    rows = []
    for r in rounds:
        if r.fault == "none":
            continue
        if r.fault_at is not None and r.ended_at is not None:
            by_fault[r.fault].append(r.ended_at - r.fault_at)
            later = r.ended_at - r.fault_at
            rows.append(f"  round {r.number}: {r.fault_note}; all ended {later:.1f} s later")
        elif r.ended_at is None:
            rows.append(f"  round {r.number} ({r.fault}): {r.fault_note}; NOT all ended")
        else:
            rows.append(f"  round {r.number} ({r.fault}): {r.fault_note}")
    stuck = sum(r.stuck for r in rounds)
    if stuck:
        lines.append(f"parked as stuck by a bad deploy, retried after the rollback: {stuck}")
    lost_messages = sum(r.lost_messages for r in rounds)
    if lost_messages:
        lines.append(f"messages lost with Redis: {lost_messages} (queued or unacked when killed)")
    base = statistics.median(baseline) if baseline else None
    lines.append(
        "fault -> every workflow of its round ended, median / max"
        + (" (and the round's delay against one without fault)" if base else "")
        + ":"
    )
    for kind, seconds in sorted(by_fault.items()):
        delay = ""
        if base is not None:
            durations = [
                r.ended_at - r.started_at for r in rounds if r.fault == kind and r.ended_at
            ]
            delay = f"  ({statistics.median(durations) - base:+.1f} s)"
        lines.append(
            f"  {kind:<34} {statistics.median(seconds):5.1f} s / {max(seconds):5.1f} s "
            f"({len(seconds)} faults){delay}"
        )
    if len(rows) <= 24:
        lines.append("each fault:")
        lines += rows
    else:
        lines += [row for row in rows if "NOT" in row or "never" in row]
    extra = sum(v.extra_runs.values())
    lines.append(
        f"step runs: {len(runs)}; planned Celery retries: {v.retries}; poison step runs: "
        f"{v.poison_runs}; extra runs: {extra}"
    )
    lines += [f"  {reason}: {n}" for reason, n in v.extra_runs.most_common()]
    if extra:
        lines.append(
            "  by the fault of their round: "
            + ", ".join(f"{fault} {n}" for fault, n in sorted(v.extra_by_fault.items()))
        )
    lines.append(
        f"effects: {effect_keys} steps, each took effect exactly once: "
        f"{'yes' if not any('took effect' in x for x in v.violations) else 'NO'}"
    )
    records = sum(1 for row in audit if row["tbl"] == "events" and row["old_state"] is None)
    lines.append(
        f"journal: {records} records; outcomes journaled twice or rewritten: "
        f"{sum(x.startswith(('journal record', 'outcome journaled')) for x in v.violations)}; "
        f"timers fired: {len(timers)}, each once"
    )
    lines.append(f"signals: {sent} sent, {consumed} consumed (each exactly once)")
    late = sum(v.cancels_too_late.values())
    cancels = sum(1 for r in rounds for p in r.planned if p.cancel_after is not None)
    lines.append(
        f"cancels: {cancels} sent, {cancels - late} cancelled their saga"
        + (
            f"; {late} landed after it had finished blocking (it completed): "
            + ", ".join(f"{fault} {n}" for fault, n in sorted(v.cancels_too_late.items()))
            if late
            else ""
        )
    )
    lines.append(
        f"steps run after their outcome was journaled: "
        f"{sum('after its outcome' in x for x in v.violations)} "
        f"(runs racing the commit by < {RACE_MARGIN:g} s: {v.races})"
    )
    lines += more
    if run.unexpected_exits:
        lines.append(f"processes that exited on their own: {len(run.unexpected_exits)}")
        lines += [f"  {e}" for e in run.unexpected_exits]
    lines.append(f"violations: {len(v.violations)}")
    lines += [f"  {x}" for x in v.violations[:30]]
    return lines
