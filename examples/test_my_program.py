"""Your own pytest file: prove that *your* program survives crashes, outages and garbage.

Run it:  .venv/bin/pytest examples/test_my_program.py -q

The fixtures ``sim_lm`` (a simulated LM server on loopback), ``app`` (``dsa.start`` on it,
stores in ``tmp_path``) and ``chaos`` (a chaos monkey on ``app``) come with the package: no
conftest.py needed. Each test breaks one thing on purpose and then checks, with the
harness's invariants, that every call got an answer or a clear error and the tree healed.
Copy this file next to your own program and replace ``SupportBot`` with it.
"""

from __future__ import annotations

import pytest

import dspy_actors as dsa
from dspy_actors.testing import (
    CallLedger,
    ChaosMonkey,
    Fault,
    SimLM,
    assert_all_accounted,
    assert_tree_healthy,
)


class SupportBot(dsa.Module):
    """The program under test: classify a message, then reply to it."""

    def __init__(self) -> None:
        super().__init__()
        self.classify = dsa.Predict("message -> topic")
        self.reply = dsa.ChainOfThought("message, topic -> reply")

    def forward(self, message: str) -> dsa.Prediction:
        topic = self.classify(message=message).topic
        return self.reply(message=message, topic=topic)


MESSAGES = [{"message": f"My order #{n} has not arrived"} for n in range(60)]


def test_answers_every_message_while_its_actors_are_killed(
    app: dsa.App, chaos: ChaosMonkey, sim_lm: SimLM
) -> None:
    sim_lm.latency = 0.02  # slow enough for the monkey to catch calls in flight
    # idempotent: a call whose actor was killed under it is retried. intensity: the
    # program's supervisor allows 50 restarts in 5 s (default 10) before giving up, as
    # this test kills 10 times a second.
    bot = app.serve("bot", SupportBot(), idempotent=True, intensity=50)
    chaos.kill_every(f"{app.name}/bot@v1/?*", every_s=0.1, duration_s=None)
    ledger = CallLedger(bot, hang_after_s=30)
    ledger.run(MESSAGES, concurrency=8)
    chaos.stop()
    assert chaos.kills > 0, "the monkey never found an actor to kill"
    assert_all_accounted(ledger, max_failed=0)  # every call answered, none hung
    assert_tree_healthy(app, within_s=10)


def test_rides_out_a_flaky_provider(app: dsa.App, sim_lm: SimLM) -> None:
    sim_lm.inject_rate(Fault.server_error(500), 0.2)  # 1 LM request in 5 fails...
    sim_lm.inject_rate(Fault.malformed_json(), 0.05)  # ...and some bodies are garbage
    bot = app.serve("bot", SupportBot())
    ledger = CallLedger(bot, hang_after_s=30)
    ledger.run(MESSAGES, concurrency=8)
    # The fixture's LM retries 3 times: a call fails only if one request fails 4 times in
    # a row, and then with a clear LMError, which assert_all_accounted accepts.
    assert_all_accounted(ledger, max_failed=len(MESSAGES) // 10)
    assert sim_lm.stats.injected_total > 0


def test_an_answer_it_cannot_parse_is_a_clear_error(app: dsa.App, sim_lm: SimLM) -> None:
    sim_lm.respond_with(lambda request: "no markers at all, just prose")
    bot = app.serve("bot", SupportBot())
    with pytest.raises(dsa.AdapterParseError, match="topic"):  # names the missing field
        bot.call(message="Hello?")
