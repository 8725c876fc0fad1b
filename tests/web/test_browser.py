"""The console in a real headless Chromium (Playwright driving Debian's ``chromium``):
open the list, filter it, open a saga that rolled back and see its compensation, send a
signal from the form and watch the workflow complete, cancel one, retry a stuck one
after its fix. Set ``DURABLE_CONSOLE_SCREENSHOT=docs/console.png`` to save the workflow
page's screenshot for the README.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from celery_durable import Durable
from web.helpers import wait_status, wait_waiting
from web.workflows import Workflows

CHROMIUM = os.environ.get("DURABLE_CHROMIUM", "/usr/bin/chromium")
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium for the module (Debian's package: nothing is downloaded)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"cannot run the browser tests: no Chromium at {CHROMIUM}; install it "
            "(apt-get install chromium, or run scripts/install-servers.sh) or set "
            "DURABLE_CHROMIUM",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, console: str) -> Iterator[Page]:
    """A fresh page on the console that accepts the confirmation dialogs."""
    context = browser.new_context(base_url=console, viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.on("dialog", lambda dialog: dialog.accept())
    yield tab
    context.close()


def test_list_filter_and_a_rolled_back_saga(
    durable: Durable, workflows: Workflows, worker: Any, page: Page, tmp_path: Path
) -> None:
    assert workflows.quick.apply_async((1,), workflow_id="quick-1").result(timeout=30) == 2
    workflows.transfer.apply_async(("alice", "nobody", 5), workflow_id="transfer-1")
    workflows.approval.apply_async(("laptop",), workflow_id="approval-1")
    wait_status(durable, "transfer-1", "failed")
    wait_waiting(durable, "approval-1", "signal")

    page.goto("/")
    rows = page.locator("#workflows tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator('tr[data-id="approval-1"] td.waiting')).to_contain_text("approve")
    expect(page.locator('.count[data-status="failed"] b')).to_have_text("1")

    page.locator('.filters input[name=status][value="failed"]').check()
    page.click("#apply-filters")
    expect(page).to_have_url(re.compile(r"/\?status=failed&"))
    expect(rows).to_have_count(1)
    page.click('tr[data-id="transfer-1"] a.wf-link')

    expect(page.locator("#wf-status")).to_have_text("failed")
    expect(page.locator("#wf-error")).to_contain_text("TransferFailed")
    compensation = page.locator("#timeline tr.compensation")
    expect(compensation).to_have_count(1)
    expect(compensation).to_contain_text("refund")
    expect(compensation.locator(".comp-badge")).to_have_text("↩ compensation of #1")
    expect(page.locator('#timeline tr[data-seq="1"]')).to_contain_text("2 attempts")
    expect(page.locator("#timeline .seg.queue").first).to_be_visible()

    shot = tmp_path / "console.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    target = os.environ.get("DURABLE_CONSOLE_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def test_signal_from_the_form_completes_the_workflow(
    durable: Durable, workflows: Workflows, worker: Any, page: Page
) -> None:
    handle = workflows.approval.apply_async(("desk",), workflow_id="approval-2")
    wait_waiting(durable, "approval-2", "signal")
    page.goto("/workflows/approval-2")
    expect(page.locator("#wf-status")).to_have_text("running")
    expect(page.locator("#waiting-at")).to_contain_text("approval")
    page.fill("#signal-name", "approve")
    page.fill("#signal-payload", '{"by": "alice"}')
    page.click("#send-signal")
    expect(page.locator(".flash")).to_contain_text("signal 'approve' sent")
    # The page refreshes itself until the workflow ends.
    expect(page.locator("#wf-status")).to_have_text("completed", timeout=WAIT_MS)
    expect(page.locator("#wf-result")).to_contain_text('"by": "alice"')
    assert handle.result(timeout=5) == {"item": "desk", "decision": {"by": "alice"}}


def test_a_bad_payload_is_refused_and_nothing_sent(
    durable: Durable, workflows: Workflows, worker: Any, page: Page
) -> None:
    workflows.approval.apply_async(("chair",), workflow_id="approval-3")
    wait_waiting(durable, "approval-3", "signal")
    page.goto("/workflows/approval-3")
    page.fill("#signal-name", "approve")
    page.fill("#signal-payload", "{not json")
    page.click("#send-signal")
    expect(page.locator("#error-message")).to_contain_text("not valid JSON")
    assert durable.store.signals("approval-3") == []


def test_cancel_from_the_page(
    durable: Durable, workflows: Workflows, worker: Any, page: Page
) -> None:
    workflows.sleeper.apply_async((), workflow_id="sleeper-1")
    wait_waiting(durable, "sleeper-1", "timer")
    page.goto("/workflows/sleeper-1")
    expect(page.locator("#timeline")).to_contain_text("sleep")
    page.click("#cancel-button")
    expect(page.locator(".flash")).to_contain_text("cancellation requested")
    expect(page.locator("#wf-status")).to_have_text("cancelled", timeout=WAIT_MS)


def test_retry_a_stuck_workflow_after_its_fix(
    durable: Durable, workflows: Workflows, worker: Any, page: Page
) -> None:
    workflows.buggy.apply_async((4,), workflow_id="buggy-1")
    wait_status(durable, "buggy-1", "stuck")
    page.goto("/?status=stuck")
    expect(page.locator('tr[data-id="buggy-1"]')).to_be_visible()
    page.click('tr[data-id="buggy-1"] a.wf-link')
    expect(page.locator("#wf-status")).to_have_text("stuck")
    expect(page.locator("#wf-error")).to_contain_text("RuntimeError")
    workflows.broken["yes"] = False  # the fix is deployed
    page.click("#retry-button")
    expect(page.locator(".flash")).to_contain_text("resumed")
    expect(page.locator("#wf-status")).to_have_text("completed", timeout=WAIT_MS)
