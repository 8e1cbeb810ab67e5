"""Served BestOfN and Parallel under load: many callers, LM faults and actor kills mid-flight;
every call gets an answer or a clear error, none hangs."""

from __future__ import annotations

from typing import Any

import dspy_actors as dsa
from dspy_actors.testing import SimLM
from dspy_actors.testing._chaos import ChaosMonkey
from dspy_actors.testing._faults import Fault
from dspy_actors.testing._invariants import CallLedger, assert_all_accounted, assert_tree_healthy
from tests.dspy_actors.library.conftest import StartApp


def one_word(_inputs: dict[str, Any], pred: dsa.Prediction) -> float:
    return 1.0 if len(str(pred.answer).split()) == 1 else 0.0


class Fan(dsa.Module):
    """Best of 3 per question, for every question at once."""

    def __init__(self) -> None:
        self.best = dsa.BestOfN(
            dsa.Predict("question -> answer"), N=3, reward_fn=one_word, threshold=2
        )

    def forward(self, questions: list[str]) -> dsa.Prediction:
        results = dsa.Parallel(num_threads=4, max_errors=len(questions) + 1)(
            [(self.best, {"question": q}) for q in questions]
        )
        return dsa.Prediction(answers=[r.answer if r is not None else None for r in results])


def test_many_callers_with_faults_and_kills_all_get_an_answer_or_a_clear_error(
    sim_lm: SimLM, start_app: StartApp
) -> None:
    sim_lm.latency = 0.01
    sim_lm.inject_rate(Fault.server_error(), rate=0.1)  # retried by the LM
    app = start_app(lm_max_in_flight=16)
    fan = app.serve("fan", Fan())
    ledger = CallLedger(fan, hang_after_s=60)
    with ChaosMonkey(app, seed=7) as monkey:
        run = monkey.kill_every(f"{app.name}/fan@v1/?*", every_s=0.15, max_kills=4)
        ledger.run(
            [{"questions": [f"What is {i} + {j}?" for j in range(3)]} for i in range(24)],
            concurrency=12,
        )
        run.stop()
    assert monkey.kills > 0, "no actor was killed: the test would prove nothing"
    assert_all_accounted(ledger)
    assert ledger.answered > 0
    for outcome in ledger.outcomes:
        if outcome.status == "answered":
            assert len(outcome.result.answers) == 3
    assert_tree_healthy(app, within_s=10)
