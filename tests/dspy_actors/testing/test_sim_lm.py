"""SimLM on its own, driven by a plain httpx client: wire formats, faults, lifecycle."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dspy_actors.testing import Fault, SimLM, SimReply, SimRequest
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.sim_responder import default_responder

CHAT_SENTENCE = (
    "Respond with the corresponding output fields, starting with the field "
    "`[[ ## reasoning ## ]]`, then `[[ ## answer ## ]]` (must be formatted as a valid Python "
    "int), and then ending with the marker for `[[ ## completed ## ]]`."
)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def _chat(sim: SimLM, client: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("model", "m")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return client.post(sim.openai_base + "/chat/completions", json=body)


def _sse_data(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_openai_response_shape(sim_lm: SimLM, client: httpx.Client) -> None:
    r = _chat(sim_lm, client, n=2)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion"
    assert [c["index"] for c in data["choices"]] == [0, 1]
    assert data["choices"][0]["message"]["role"] == "assistant"
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_anthropic_response_shape_and_normalised_request(
    sim_lm: SimLM, client: httpx.Client
) -> None:
    body = {
        "model": "claude",
        "max_tokens": 10,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
    }
    data = client.post(sim_lm.anthropic_base + "/v1/messages", json=body).json()
    assert data["type"] == "message"
    assert data["content"][0]["type"] == "text"
    assert set(data["usage"]) == {"input_tokens", "output_tokens"}
    (req,) = sim_lm.requests
    assert req.messages[0] == {"role": "system", "content": "Be brief."}
    assert req.last_user_text == "hello"


def test_openai_stream_with_usage(sim_lm: SimLM, client: httpx.Client) -> None:
    sim_lm.respond_with(lambda r: "one two three")
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", sim_lm.openai_base + "/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        frames = _sse_data(r)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "one two three"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["usage"] is None for c in chunks[:-1])


def test_openai_stream_without_usage_has_no_usage_chunk(
    sim_lm: SimLM, client: httpx.Client
) -> None:
    body = {"model": "m", "messages": [], "stream": True}
    with client.stream("POST", sim_lm.openai_base + "/chat/completions", json=body) as r:
        chunks = [json.loads(f) for f in _sse_data(r)[:-1]]
    assert all("usage" not in c and c["choices"] for c in chunks)


def test_anthropic_stream_event_order(sim_lm: SimLM, client: httpx.Client) -> None:
    body = {"model": "c", "max_tokens": 5, "messages": [], "stream": True}
    with client.stream("POST", sim_lm.anthropic_base + "/v1/messages", json=body) as r:
        events = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[3:-3]) == {"content_block_delta"}


def test_keep_alive_reuses_one_connection(sim_lm: SimLM, client: httpx.Client) -> None:
    for _ in range(5):
        _chat(sim_lm, client)
    conn_threads = [t for t in threading.enumerate() if "-conn-" in t.name]
    assert len(conn_threads) == 1


def test_default_responder_answers_chat_adapter_fields_with_types() -> None:
    req = SimRequest(
        "openai", "m", [{"role": "user", "content": f"What is 2 + 2?\n\n{CHAT_SENTENCE}"}], {}, {}
    )
    text = default_responder(req)
    assert text == (
        "[[ ## reasoning ## ]]\nLet me think step by step.\n\n"
        "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"
    )


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        ("must be formatted as a valid Python float", "0.5"),
        ("must be formatted as a valid Python bool", "True"),
        ("must be formatted as a valid Python list[int]", "[42]"),
        ("must be formatted as a valid Python dict[str, int]", "{}"),
        ("must be formatted as a valid Python Literal['yes', 'no']", "yes"),
        ("must exactly match (no extra characters) one of: red; blue", "red"),
        (
            'must adhere to the JSON schema: {"type": "object", "properties": '
            '{"city": {"type": "string"}, "pop": {"type": "integer"}}}',
            '{"city": "simulated city", "pop": 42}',
        ),
    ],
)
def test_default_responder_type_hints(hint: str, expected: str) -> None:
    sentence = (
        "Respond with the corresponding output fields, starting with the field "
        f"`[[ ## value ## ]]` ({hint}), and then ending with the marker for "
        "`[[ ## completed ## ]]`."
    )
    req = SimRequest("openai", "m", [{"role": "user", "content": sentence}], {}, {})
    assert default_responder(req) == f"[[ ## value ## ]]\n{expected}\n\n[[ ## completed ## ]]"


def test_default_responder_json_schema_response_format() -> None:
    schema = {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string"},
            "answer": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"$ref": "#/$defs/Kind"},
        },
        "$defs": {"Kind": {"enum": ["a", "b"]}},
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}
    req = SimRequest(
        "openai", "m", [{"role": "user", "content": "What is 3 + 4?"}], {"response_format": fmt}, {}
    )
    assert json.loads(default_responder(req)) == {
        "reasoning": "Let me think step by step.",
        "answer": 7,
        "tags": ["simulated tags"],
        "kind": "a",
    }


def test_default_responder_json_object_uses_the_named_fields() -> None:
    content = (
        "Respond with a JSON object in the following order of fields: `reasoning`, then "
        "`answer` (must be formatted as a valid Python int)."
    )
    req = SimRequest(
        "openai",
        "m",
        [{"role": "user", "content": content}],
        {"response_format": {"type": "json_object"}},
        {},
    )
    assert json.loads(default_responder(req)) == {
        "reasoning": "Let me think step by step.",
        "answer": 42,
    }


def test_responder_can_return_per_choice_texts_or_a_fault(
    sim_lm: SimLM, client: httpx.Client
) -> None:
    def responder(req: SimRequest) -> str | SimReply | Fault:
        if "fail" in req.last_user_text:
            return Fault.server_error(503)
        return SimReply(["a", "b"], finish_reason="length")

    sim_lm.respond_with(responder)
    ok = _chat(sim_lm, client, n=2).json()
    assert [c["message"]["content"] for c in ok["choices"]] == ["a", "b"]
    assert ok["choices"][0]["finish_reason"] == "length"
    failed = _chat(sim_lm, client, messages=[{"role": "user", "content": "please fail"}])
    assert failed.status_code == 503
    assert sim_lm.stats.injected == {"status_503": 1}


def test_responder_exception_becomes_a_500_and_is_kept(sim_lm: SimLM, client: httpx.Client) -> None:
    def broken(req: SimRequest) -> str:
        raise RuntimeError("boom")

    sim_lm.respond_with(broken)
    r = _chat(sim_lm, client)
    assert r.status_code == 500
    assert "boom" in r.json()["error"]["message"]
    assert isinstance(sim_lm.responder_errors[0], RuntimeError)
    assert sim_lm.stats.errors == {"responder_exception": 1}


def test_rate_limit_headers(sim_lm: SimLM, client: httpx.Client) -> None:
    sim_lm.inject(Fault.rate_limited(retry_after=2, retry_after_ms=1500))
    r = _chat(sim_lm, client)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"
    assert r.headers["retry-after-ms"] == "1500"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"


def test_provider_specific_error_bodies(sim_lm: SimLM, client: httpx.Client) -> None:
    sim_lm.inject(Fault.context_window(), times=2)
    openai = _chat(sim_lm, client).json()
    anthropic = client.post(
        sim_lm.anthropic_base + "/v1/messages", json={"model": "c", "messages": []}
    ).json()
    assert openai["error"]["code"] == "context_length_exceeded"
    assert anthropic == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "prompt is too long: 210000 tokens > 200000 maximum",
        },
    }


def test_faults_fire_in_order_then_stop(sim_lm: SimLM, client: httpx.Client) -> None:
    sim_lm.inject(Fault.server_error(500), times=2)
    sim_lm.inject(Fault.unauthorized())
    codes = [_chat(sim_lm, client).status_code for _ in range(4)]
    assert codes == [500, 500, 401, 200]
    assert sim_lm.faults.pending() == 0
    stats = sim_lm.stats
    assert (stats.requests, stats.served, stats.injected_total) == (4, 1, 3)


def test_fault_rate_with_seed_is_reproducible(client: httpx.Client) -> None:
    def run() -> list[int]:
        with SimLM(seed=1234) as sim:
            sim.inject_rate(Fault.server_error(), rate=0.5)
            return [_chat(sim, client).status_code for _ in range(20)]

    first, second = run(), run()
    assert first == second
    assert 2 < first.count(500) < 18


def test_fault_match_and_time_window(sim_lm: SimLM, client: httpx.Client) -> None:
    sim_lm.inject_rate(
        Fault.server_error(), rate=1.0, match=lambda r: r.model == "flaky", end_s=3600
    )
    sim_lm.inject_rate(Fault.server_error(502), rate=1.0, start_s=3600)  # not yet
    assert _chat(sim_lm, client, model="flaky").status_code == 500
    assert _chat(sim_lm, client, model="steady").status_code == 200


def test_malformed_and_truncated_bodies(sim_lm: SimLM, client: httpx.Client) -> None:
    sim_lm.inject(Fault.malformed_json())
    sim_lm.inject(Fault.truncated())
    garbage = _chat(sim_lm, client)
    assert garbage.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        garbage.json()
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        _chat(sim_lm, client)


def test_reset_closes_without_a_response(sim_lm: SimLM, client: httpx.Client) -> None:
    sim_lm.inject(Fault.reset())
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        _chat(sim_lm, client)
    assert _chat(sim_lm, client).status_code == 200


def test_truncated_stream_stops_after_n_frames(sim_lm: SimLM, client: httpx.Client) -> None:
    sim_lm.inject(Fault.truncated(after_chunks=2))
    frames: list[str] = []
    body = {"model": "m", "messages": [], "stream": True}

    def consume() -> None:
        with client.stream("POST", sim_lm.openai_base + "/chat/completions", json=body) as r:
            frames.extend(line for line in r.iter_lines() if line.startswith("data: "))

    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        consume()
    assert len(frames) == 2


def test_latency_constant_and_callable(client: httpx.Client) -> None:
    with SimLM(latency=0.2) as sim:
        start = time.monotonic()
        _chat(sim, client)
        assert time.monotonic() - start >= 0.19
        sim.latency = lambda req: 0.3 if req.model == "slow" else 0.0
        start = time.monotonic()
        _chat(sim, client, model="slow")
        assert time.monotonic() - start >= 0.29


def test_unknown_path_and_bad_json(sim_lm: SimLM, client: httpx.Client) -> None:
    assert client.post(sim_lm.url + "/v1/embeddings", json={}).status_code == 404
    bad = client.post(sim_lm.openai_base + "/chat/completions", content=b"{nope")
    assert bad.status_code == 400
    assert sim_lm.stats.errors == {"not_found": 1, "bad_json": 1}
    assert client.get(sim_lm.url + "/health").json() == {"status": "ok"}


def test_stop_ends_hangs_joins_threads_and_names_them() -> None:
    sim = SimLM(thread_name_prefix="sim-lm-stoptest").start()
    sim.inject(Fault.hang(60.0), times=3)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(sim.openai_base + "/chat/completions", json={"model": "m"}, timeout=30)
        except httpx.HTTPError as exc:
            errors.append(exc)

    callers = [threading.Thread(target=call) for _ in range(3)]
    for t in callers:
        t.start()
    wait_until(lambda: sim.request_count >= 3, timeout=30.0, what="3 hung requests")
    ours = [t for t in threading.enumerate() if t.name.startswith("sim-lm-stoptest")]
    assert len(ours) == 4  # the accept loop and three connections

    start = time.monotonic()
    sim.stop()
    assert time.monotonic() - start < 20.0, "stop() must cut the 60 s hangs short"
    for t in callers:
        t.join(5)
    assert len(errors) == 3
    assert not [t for t in threading.enumerate() if t.name.startswith("sim-lm-stoptest")]
    assert sim.abandoned_threads == []
    sim.stop()  # idempotent


def test_requests_can_go_unrecorded(client: httpx.Client) -> None:
    with SimLM(record_requests=False) as sim:
        _chat(sim, client)
        assert sim.requests == []
        assert sim.request_count == 1
        sim.reset_counters()
        assert sim.stats.requests == 0


def test_url_needs_a_running_server() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        _ = SimLM().url
