"""The pytest plugin, used from a separate project as a user uses it: its own Celery app
and workflow, the ``durable_env`` fixture, configured by the ``durable_app`` ini option
(or an overridden fixture)."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

TASKS = """
from datetime import timedelta

from celery import Celery
from celery_durable import Durable, StepFailed

app = Celery("orders", broker="redis://127.0.0.1:1/0")  # no Redis: the kit needs none
durable = Durable(app)


class OutOfStock(Exception):
    pass


@durable.step(autoretry_for=(ConnectionError,), retry_backoff=30, max_retries=5)
def charge(order: str, amount: int) -> str:
    return f"charged {order} {amount}"


@durable.step
def ship(order: str) -> str:
    return f"shipped {order}"


@durable.step
def refund(order: str) -> None:
    pass


@durable.workflow
async def order(ctx, order_id: str, amount: int) -> str:
    await ctx.step(charge, order_id, amount)
    await ctx.sleep(timedelta(days=7))  # the cooling-off week
    try:
        return await ctx.step(ship, order_id)
    except StepFailed:
        await ctx.step(refund, order_id)
        raise
"""

TESTS = """
import pytest
from celery_durable import WorkflowFailed

from orders import charge, order, ship


def test_an_order_ships_after_a_week(durable_env):
    handle = order.delay("o-1", 30)
    durable_env.sleep(days=6)
    assert handle.steps() == ["charge"]
    assert handle.result() == "shipped o-1"
    assert handle.steps() == ["charge", "ship"]


def test_a_flaky_card_network_is_retried(durable_env):
    flaky = durable_env.mock_step(charge, raises=ConnectionError, fail_times=3, returns="ok")
    assert order.delay("o-2", 10).result(timeout=10) == "shipped o-2"
    assert [call.attempt for call in flaky.calls] == [1, 2, 3, 4]


def test_a_failed_shipment_is_refunded(durable_env):
    durable_env.mock_step(ship, raises=RuntimeError("no stock"))
    handle = order.delay("o-3", 10)
    with pytest.raises(WorkflowFailed, match="no stock"):
        handle.result()
    assert handle.steps() == ["charge", "ship", "refund"]
"""


def _project(pytester: pytest.Pytester, ini: str) -> None:
    pytester.makepyfile(orders=TASKS, test_orders=TESTS)
    pytester.makepyprojecttoml(
        textwrap.dedent(
            f"""
            [tool.pytest.ini_options]
            pythonpath = ["."]
            filterwarnings = ["error"]
            {ini}
            """
        )
    )


@pytest.mark.parametrize("spec", ["orders:durable", "orders:app", "orders"])
def test_a_project_tests_its_workflows_with_durable_env(
    pytester: pytest.Pytester, spec: str
) -> None:
    _project(pytester, f'durable_app = "{spec}"')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_the_durable_app_fixture_can_be_overridden(pytester: pytest.Pytester) -> None:
    _project(pytester, "")
    pytester.makeconftest(
        """
        import pytest
        from orders import durable

        @pytest.fixture
        def durable_app():
            return durable
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_without_configuration_the_error_says_both_ways(pytester: pytest.Pytester) -> None:
    _project(pytester, "")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "week")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*durable_app = *yourpackage.module:durable*override the durable_app fixture*"]
    )


def test_a_wrong_name_is_a_clear_error(pytester: pytest.Pytester) -> None:
    _project(pytester, 'durable_app = "orders:nothing"')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "week")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*module 'orders' has no 'nothing'*"])


def test_the_plugin_is_registered_and_costs_nothing_unused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        import threading

        def test_plain(request):
            assert request.config.pluginmanager.has_plugin("celery_durable")
            # No worker, no tick, no broker connection: nothing runs for a test that
            # does not ask for durable_env.
            assert [t.name for t in threading.enumerate()] == ["MainThread"]
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
