"""``dspy-actors demo --console`` and ``dspy-actors console``: the console is up while the
chaos demo runs, and shows its restarts."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from typing import Any

import httpx

from dspy_actors._demo import DemoOptions, run_demo

CLI = [sys.executable, "-m", "dspy_actors.cli"]


def test_the_demo_keeps_its_console_open_and_shows_the_chaos() -> None:
    seen: dict[str, Any] = {}

    def hold(console: Any) -> None:  # called after the batch, the app still running
        with httpx.Client(
            base_url=console.base_url,
            headers={"Authorization": f"Bearer {console.token}"},
            timeout=30.0,
        ) as client:
            seen["state"] = client.get("/api/state").json()

    out = io.StringIO()
    result = run_demo(
        DemoOptions(
            questions=40,
            concurrency=8,
            kill_every_s=0.05,
            show_progress=False,
            console_port=0,
            hold=hold,
        ),
        out=out,
    )
    assert result.answered > 0
    assert re.search(r"dspy-actors console: http://127\.0\.0\.1:\d+/\?token=\S+", out.getvalue())
    state = seen["state"]
    (program,) = state["programs"]
    assert program["name"] == "qa"
    assert program["calls"] >= 40
    assert result.kills >= 1  # the chaos monkey ran while the console was up
    restarts = [e for e in state["activity"] if e["kind"] == "restart"]
    assert restarts
    assert "qa@v1" in str(state["tree"])


def test_the_console_command_prints_its_url_and_stops() -> None:
    raw = subprocess.run(
        [*CLI, "console", "--questions", "20", "--hold", "0"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    out = raw.stdout.decode()
    assert raw.returncode == 0, raw.stderr.decode()[-3000:]
    assert re.search(r"dspy-actors console: http://127\.0\.0\.1:\d+/\?token=", out)
    assert "console still open at" in out
