"""The dspy-actors command, end to end in subprocesses."""

from __future__ import annotations

import io
import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest

from dspy_actors._demo import DemoOptions, run_demo

CLI = [sys.executable, "-m", "dspy_actors.cli"]


def _run(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    # Bytes, decoded by hand: text mode would turn the progress bar's "\r" into newlines.
    raw = subprocess.run([*CLI, *args], capture_output=True, timeout=timeout, check=False)
    return subprocess.CompletedProcess(
        raw.args, raw.returncode, raw.stdout.decode(), raw.stderr.decode()
    )


def test_the_script_is_declared() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("dspy-actors") == "dspy_actors.cli:main"


def test_demo_answers_under_chaos_and_prints_tree_and_summary() -> None:
    result = _run("demo", "--questions", "60", "--concurrency", "8", "--kill-every", "0.1")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    # Not a terminal: plain lines for a log, no carriage returns, no colour codes.
    assert "\r" not in out
    assert "\x1b[" not in out
    # It says what it runs and what to watch, before running it.
    intro = out[: out.index("progress ")]
    for label in ("Program", "retrieve", "ChainOfThought", "LM", "Chaos", "What to watch"):
        assert label in intro
    assert "progress 60/60: answered" in out
    samples = out[out.index("A few of the questions") :]
    assert "question: What is 0 + 0" in samples
    assert "answer: 0" in samples  # the simulated LM does arithmetic right
    assert "modules (supervisor" in out
    assert "qa@v1 (supervisor" in out
    summary = out[out.index("Summary") :]
    for label in ("answered", "failed", "actors killed", "restarts", "LM retries", "p50", "p99"):
        assert label in summary
    answered = int(summary.split("answered")[1].split()[0])
    assert answered >= 1
    assert "In short: " in summary


def test_demo_refuses_bad_arguments() -> None:
    result = _run("demo", "--questions", "0")
    assert result.returncode == 2
    assert "must be >= 1" in result.stderr


def test_tree_prints_the_demo_apps_tree() -> None:
    result = _run("tree")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("(supervisor") >= 5
    assert "demo (supervisor, one_for_one) running" in result.stdout


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps({"rules": [{"fault": {"type": "server_error", "status": 503}, "times": 1}]})
    )
    process = subprocess.Popen(
        [*CLI, "sim-lm", "--faults", str(plan)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    reader = threading.Thread(
        target=lambda: lines.put(process.stdout.readline() if process.stdout else ""),
        name="sim-cli-reader",
    )
    reader.start()
    try:
        url = lines.get(timeout=30.0).strip()
        yield process, url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10.0)
        reader.join(5.0)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_sim_lm_serves_with_its_fault_plan(
    sim_process: tuple[subprocess.Popen[str], str],
) -> None:
    _process, url = sim_process
    assert url.startswith("http://127.0.0.1:")
    body = {"model": "m", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    with httpx.Client(timeout=10.0) as client:
        first = client.post(f"{url}/v1/chat/completions", json=body)
        second = client.post(f"{url}/v1/chat/completions", json=body)
    assert first.status_code == 503  # the plan's one fault
    assert second.status_code == 200
    assert second.json()["choices"][0]["message"]["content"]


def test_demo_on_a_provider_given_by_lm_and_api_base(
    sim_process: tuple[subprocess.Popen[str], str],
) -> None:
    """The --lm path, against the simulated server run as a separate process."""
    _process, url = sim_process
    result = _run(
        "demo",
        "--lm",
        "openai/sim-model",
        "--api-base",
        f"{url}/v1",
        "--questions",
        "20",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r[" not in result.stdout
    assert "none injected (a real provider)" in result.stdout
    summary = result.stdout[result.stdout.index("Summary") :]
    answered = int(summary.split("answered")[1].split()[0])
    failed = int(summary.split("failed")[1].split()[0])
    assert answered >= 1
    assert answered + failed == 20


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, as a person's would."""

    def isatty(self) -> bool:
        return True


def test_demo_on_a_terminal_draws_panels_a_live_bar_and_tables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TERM", raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    out = _Terminal()
    result = run_demo(DemoOptions(questions=20, concurrency=4, kill_every_s=0.1), out=out)
    text = out.getvalue()
    assert result.answered + result.failed == 20
    assert "╭─ dspy-actors demo" in text  # the intro panel
    assert "What to watch" in text
    assert "━" in text  # the progress bar
    assert "┏" in text  # the sample table's frame
    assert "What is 0 + 0" in text
    assert "Summary" in text
    assert "In short: " in text
