"""LM under injected faults: what is retried, how long it waits, what is raised."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from dspy_actors.lm import (
    LM,
    AuthenticationError,
    BadRequest,
    ContextWindowExceeded,
    LMConnectionError,
    LMError,
    LMTimeout,
    MalformedResponse,
    RateLimited,
    RetryPolicy,
    ServerError,
)
from dspy_actors.testing import Fault, SimLM

MakeLM = Callable[..., LM]  # the make_lm fixture (see conftest.py)

MESSAGES = [{"role": "user", "content": "What is 1 + 1?"}]


def test_429_with_retry_after_waits_then_succeeds(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.rate_limited(retry_after=0.4))
    lm = make_lm(api_base=sim_lm.openai_base)

    start = time.monotonic()
    response = lm.complete(MESSAGES)
    waited = time.monotonic() - start

    assert response.outputs == ["2"]
    assert sim_lm.request_count == 2
    assert lm.stats.retries == 1
    assert sim_lm.stats.injected == {"status_429": 1}
    # The header asked for 0.4 s: the backoff (at most 0.02 s here) must not replace it.
    assert waited >= 0.38


def test_retry_after_ms_is_honored(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.rate_limited(retry_after_ms=300))
    lm = make_lm(api_base=sim_lm.openai_base)

    start = time.monotonic()
    lm.complete(MESSAGES)

    assert time.monotonic() - start >= 0.28
    assert lm.stats.retries == 1


def test_retry_after_http_date_is_honored(sim_lm: SimLM, make_lm: MakeLM) -> None:
    # HTTP dates have whole-second resolution: ask for ~2 s ahead, expect at least ~1 s.
    when = datetime.now(UTC) + timedelta(seconds=2)
    sim_lm.inject(Fault.rate_limited(retry_after_date=when))
    lm = make_lm(api_base=sim_lm.openai_base)

    start = time.monotonic()
    lm.complete(MESSAGES)

    assert time.monotonic() - start >= 0.9
    assert sim_lm.request_count == 2


def test_rate_limited_error_carries_retry_after(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.rate_limited(retry_after=0.05), times=10)
    lm = make_lm(api_base=sim_lm.openai_base, num_retries=0, retry_policy=None)

    with pytest.raises(RateLimited) as info:
        lm.complete(MESSAGES)

    assert info.value.retry_after == pytest.approx(0.05)
    assert info.value.status == 429
    assert sim_lm.request_count == 1


def test_500s_then_success(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.server_error(500), times=2)
    sim_lm.inject(Fault.server_error(503))
    lm = make_lm(api_base=sim_lm.openai_base)

    assert lm.complete(MESSAGES).outputs == ["2"]
    assert sim_lm.request_count == 4
    assert lm.stats.retries == 3
    assert sim_lm.stats.injected == {"status_500": 2, "status_503": 1}
    assert lm.usage.calls == 1, "failed attempts cost nothing"


def test_retries_exhausted_raise_the_last_error_naming_endpoint_and_model(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    sim_lm.inject(Fault.server_error(502), times=100)
    lm = make_lm(api_base=sim_lm.openai_base)

    with pytest.raises(ServerError) as info:
        lm.complete(MESSAGES)

    assert sim_lm.request_count == 4  # 1 try + 3 retries
    assert info.value.status == 502
    assert lm.endpoint in str(info.value)
    assert "openai/sim-model" in str(info.value)
    assert lm.stats.failures == 1


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.bad_request(), BadRequest),
        (Fault.unauthorized(), AuthenticationError),
        (Fault.context_window(), ContextWindowExceeded),
    ],
)
@pytest.mark.parametrize("model", ["openai/sim-model", "anthropic/claude-sim"])
def test_client_errors_are_not_retried(
    sim_lm: SimLM, make_lm: MakeLM, fault: Fault, error: type[LMError], model: str
) -> None:
    sim_lm.inject(fault, times=10)
    base = sim_lm.openai_base if model.startswith("openai") else sim_lm.anthropic_base
    lm = make_lm(model, api_base=base)

    with pytest.raises(error) as info:
        lm.complete(MESSAGES)

    assert type(info.value) is error
    assert sim_lm.request_count == 1
    assert lm.stats.retries == 0
    assert model in str(info.value)


def test_context_window_error_keeps_the_provider_message(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.context_window())
    lm = make_lm(api_base=sim_lm.openai_base)
    with pytest.raises(ContextWindowExceeded, match="maximum context length") as info:
        lm.complete(MESSAGES)
    assert isinstance(info.value, BadRequest)
    assert info.value.status == 400


def test_server_requiring_a_key_rejects_a_wrong_one_once(make_lm: MakeLM) -> None:
    with SimLM(api_key="right") as sim:
        good = make_lm(api_base=sim.openai_base, api_key="right")
        assert good("hi")
        bad = make_lm(api_base=sim.openai_base, api_key="wrong")
        with pytest.raises(AuthenticationError):
            bad("hi")
        assert sim.request_count == 2
        assert sim.stats.errors == {"unauthorized": 1}


def test_hang_past_the_per_call_timeout_is_retried(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.hang(30.0))
    lm = make_lm(api_base=sim_lm.openai_base, timeout=30.0)

    start = time.monotonic()
    response = lm.complete(MESSAGES, timeout=0.3)

    assert response.outputs == ["2"]
    assert time.monotonic() - start >= 0.3
    assert sim_lm.request_count == 2
    assert lm.stats.retries == 1


def test_persistent_hang_raises_timeout(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.hang(30.0), times=10)
    lm = make_lm(
        api_base=sim_lm.openai_base, retry_policy=RetryPolicy(max_retries=1, base_delay=0.0)
    )

    with pytest.raises(LMTimeout, match=r"no answer within 0\.2s"):
        lm.complete(MESSAGES, timeout=0.2)
    assert sim_lm.request_count == 2


def test_lm_default_timeout_applies_without_a_per_call_one(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.hang(30.0), times=10)
    lm = make_lm(api_base=sim_lm.openai_base, timeout=0.2, retry_policy=RetryPolicy(max_retries=0))
    with pytest.raises(LMTimeout):
        lm.complete(MESSAGES)


def test_changing_the_timeout_applies_to_later_calls(sim_lm: SimLM) -> None:
    sim_lm.inject(Fault.hang(30.0))
    with LM(
        "openai/sim",
        api_base=sim_lm.openai_base,
        cache=False,
        timeout=60.0,
        retry_policy=RetryPolicy(max_retries=0),
    ) as lm:
        lm.timeout = 0.2
        with pytest.raises(LMTimeout):
            lm("hi")


def test_connection_reset_is_retried(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.reset(), times=2)
    lm = make_lm(api_base=sim_lm.openai_base)

    assert lm.complete(MESSAGES).outputs == ["2"]
    assert sim_lm.request_count == 3
    assert sim_lm.stats.injected == {"reset": 2}


def test_persistent_reset_raises_connection_error(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.reset(), times=100)
    lm = make_lm(api_base=sim_lm.openai_base)
    with pytest.raises(LMConnectionError, match="connection failed"):
        lm.complete(MESSAGES)
    assert sim_lm.request_count == 4


def test_refused_connection_is_a_connection_error(make_lm: MakeLM) -> None:
    with SimLM() as sim:
        base = sim.openai_base
    lm = make_lm(api_base=base, retry_policy=RetryPolicy(max_retries=1, base_delay=0.0))
    with pytest.raises(LMConnectionError):
        lm.complete(MESSAGES)
    assert lm.stats.requests == 2


def test_malformed_json_body_is_retried(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.malformed_json())
    lm = make_lm(api_base=sim_lm.openai_base)
    assert lm.complete(MESSAGES).outputs == ["2"]
    assert sim_lm.request_count == 2


def test_persistent_malformed_json_raises(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.malformed_json(), times=100)
    lm = make_lm(api_base=sim_lm.openai_base)
    with pytest.raises(MalformedResponse, match="not JSON"):
        lm.complete(MESSAGES)


def test_truncated_body_is_retried(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.truncated())
    lm = make_lm(api_base=sim_lm.openai_base)
    assert lm.complete(MESSAGES).outputs == ["2"]
    assert sim_lm.request_count == 2


def test_unparseable_completion_is_returned_as_is(sim_lm: SimLM, make_lm: MakeLM) -> None:
    # The wire is fine; making sense of the text is the adapter's job, not the LM's.
    sim_lm.inject(Fault.unparseable("gibberish without markers"))
    lm = make_lm(api_base=sim_lm.openai_base)
    assert lm(MESSAGES[0]["content"]) == ["gibberish without markers"]
    assert sim_lm.stats.injected == {"unparseable": 1}
    assert sim_lm.stats.served == 1


@pytest.mark.parametrize(
    ("model", "base_attr"),
    [("openai/sim-model", "openai_base"), ("anthropic/claude-sim", "anthropic_base")],
)
def test_stream_retries_failures_before_the_first_delta(
    sim_lm: SimLM, make_lm: MakeLM, model: str, base_attr: str
) -> None:
    sim_lm.inject(Fault.server_error())
    sim_lm.inject(Fault.truncated(after_chunks=1))  # only the preamble: no text yet
    lm = make_lm(model, api_base=getattr(sim_lm, base_attr))

    events = list(lm.stream(MESSAGES))

    assert "".join(e.text for e in events) == "2"
    assert sim_lm.request_count == 3


def test_stream_cut_after_text_raises_connection_error(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(lambda req: "several words of text arrive here")
    sim_lm.inject(Fault.truncated(after_chunks=3))
    lm = make_lm(api_base=sim_lm.openai_base)

    received: list[str] = []

    def consume() -> None:
        for event in lm.stream(MESSAGES):
            received.append(event.text)

    with pytest.raises(LMConnectionError):
        consume()

    assert received == ["several ", "words "], "deltas before the cut were delivered"
    assert sim_lm.request_count == 1, "text was already yielded: no silent retry"


def test_stream_429_honors_retry_after(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.rate_limited(retry_after=0.3))
    lm = make_lm(api_base=sim_lm.openai_base)
    start = time.monotonic()
    events = list(lm.stream(MESSAGES))
    assert time.monotonic() - start >= 0.28
    assert events[-1].response is not None
    assert events[-1].response.outputs == ["2"]


def test_stream_client_error_is_not_retried(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.context_window(), times=5)
    lm = make_lm("anthropic/claude-sim", api_base=sim_lm.anthropic_base)
    with pytest.raises(ContextWindowExceeded, match="prompt is too long"):
        list(lm.stream(MESSAGES))
    assert sim_lm.request_count == 1


# A deadline bounds the whole call, retries included.


def test_a_retry_that_would_start_after_the_deadline_is_not_made(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    # The server asks for a wait longer than the whole deadline: no retry can fit, so the
    # call fails at once instead of sleeping. The bound is far from both the 60 s asked for
    # and the 30 s deadline, so a busy machine cannot fail it, and a regression (sleeping
    # until the deadline or as asked) cannot pass it.
    sim_lm.inject(Fault.rate_limited(retry_after=60.0))
    lm = make_lm(api_base=sim_lm.openai_base)
    start = time.monotonic()
    with pytest.raises(RateLimited):
        lm.send(lm.prepare(MESSAGES, deadline=start + 30.0))
    assert time.monotonic() - start < 15.0
    assert sim_lm.request_count == 1
    assert lm.stats.retries == 0


def test_each_attempt_is_cut_to_what_is_left_of_the_deadline(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    sim_lm.inject(Fault.hang(60.0))
    lm = make_lm(api_base=sim_lm.openai_base, timeout=90.0)
    start = time.monotonic()
    with pytest.raises(LMTimeout):
        lm.send(lm.prepare(MESSAGES, deadline=start + 0.4))
    took = time.monotonic() - start
    # The deadline, not the LM's 90 s timeout nor the 60 s hang: the upper bound leaves a
    # busy machine 20 s of slack and still fails any path that ignores the deadline.
    assert 0.35 <= took < 20.0


def test_without_a_deadline_retries_wait_as_the_server_asks(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.rate_limited(retry_after=0.3))
    lm = make_lm(api_base=sim_lm.openai_base)
    start = time.monotonic()
    assert lm.send(lm.prepare(MESSAGES, deadline=start + 5.0)).outputs == ["2"]
    assert time.monotonic() - start >= 0.28
    assert lm.stats.retries == 1
