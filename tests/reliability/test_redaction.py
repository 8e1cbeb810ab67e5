"""The redaction module on its own: what it masks, and what it leaves alone."""

from __future__ import annotations

import logging

import pytest

from dspy_actors.redaction import (
    RedactingFilter,
    looks_like_secret_name,
    redact,
    redact_value,
    register_secret,
    scrub_exception,
)

_KEY = "QmV0dGVyLXRoYW4tYS1yZWFsLWtleQ-42"


def test_a_registered_key_is_masked_in_every_form_text_holds_it() -> None:
    key = f"{_KEY}\n"
    register_secret(key)
    for text in (
        f"key={key}",
        repr(key),
        repr(key.encode()),
        f'{{"k": "{key.strip()}"}}',
        f"cut short: {key[:20]}",  # a fragment of a long key
    ):
        assert _KEY[:16] not in redact(text), text


def test_credential_shapes_are_masked_even_unregistered() -> None:
    assert redact("Authorization: Bearer abc.def-ghi") == "Authorization: Bearer ***"
    assert redact("headers={'x-api-key': 'zzz123'}") == "headers={'x-api-key': '***'}"
    assert redact("api_key=hunter2 rest") == "api_key=*** rest"
    assert redact("use sk-ant-api03-abcdefghijklmnopqrstu now") == "use sk-*** now"


def test_ordinary_text_is_left_alone() -> None:
    register_secret("sim")  # a placeholder key: too short to mask anywhere
    text = "the sim-model answered 42 tokens; max_tokens=100; token budget ok"
    assert redact(text) == text


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("OPENAI_API_KEY", True),
        ("Authorization", True),
        ("db_password", True),
        ("max_tokens", False),
        ("question", False),
        ("keywords", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert looks_like_secret_name(name) is secret


def test_values_under_secret_names_are_replaced() -> None:
    nested = {"a": [{"api_key": "x", "note": f"Bearer {_KEY}"}], "n": 1}
    assert redact_value(nested) == {"a": [{"api_key": "<redacted>", "note": "Bearer ***"}], "n": 1}


def test_an_exception_chain_is_scrubbed_in_place() -> None:
    register_secret(_KEY)
    error = RuntimeError(f"outer {_KEY}")
    error.__cause__ = OSError(f"refused {_KEY}")
    assert scrub_exception(error) is error
    assert _KEY not in str(error)
    assert _KEY not in str(error.__cause__)


def test_the_logging_filter_redacts_messages_and_tracebacks() -> None:
    register_secret(_KEY)
    record = logging.LogRecord("pykka", logging.ERROR, __file__, 1, "boom %s", (_KEY,), None)
    try:
        raise ValueError(_KEY)
    except ValueError as error:
        record.exc_info = (ValueError, error, error.__traceback__)
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert _KEY not in text
    assert "ValueError: ***" in text
