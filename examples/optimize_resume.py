"""An optimization run killed with ``kill -9`` half-way, then resumed where it stopped.

Run it:  .venv/bin/python examples/optimize_resume.py

``app.optimize(...)`` runs an optimizer (here BootstrapFewShotWithRandomSearch) as a
supervised run that saves every finished step to ``<data_dir>/runs.sqlite3``. This script:

1. starts a simulated LM that answers a task (reverse a word) correctly only when the
   prompt holds demos, so optimizing visibly pays;
2. runs the optimization in a *child process* and kills that process with SIGKILL after
   a few steps were saved (no cleanup of any kind, as the OOM killer would);
3. starts the same run again (same ``run_id``, same ``data_dir``) here: the saved steps
   are restored without a single LM call, the rest run, and the result is the program an
   uninterrupted run would have given.

Watch for: the steps saved before the kill, ``steps_restored`` after it, the LM requests
each part made, and the score before and after optimizing.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dspy_actors as dsa
from dspy_actors.runtime.runs import RunStore
from dspy_actors.testing import SimLM, SimRequest

RUN_ID = "reverse-words-1"
WORDS = ["apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "piano", "lemon"]
TRAIN = [
    dsa.Example(question=f"Reverse the word: {w}", answer=w[::-1]).with_inputs("question")
    for w in WORDS[:6]
]
DEV = [
    dsa.Example(question=f"Reverse the word: {w}", answer=w[::-1]).with_inputs("question")
    for w in WORDS[6:]
]


def reverse_if_shown_how(request: SimRequest) -> str:
    """The simulated LM: right only when the prompt holds demos (assistant turns)."""
    word = re.search(r"Reverse the word: (\w+)", request.last_user_text)
    has_demos = any(m.get("role") == "assistant" for m in request.messages)
    answer = word.group(1)[::-1] if word and has_demos else "unknown"
    return f"[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"


def exact_match(example: dsa.Example, prediction: Any, trace: Any = None) -> bool:
    return bool(example.answer == prediction.answer)


def optimizer() -> dsa.BootstrapFewShotWithRandomSearch:
    return dsa.BootstrapFewShotWithRandomSearch(
        exact_match, max_bootstrapped_demos=2, max_labeled_demos=2, num_candidate_programs=4
    )


def lm_for(api_base: str) -> dsa.LM:
    # No LM cache: every request reaches the server, so the counts below are honest.
    return dsa.LM("openai/sim-model", api_base=api_base, api_key="sim", cache=False)


def score(program: dsa.Module, lm: dsa.LM) -> str:
    with dsa.context(lm=lm):
        right = sum(exact_match(ex, program(**ex.inputs())) for ex in DEV)
    return f"{right}/{len(DEV)}"


def run_in_child(api_base: str, data_dir: str) -> None:
    """What the child process runs (until it is killed)."""
    with dsa.start(lm=lm_for(api_base), data_dir=data_dir, lm_max_in_flight=4) as app:
        run = app.optimize(
            optimizer(), dsa.Predict("question -> answer"), trainset=TRAIN, valset=DEV,
            run_id=RUN_ID, seed=0,
        )  # fmt: skip
        run.result(timeout=300)


def saved_steps(data_dir: Path) -> list[str]:
    if not (data_dir / "runs.sqlite3").exists():
        return []
    store = RunStore(data_dir / "runs.sqlite3")
    try:
        return store.steps(RUN_ID)
    finally:
        store.close()


def main() -> None:
    with SimLM(reverse_if_shown_how, latency=0.03) as sim, tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        lm = lm_for(sim.openai_base)
        print(f"Before optimizing: {score(dsa.Predict('question -> answer'), lm)} right")

        # 1. The run, in a child process, killed with SIGKILL once 2 steps are saved.
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", sim.openai_base, str(data_dir)],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while len(saved_steps(data_dir)) < 2 and child.poll() is None:
            if time.monotonic() > deadline:
                child.kill()
                raise SystemExit("the child saved no steps in 120 s")
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=30)
        if child.returncode != -signal.SIGKILL:
            raise SystemExit(f"the child ended by itself ({child.returncode}):\n{err.decode()}")
        saved = saved_steps(data_dir)
        print(f"Child process killed (SIGKILL) after saving {len(saved)} steps: {saved}")
        print(f"  it made {sim.request_count} LM requests")

        # 2. The same run_id and data_dir: the run resumes from its checkpoints.
        before = sim.request_count
        with dsa.start(lm=lm, data_dir=data_dir, lm_max_in_flight=4) as app:
            run = app.optimize(
                optimizer(), dsa.Predict("question -> answer"), trainset=TRAIN, valset=DEV,
                run_id=RUN_ID, seed=0,
            )  # fmt: skip
            program = run.result(timeout=300)
            status = run.progress()
        print(
            f"Resumed: {status.steps_restored} steps restored from the checkpoint, "
            f"{status.steps_run} run now, {sim.request_count - before} LM requests"
        )
        print(f"  best score while optimizing: {status.best_score}")
        print(f"After optimizing:  {score(program, lm)} right "
              f"({len(program.predictors()[0].demos)} demos in the prompt)")  # fmt: skip

        # 3. The check: an uninterrupted run (in-process, same seed) gives the same program.
        with dsa.context(lm=lm):
            uninterrupted = optimizer().compile(
                dsa.Predict("question -> answer"), trainset=TRAIN, valset=DEV, seed=0
            )
        same = uninterrupted.dump_state() == program.dump_state()
        print(f"Same program as an uninterrupted run: {same}")
        if not same:
            raise SystemExit("the resumed run differs from an uninterrupted one")
        lm.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        run_in_child(sys.argv[2], sys.argv[3])
    else:
        main()
