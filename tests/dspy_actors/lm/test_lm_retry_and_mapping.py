"""The pure parts of the LM layer: retry delays, Retry-After parsing, error mapping, SSE."""

from __future__ import annotations

import random
import time
from email.utils import formatdate

import httpx
import pytest

from dspy_actors.lm import (
    AuthenticationError,
    BadRequest,
    ContextWindowExceeded,
    LMError,
    LMTimeout,
    RateLimited,
    RetryPolicy,
    ServerError,
)
from dspy_actors.lm._retry import call_with_retries, parse_retry_after, retry_delay
from dspy_actors.lm.providers import AnthropicProvider, OpenAIProvider
from dspy_actors.lm.providers._base import http_error, iter_sse

KW = {"endpoint": "http://h/v1/chat/completions", "model": "openai/m"}


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After": "3"})) == 3.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "0.25"})) == 0.25
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500"})) == 1.5
    # retry-after-ms is the more precise of the two and wins.
    both = httpx.Headers({"Retry-After": "2", "retry-after-ms": "1200"})
    assert parse_retry_after(both) == 1.2
    date = formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (parse_retry_after(httpx.Headers({"Retry-After": date})) or 0) <= 30
    past = formatdate(time.time() - 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": past})) == 0.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None


def test_full_jitter_backoff_stays_within_its_envelope() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    rng = random.Random(7)
    error = ServerError("x")
    for attempt, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0)]:
        delays = [retry_delay(error, attempt, policy, rng) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8, "full jitter spans the whole range"
        assert min(delays) < cap * 0.2


def test_server_delay_wins_over_backoff_but_is_capped() -> None:
    policy = RetryPolicy(base_delay=0.01, max_retry_after=5.0)
    rng = random.Random(0)
    assert retry_delay(RateLimited("x", retry_after=2.0), 0, policy, rng) == 2.0
    assert retry_delay(RateLimited("x", retry_after=600.0), 0, policy, rng) == 5.0


def test_call_with_retries_counts_and_stops_on_non_retryable() -> None:
    slept: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise RateLimited("slow down", retry_after=1.5)
        return "ok"

    assert call_with_retries(flaky, RetryPolicy(max_retries=3), sleep=slept.append) == "ok"
    assert slept == [1.5, 1.5]

    def bad() -> str:
        calls["n"] += 1
        raise BadRequest("no")

    calls["n"] = 0
    with pytest.raises(BadRequest):
        call_with_retries(bad, RetryPolicy(max_retries=5), sleep=slept.append)
    assert calls["n"] == 1


def test_call_with_retries_gives_up_after_max_retries() -> None:
    attempts: list[int] = []

    def always() -> str:
        attempts.append(1)
        raise ServerError("down", status=500)

    with pytest.raises(ServerError):
        call_with_retries(always, RetryPolicy(max_retries=2), sleep=lambda s: None)
    assert len(attempts) == 3


@pytest.mark.parametrize(
    ("status", "message", "code", "error"),
    [
        (429, "slow", None, RateLimited),
        (401, "bad key", None, AuthenticationError),
        (403, "forbidden", None, AuthenticationError),
        (408, "timeout", None, LMTimeout),
        (409, "conflict", None, ServerError),
        (500, "oops", None, ServerError),
        (529, "overloaded", None, ServerError),
        (400, "bad field", None, BadRequest),
        (404, "no model", None, BadRequest),
        (400, "whatever", "context_length_exceeded", ContextWindowExceeded),
        # vLLM / llama.cpp / Anthropic phrasings without a code:
        (400, "This model's maximum context length is 4096 tokens.", None, ContextWindowExceeded),
        (400, "prompt is too long: 210000 tokens > 200000 maximum", None, ContextWindowExceeded),
        (400, "the request exceeds the available context size", None, ContextWindowExceeded),
        (400, "temperature must be at most 2", None, BadRequest),
        (400, "input is too long for requested model", None, ContextWindowExceeded),
    ],
)
def test_http_error_mapping(
    status: int, message: str, code: str | None, error: type[LMError]
) -> None:
    mapped = http_error(status, httpx.Headers({}), message, code, **KW)
    assert type(mapped) is error
    assert mapped.status == status
    assert "openai/m" in str(mapped)
    assert KW["endpoint"] in str(mapped)
    assert message in str(mapped)


def test_retryable_flags() -> None:
    assert RateLimited.retryable
    assert ServerError.retryable
    assert LMTimeout.retryable
    assert not BadRequest.retryable
    assert not AuthenticationError.retryable
    assert not ContextWindowExceeded.retryable


def test_providers_read_their_error_bodies() -> None:
    oai = OpenAIProvider().error(
        400,
        httpx.Headers({}),
        b'{"error": {"message": "too long", "code": "context_length_exceeded"}}',
        **KW,
    )
    assert isinstance(oai, ContextWindowExceeded)
    plain = OpenAIProvider().error(500, httpx.Headers({}), b'{"error": "llama.cpp says no"}', **KW)
    assert isinstance(plain, ServerError)
    assert "llama.cpp says no" in str(plain)
    html = OpenAIProvider().error(502, httpx.Headers({}), b"<html>Bad Gateway</html>", **KW)
    assert isinstance(html, ServerError)
    assert "Bad Gateway" in str(html)
    ant = AnthropicProvider().error(
        529,
        httpx.Headers({"retry-after": "4"}),
        b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
        **KW,
    )
    assert isinstance(ant, ServerError)
    assert ant.retry_after == 4.0


def test_iter_sse_groups_events() -> None:
    lines = [
        ": comment",
        "event: message_start",
        'data: {"a": 1}',
        "",
        "data: line one",
        "data: line two",
        "",
        "data:[DONE]",
    ]
    assert list(iter_sse(lines)) == [
        ("message_start", '{"a": 1}'),
        ("", "line one\nline two"),
        ("", "[DONE]"),
    ]


def test_openai_body_for_reasoning_models_and_openai_proper() -> None:
    body = OpenAIProvider().build_body(
        "o3-mini", [], {"max_tokens": 100, "top_k": 5, "temperature": None}, None, False
    )
    assert body == {"model": "o3-mini", "messages": [], "max_completion_tokens": 100}
    compat = OpenAIProvider().build_body("llama3", [], {"top_k": 5}, None, True)
    assert compat["top_k"] == 5
    assert compat["stream_options"] == {"include_usage": True}


def test_call_with_retries_makes_no_retry_past_its_deadline() -> None:
    attempts: list[float] = []
    slept: list[float] = []

    def fails() -> str:
        attempts.append(time.monotonic())
        raise RateLimited("slow down", status=429, retry_after=1.0)

    deadline = time.monotonic() + 0.5
    with pytest.raises(RateLimited):
        call_with_retries(fails, RetryPolicy(max_retries=5), sleep=slept.append, deadline=deadline)
    assert len(attempts) == 1  # a retry after 1 s would start past the deadline
    assert slept == []
    # With room for it, the retry is made.
    with pytest.raises(RateLimited):
        call_with_retries(
            fails,
            RetryPolicy(max_retries=1),
            sleep=slept.append,
            deadline=time.monotonic() + 60,
        )
    assert slept == [1.0]
