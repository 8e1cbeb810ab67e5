"""The console in a real headless Chromium (the OS's package, driven by Playwright): the
page renders the tree, a crash shows up live, a dead letter is replayed from the page."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

import dspy_actors as dsa
import supervisors
from dspy_actors.console import Console
from dspy_actors.runtime._errors import DeadLettered
from tests.console.conftest import Fragile

CHROMIUM = os.environ.get("DSPY_ACTORS_CHROMIUM", "/usr/bin/chromium")
# Root in a container: no sandbox; no network, so nothing in the background reaches out.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Waits on the page: generous for a loaded 2-core machine, never a sleep.
WAIT_MS = 30_000

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (.ci/run installs it)"
)


@pytest.fixture
def page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="console-chromium-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = context.new_page()
                page.set_default_timeout(WAIT_MS)
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _open(page: Any, console: Console) -> None:
    page.goto(console.url)
    assert page.url == console.base_url + "/"  # the token left the address bar
    page.wait_for_selector("body[data-ready='1']")


def test_the_page_renders_the_tree(app: Any, console: Console, page: Any) -> None:
    app.serve("qa", dsa.Predict("question -> answer"))
    _open(page, console)
    tree = page.locator("#tree-root")
    for node in (app.name, "events", "qa@v1", "router"):
        assert tree.get_by_text(node, exact=False).first.is_visible()
    assert page.locator("#status").inner_text() == "live"


def test_a_crash_shows_up_live(app: Any, console: Console, page: Any) -> None:
    app.serve("qa", dsa.Predict("question -> answer"))
    _open(page, console)
    supervisors.kill(app.registry.lookup(f"{app.name}/qa@v1/"))
    crash = page.locator("#activity li.activity-crash", has_text="qa@v1")
    crash.first.wait_for()
    assert "killed" in crash.first.inner_text()
    page.locator("#tree-root .node", has_text="restarts=1").first.wait_for()


def test_a_dead_letter_is_replayed_from_the_page(app: Any, console: Console, page: Any) -> None:
    Fragile.broken.add("poison")
    svc = app.serve("svc", Fragile(), idempotent=True)
    try:
        with pytest.raises(DeadLettered):
            svc.call(question="poison")
    finally:
        Fragile.broken.clear()  # fixed: the replay will be answered
    (letter,) = app.dead_letters()
    _open(page, console)
    page.locator(f"[data-inspect='{letter.id}']").click()
    page.locator("#letter pre.traceback", has_text="cannot digest").wait_for()
    page.fill("#operator", "bob")
    page.locator(f"[data-replay='{letter.id}']").click()
    result = page.locator("#action-result")
    result.wait_for()
    assert "bob" in result.inner_text()
    assert "replay" in result.inner_text()
    assert "fixed: poison" in result.inner_text()
    page.locator("#no-dead-letters").wait_for()  # the list was pushed again, empty
    assert app.dead_letters() == []
    page.locator("#activity li.activity-action", has_text="bob").first.wait_for()
