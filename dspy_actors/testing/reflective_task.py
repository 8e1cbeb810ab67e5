"""A task where instructions matter, for the reflective optimizers (GEPA, SIMBA).

The program is ``word -> answer``. Each word belongs to a hidden *family*, and each family
has a rule the simulated LM follows only when it is told:

* a word starting with a vowel is answered reversed (``apple`` -> ``elppa``);
* any other word of six or more letters is answered in capitals (``garden`` -> ``GARDEN``);
* any other word is answered with dashes between its letters (``stone`` -> ``s-t-o-n-e``).

The task LM (:func:`responder`) applies a family's rule when the system message (the
instructions) carries that rule's key phrase, or when a demo of the same family is in the
prompt (it learns from the example); otherwise it echoes the word, except for a
deterministic "lucky guess" on about one request in seven (a digest of the word, the
instruction and the demos decides, not the adapter's layout), which gives SIMBA the
per-example variance it looks for.

The metric (:func:`metric`) returns ``Prediction(score=..., feedback=...)``: a wrong answer's
feedback states the rule the answer broke. A reflection LM that reads feedback (GEPA's proposal:
``current_instruction`` and ``examples_with_feedback`` -> ``new_instruction``, as DSPy 3.4.1
asks it; or the ``gepa`` package's raw prompt with the instruction in a fenced block)
answers with the current instruction plus every rule it saw in the feedback. A SIMBA-style
advice request (outputs ``discussion`` and ``module_advice``) gets, for each module, the
rule that explains the better trajectory's answer. So an optimizer improves the score
exactly as far as it carries what the feedback (or the better trajectory) taught into the
instructions or demos.

Everything is a deterministic function of the request, so a seed fixes an optimizer's run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dspy_actors.lm import LM, RetryPolicy
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.prediction import Prediction
from dspy_actors.testing._sim_wire import message_text
from dspy_actors.testing.sim_lm import SimLM, SimReply, SimRequest
from dspy_actors.testing.sim_responder import requested_fields

__all__ = [
    "BASE_INSTRUCTION",
    "FAMILIES",
    "RULES",
    "WORDS",
    "answer_for",
    "dataset",
    "family",
    "metric",
    "reflective_lm",
    "responder",
]

WORDS = [
    "apple", "stone", "garden", "ocean", "piano", "silver", "island", "cloud", "planet",
    "echo", "tiger", "window", "umbrella", "river", "castle", "orbit", "maple", "bridge",
    "amber", "lemon", "harbor", "igloo", "candle", "frost", "elbow", "meadow", "nest",
    "opal", "rocket", "tulip", "anchor", "violin", "storm", "urchin", "pepper", "moss",
]  # fmt: skip
FAMILIES = ("vowel", "long", "short")
RULES = {
    "vowel": "A word starting with a vowel is answered reversed.",
    "long": "Any other word of six or more letters is answered in capitals.",
    "short": "Any other word is answered with dashes between its letters.",
}
# What the task LM looks for in the instructions to apply a family's rule.
_KEYS = {"vowel": "answered reversed", "long": "answered in capitals", "short": "with dashes"}
BASE_INSTRUCTION = "Given the word, produce the answer."
GUESS_ONE_IN = 7

_FIELD = re.compile(r"\[\[ ## word ## \]\]\s*(\S+)")
_ANY_RULE = re.compile("|".join(re.escape(r) for r in RULES.values()))
_CURRENT = re.compile(r"\[\[ ## current_instruction ## \]\]\n(.*?)\n\n\[\[ ## ", re.DOTALL)
_FENCE = re.compile(r"```(?:[a-z]*)\n?(.*?)```", re.DOTALL)


def family(word: str) -> str:
    """The hidden family of ``word``."""
    if word[:1].lower() in "aeiou":
        return "vowel"
    return "long" if len(word) >= 6 else "short"


def answer_for(word: str) -> str:
    """The right answer for ``word``."""
    kind = family(word)
    if kind == "vowel":
        return word[::-1]
    if kind == "long":
        return word.upper()
    return "-".join(word)


def dataset(start: int, count: int) -> list[Example]:
    """``count`` examples from :data:`WORDS` starting at ``start`` (inputs: ``word``)."""
    return [
        Example(word=w, answer=answer_for(w)).with_inputs("word")
        for w in WORDS[start : start + count]
    ]


def metric(
    example: Example,
    prediction: Any,
    trace: Any = None,
    pred_name: str | None = None,
    pred_trace: Any = None,
) -> Prediction:
    """Score 1 or 0, with feedback naming the rule a wrong answer broke (DSPy's GEPA metric
    protocol: five arguments, a ``Prediction(score=, feedback=)``)."""
    got = str(getattr(prediction, "answer", "") or "").strip()
    want = str(example.answer)
    if got == want:
        return Prediction(score=1.0, feedback=f"Correct: {want!r}.")
    rule = RULES[family(str(example.word))]
    return Prediction(score=0.0, feedback=f"Expected {want!r} but got {got!r}. {rule}")


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _chat(values: dict[str, str]) -> str:
    parts = [f"[[ ## {k} ## ]]\n{v}" for k, v in values.items()]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


def _task_answer(request: SimRequest) -> str:
    system = "".join(message_text(m) for m in request.messages if m.get("role") == "system")
    users = [message_text(m) for m in request.messages if m.get("role") == "user"]
    match = _FIELD.search(users[-1] if users else "")
    word = match.group(1) if match else ""
    kind = family(word) if word else ""
    demo_kinds = {family(m.group(1)) for text in users[:-1] for m in _FIELD.finditer(text)}
    if kind and (_KEYS[kind] in system or kind in demo_kinds):
        return answer_for(word)
    # The guess depends on what the program is (its instruction, its demos' words), not on
    # how an adapter lays out the prompt, so DSPy's and ours guess alike for one program.
    objective = " ".join(system.rsplit("objective is:", 1)[-1].split())
    program = (
        f"{word}|{objective}|{sorted(m.group(1) for t in users[:-1] for m in _FIELD.finditer(t))}"
    )
    if word and _digest(program) % GUESS_ONE_IN == 0:
        return answer_for(word)
    return word


def _improved(current: str, text: str) -> str:
    """The current instruction plus every rule ``text`` (the feedback shown) stated."""
    taught = [r for r in RULES.values() if r in text and r not in current]
    return " ".join([current, *taught]).strip()


def _reflection(text: str) -> str:
    """The ``gepa`` package's raw prompt: the current instruction is the first fenced
    block; the answer is the new instruction in a fenced block."""
    fences = _FENCE.findall(text)
    current = fences[0].strip() if fences else BASE_INSTRUCTION
    return "```\n" + _improved(current, text) + "\n```"


def _proposal(request: SimRequest, text: str) -> str:
    """DSPy 3.4.1's GEPA proposer (``current_instruction``, ``examples_with_feedback`` ->
    ``new_instruction``, JSON adapter), answered as JSON or in chat markers."""
    user = request.last_user_text
    match = _CURRENT.search(user)
    current = match.group(1).strip() if match else BASE_INSTRUCTION
    new = _improved(current, user)
    fmt = request.body.get("response_format")
    if fmt is not None or "[[ ## new_instruction ## ]]" not in user:
        return json.dumps({"new_instruction": new})
    return _chat({"new_instruction": new})


def _advice(text: str, names: list[str]) -> str:
    """SIMBA-style: for each module, the rule that explains the better trajectory's answer
    (found by checking which family's transformation its output is)."""
    better = text.split("better_program_trajectory", 1)[-1]
    advice = "Follow the instructions closely."
    for word in WORDS:
        if re.search(rf"\b{word}\b", text) and answer_for(word) in better:
            advice = f"If the word looks like {word!r}: {RULES[family(word)]}"
            break
    values = {
        "discussion": "The better trajectory applied the rule the worse one missed.",
        "module_advice": json.dumps({n: advice for n in names}),
    }
    return _chat(values)


def _module_names(text: str) -> list[str]:
    """The module names of an advice request: a JSON list, or the adapter's «name» items."""
    found = re.findall(r"\[\[ ## module_names ## \]\]\n(.*?)(?:\n\n|\Z)", text, re.DOTALL)
    value = found[-1].strip() if found else ""
    try:
        names = json.loads(value)
        if isinstance(names, list) and names:
            return [str(n) for n in names]
    except ValueError:
        pass
    return re.findall(r"«(.*?)»", value) or ["self"]


def responder(request: SimRequest) -> str | SimReply:
    """The SimLM responder of the task: task calls, reflections and advice requests."""
    text = "\n".join(message_text(m) for m in request.messages)
    names = [name for name, _ in requested_fields(request.last_user_text)]
    if "module_advice" in names:
        return SimReply([_advice(text, _module_names(text))] * request.n)
    if "new_instruction" in names:
        return SimReply([_proposal(request, text)] * request.n)
    if "new instruction" in text and "```" in text:
        return SimReply([_reflection(text)] * request.n)
    answer = _task_answer(request)
    return _chat({n: answer for n in (names or ["answer"])})


@contextmanager
def reflective_lm(latency: float = 0.0, **lm_kwargs: Any) -> Iterator[tuple[SimLM, LM]]:
    """A SimLM serving the task (``latency`` seconds per answer) and an uncached LM on it,
    both closed afterwards."""
    with SimLM(responder, latency=latency) as sim:
        lm = LM(
            "openai/sim-reflective",
            api_base=sim.openai_base,
            api_key="k",
            cache=lm_kwargs.pop("cache", False),
            retry_policy=lm_kwargs.pop(
                "retry_policy", RetryPolicy(max_retries=1, base_delay=0.001, max_delay=0.005)
            ),
            **lm_kwargs,
        )
        try:
            yield sim, lm
        finally:
            lm.close()
