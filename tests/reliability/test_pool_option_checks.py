"""``dsa.start(breaker=..., rate_limit=...)`` refuses bad options at once, naming the key
and what it allows, instead of starting an LM supervisor that crash-loops on them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.runtime.app import App


@pytest.mark.parametrize(
    ("breaker", "names"),
    [
        ({"failure_rate": 0.5}, ["'failure_rate'", "failure_rate_threshold", "wait_in_open"]),
        ({"failure_rate_threshold": 1.5}, ["failure_rate_threshold", "(0.0, 1.0]", "1.5"]),
        ({"window_size": 0}, ["window_size", ">= 1", "got 0"]),
        ({"window_size": 4, "minimum_calls": 8}, ["minimum_calls", "window_size"]),
        ({"wait_in_open": "5s"}, ["wait_in_open", "'5s'"]),
    ],
)
def test_bad_breaker_fails_at_start_naming_the_key(
    make_app: Callable[..., App], breaker: dict[str, Any], names: list[str]
) -> None:
    threads_before = threading.active_count()
    with pytest.raises(ValueError, match=r"dsa\.start\(breaker=\.\.\.\)") as caught:
        make_app(breaker=breaker)
    message = str(caught.value)
    for name in names:
        assert name in message
    assert threading.active_count() == threads_before  # no tree was started


@pytest.mark.parametrize(
    ("rate_limit", "names"),
    [
        ({"rps": 5}, ["'rps'", "requests_per_second", "tokens_per_minute"]),
        ({"requests_per_second": 0}, ["requests_per_second", "> 0", "got 0"]),
        ({"requests_per_second": 10, "burst": 0.5}, ["burst", ">= 1"]),
        (
            {"burst": 3},
            ["give requests_per_second", "burst: a number >= 1 (needs requests_per_second)"],
        ),
        ({}, ["requests_per_second, tokens_per_minute"]),
    ],
)
def test_bad_rate_limit_fails_at_start_naming_the_key(
    make_app: Callable[..., App], rate_limit: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(ValueError, match=r"dsa\.start\(rate_limit=\.\.\.\)") as caught:
        make_app(rate_limit=rate_limit)
    for name in names:
        assert name in str(caught.value)


def test_a_non_dict_is_refused(make_app: Callable[..., App]) -> None:
    with pytest.raises(TypeError, match=r"breaker=\.\.\.\) must be a dict.*list"):
        make_app(breaker=[("window_size", 4)])


def test_good_options_still_apply(make_app: Callable[..., App]) -> None:
    """Checked options reach the breaker the pool builds: two failures in a window of two
    open it."""
    app = make_app(
        breaker={"window_size": 2, "minimum_calls": 2, "wait_in_open": 60.0},
        rate_limit={"requests_per_second": 1000.0},
    )
    app.serve("qa", dsa.Predict("question -> answer"))
    assert app.handle("qa").call(question="hi").answer
    breaker = app.dispatcher.breaker(next(iter(app.dispatcher.stats()["breakers"])))
    assert breaker.window_size == 2
    assert breaker.wait_in_open == 60.0
