"""Adapters against SimLM: calls, n > 1, the JSON fallback and the final parse error."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from dspy_actors.adapters import AdapterParseError, ChatAdapter, JSONAdapter
from dspy_actors.lm import LM
from dspy_actors.signatures import Signature
from dspy_actors.testing import SimLM, SimReply, SimRequest

MakeLM = Callable[..., LM]
SIG = Signature("question -> reasoning, answer: int")
GARBAGE = "I think the answer is four, but I will not use your markers."


def test_chat_adapter_call_returns_one_dict_per_completion(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(
        lambda req: SimReply(
            [
                f"[[ ## reasoning ## ]]\nr{i}\n\n[[ ## answer ## ]]\n{i}\n\n[[ ## completed ## ]]"
                for i in range(req.n)
            ]
        )
    )
    out = ChatAdapter()(make_lm(), {"n": 2, "temperature": 0.5}, SIG, [], {"question": "q"})
    assert out == [{"reasoning": "r0", "answer": 0}, {"reasoning": "r1", "answer": 1}]
    body = sim_lm.requests[-1].body
    assert (body["n"], body["temperature"]) == (2, 0.5)
    assert "response_format" not in body


def test_unparseable_completion_falls_back_to_json_once(sim_lm: SimLM, make_lm: MakeLM) -> None:
    def responder(req: SimRequest) -> str:
        if "response_format" in req.body:
            return json.dumps({"reasoning": "2 and 2", "answer": 4})
        return GARBAGE

    sim_lm.respond_with(responder)
    out = ChatAdapter()(make_lm(), {}, SIG, [], {"question": "What is 2 + 2?"})
    assert out == [{"reasoning": "2 and 2", "answer": 4}]
    first, second = sim_lm.requests
    assert "[[ ## completed ## ]]" in first.last_user_text
    assert second.body["response_format"]["type"] == "json_schema"
    assert second.last_user_text.endswith(
        "Respond with a JSON object in the following order of fields: `reasoning`, then `answer` "
        "(must be formatted as a valid Python int)."
    )


def test_final_error_names_field_type_and_raw_completion(sim_lm: SimLM, make_lm: MakeLM) -> None:
    bad_json = json.dumps({"reasoning": "hmm", "answer": "four"})

    def responder(req: SimRequest) -> str:
        return bad_json if "response_format" in req.body else GARBAGE

    sim_lm.respond_with(responder)
    with pytest.raises(AdapterParseError) as info:
        ChatAdapter()(make_lm(), {}, SIG, [], {"question": "q"})
    err = info.value
    assert (err.field, err.expected_type, err.raw_completion) == ("answer", int, bad_json)
    assert "JSONAdapter: cannot parse field `answer` (expected int)" in str(err)
    assert bad_json in str(err)
    assert "tried after ChatAdapter failed on field `reasoning`" in str(err)
    assert err.previous is not None
    assert err.previous.raw_completion == GARBAGE
    assert len(sim_lm.requests) == 2  # one fallback, no more


def test_fallback_can_be_disabled(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(lambda req: GARBAGE)
    with pytest.raises(AdapterParseError) as info:
        ChatAdapter(use_json_adapter_fallback=False)(make_lm(), {}, SIG, [], {"question": "q"})
    assert info.value.raw_completion == GARBAGE
    assert info.value.field == "reasoning"
    assert "ChatAdapter: cannot parse field `reasoning` (expected str)" in str(info.value)
    assert len(sim_lm.requests) == 1


def test_json_adapter_on_anthropic_uses_json_object_instructions(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    lm = make_lm("anthropic/claude-sim")
    out = JSONAdapter()(lm, {"max_tokens": 100}, SIG, [], {"question": "What is 3 * 5?"})
    assert out == [{"reasoning": "Let me think step by step.", "answer": 15}]
    req = sim_lm.requests[-1]
    assert req.provider == "anthropic"
    assert req.messages[0]["role"] == "system"
    assert "Outputs will be a JSON object" in req.messages[0]["content"]
