"""(2) LM faults: retries absorb a faulty provider; a dead one opens the breaker, which
fails calls fast, and closes again when the provider is back."""

from __future__ import annotations

import dspy_actors as dsa
from dspy_actors.testing import (
    CallLedger,
    Fault,
    FaultPlan,
    FaultRule,
    SimLM,
    assert_all_accounted,
    lm_on,
    wait_until,
)
from tests.reliability.programs import StartApp

# Per attempt 40% of requests fail; 15 retries make a call's failure odds 0.4**16 ~ 4e-7.
PATIENT = dsa.RetryPolicy(max_retries=15, base_delay=0.002, max_delay=0.02, max_retry_after=0.05)
BREAKER = {
    "window_size": 10,
    "minimum_calls": 5,
    "failure_rate_threshold": 0.5,
    "wait_in_open": 1.0,
    "half_open_permitted_calls": 2,
}


def _faulty_plan() -> FaultPlan:
    return FaultPlan(
        [
            FaultRule(Fault.server_error(500), rate=0.20),
            FaultRule(Fault.rate_limited(retry_after=0.01), rate=0.10),
            FaultRule(Fault.hang(2.0), rate=0.05),  # past the client's 0.25 s timeout
            FaultRule(Fault.malformed_json(), rate=0.05),
        ],
        seed=11,
    )


def test_faulty_provider_every_call_succeeds_through_retries(
    sim_lm: SimLM, start_app: StartApp
) -> None:
    sim_lm.faults = _faulty_plan()
    lm = lm_on(sim_lm, retry_policy=PATIENT, timeout=0.25)
    app = start_app(lm=lm, breaker=BREAKER, lm_max_in_flight=32)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    ledger = CallLedger(qa, hang_after_s=60.0)
    ledger.run(({"question": f"what is {i} + 1?"} for i in range(300)), concurrency=32)
    lm.close()
    print(ledger.summary(), sim_lm.stats)
    assert_all_accounted(ledger, max_failed=0)
    injected = sim_lm.stats.injected
    assert {"status_500", "status_429", "hang", "malformed_json"} <= set(injected)
    assert lm.stats.retries >= sum(injected.values()) * 0.9  # each fault cost a retry


def test_provider_down_opens_the_breaker_calls_fail_fast_then_it_closes(
    sim_lm: SimLM, start_app: StartApp
) -> None:
    transitions: list[tuple[str, str]] = []
    lm = lm_on(sim_lm, retry_policy=dsa.RetryPolicy(max_retries=2, base_delay=0.001))
    app = start_app(lm=lm, breaker=BREAKER)
    app.subscribe("breaker.transition", lambda e: transitions.append((e.from_state, e.to_state)))
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    assert qa.call(question="up?").answer

    # Down: every request is a 500 (or a reset connection).
    sim_lm.faults = FaultPlan(
        [FaultRule(Fault.reset(), rate=0.5), FaultRule(Fault.server_error(500), rate=1.0)], seed=3
    )
    down = CallLedger(qa, hang_after_s=30.0)
    for i in range(12):
        try:
            down.call(question=f"down {i}")
        except Exception:
            pass  # recorded
    assert_all_accounted(down)
    errors = down.errors()
    assert down.answered == 0
    # Before it opens, the provider's own errors reach the caller.
    assert set(errors) - {"CircuitOpen"} <= {"ServerError", "LMConnectionError"}, errors
    assert errors["CircuitOpen"] >= 1, f"the breaker never opened: {dict(errors)}"
    # Once open, calls fail fast without reaching the server.
    requests_while_open = sim_lm.request_count
    fast = CallLedger(qa, hang_after_s=30.0)
    for i in range(20):
        try:
            fast.call(question=f"still down {i}")
        except dsa.CircuitOpen:
            pass
    assert fast.errors() == {"CircuitOpen": 20}
    assert sim_lm.request_count == requests_while_open, "open breaker let requests through"

    # Back: after wait_in_open the half-open trials succeed and the breaker closes.
    sim_lm.clear_faults()
    answered = 0

    def answered_five_once_the_breaker_lets_calls_through() -> bool:
        nonlocal answered
        try:
            qa.call(question=f"back {answered}")
        except dsa.CircuitOpen:
            return False  # still open (wait_in_open not over): no request was sent
        answered += 1
        return answered == 5

    wait_until(answered_five_once_the_breaker_lets_calls_through, timeout=30.0, what="5 answers")
    assert app.events.flush(5.0)
    assert transitions[0] == ("closed", "open"), transitions
    # Closed again through a half-open trial (a trial made while still down reopens it).
    assert transitions[-2:] == [("open", "half_open"), ("half_open", "closed")], transitions
    lm.close()
