"""``handle.submit`` and ``handle.batch`` carry the caller's context, as ``call`` does:
the ``dsa.context(...)`` overrides, the trace and the deadline of the call being handled
(a served composite submitting sub-calls runs in such a context)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import dspy_actors as dsa
from dspy_actors.lm import LM
from dspy_actors.runtime._context import capture, restored
from dspy_actors.runtime.app import App
from dspy_actors.testing import SimLM

QA = "question -> answer"


def test_submit_and_batch_use_the_callers_overrides(
    make_app: Callable[..., App], make_lm: Callable[..., LM], sim_lm: SimLM
) -> None:
    app = make_app(lm_max_in_flight=8)
    qa = app.serve("qa", dsa.Predict(QA))
    other = make_lm("openai/other-model")
    with dsa.context(lm=other, temperature=0.7):
        submitted = qa.submit(question="q-one")
        batched = qa.batch([{"question": f"q-b{i}"} for i in range(6)], concurrency=3)
    assert submitted.result(timeout=60).answer
    assert all(p.answer for p in batched)
    plain = qa.submit(question="q-plain").result(timeout=60)  # outside the block: the app's
    assert plain.answer
    requests = sim_lm.requests
    for text in ["q-one", *(f"q-b{i}" for i in range(6))]:
        [request] = [r for r in requests if text in r.last_user_text]
        assert request.model == "other-model"
        assert request.body.get("temperature") == 0.7
    [request] = [r for r in requests if "q-plain" in r.last_user_text]
    assert request.model == "sim-model"
    assert request.body.get("temperature") != 0.7


def test_submit_carries_the_trace_and_deadline_of_the_call_it_is_made_in(
    make_app: Callable[..., App], sim_lm: SimLM
) -> None:
    app = make_app(lm_max_in_flight=8)
    qa = app.serve("qa", dsa.Predict(QA))
    traces: list[str] = []
    app.subscribe("lm.start", lambda event: traces.append(event.trace_id))
    with restored(capture(timeout=60.0, trace_id="trace-of-the-parent")):
        assert qa.submit(question="traced").result(timeout=60).answer
    assert app.events.flush(30.0)
    assert traces == ["trace-of-the-parent"]

    sent = sim_lm.request_count
    with restored(capture(timeout=0.0, trace_id="late")):  # the parent's deadline is past
        late = qa.submit(question="too late")
        with pytest.raises(dsa.DeadlineExceeded):
            late.result(timeout=60)
    assert sim_lm.request_count == sent  # refused before any LM request went out
