"""The LM's request-body and answer JSON: orjson on the hot path, the stdlib for what
orjson refuses, so that no body or answer that worked before stops working."""

from __future__ import annotations

import json

import pytest

from dspy_actors.lm._lm_send import decode_answer, encode_body


def test_a_plain_body_is_compact_utf8_json_as_the_stdlib_writes_it() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "héllo ✓"}], "n": 2}
    expected = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    assert encode_body(body) == expected


def test_a_body_orjson_refuses_goes_through_the_stdlib() -> None:
    # An int key (JSON writes it as a string) and an int beyond 64 bits.
    body = {"logit_bias": {50256: -100}, "seed": 2**70}
    assert json.loads(encode_body(body)) == {"logit_bias": {"50256": -100}, "seed": 2**70}


def test_an_answer_with_a_literal_orjson_rejects_is_still_read() -> None:
    assert decode_answer(b'{"score": NaN, "ok": true}')["ok"] is True


def test_an_answer_that_is_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="Expecting value"):
        decode_answer(b"<html>bad gateway</html>")
