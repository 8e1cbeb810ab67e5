"""Azure OpenAI and Gemini providers against SimLM speaking each wire format on loopback:
addressing, authentication, translation, streaming, usage and errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors import _settings as settings
from dspy_actors.lm import LM, RetryPolicy
from dspy_actors.lm.errors import (
    AuthenticationError,
    BadRequest,
    ContextWindowExceeded,
    RateLimited,
    ServerError,
)
from dspy_actors.testing import SimLM
from dspy_actors.testing._faults import Fault
from dspy_actors.testing._sim_wire import error_body

KEY = "sk-test-secret-4242"
FAST = RetryPolicy(max_retries=2, base_delay=0.001, max_delay=0.005)


@pytest.fixture
def sim() -> Iterator[SimLM]:
    with SimLM(api_key=KEY) as server:
        yield server


@pytest.fixture
def lms() -> Iterator[list[LM]]:
    made: list[LM] = []
    yield made
    for lm in made:
        lm.close()


def _azure(sim: SimLM, lms: list[LM], **kw: Any) -> LM:
    kw.setdefault("api_key", KEY)
    kw.setdefault("api_base", sim.url)
    lm = LM("azure/my-gpt4o", cache=False, retry_policy=FAST, **kw)
    lms.append(lm)
    return lm


def _gemini(sim: SimLM, lms: list[LM], **kw: Any) -> LM:
    kw.setdefault("api_key", KEY)
    kw.setdefault("api_base", sim.url + "/v1beta")
    lm = LM("gemini/gemini-2.5-flash", cache=False, retry_policy=FAST, **kw)
    lms.append(lm)
    return lm


# -------------------------------------------------------------------- Azure OpenAI


def test_azure_addresses_the_deployment_with_api_version_and_api_key_header(
    sim: SimLM, lms: list[LM]
) -> None:
    lm = _azure(sim, lms, api_version="2024-06-01", temperature=0.3)
    settings.configure(lm=lm)
    pred = dsa.Predict("question -> answer")(question="What is 2 + 3?")
    assert pred.answer == "5"
    (request,) = sim.requests
    assert request.provider == "azure"
    assert request.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert request.model == "my-gpt4o"
    assert request.headers["api-key"] == KEY
    assert "authorization" not in request.headers
    assert "api_version" not in request.body  # it went in the URL
    assert request.body["temperature"] == 0.3
    assert lm.endpoint.endswith("?api-version=2024-06-01")
    assert lm.usage.prompt_tokens > 0


def test_azure_streams_and_counts_usage(sim: SimLM, lms: list[LM]) -> None:
    lm = _azure(sim, lms)
    events = list(lm.stream([{"role": "user", "content": "What is 4 + 4?"}]))
    text = "".join(e.text for e in events if not e.done)
    assert events[-1].response is not None
    assert events[-1].response.outputs == [text]
    assert events[-1].response.usage.completion_tokens > 0
    assert sim.requests[-1].stream


def test_azure_errors_map_to_the_taxonomy(sim: SimLM, lms: list[LM]) -> None:
    lm = _azure(sim, lms)
    sim.inject(Fault.rate_limited(retry_after=0))
    assert lm("hi")  # retried after the 429
    sim.inject(Fault.rate_limited(retry_after=0), times=5)
    with pytest.raises(RateLimited):
        lm("hi")
    sim.clear_faults()
    sim.inject(Fault.context_window())
    with pytest.raises(ContextWindowExceeded):
        lm("hi")
    wrong = _azure(sim, lms, api_key="wrong-key")
    with pytest.raises(AuthenticationError) as caught:
        wrong("hi")
    assert "wrong-key" not in str(caught.value)


def test_azure_takes_its_settings_from_the_environment(
    sim: SimLM, lms: list[LM], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_API_KEY", KEY)
    monkeypatch.setenv("AZURE_API_BASE", sim.url)
    monkeypatch.setenv("AZURE_API_VERSION", "2025-01-01-preview")
    lm = LM("azure/env-deploy", cache=False)
    lms.append(lm)
    assert lm("What is 1 + 1?") == ["2"]
    assert lm.endpoint == f"{sim.url}/openai/deployments/env-deploy/chat/completions" + (
        "?api-version=2025-01-01-preview"
    )


def test_azure_without_a_base_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_API_BASE", raising=False)
    with pytest.raises(ValueError, match="AZURE_API_BASE"):
        LM("azure/my-deploy", api_key="k")


def test_a_worker_process_copy_keeps_the_api_version(sim: SimLM, lms: list[LM]) -> None:
    lm = _azure(sim, lms, api_version="2024-02-01")
    copy = LM.from_worker_spec(lm.worker_spec())
    lms.append(copy)
    assert copy.endpoint == lm.endpoint


def test_served_programs_run_on_azure(sim: SimLM, lms: list[LM], tmp_path: Any) -> None:
    with dsa.start(lm=_azure(sim, lms), data_dir=tmp_path, lm_max_in_flight=2) as app:
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        assert qa.call(question="What is 3 + 4?").answer == "7"


# -------------------------------------------------------------------- Gemini


def test_gemini_translates_messages_and_parameters_to_generate_content(
    sim: SimLM, lms: list[LM]
) -> None:
    lm = _gemini(sim, lms, temperature=0.2, max_tokens=256)
    settings.configure(lm=lm)
    qa = dsa.Predict("question -> answer: int")
    qa.demos = [dsa.Example(question="What is 1 + 1?", answer=2)]
    pred = qa(question="What is 6 + 1?", config={"stop": "END", "top_k": 5})
    assert pred.answer == 7
    (request,) = sim.requests
    assert request.provider == "gemini"
    assert request.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert request.headers["x-goog-api-key"] == KEY
    body = request.body
    assert "Your input fields are" in body["systemInstruction"]["parts"][0]["text"]
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["generationConfig"] == {
        "temperature": 0.2,
        "maxOutputTokens": 256,
        "stopSequences": ["END"],
        "topK": 5,
    }
    usage = lm.usage
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0


def test_gemini_candidates_are_completions(sim: SimLM, lms: list[LM]) -> None:
    lm = _gemini(sim, lms)
    response = lm.complete([{"role": "user", "content": "What is 2 + 2?"}], n=3)
    assert len(response.outputs) == 3
    assert response.finish_reasons == ["stop"] * 3
    assert sim.requests[-1].body["generationConfig"]["candidateCount"] == 3


def test_gemini_streams_over_sse_and_counts_usage(sim: SimLM, lms: list[LM]) -> None:
    sim.respond_with(lambda _r: "five and five make ten")
    lm = _gemini(sim, lms)
    events = list(lm.stream([{"role": "user", "content": "What is 5 + 5?"}]))
    deltas = [e.text for e in events if not e.done]
    assert len(deltas) == 5
    final = events[-1].response
    assert final is not None
    assert final.outputs == ["".join(deltas)]
    assert final.usage.completion_tokens > 0
    assert final.finish_reasons == ["stop"]
    assert sim.requests[-1].path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"


def test_gemini_json_mode_for_the_json_adapter(sim: SimLM, lms: list[LM]) -> None:
    settings.configure(lm=_gemini(sim, lms), adapter=dsa.JSONAdapter())
    pred = dsa.Predict("question -> answer")(question="What is 2 + 2?")
    assert pred.answer == "4"
    assert sim.requests[-1].body["generationConfig"]["responseMimeType"] == "application/json"


def test_gemini_errors_map_to_the_taxonomy(sim: SimLM, lms: list[LM]) -> None:
    lm = _gemini(sim, lms)
    sim.inject(Fault.status_error(503, error="overloaded"), times=5)
    with pytest.raises(ServerError, match="overloaded"):
        lm("hi")
    sim.clear_faults()
    sim.inject(Fault.rate_limited(retry_after=0), times=5)
    with pytest.raises(RateLimited):
        lm("hi")
    sim.clear_faults()
    sim.inject(Fault.context_window())
    with pytest.raises(ContextWindowExceeded):
        lm("hi")
    # Gemini answers a bad key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID.
    sim.inject(Fault.status_error(400, body=error_body("gemini", "auth")))
    with pytest.raises(AuthenticationError):
        lm("hi")
    with pytest.raises(BadRequest, match="has no parameter 'logit_bias'"):
        lm("hi", logit_bias={"1": 2})


def test_rollout_id_is_never_sent_to_any_provider(sim: SimLM, lms: list[LM]) -> None:
    for lm in (_azure(sim, lms), _gemini(sim, lms)):
        with dsa.context(rollout_id=3):
            lm("What is 1 + 2?")
        assert "rollout_id" not in str(sim.requests[-1].body)
