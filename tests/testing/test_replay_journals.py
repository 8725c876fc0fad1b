"""celery_durable.testing.replay: exported journals replayed against changed code.

A real run under the testing kit writes the journal; it is exported as
``durable export`` writes it; then versions of the workflow's code replay it: the same
code and a patched one pass, a reordered one and one that raises are caught with the seq
and the steps named. Nothing runs: a step or ``ctx.run`` reached past the journal's end
is not called.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_durable import Durable, NonDeterminismError, WorkflowContext, WorkflowStuck
from celery_durable.runtime.deploys import export_journal, export_path
from celery_durable.testing import DurableTestEnv, replay

app = Celery("replayapp", broker="memory://", set_as_current=False)
durable = Durable(app)
calls: list[str] = []


@durable.step
def pack(order: str) -> str:
    calls.append(f"pack {order}")
    return f"packed {order}"


@durable.step
def ship(order: str) -> str:
    calls.append(f"ship {order}")
    return f"shipped {order}"


@durable.workflow(name="orders.deliver")
async def deliver(ctx: WorkflowContext, order: str) -> str:
    await ctx.step(pack, order)
    await ctx.sleep(3600)
    return str(await ctx.step(ship, order))


def _other_code(body: Any) -> Any:
    """``body`` registered as ``orders.deliver`` in an app of its own (another deploy)."""
    other = Durable(Celery("replayapp2", broker="memory://", set_as_current=False))
    other.step(name=pack.name)(lambda order: order)
    other.step(name=ship.name)(lambda order: order)
    return other.workflow(name="orders.deliver")(body)


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("journals")
    with DurableTestEnv(durable) as env:
        handle = deliver.delay("o-1")
        assert handle.result(timeout=30) == "shipped o-1"
        loaded = env.durable.store.load(handle.id)
        assert loaded is not None
        path = export_path(folder, handle.id)
        path.write_text(json.dumps(export_journal(*loaded)))
    (folder / "other.json").write_text(
        json.dumps(
            export_journal(loaded[0].__class__(**{**loaded[0].__dict__, "workflow": "x"}), [])
        )
    )
    return path


def test_the_same_code_replays(journal: Path) -> None:
    calls.clear()
    checks = replay(deliver, journal)
    assert [c.verdict for c in checks] == ["OK"]
    assert checks[0].replayed == 3
    assert calls == []


def test_a_folder_replays_the_workflows_journals_only(journal: Path) -> None:
    assert len(replay(deliver, journal.parent)) == 1


def test_a_patched_change_replays(journal: Path) -> None:
    async def patched(ctx: WorkflowContext, order: str) -> str:
        await ctx.step(pack.name, order)
        if ctx.patched("insure"):
            await ctx.step("orders.insure", order)
        await ctx.sleep(3600)
        return str(await ctx.step(ship.name, order))

    checks = replay(_other_code(patched), journal)
    assert checks[0].patches == (("insure", "old"),)


def test_a_reordered_change_is_caught_naming_seq_and_steps(journal: Path) -> None:
    async def reordered(ctx: WorkflowContext, order: str) -> str:
        await ctx.step(pack.name, order)
        await ctx.step(ship.name, order)
        await ctx.sleep(3600)
        return "x"

    with pytest.raises(NonDeterminismError) as caught:
        replay(_other_code(reordered), journal)
    assert caught.value.seq == 1
    assert caught.value.journaled == "timer 'sleep'"
    assert caught.value.asked == f"step {ship.name!r}"
    assert str(journal) in str(caught.value)


def test_code_that_raises_would_park(journal: Path) -> None:
    async def broken(ctx: WorkflowContext, order: str) -> str:
        await ctx.step(pack.name, order)
        await ctx.sleep(3600)
        await ctx.step(ship.name, order)
        raise RuntimeError("forgot something")

    with pytest.raises(WorkflowStuck) as caught:
        replay(_other_code(broken), journal)
    assert caught.value.type == "RuntimeError"
    assert "forgot something" in caught.value.message


def test_bad_use(journal: Path, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"@durable\.workflow object"):
        replay(deliver.fn, journal)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"holds no journal of workflow 'orders\.deliver'"):
        replay(deliver, tmp_path)
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ValueError, match="not a journal exported by"):
        replay(deliver, tmp_path / "junk.json")
