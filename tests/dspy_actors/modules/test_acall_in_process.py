"""In-process ``await module.acall(...)`` for DSPy users: Predict and ChainOfThought
``aforward``, a composite with its own ``aforward``, and the default for one without."""

from __future__ import annotations

import asyncio

import pytest

from dspy_actors import _settings as settings
from dspy_actors.lm.errors import ServerError
from dspy_actors.modules._chain_of_thought import ChainOfThought
from dspy_actors.modules._predict import NoLMConfiguredError, Predict
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction
from dspy_actors.testing._faults import Fault
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.conftest import MakeLM


class TwoHops(Module):
    def __init__(self) -> None:
        self.outline = Predict("question -> outline")
        self.answer = ChainOfThought("question, outline -> answer")

    def forward(self, question: str) -> Prediction:
        outline = self.outline(question=question).outline
        return self.answer(question=question, outline=outline)  # type: ignore[no-any-return]

    async def aforward(self, question: str) -> Prediction:
        outline = (await self.outline.acall(question=question)).outline
        return await self.answer.acall(question=question, outline=outline)  # type: ignore[no-any-return]


class SyncOnly(TwoHops):
    aforward = Module.aforward  # the default: forward in a worker thread


def test_predict_acall_answers_and_meters_usage(make_lm: MakeLM, sim_lm: SimLM) -> None:
    predict = Predict("question -> answer")
    predict.lm = make_lm()
    result = asyncio.run(predict.acall(question="What is 2+2?"))
    assert result.answer
    assert len(sim_lm.requests) == 1
    assert predict.usage.total_tokens > 0


def test_chain_of_thought_acall_has_reasoning(make_lm: MakeLM) -> None:
    with settings.context(lm=make_lm()):
        result = asyncio.run(ChainOfThought("question -> answer").acall(question="q"))
    assert result.reasoning
    assert result.answer


@pytest.mark.parametrize("program_class", [TwoHops, SyncOnly])
def test_a_composite_acall_runs_every_hop_concurrently_with_others(
    make_lm: MakeLM, sim_lm: SimLM, program_class: type[TwoHops]
) -> None:
    program = program_class()
    program.set_lm(make_lm())

    async def main() -> list[Prediction]:
        return await asyncio.gather(*(program.acall(question=f"q{i}") for i in range(20)))

    results = asyncio.run(main())
    assert all(r.answer for r in results)
    assert len(sim_lm.requests) == 40  # two hops each
    assert program.usage.total_tokens > 0


def test_an_lm_error_is_raised_from_acall(make_lm: MakeLM, sim_lm: SimLM) -> None:
    sim_lm.inject(Fault.server_error(500), times=10)
    predict = Predict("question -> answer")
    predict.lm = make_lm()
    with pytest.raises(ServerError):
        asyncio.run(predict.acall(question="q"))


def test_acall_without_an_lm_says_how_to_configure_one() -> None:
    with pytest.raises(NoLMConfiguredError, match="configure"):
        asyncio.run(Predict("question -> answer").acall(question="q"))
