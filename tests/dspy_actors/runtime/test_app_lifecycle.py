"""An app's own lifecycle: stop() reports the exit before it returns, and an app the host
forgot to stop is stopped, in order, when the interpreter exits."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import supervisors
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.runtime.conftest import StartApp


def test_stop_returns_after_on_exit_has_run(start_app: StartApp) -> None:
    reported: list[str] = []

    def slow_on_exit(reason: supervisors.ExitReason) -> None:
        time.sleep(0.2)  # longer than the root takes to finish stopping
        reported.append(reason.kind)

    app = start_app(on_exit=slow_on_exit)
    app.stop()
    assert reported == ["shutdown"]


def test_an_app_left_running_is_stopped_at_interpreter_exit(sim: SimLM, tmp_path: Path) -> None:
    script = f"""
import dspy_actors as dsa
lm = dsa.LM("openai/sim-model", api_base={sim.openai_base!r}, api_key="k", cache=False)
app = dsa.start(lm=lm, data_dir={str(tmp_path)!r}, lm_max_in_flight=2, lm_processes=1,
                on_exit=lambda reason: print("exited:", reason.kind, flush=True))
qa = app.serve("qa", dsa.Predict("question -> answer"))
print("answer:", qa.call(question="hi").answer, flush=True)
workers = app.root.supervisor("lm").supervisor("workers").which_children()
print("worker:", workers[0].ref.proxy().describe().get(timeout=10)["pid"], flush=True)
# No app.stop(): the interpreter exits here.
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("answer: ")
    assert lines[-1] == "exited: shutdown", done.stdout
    worker = int(lines[1].split()[1])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{worker}").exists(), "the worker process outlived its app"
