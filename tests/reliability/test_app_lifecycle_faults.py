"""The app's own lifecycle under faults: a root that gives up, self-restart, a failed start,
and state that must not cross between unrelated programs (issue 20, items 4, 5 and 8)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dspy_actors as dsa
import supervisors
from dspy_actors.primitives._parameter import StateError
from dspy_actors.runtime import app as app_module
from dspy_actors.runtime._errors import AppStopped
from dspy_actors.testing import SimLM, lm_on
from dspy_actors.testing._polling import wait_until
from tests.reliability.programs import StartApp


def _kill_modules(app: dsa.App) -> None:
    modules = app.root.child("modules")
    assert modules is not None
    supervisors.kill(modules)


def test_after_the_root_gives_up_calls_fail_at_once_saying_the_app_stopped_and_why(
    start_app: StartApp,
) -> None:
    exits: list[supervisors.ExitReason] = []
    app = start_app(root_intensity=0, on_exit=exits.append)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    assert qa.call(question="before").answer
    root = app.root
    _kill_modules(app)  # intensity 0: the first restart is one too many
    assert root.wait(20.0) is not None
    wait_until(lambda: app.stopped_because is not None)
    # Not ModuleUnavailable after a 5 s retry loop: AppStopped, before any wait.
    with pytest.raises(AppStopped) as error:
        qa.call_with({"question": "after"}, timeout=300.0)
    text = str(error.value)
    assert "'qa'" in text
    assert app.name in text
    assert "RestartIntensityExceeded" in text
    assert "modules" in text
    wait_until(lambda: bool(exits))
    assert exits[0].abnormal


def test_the_root_intensity_is_configurable(start_app: StartApp) -> None:
    app = start_app(root_intensity=5)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    for round_ in range(3):  # three restarts within the period: within an intensity of 5
        old = app.root.child("modules")
        _kill_modules(app)
        wait_until(lambda old=old: app.root.child("modules") not in (None, old))
        assert qa.call_with({"question": f"round {round_}"}, timeout=60.0).answer
    assert app.stopped_because is None


def test_an_app_that_asked_for_it_restarts_its_tree_and_serves_its_programs_again(
    start_app: StartApp,
) -> None:
    app = start_app(root_intensity=0, self_restarts=1)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    first_root = app.root
    _kill_modules(app)
    assert first_root.wait(20.0) is not None
    wait_until(lambda: app.root is not first_root and app.root.is_alive)
    # The fresh tree serves the program again; the call waits for it within its deadline.
    assert qa.call_with({"question": "after restart"}, timeout=60.0).answer
    assert app.stopped_because is None
    # Its one self-restart spent, the next give-up stops the app for good.
    second_root = app.root
    _kill_modules(app)
    assert second_root.wait(20.0) is not None
    wait_until(lambda: app.stopped_because is not None)
    with pytest.raises(AppStopped, match="RestartIntensityExceeded"):
        qa.call(question="gone")


def test_calls_after_stop_say_the_app_was_stopped(start_app: StartApp) -> None:
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    app.stop()
    with pytest.raises(AppStopped, match=r"app\.stop\(\) was called"):
        qa.call(question="late")


def test_a_failed_start_leaves_no_exit_hook_behind(tmp_path: Path) -> None:
    """Run in a fresh interpreter: what matters is what happens at its exit."""
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    script = textwrap.dedent(
        f"""
        import dspy_actors as dsa
        for data_dir in ({str(a_file)!r}, {str(a_file / "below")!r}):
            try:
                dsa.start(data_dir=data_dir)
            except Exception as error:
                print("start failed:", type(error).__name__)
            else:
                raise SystemExit("start should have failed for " + data_dir)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("start failed:") == 2
    assert "Error in atexit" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_a_data_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    a_file = tmp_path / "state"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        dsa.start(data_dir=a_file)


def test_apps_without_name_or_data_dir_never_share_state(
    sim_lm: SimLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two scripts, each with a default app: the second's fresh program must not come up
    with what the first one learned (the default names collide across processes)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "user-data"))
    lm = lm_on(sim_lm)
    try:
        first = dsa.start(lm=lm, lm_max_in_flight=2)
        try:
            qa = first.serve("probe_qa", dsa.Predict("question -> answer"))
            learned = dsa.Predict("question -> answer")
            learned.demos = [dsa.Example(question="q", answer="a")]
            qa.upgrade(learned)
            private = first.config.data_dir
            assert private.exists()
        finally:
            first.stop()
        assert not private.exists()  # a private data dir goes with its app
        # The next script's default app has the same default name.
        monkeypatch.setattr(app_module, "_app_ids", itertools.count(int(first.name[3:])))
        second = dsa.start(lm=lm, lm_max_in_flight=2)
        try:
            assert second.name == first.name
            fresh = second.serve("probe_qa", dsa.Predict("question -> answer"))
            assert second.parameters.load("probe_qa") == {
                "self": dsa.Predict("question -> answer").dump_state()
            }
            assert fresh.version == 1
        finally:
            second.stop()
    finally:
        lm.close()


def test_saved_state_of_another_program_is_reported_not_loaded(start_app: StartApp) -> None:
    app = start_app(name="shared")
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    qa.stop()
    with pytest.raises(StateError, match=r"saved from a different program.*load_saved_state"):
        app.serve("qa", dsa.Predict("context, question -> answer"))
    assert app.serve("qa", dsa.ChainOfThought("question -> answer"), load_saved_state=False)
