"""LM against SimLM: both wire formats, n > 1, streaming, history."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dspy_actors.lm import LM, BadRequest, StreamEvent
from dspy_actors.testing import SimLM, SimReply, SimRequest

MakeLM = Callable[..., LM]  # the make_lm fixture (see conftest.py)

QUESTION = [
    {"role": "system", "content": "You are a calculator."},
    {"role": "user", "content": "What is 6 * 7?"},
]


def test_openai_round_trip_sends_the_chat_completions_format(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:

    lm = make_lm("openai/sim-model", api_base=sim_lm.openai_base, temperature=0.3, max_tokens=50)
    response = lm.complete(QUESTION)

    assert response.outputs == ["42"]
    assert response.finish_reasons == ["stop"]
    assert response.model == "sim-model"
    assert not response.cache_hit
    # SimLM counts words: the prompt has 4 + 5 words, the answer 1.
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (9, 1)
    assert response.usage.calls == 1
    (req,) = sim_lm.requests
    assert req.provider == "openai"
    assert req.path == "/v1/chat/completions"
    assert req.body["model"] == "sim-model"
    assert req.body["messages"] == QUESTION
    assert req.body["temperature"] == 0.3
    assert req.body["max_tokens"] == 50
    assert "stream" not in req.body
    assert req.headers["authorization"] == "Bearer test-key"


def test_openai_n_greater_than_one_returns_every_choice(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(lambda req: SimReply([f"choice {i}" for i in range(req.n)]))
    lm = make_lm(api_base=sim_lm.openai_base)

    response = lm.complete(QUESTION, n=3)

    assert response.outputs == ["choice 0", "choice 1", "choice 2"]
    assert response.finish_reasons == ["stop"] * 3
    assert response.usage.completion_tokens == 6
    assert sim_lm.request_count == 1
    assert sim_lm.requests[0].body["n"] == 3


def test_anthropic_round_trip_moves_system_to_top_level(sim_lm: SimLM, make_lm: MakeLM) -> None:
    lm = make_lm("anthropic/claude-sim", api_base=sim_lm.anthropic_base, stop=["END"])
    response = lm.complete(QUESTION)

    assert response.outputs == ["42"]
    assert response.finish_reasons == ["end_turn"]
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (9, 1)
    (req,) = sim_lm.requests
    assert req.provider == "anthropic"
    assert req.path == "/v1/messages"
    assert req.body["system"] == "You are a calculator."
    assert req.body["messages"] == [{"role": "user", "content": "What is 6 * 7?"}]
    assert req.body["max_tokens"] == 4096  # required by the API: a default is supplied
    assert req.body["stop_sequences"] == ["END"]
    assert req.headers["x-api-key"] == "test-key"
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in req.headers
    # SimLM normalises back to OpenAI messages: the system prompt is the first message.
    assert req.messages == QUESTION


def test_anthropic_image_parts_become_image_blocks(sim_lm: SimLM, make_lm: MakeLM) -> None:
    lm = make_lm("anthropic/claude-sim", api_base=sim_lm.anthropic_base)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe these."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    ]
    lm.complete(messages)

    blocks = sim_lm.requests[0].body["messages"][0]["content"]
    assert blocks == [
        {"type": "text", "text": "Describe these."},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_anthropic_rejects_audio_locally_naming_the_endpoint(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    lm = make_lm("anthropic/claude-sim", api_base=sim_lm.anthropic_base)
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(BadRequest, match="input_audio") as info:
        lm.complete([{"role": "user", "content": [audio]}])
    assert lm.endpoint in str(info.value)
    assert sim_lm.request_count == 0


def test_anthropic_n_greater_than_one_asks_n_times(sim_lm: SimLM, make_lm: MakeLM) -> None:
    answers = iter(["first", "second"])
    sim_lm.respond_with(lambda req: next(answers))
    lm = make_lm("anthropic/claude-sim", api_base=sim_lm.anthropic_base)

    response = lm.complete(QUESTION, n=2)

    assert response.outputs == ["first", "second"]
    assert response.usage.calls == 2
    assert sim_lm.request_count == 2
    assert all("n" not in r.body for r in sim_lm.requests)


@pytest.mark.parametrize(
    ("model", "base_attr"),
    [("openai/sim-model", "openai_base"), ("anthropic/claude-sim", "anthropic_base")],
)
def test_stream_yields_deltas_then_usage(
    sim_lm: SimLM, make_lm: MakeLM, model: str, base_attr: str
) -> None:
    text = "The answer is forty two, computed step by step."
    sim_lm.respond_with(lambda req: text)
    lm = make_lm(model, api_base=getattr(sim_lm, base_attr))

    events = list(lm.stream(QUESTION))

    deltas, final = events[:-1], events[-1]
    assert len(deltas) > 3, "the text should arrive in several pieces"
    assert all(not e.done and e.index == 0 for e in deltas)
    assert "".join(e.text for e in deltas) == text
    assert final.done
    assert final.text == ""
    assert final.response is not None
    assert final.response.outputs == [text]
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (9, 9)
    assert lm.usage.total_tokens == 18
    assert sim_lm.requests[0].stream


def test_openai_stream_asks_for_the_usage_chunk(sim_lm: SimLM, make_lm: MakeLM) -> None:
    lm = make_lm(api_base=sim_lm.openai_base)
    list(lm.stream(QUESTION))
    assert sim_lm.requests[0].body["stream_options"] == {"include_usage": True}


def test_openai_stream_with_n_interleaves_choices(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(lambda req: SimReply(["alpha beta", "gamma delta"]))
    lm = make_lm(api_base=sim_lm.openai_base)

    events = list(lm.stream(QUESTION, n=2))

    by_index: dict[int, str] = {0: "", 1: ""}
    for event in events[:-1]:
        by_index[event.index] += event.text
    assert by_index == {0: "alpha beta", 1: "gamma delta"}
    assert events[-1].response is not None
    assert events[-1].response.outputs == ["alpha beta", "gamma delta"]


def test_call_returns_outputs_for_a_prompt_or_messages(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(lambda req: f"echo: {req.last_user_text}")
    lm = make_lm(api_base=sim_lm.openai_base)

    assert lm("hello") == ["echo: hello"]
    assert lm(messages=[{"role": "user", "content": "hi there"}]) == ["echo: hi there"]
    with pytest.raises(TypeError, match="prompt or messages"):
        lm()


def test_history_and_inspect_history(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(lambda req: f"reply to {req.last_user_text}")
    lm = make_lm(api_base=sim_lm.openai_base, temperature=0.0)

    lm("first question")
    lm.complete([{"role": "user", "content": "second question"}], max_tokens=7)

    assert len(lm.history) == 2
    last = lm.history[-1]
    assert last["messages"] == [{"role": "user", "content": "second question"}]
    assert last["outputs"] == ["reply to second question"]
    assert last["kwargs"] == {"temperature": 0.0, "max_tokens": 7}
    assert last["usage"].completion_tokens == 4
    assert last["cache_hit"] is False
    assert last["model"] == "openai/sim-model"

    one = lm.inspect_history()
    assert "second question" in one
    assert "reply to second question" in one
    assert "first question" not in one
    both = lm.inspect_history(2)
    assert both.index("first question") < both.index("second question")
    assert "User message:" in both
    assert "Response:" in both


def test_history_is_bounded(sim_lm: SimLM, make_lm: MakeLM) -> None:
    lm = make_lm(api_base=sim_lm.openai_base)
    lm.history = type(lm.history)(maxlen=3)
    for i in range(5):
        lm(f"question {i}")
    assert [h["messages"][0]["content"] for h in lm.history] == [
        "question 2",
        "question 3",
        "question 4",
    ]


def test_model_string_resolution() -> None:
    lm = LM("openai/gpt-4o-mini", api_key="k", cache=False)
    assert (lm.provider, lm.model_name, lm.api_base) == (
        "openai",
        "gpt-4o-mini",
        "https://api.openai.com/v1",
    )
    assert lm.supports_json_schema
    claude = LM("anthropic/claude-3-5-haiku", api_key="k", cache=False)
    assert (claude.provider, claude.endpoint) == (
        "anthropic",
        "https://api.anthropic.com/v1/messages",
    )
    assert not claude.supports_json_schema
    vllm = LM("openai/meta-llama/Llama-3-8B", api_base="http://h:8000/v1/", cache=False)
    assert vllm.model_name == "meta-llama/Llama-3-8B"
    assert vllm.endpoint == "http://h:8000/v1/chat/completions"
    with pytest.raises(ValueError, match="unknown provider prefix 'nope'"):
        LM("nope/model")


def test_stream_event_defaults() -> None:
    event = StreamEvent("x", 1)
    assert not event.done
    assert event.usage is None


def test_sim_request_records_per_request_metadata(sim_lm: SimLM, make_lm: MakeLM) -> None:
    seen: list[SimRequest] = []

    def responder(req: SimRequest) -> str:
        seen.append(req)
        return "ok"

    sim_lm.respond_with(responder)
    lm = make_lm(api_base=sim_lm.openai_base)
    lm("a")
    lm("b")
    assert [r.index for r in seen] == [0, 1]
    assert seen[0].elapsed_s <= seen[1].elapsed_s


def test_supports_json_schema_can_be_switched_off(sim_lm: SimLM, make_lm: MakeLM) -> None:
    lm = make_lm(api_base=sim_lm.openai_base, supports_json_schema=False)
    assert not lm.supports_json_schema
    lm("hi")
    assert "supports_json_schema" not in sim_lm.requests[0].body


def test_anthropic_stream_with_n_streams_each_choice(sim_lm: SimLM, make_lm: MakeLM) -> None:
    answers = iter(["first answer", "second answer"])
    sim_lm.respond_with(lambda req: next(answers))
    lm = make_lm("anthropic/claude-sim", api_base=sim_lm.anthropic_base)

    events = list(lm.stream(QUESTION, n=2))

    by_index: dict[int, str] = {0: "", 1: ""}
    for event in events[:-1]:
        by_index[event.index] += event.text
    assert by_index == {0: "first answer", 1: "second answer"}
    final = events[-1].response
    assert final is not None
    assert final.outputs == ["first answer", "second answer"]
    assert final.usage.calls == 2
    assert sim_lm.request_count == 2
