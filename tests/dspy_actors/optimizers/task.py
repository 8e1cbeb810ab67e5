"""A task where optimization pays: reverse a word. The simulated LM answers right only when
the prompt holds demos or an instruction saying "carefully"; otherwise it answers "unknown".
Its instruction proposals (for COPRO/MIPROv2) are a deterministic function of the prompt.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from dspy_actors.lm import LM
from dspy_actors.primitives.example import Example
from dspy_actors.testing._sim_clients import lm_on
from dspy_actors.testing._sim_wire import message_text
from dspy_actors.testing.sim_lm import SimLM, SimReply, SimRequest
from dspy_actors.testing.sim_responder import requested_fields

WORDS = [
    "apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "piano", "lemon", "candle",
    "forest", "garden", "silver", "rocket", "window", "pepper", "planet", "violin", "bridge",
    "castle", "desert", "meadow", "harbor", "island",
]  # fmt: skip
MAGIC = "carefully"
PROPOSALS = [
    "Answer the question.",
    f"Reverse the word {MAGIC}, letter by letter.",
    "Be concise.",
    f"Read the word {MAGIC} and write it backwards.",
    "Respond quickly.",
]
_WORD = re.compile(r"Reverse the word: (\w+)")


def dataset(start: int, count: int) -> list[Example]:
    return [
        Example(question=f"Reverse the word: {w}", answer=w[::-1]).with_inputs("question")
        for w in WORDS[start : start + count]
    ]


def metric(example: Example, prediction: Any, trace: Any = None) -> bool:
    return str(example.answer).strip() == str(getattr(prediction, "answer", "")).strip()


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _chat(values: dict[str, str]) -> str:
    parts = [f"[[ ## {k} ## ]]\n{v}" for k, v in values.items()]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


def responder(request: SimRequest) -> str | SimReply:
    text = request.last_user_text
    names = [name for name, _ in requested_fields(text)] or ["answer"]
    if "proposed_instruction" in names:
        first = _digest(text)
        texts = [
            _chat({n: PROPOSALS[(first + i) % len(PROPOSALS)] for n in names})
            for i in range(request.n)
        ]
        return SimReply(texts)
    system = "".join(message_text(m) for m in request.messages if m.get("role") == "system")
    has_demos = any(m.get("role") == "assistant" for m in request.messages)
    match = _WORD.search(text)
    word = match.group(1) if match else ""
    answer = word[::-1] if (has_demos or MAGIC in system) and word else "unknown"
    values = {n: ("I reverse the letters." if n == "reasoning" else answer) for n in names}
    return _chat(values)


@contextmanager
def task_lm(**kw: Any) -> Iterator[tuple[SimLM, LM]]:
    """A SimLM serving the task and an uncached LM on it (closed afterwards)."""
    with SimLM(responder) as sim:
        lm = lm_on(sim, "openai/sim-task", api_key="k", **kw)
        try:
            yield sim, lm
        finally:
            lm.close()


MetricFn = Callable[[Example, Any], bool]


@pytest.fixture(name="sim")
def task_sim() -> Iterator[SimLM]:
    """Fixture ``sim``: a SimLM serving the task, 10 ms per answer (import ``task_sim``
    into a test module)."""
    with SimLM(responder, latency=0.01) as server:
        yield server


@pytest.fixture(name="lm")
def task_lm_client(sim: SimLM) -> Iterator[LM]:
    """Fixture ``lm``: an LM on ``sim`` (``lm_on``: uncached, fast retries), closed after
    (import ``task_lm_client`` into a test module)."""
    client = lm_on(sim, "openai/sim-task", api_key="k")
    yield client
    client.close()
