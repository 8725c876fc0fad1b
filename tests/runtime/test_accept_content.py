"""``durable_accept_content``: a journal row never chooses its own decoder.

A row whose serializer column says ``pickle`` in a JSON-only app is refused with
``SerializationError`` and never unpickled; an app that chose pickle still runs end to end
on a real worker.
"""

from __future__ import annotations

import base64
import pickle
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_durable import ConfigurationError, Durable, SerializationError, Status
from celery_durable.engine.context import WorkflowContext
from celery_durable.engine.journal import Event, Instance, Kind, State
from celery_durable.runtime.codec import KombuCodec
from celery_durable.runtime.settings import Settings
from celery_durable.stores.base import Commit
from runtime.waiting import wait_for, waiting_on

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


class Armed:
    """Unpickling it writes ``path``: proof that pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.write_text, (self.path, "unpickled"))


@dataclass(frozen=True)
class Money:
    """A value JSON cannot carry and pickle can."""

    currency: str
    cents: int


def conf(**values: object) -> object:
    app = Celery("settings", set_as_current=False)
    app.conf.update({f"durable_{name}": value for name, value in values.items()})
    return app.conf


def test_accept_content_defaults_to_the_serializer_and_json() -> None:
    assert Settings.from_conf(conf()).accept_content == ("json",)
    assert Settings.from_conf(conf(serializer="pickle")).accept_content == ("pickle", "json")


def test_accept_content_takes_names_and_content_types() -> None:
    settings = Settings.from_conf(
        conf(serializer="pickle", accept_content=["application/x-python-serialize", "json"])
    )
    assert settings.accept_content == ("application/x-python-serialize", "json")
    assert Settings.from_conf(conf(accept_content="json, pickle")).accept_content == (
        "json",
        "pickle",
    )


def test_accept_content_must_hold_the_serializer_and_known_names() -> None:
    with pytest.raises(ConfigurationError, match="durable_serializer 'pickle' is not in"):
        Settings.from_conf(conf(serializer="pickle", accept_content=["json"]))
    with pytest.raises(ConfigurationError, match="'nope' is not a registered kombu serializer"):
        Settings.from_conf(conf(accept_content=["json", "nope"]))
    with pytest.raises(ConfigurationError, match="must be a list of serializer names"):
        Settings.from_conf(conf(accept_content=[1]))


def test_a_pickle_row_in_a_json_app_is_refused_and_never_unpickled(
    durable: Durable, tmp_path: Path
) -> None:
    # The payload is armed: decoding it with pickle writes a file.
    control = tmp_path / "control"
    KombuCodec("pickle").loads(base64.b64encode(pickle.dumps(Armed(control))).decode())
    assert control.read_text() == "unpickled"

    marker = tmp_path / "marker"
    armed = base64.b64encode(pickle.dumps(Armed(marker))).decode("ascii")
    instance, created = durable.store.create(
        Instance("evil", "evil.flow", Status.PENDING, armed, "pickle", T0, T0)
    )
    assert created
    event = Event(0, Kind.STEP, "evil.step", armed, State.COMPLETED, T0, output=armed)
    assert durable.store.commit(
        Commit(
            "evil",
            instance.version,
            Status.COMPLETED,
            T0,
            output=armed,
            new_events=[event],
            custom_status=armed,
        )
    )
    durable.store.send_signal("evil", "poke", armed, T0, T0)

    handle = durable.handle("evil")
    refused = "'pickle' serializer are not accepted.*add 'pickle' to app.conf.durable_accept"
    for read in (handle.result, handle.status, handle.history):
        with pytest.raises(SerializationError, match=refused):
            read()
    # A listing shows the row (one foreign row must not hide every other), undecoded.
    (listed,) = durable.list()
    assert (listed.id, listed.args, listed.kwargs, listed.result) == ("evil", (), {}, None)
    assert listed.note is not None
    assert "not decoded" in listed.note
    assert "not accepted" in listed.note
    with pytest.raises(SerializationError, match="not accepted"):
        durable.codec("pickle")
    assert not marker.exists()


def test_an_app_that_chose_pickle_runs_end_to_end(app: Celery, worker: Any) -> None:
    app.conf.update(
        task_serializer="pickle",
        accept_content=["pickle", "json"],
        durable_serializer="pickle",
        durable_accept_content=["application/x-python-serialize", "json"],
    )
    durable = Durable(app)

    @durable.step
    def price(item: str) -> Money:
        return Money("EUR", len(item) * 100)

    @durable.workflow
    async def order(ctx: WorkflowContext, item: str) -> Money:
        first = await ctx.step(price, item)
        ctx.set_status(first)
        extra: Money = await ctx.wait_signal("extra")
        return Money(first.currency, first.cents + extra.cents)

    try:
        with worker():
            handle = order.delay("book")
            wait_for(lambda: waiting_on(handle, "signal"))
            assert handle.status().custom == Money("EUR", 400)
            handle.signal("extra", Money("EUR", 5))
            assert handle.result(timeout=30) == Money("EUR", 405)
        instance = durable.store.get(handle.id)
        assert instance is not None
        assert instance.serializer == "pickle"
        step, wait = handle.history()
        assert (step.args, step.result, wait.result) == (
            ("book",),
            Money("EUR", 400),
            Money("EUR", 5),
        )
        (info,) = durable.list()
        assert (info.args, info.result, info.custom) == (
            ("book",),
            Money("EUR", 405),
            Money("EUR", 400),
        )
    finally:
        durable.store.close()


def test_a_resumed_pickle_row_in_a_json_app_parks_without_unpickling(
    durable: Durable, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    armed = base64.b64encode(pickle.dumps(Armed(marker))).decode("ascii")

    @durable.workflow(name="evil.flow")
    async def flow(ctx: WorkflowContext) -> None:
        return None

    durable.store.create(Instance("evil-2", "evil.flow", Status.PENDING, armed, "pickle", T0, T0))
    durable.advance("evil-2")  # what the resume task does

    instance = durable.store.get("evil-2")
    assert instance is not None
    assert instance.status is Status.STUCK
    assert instance.failure is not None
    assert instance.failure.type == "SerializationError"
    assert "durable_accept_content" in instance.failure.message
    assert not marker.exists()
