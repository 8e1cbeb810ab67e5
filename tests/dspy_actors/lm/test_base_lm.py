"""``dsa.BaseLM``: DSPy's custom-LM contract, in-process (Predict, ChainOfThought, ReAct,
the LM called directly, its state and history)."""

from __future__ import annotations

import asyncio
import io

import pytest

import dspy_actors as dsa
from dspy_actors import _settings
from dspy_actors.lm import UsageMeter, metering
from dspy_actors.testing import SimLM
from tests.reliability.custom_lms import ComputingLM, HttpAforwardLM, HttpForwardLM


def test_called_directly_returns_outputs_and_keeps_dspy_history(sim_lm: SimLM) -> None:
    lm = HttpForwardLM(sim_lm.openai_base, temperature=0.3)
    assert lm.kwargs == {"temperature": 0.3, "max_tokens": None}
    assert lm.model_type == "chat"
    with metering(UsageMeter()) as meter:
        outputs = lm("Say hi")
    assert len(outputs) == 1
    assert isinstance(outputs[0], str)
    assert outputs[0]
    assert meter.total.prompt_tokens > 0  # the server's usage, counted
    [entry] = lm.history
    assert entry["messages"] == [{"role": "user", "content": "Say hi"}]
    assert entry["outputs"] == outputs
    assert entry["model_type"] == "chat"
    assert entry["response"]["choices"]  # the raw OpenAI-shaped response, as in DSPy
    assert sim_lm.requests[-1].body["temperature"] == 0.3  # forward merged self.kwargs
    printed = io.StringIO()
    assert "Say hi" in lm.inspect_history(1, file=printed)
    assert "Say hi" in printed.getvalue()


def test_predict_chain_of_thought_and_react_run_on_it(sim_lm: SimLM) -> None:
    lm = HttpForwardLM(sim_lm.openai_base)
    with dsa.context(lm=lm):
        assert dsa.Predict("question -> answer")(question="2+2?").answer
        assert dsa.ChainOfThought("question -> answer")(question="2+2?").answer

        def lookup(term: str) -> str:
            """Look a term up."""
            return f"{term} is a word"

        agent = dsa.ReAct("question -> answer", tools=[lookup], max_iters=3)
        assert agent(question="what is a cat?").answer
    assert len(lm.history) >= 3
    assert all(r.model == "sim-custom" for r in sim_lm.requests)


def test_a_computing_lm_answers_and_its_crash_is_a_clear_lm_error() -> None:
    lm = ComputingLM()
    with dsa.context(lm=lm):
        assert dsa.Predict("question -> answer")(question="abc").answer == "ABC"
        with pytest.raises(dsa.LMForwardError) as caught:
            dsa.Predict("question -> answer")(question="please crash")
    assert isinstance(caught.value, dsa.LMError)
    assert "ComputingLM.forward raised RuntimeError: cannot answer 'please crash'" in str(
        caught.value
    )
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_a_response_that_is_not_a_chat_completion_is_malformed() -> None:
    class Broken(dsa.BaseLM):
        def forward(self, prompt: object = None, messages: object = None, **kw: object) -> object:
            return {"text": "no choices here"}

    with pytest.raises(dsa.MalformedResponse, match=r"Broken\.forward returned dict"):
        Broken("broken")("hi")


def test_aforward_is_awaited_and_cut_to_its_timeout(sim_lm: SimLM) -> None:
    lm = HttpAforwardLM(sim_lm.openai_base)
    outputs = asyncio.run(lm.acall("hello"))
    assert outputs
    assert outputs[0]

    class Slow(dsa.BaseLM):
        async def aforward(
            self, prompt: object = None, messages: object = None, **kw: object
        ) -> object:
            await asyncio.sleep(30)
            raise AssertionError("not cut short")

    with pytest.raises(dsa.LMTimeout, match=r"Slow\.aforward gave no answer within 0\.05s"):
        asyncio.run(Slow("slow").acomplete([{"role": "user", "content": "x"}], timeout=0.05))


def test_forward_only_lm_serves_async_callers_in_a_thread(sim_lm: SimLM) -> None:
    lm = HttpForwardLM(sim_lm.openai_base)
    assert not lm.has_aforward()
    assert asyncio.run(lm.acall("hello"))


def test_copy_and_state_follow_dspy() -> None:
    lm = ComputingLM(temperature=0.5, api_key="sk-never-dumped", rollout_id=1)
    lm("what is [[ ## question ## ]]\nx")
    other = lm.copy(temperature=0.9, rollout_id=None, model_type="text")
    assert other.kwargs["temperature"] == 0.9
    assert "rollout_id" not in other.kwargs
    assert other.model_type == "text"
    assert other.history == []
    assert lm.kwargs["temperature"] == 0.5  # the original is untouched
    assert len(lm.history) == 1

    state = lm.dump_state()
    assert "api_key" not in state
    assert state["_dspy_lm_class"].endswith("custom_lms.ComputingLM")
    with pytest.raises(ValueError, match="allow_custom_lm_class=True"):
        dsa.BaseLM.load_state(state)
    rebuilt = dsa.BaseLM.load_state(state, allow_custom_lm_class=True)
    assert isinstance(rebuilt, ComputingLM)
    assert rebuilt.kwargs["temperature"] == 0.5


def test_its_own_callbacks_hear_a_direct_call_and_its_crash() -> None:
    heard: list[tuple[str, object]] = []

    class Recorder(dsa.BaseCallback):
        def on_lm_start(self, call_id: str, instance: object, inputs: dict[str, object]) -> None:
            heard.append(("start", inputs["messages"]))

        def on_lm_end(
            self, call_id: str, outputs: object, exception: BaseException | None = None
        ) -> None:
            heard.append(("end", outputs if exception is None else type(exception).__name__))

    lm = ComputingLM(callbacks=[Recorder()])
    assert lm("[[ ## question ## ]]\nab") == ["[[ ## answer ## ]]\nAB\n\n[[ ## completed ## ]]"]
    with pytest.raises(dsa.LMForwardError):
        lm("[[ ## question ## ]]\ncrash")
    assert [kind for kind, _ in heard] == ["start", "end", "start", "end"]
    assert heard[1][1] == ["[[ ## answer ## ]]\nAB\n\n[[ ## completed ## ]]"]
    assert heard[3][1] == "LMForwardError"


@pytest.mark.parametrize("method", ["forward", "aforward"])
def test_configure_and_context_refuse_an_lm_subclass_defining_forward(method: str) -> None:
    """As ``dsa.start`` does (tests/reliability/test_custom_lm_served.py): dsa.LM never
    calls forward/aforward, so in-process the override would be skipped silently."""

    def never_called(self: dsa.LM, *args: object, **kwargs: object) -> object:
        raise AssertionError("never called")

    misplaced = type("Misplaced", (dsa.LM,), {method: never_called})
    lm = misplaced("openai/sim-model", api_base="http://127.0.0.1:9/v1", api_key="k")
    message = rf"Misplaced subclasses dsa.LM and defines {method}\(\).*dsa.BaseLM"
    try:
        with pytest.raises(TypeError, match=rf"^dsa.configure\(lm=\.\.\.\): {message}"):
            dsa.configure(lm=lm)
        with (
            pytest.raises(TypeError, match=rf"^dsa.context\(lm=\.\.\.\): {message}"),
            dsa.context(lm=lm),
        ):
            pass
        assert _settings.get("lm") is not lm, "a refused LM is not configured"
    finally:
        lm.close()
