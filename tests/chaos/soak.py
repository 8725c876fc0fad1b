"""The fault soak: the workflow mix on real prefork workers and two beats, under faults.

Run in rounds. Each round starts one workflow of every kind in the mix (``chaos.mix``),
starts one of them again with the same workflow id and arguments (the same handle must
come back) and with other arguments (``WorkflowIdConflict`` must be raised), sends the
signal workflow its two signals at random moments, injects one fault at a random moment
(or none: the baseline), and waits for every workflow of the round to end. The faults:

* ``worker_group_kill``: SIGKILL of a worker's whole process group (main process and pool:
  nothing is acked or requeued), the worker running one of the short steps of
  ``mix.short_steps`` if there is one; a replacement worker starts at once;
* ``worker_restart``: a deploy: a worker gets SIGTERM (Celery's warm shutdown: running
  tasks finish, prefetched messages go back) and a new one starts;
* ``bad_deploy``: changed code rolled out to every worker (a workflow changed so that its
  journals no longer replay: they park as stuck; another workflow missing: its passes
  wait), then rolled back, and every stuck instance retried (``durable.retry``);
* ``pool_child_kill``: SIGKILL of one pool child, preferably one running a step (one
  running a short step, half the time); the main process survives, journals the loss
  and requeues its message (``reject_on_worker_lost``);
* ``redis_loss``: Redis SIGKILLed and restarted empty after a second (no persistence:
  every queued, scheduled and unacked message is gone);
* ``rabbitmq_restart`` (when RabbitMQ is the broker, in place of ``redis_loss``): the
  node SIGKILLed and started again a second later on its data (Celery declares its
  queues durable and publishes persistent messages: what the node had written to disk
  comes back, unacked messages ready again; what it had not, is lost);
* ``postgres_restart``: PostgreSQL immediate shutdown, restarted two seconds later (crash
  recovery on start);
* ``duplicates``: every task message published twice for the whole round, the copy up to
  3 s late (racing the first, or arriving long after it was handled);
* ``crash:<point>``: the first pool process to reach a :mod:`celery_durable.faults`
  point SIGKILLs itself there (after a step ran, before its outcome is journaled; after an
  orchestrator commit, before its messages are published; in the middle of a commit).

Two beats run all the time (two ticks at once). ``chaos.verdict`` then checks everything
the journal, the audit trail and the run log say, and prints the figures.

Shared by ``tests/chaos/test_soak.py`` (one round per fault, in CI, and a few rounds with
RabbitMQ as the broker) and ``bench/chaos.py`` (the same rounds for as long as
``--duration`` says, with ``--broker redis|rabbitmq``).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis as redis_client
from kombu.exceptions import OperationalError
from rabbitmq_server import RabbitMQServer
from servers import PostgresServer, RedisServer

from celery_durable import WorkflowIdConflict, faults
from celery_durable.client import start
from celery_durable.engine.journal import Status
from celery_durable.errors import StoreError
from chaos.audit import install_audit
from chaos.cluster import STOP_TIMEOUT, Cluster, Proc, wait_for
from chaos.mix import SHORT, MixApp, MixConfig, make_mix_app
from chaos.plans import Planned, plan_round

#: The faults, in the order one CI run injects them.
FAULTS = (
    "none",
    "worker_group_kill",
    "worker_restart",
    "bad_deploy",
    "pool_child_kill",
    "redis_loss",
    "postgres_restart",
    "duplicates",
    *(f"crash:{point}" for point in faults.POINTS),
)

#: The faults with RabbitMQ as the broker: the node's crash and restart on its data in
#: place of Redis's loss.
RABBITMQ_FAULTS = tuple("rabbitmq_restart" if f == "redis_loss" else f for f in FAULTS)

#: What a soak runs on: Redis (restarted empty) or RabbitMQ (restarted on its data).
Broker = RedisServer | RabbitMQServer


def broker_faults(broker: Broker) -> tuple[str, ...]:
    """The faults a soak on ``broker`` injects (:data:`FAULTS` or :data:`RABBITMQ_FAULTS`)."""
    return RABBITMQ_FAULTS if isinstance(broker, RabbitMQServer) else FAULTS


#: How long a worker-kill fault may wait for a short step of ``mix.short_steps`` to be
#: running, so that it hits one (a chain of 0.3 s steps: one runs most of the time).
AIM_PATIENCE = 2.0

#: What a publish raises while Redis is down.
BROKER_ERRORS: tuple[type[BaseException], ...] = (OperationalError, ConnectionError, OSError)

#: How long the changed code of ``bad_deploy`` runs alone before it is rolled back.
BAD_DEPLOY_SECONDS = 2.0

#: A round whose workflows have not all ended this long after its start counts them lost.
ROUND_TIMEOUT = 90.0
WORKERS = 2
CONCURRENCY = 2


@dataclass(frozen=True)
class IdCheck:
    """A planned workflow started again with its workflow id: what came back."""

    id: str
    same_args: str
    """The id of the handle a start with the same arguments returned (or the error)."""
    other_args: str
    """``"refused"`` if a start with other arguments raised ``WorkflowIdConflict``, else
    what happened."""


@dataclass
class Round:
    """One round: its workflows, its fault and when things happened (wall clock)."""

    number: int
    fault: str
    started_at: float
    planned: list[Planned]
    fault_at: float | None = None
    fault_note: str = ""
    killed_pids: tuple[int, ...] = ()
    """The processes a worker-kill fault SIGKILLed."""
    id_checks: list[IdCheck] = field(default_factory=list)
    lost_messages: int = 0
    """Messages in Redis (queued or unacked) when it was killed (RabbitMQ's node comes
    back with its messages: its count is in ``fault_note``)."""
    stuck: int = 0
    """Instances the bad deploy parked as stuck (all retried after the rollback)."""
    ended_at: float | None = None
    """When its last workflow ended (the journal's ``updated_at``), if all did."""


@dataclass
class SoakRun:
    """Everything the run did, for ``verdict``."""

    config: MixConfig
    broker: str = "Redis"
    """``"Redis"`` or ``"RabbitMQ"``."""
    rounds: list[Round] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    logs: str = ""


def retrying(
    what: Callable[[], Any],
    seconds: float = 60.0,
    errors: tuple[type[BaseException], ...] = (StoreError,),
) -> Any:
    """Call ``what`` until it does not raise ``errors`` (the soak itself restarts the
    servers)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return what()
        except errors:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class Soak:
    """The servers, the cluster and the mix app of one soak run."""

    def __init__(
        self,
        root: Path,
        broker: Broker,
        postgres: PostgresServer,
        store_url: str,
        *,
        seed: int = 0,
        generic_store: bool = False,
        quorum: bool = False,
    ) -> None:
        self.broker = broker
        self.postgres = postgres
        self.rng = random.Random(seed)
        self.config = MixConfig(
            broker=broker.url,
            store=store_url,
            queue=f"mix-{uuid.uuid4().hex[:8]}",
            root=root,
            generic_store=generic_store,
            quorum=quorum,
        )
        self.mix: MixApp = make_mix_app(self.config)
        self.mix.durable.store.get("-")  # creates the schema before the audit and the workers
        install_audit(store_url)
        self.cluster = Cluster(root, self.config.env(), app_module="chaos.mix_worker")
        self.run = SoakRun(
            self.config, "RabbitMQ" if isinstance(broker, RabbitMQServer) else "Redis"
        )
        self._names = (f"w{i}" for i in range(1, 1_000_000))

    # ------------------------------------------------------------------ processes

    def _workers(self) -> list[Proc]:
        return [p for p in self.cluster.procs if p.name.startswith("w") and not p.killed]

    def _beats(self) -> list[Proc]:
        return [p for p in self.cluster.procs if p.name.startswith("beat") and not p.killed]

    def start_cluster(self) -> None:
        workers = [self.cluster.worker(next(self._names), CONCURRENCY) for _ in range(WORKERS)]
        self.cluster.beat("beat1")
        self.cluster.beat("beat2")  # two ticks at once, all the time
        for worker in workers:
            self.cluster.wait_ready(worker)

    def _keep_alive(self) -> None:
        """Restart any worker or beat that exited without being killed (and say so)."""
        for proc in [*self._workers(), *self._beats()]:
            if proc.popen.poll() is not None:
                proc.killed = True
                self.run.unexpected_exits.append(
                    f"{proc.name} exited with {proc.popen.returncode}; "
                    f"last lines: {proc.log_text().splitlines()[-5:]}"
                )
                if proc.name.startswith("beat"):
                    self.cluster.beat(f"{proc.name}x")
                else:
                    self.cluster.worker(next(self._names), CONCURRENCY)

    # ------------------------------------------------------------------ faults

    def _busy_children(self) -> tuple[list[int], dict[int, str]]:
        """Pool children of live workers to kill, and what each runs: half the time those
        running a short step of ``mix.short_steps`` (waiting up to
        :data:`AIM_PATIENCE` for one), else those running a mix step (if any), else all."""
        aim = self.rng.random() < 0.5
        deadline = time.monotonic() + AIM_PATIENCE
        while True:
            children = [pid for worker in self._workers() for pid in _group(worker)[1:]]
            running = _running(self.config.log)
            busy = [pid for pid in children if pid in running]
            short = [pid for pid in busy if running[pid].startswith(SHORT)]
            if short and aim:
                return short, running
            if not aim or time.monotonic() > deadline:
                return busy or children, running
            time.sleep(0.02)

    def _short_step_workers(self) -> tuple[list[Proc], dict[int, str]]:
        """All live workers, those running a short step first (waiting up to
        :data:`AIM_PATIENCE` for one), and what each process runs."""
        deadline = time.monotonic() + AIM_PATIENCE
        while True:
            workers = self._workers()
            running = _running(self.config.log)
            aimed = [
                w
                for w in workers
                if any(running.get(pid, "").startswith(SHORT) for pid in _group(w))
            ]
            if aimed or time.monotonic() > deadline:
                return aimed or workers, running
            time.sleep(0.02)

    def inject(self, fault: str, rnd: Round) -> None:
        """Inject ``fault`` now (``duplicates`` lasts the whole round; a ``crash:`` point is
        armed now and fires when a worker process next reaches it)."""
        now = time.time()
        if fault.startswith("crash:"):
            (self.config.armed / fault.split(":", 1)[1]).touch()
        elif fault == "worker_group_kill":
            # The worker running a short step, if any: its kill measures how soon a step
            # killed before its first heartbeat runs again.
            workers, running = self._short_step_workers()
            now = time.time()
            victim = self.rng.choice(workers)
            group = _group(victim)
            labels = sorted(running[pid] for pid in group if pid in running)
            self.cluster.kill(victim)
            self.cluster.worker(next(self._names), CONCURRENCY)
            rnd.fault_at, rnd.killed_pids = now, tuple(group)
            rnd.fault_note = (
                f"killed {victim.name}'s process group ({len(labels)} steps running"
                + (f": {', '.join(labels)}" if labels else "")
                + ")"
            )
        elif fault == "worker_restart":
            victim = self.rng.choice(self._workers())
            self._warm_shutdown([victim])
            self.cluster.worker(next(self._names), CONCURRENCY)
            rnd.fault_at = now
            rnd.fault_note = f"{victim.name} restarted (warm shutdown), as a deploy does"
        elif fault == "bad_deploy":
            rnd.fault_at = now
            rnd.fault_note = self._bad_deploy(rnd)
        elif fault == "pool_child_kill":
            pids, running = self._busy_children()
            now = time.time()
            pid = self.rng.choice(pids)
            label = running.get(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            rnd.fault_at, rnd.killed_pids = now, (pid,)
            rnd.fault_note = f"killed pool child {pid}" + (f" (running {label})" if label else "")
        elif fault == "redis_loss":
            assert isinstance(self.broker, RedisServer), "redis_loss needs Redis"
            messages = _broker_messages(self.broker.url)
            self.broker.kill()
            time.sleep(1.0)
            self.broker.start()
            rnd.fault_at = now
            rnd.lost_messages = messages
            rnd.fault_note = (
                f"Redis SIGKILLed with {messages} messages queued or unacked, "
                "restarted empty 1 s later"
            )
        elif fault == "rabbitmq_restart":
            assert isinstance(self.broker, RabbitMQServer), "rabbitmq_restart needs RabbitMQ"
            ready = _rabbitmq_ready(self.broker.url, self.config.queue)
            self.broker.kill()
            down = time.time()
            time.sleep(1.0)
            self.broker.start()
            rnd.fault_at = now
            rnd.fault_note = (
                f"RabbitMQ SIGKILLed with {ready} messages ready in the queue, started "
                f"again on its data (accepting connections {time.time() - down:.1f} s later)"
            )
        elif fault == "postgres_restart":
            self.postgres.crash()
            time.sleep(2.0)
            self.postgres.start()
            rnd.fault_at, rnd.fault_note = now, "PostgreSQL immediate shutdown, up 2 s later"
        else:
            raise ValueError(f"unknown fault {fault!r}")

    def _bad_deploy(self, rnd: Round) -> str:
        """Roll out changed code (a workflow that no longer replays its journals, another
        not deployed) for :data:`BAD_DEPLOY_SECONDS`, roll back, and retry what got stuck."""
        store, durable = self.mix.durable.store, self.mix.durable
        # A journal the changed code starts itself would not replay on the real code:
        # let the changed workflow's instance make its first pass first.
        changing = [p.id for p in rnd.planned if p.workflow == "mix.long_steps"]
        wait_for(
            lambda: all(i.version >= 1 for i in retrying(lambda: store.get_many(changing))),
            30,
            "the first pass of the round's mix.long_steps",
        )
        # A rolling deploy: the changed workers come up, then the old ones stop.
        old = self._workers()
        changed = [
            self.cluster.worker(next(self._names), CONCURRENCY, env={"MIX_CHANGED_CODE": "1"})
            for _ in old
        ]
        for worker in changed:
            self.cluster.wait_ready(worker)
        self._warm_shutdown(old, wait=True)
        # A pass on the changed code now (a tick or a step's end would bring one soon).
        for instance_id in changing:
            durable.send_resume(instance_id)
        wait_for(
            lambda: all(
                i.status is Status.STUCK for i in retrying(lambda: store.get_many(changing))
            ),
            30,
            "the changed workflow parked as stuck",
        )
        time.sleep(BAD_DEPLOY_SECONDS)
        # The rollback, rolling too; then every stuck instance is retried.
        fixed = [self.cluster.worker(next(self._names), CONCURRENCY) for _ in changed]
        for worker in fixed:
            self.cluster.wait_ready(worker)
        self._warm_shutdown(changed, wait=True)  # nothing more can get stuck after this
        stuck = [i.id for i in retrying(lambda: store.list(status=Status.STUCK, limit=10_000))]
        for instance_id in stuck:
            retrying(lambda i=instance_id: durable.retry(i))
        rnd.stuck = len(stuck)
        return (
            f"changed code deployed for {BAD_DEPLOY_SECONDS:g} s, then rolled back; "
            f"{len(stuck)} stuck instances retried"
        )

    def _warm_shutdown(self, workers: list[Proc], wait: bool = False) -> None:
        """SIGTERM: Celery's warm shutdown (running tasks finish, the rest go back)."""
        for worker in workers:
            worker.killed = True  # on purpose: not an unexpected exit
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.popen.pid, signal.SIGTERM)
        if wait:
            for worker in workers:
                worker.popen.wait(STOP_TIMEOUT)

    @contextlib.contextmanager
    def _round_setup(self, fault: str, rnd: Round) -> Iterator[None]:
        flag = self.config.duplicate_flag
        if fault == "duplicates":
            flag.touch()
            rnd.fault_at, rnd.fault_note = time.time(), "every message published twice"
        try:
            yield
        finally:
            flag.unlink(missing_ok=True)
            if fault.startswith("crash:"):
                point = fault.split(":", 1)[1]
                (self.config.armed / point).unlink(missing_ok=True)
                fired = _crash_time(self.config.log, point, rnd.started_at)
                if fired is not None:
                    rnd.fault_at, rnd.fault_note = fired, f"a worker process died at {point}"
                else:
                    rnd.fault_note = f"{point} was never reached"

    # ------------------------------------------------------------------ rounds

    def round(self, fault: str) -> Round:
        """Run one round with ``fault``; returns once its workflows ended (or timed out)."""
        self._keep_alive()
        number = len(self.run.rounds) + 1
        rnd = Round(number, fault, time.time(), [])
        self.run.rounds.append(rnd)
        durable = self.mix.durable
        with self._round_setup(fault, rnd):
            plans = plan_round(number, self.rng, fault)
            for planned, args in plans:
                # Starting again with the same id is idempotent (and re-sends the first
                # message), so any failure, of the store or of the broker, is retried.
                retrying(
                    lambda p=planned, a=args: start(durable, p.workflow, a, {}, workflow_id=p.id),
                    errors=(Exception,),
                )
                rnd.planned.append(planned)
            rnd.id_checks = [self._start_again(p) for p in rnd.planned if p.conflicting_args]
            t0 = time.time()
            actions: list[tuple[float, Callable[[], None]]] = []
            for planned in rnd.planned:
                for i, payload in enumerate(planned.signals):
                    at = t0 + self.rng.uniform(0.0, 1.5) + 1.5 * i

                    def send(p: Planned = planned, value: str = payload) -> None:
                        # A store error: not stored, send again. A broker error: stored
                        # already (the store comes first); its wake-up is the store's.
                        with contextlib.suppress(*BROKER_ERRORS):
                            retrying(lambda: durable.signal(p.id, "go", value))

                    actions.append((at, send))
                if planned.cancel_after is not None:

                    def cancel(p: Planned = planned) -> None:
                        with contextlib.suppress(*BROKER_ERRORS):  # as for a signal
                            retrying(lambda: durable.cancel(p.id))

                    actions.append((t0 + planned.cancel_after, cancel))
            if fault not in ("none", "duplicates"):
                actions.append((t0 + self.rng.uniform(0.5, 3.0), lambda: self.inject(fault, rnd)))
            for at, action in sorted(actions, key=lambda pair: pair[0]):
                time.sleep(max(0.0, at - time.time()))
                action()
            rnd.ended_at = self._wait_round(rnd)
        return rnd

    def _start_again(self, planned: Planned) -> IdCheck:
        """Start ``planned`` again under its workflow id: with the same arguments (its
        handle must come back), then with ``conflicting_args`` (``WorkflowIdConflict``
        must be raised; the verdict checks that nothing was stored)."""
        durable = self.mix.durable

        def again(args: tuple[Any, ...]) -> str | WorkflowIdConflict:
            try:
                return start(durable, planned.workflow, args, {}, workflow_id=planned.id).id
            except WorkflowIdConflict as conflict:
                return conflict

        errors: tuple[type[BaseException], ...] = (StoreError, *BROKER_ERRORS)
        same = retrying(lambda: again(planned.args), errors=errors)
        assert planned.conflicting_args is not None
        other = retrying(lambda: again(planned.conflicting_args or ()), errors=errors)
        return IdCheck(
            planned.id,
            same_args=same if isinstance(same, str) else f"raised {same!r}",
            other_args="refused"
            if isinstance(other, WorkflowIdConflict)
            else f"returned the handle of {other!r}",
        )

    def _wait_round(self, rnd: Round) -> float | None:
        """Wait until every workflow of the round (and its children) ended."""
        store = self.mix.durable.store
        ids = [p.id for p in rnd.planned]
        deadline = rnd.started_at + ROUND_TIMEOUT
        while time.time() < deadline:
            try:
                instances = store.get_many(ids)
                children = [
                    i for i in store.list(limit=10_000) if i.parent_id in ids and i.id not in ids
                ]
            except StoreError:
                time.sleep(0.2)
                continue
            everything = instances + children
            if len(instances) == len(ids) and all(i.status.is_terminal for i in everything):
                return max(i.updated_at.timestamp() for i in everything)
            time.sleep(0.2)
            self._keep_alive()
        return None

    def close(self) -> None:
        try:
            self.cluster.stop_all()
        finally:
            self.run.logs = self.cluster.logs(tail=60)
            self.mix.durable.store.close()
            self.mix.app.close()


def _group(worker: Proc) -> list[int]:
    """A worker's main process, then its pool children."""
    pids = [worker.popen.pid]
    children = []
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(worker.popen.pid).children()
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:  # a dead child not reaped yet
                pids.append(child.pid)
    return pids


def _running(log: Path) -> dict[int, str]:
    """The label of the mix step each process has started and not ended, per the run log
    (a process runs one step at a time; a dead one may stay listed)."""
    running: dict[str, tuple[int, str]] = {}
    if not log.exists():
        return {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue
        label, key, event, pid, _at = parts
        if event == "start":
            running[f"{key} {pid}"] = (int(pid), label)
        elif event in ("end", "raise"):
            running.pop(f"{key} {pid}", None)
    return dict(running.values())


def _broker_messages(url: str) -> int:
    """Messages Redis holds right now: every queue's list, plus the unacked hash."""
    client = redis_client.Redis.from_url(url)
    try:
        queued = sum(
            client.llen(key) for key in client.scan_iter(count=1000) if client.type(key) == b"list"
        )
        return int(queued) + int(client.hlen("unacked"))
    except redis_client.RedisError:
        return 0
    finally:
        client.close()


def _rabbitmq_ready(url: str, queue: str) -> int | str:
    """Messages ready in ``queue`` (a passive declare; unacked ones are not counted)."""
    from kombu.connection import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:  # type: ignore[no-untyped-call]
            _name, ready, _consumers = conn.default_channel.queue_declare(queue, passive=True)
            return int(ready)
    except Exception as exc:  # a count for the report only
        return f"? ({type(exc).__name__})"


def _crash_time(log: Path, point: str, since: float) -> float | None:
    if not log.exists():
        return None
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "fault" and parts[1] == point:
            at = float(parts[4])
            if at >= since:
                return at
    return None


def run_soak(
    root: Path,
    broker: Broker,
    postgres: PostgresServer,
    store_url: str,
    faults_to_inject: Callable[[int], str | None],
    *,
    seed: int = 0,
    generic_store: bool = False,
    quorum: bool = False,
) -> SoakRun:
    """Run rounds while ``faults_to_inject(round_number)`` names a fault (``None``: stop)."""
    soak = Soak(
        root, broker, postgres, store_url, seed=seed, generic_store=generic_store, quorum=quorum
    )
    soak.run.started = time.time()
    try:
        soak.start_cluster()
        number = 1
        while (fault := faults_to_inject(number)) is not None:
            soak.round(fault)
            number += 1
    finally:
        soak.run.finished = time.time()
        soak.close()
    return soak.run
