"""The ``celery_durable`` pytest plugin (entry point ``pytest11``): durable workflows
tested with no broker, no database server and no Docker.

Installed with the package; pytest loads it by itself. Say which runtime to test, in
the pytest configuration::

    [tool.pytest.ini_options]
    durable_app = "myproj.tasks:durable"     # a Durable, or the Celery app it serves

or by overriding the ``durable_app`` fixture (in ``conftest.py``). Then a test asks for
``durable_env``, a running :class:`~celery_durable.testing.DurableTestEnv`::

    def test_transfer(durable_env):
        handle = transfer.delay("alice", "bob", 30)
        assert handle.result() == ...
        assert handle.steps() == ["withdraw", "deposit"]

A test that uses neither fixture costs nothing: the environment's modules are imported
by the fixture, not here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable
    from celery_durable.testing.env import DurableTestEnv

INI_OPTION = "durable_app"

HOW_TO_CONFIGURE = (
    "the durable_env fixture needs to know which Durable to test. Either set the ini "
    'option durable_app = "yourpackage.module:durable" (a Durable, or the Celery app it '
    "was created for) in your pytest configuration ([tool.pytest.ini_options] in "
    "pyproject.toml, or pytest.ini), or override the durable_app fixture in conftest.py "
    "(@pytest.fixture def durable_app(): return durable)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``durable_app`` ini option."""
    parser.addini(
        INI_OPTION,
        help="the Durable (or Celery app) the durable_env fixture tests, as 'module:attribute'",
        default="",
    )


def load_durable(spec: str) -> Durable:
    """The :class:`~celery_durable.Durable` named by ``"package.module:attribute"`` (a
    Durable or a Celery app that has one). With no ``:attribute``, the module's only
    Durable, else its Celery app.

    Raises:
        pytest.UsageError: the name does not lead to a Durable; the message says why.
    """
    from celery import Celery

    from celery_durable.errors import ConfigurationError
    from celery_durable.runtime.durable import Durable, runtime_of

    module_name, _, attribute = spec.strip().partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise pytest.UsageError(
            f"{INI_OPTION} = {spec!r}: cannot import {module_name!r} ({exc}); is it on "
            "sys.path (pytest's pythonpath option)?"
        ) from exc
    if attribute:
        try:
            found: Any = module
            for part in attribute.split("."):
                found = getattr(found, part)
        except AttributeError:
            raise pytest.UsageError(
                f"{INI_OPTION} = {spec!r}: module {module_name!r} has no {attribute!r}"
            ) from None
    else:
        values = list(vars(module).values())
        runtimes = [v for v in values if isinstance(v, Durable)]
        apps = [v for v in values if isinstance(v, Celery)]
        candidates = runtimes or apps
        if len(candidates) != 1:
            raise pytest.UsageError(
                f"{INI_OPTION} = {spec!r}: name the attribute ('{module_name}:durable'); "
                f"the module has {len(runtimes)} Durable and {len(apps)} Celery objects"
            )
        found = candidates[0]
    if isinstance(found, Durable):
        return found
    if isinstance(found, Celery):
        try:
            return runtime_of(found)
        except ConfigurationError as exc:
            raise pytest.UsageError(f"{INI_OPTION} = {spec!r}: {exc}") from None
    raise pytest.UsageError(
        f"{INI_OPTION} = {spec!r} is a {type(found).__name__}, not a Durable or a Celery app"
    )


@pytest.fixture
def durable_app(request: pytest.FixtureRequest) -> Durable:
    """The runtime the ``durable_env`` fixture tests: from the ``durable_app`` ini
    option. Override this fixture to choose it in code instead."""
    spec = str(request.config.getini(INI_OPTION) or "")
    if not spec.strip():
        pytest.fail(HOW_TO_CONFIGURE, pytrace=False)
    try:
        return load_durable(spec)
    except pytest.UsageError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def durable_env(durable_app: Any) -> Iterator[DurableTestEnv]:
    """A running :class:`~celery_durable.testing.DurableTestEnv` for ``durable_app``,
    new for each test (an empty in-memory journal, a fresh clock), stopped after it."""
    from celery_durable.testing.env import DurableTestEnv

    with DurableTestEnv(durable_app) as env:
        yield env
