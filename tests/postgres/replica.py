"""One replica of a service in its own process, for the replica tests: ``python -m
tests.postgres.replica <sim base URL> <store URL> <data dir>``.

It serves ``qa`` (a Predict) and ``flaky`` (crashes on the input "poison" while
``Flaky.fixed`` is False) against the shared store, prints ``ready``, then answers commands
on stdin, one per line, with one line on stdout:

- ``version <n>``: wait (up to 30 s) until ``qa`` serves the store's version >= n:
  ``version <its store version> <state>``
- ``call <question>``: ``answer <answer>``
- ``poison``: call ``flaky`` with the poison input: ``dead <letter id>``
- ``quit``: stop the app and exit.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import structlog

import dspy_actors as dsa
from dspy_actors import DeadLettered
from dspy_actors.lm import LM
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction


class Flaky(Module):
    """Crashes on "poison" until the fix is deployed (``fixed`` set)."""

    fixed = False

    def forward(self, question: str) -> Prediction:
        if question == "poison" and not Flaky.fixed:
            raise RuntimeError("cannot digest poison")
        return Prediction(answer=f"digested {question}")


def main(sim_base: str, store: str, data_dir: str) -> None:
    # stdout carries the replies: logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    lm = LM("openai/sim-model", api_base=sim_base, api_key="test-key", cache=False)
    app = dsa.start(lm=lm, data_dir=data_dir, store=store, poison_threshold=1, lm_max_in_flight=2)
    try:
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        flaky = app.serve("flaky", Flaky())
        print("ready", flush=True)
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "version":
                deadline = time.monotonic() + 30
                while (qa.state_version or 0) < int(arg) and time.monotonic() < deadline:
                    time.sleep(0.01)
                state: Any = app.parameters.load("qa")
                print("version", qa.state_version, json.dumps(state), flush=True)
            elif command == "call":
                print("answer", qa.call(question=arg).answer, flush=True)
            elif command == "poison":
                try:
                    flaky.call(question="poison")
                    print("dead none", flush=True)
                except DeadLettered as dead:
                    print("dead", dead.dead_letter_id, flush=True)
            elif command == "quit":
                break
    finally:
        app.stop()


if __name__ == "__main__":
    main(*sys.argv[1:4])
