"""A retrieval-augmented (RAG) program, served by the supervised runtime with ``dsa.start``.

Run it:  .venv/bin/python examples/rag_service.py

The program is ordinary DSPy-style code: a retriever (plain Python over a small corpus)
and a ChainOfThought that answers from the passages it found. ``app.serve`` turns it into
a supervision subtree, one actor per module, and returns a handle that any number of
threads (or asyncio tasks) can call at once. Watch for:

- the answers, and which passages each one was given;
- many calls at once (``batch``) and from asyncio (``acall``);
- a crash of the answering module's actor in the middle: its supervisor restarts it and
  the next calls are answered as before;
- the live tree, and the tokens the program spent.

The LM is SimLM, a simulated OpenAI-compatible server on loopback. For a real provider,
pass ``dsa.LM("openai/gpt-4o-mini")`` (key from OPENAI_API_KEY): see docs/providers.md.
"""

from __future__ import annotations

import asyncio
import re
import tempfile

import dspy_actors as dsa
import supervisors
from dspy_actors.testing import SimLM, SimRequest
from dspy_actors.testing.sim_responder import scripted

CORPUS = [
    "The Moon orbits the Earth once every 27.3 days.",
    "Honey bees communicate the direction of flowers with a waggle dance.",
    "Mount Etna, in Sicily, is one of the most active volcanoes in the world.",
    "Tides are caused mainly by the Moon's gravity pulling on the oceans.",
    "A prime number has exactly two divisors: one and itself.",
    "The Roman Empire was split into a western and an eastern half in 395.",
]


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 3}


class Retrieve(dsa.Module):
    """The k passages sharing the most words with the question (a stand-in for a vector
    search: any Python code can be a module)."""

    def __init__(self, corpus: list[str], k: int = 2) -> None:
        super().__init__()
        self.corpus = corpus
        self.k = k

    def forward(self, question: str) -> dsa.Prediction:
        asked = _words(question)
        ranked = sorted(self.corpus, key=lambda p: len(asked & _words(p)), reverse=True)
        return dsa.Prediction(passages=ranked[: self.k])


class RAG(dsa.Module):
    """Retrieve passages, then answer from them."""

    def __init__(self) -> None:
        super().__init__()
        self.retrieve = Retrieve(CORPUS)
        self.answer = dsa.ChainOfThought("context: list[str], question -> answer")

    def forward(self, question: str) -> dsa.Prediction:
        passages = self.retrieve(question=question).passages
        prediction = self.answer(context=passages, question=question)
        return dsa.Prediction(answer=prediction.answer, passages=passages)


def answer_from_context(request: SimRequest) -> str:
    """The simulated LM's reply: the first passage it was given, as the answer (a real LM
    would write a sentence of its own from them)."""
    prompt = request.last_user_text
    given = sorted((prompt.find(p), p) for p in CORPUS if p in prompt)
    passage = given[0][1] if given else "I do not know."
    return (
        "[[ ## reasoning ## ]]\nThe first passage answers the question.\n\n"
        f"[[ ## answer ## ]]\n{passage}\n\n[[ ## completed ## ]]"
    )


QUESTIONS = [
    "How long does the Moon take to orbit the Earth?",
    "How do honey bees tell each other where flowers are?",
    "What causes the tides?",
    "Which volcano in Sicily is very active?",
]


def main() -> None:
    supervisors.set_log_level("error")  # the crash below is on purpose; keep the log quiet
    with (
        SimLM(scripted([("[[ ## context ## ]]", answer_from_context)])) as sim,
        tempfile.TemporaryDirectory(prefix="rag-example-") as data_dir,
        dsa.start(
            lm=dsa.LM("openai/gpt-4o-mini", api_base=sim.openai_base, api_key="sim"),
            name="rag-demo",
            data_dir=data_dir,  # where the learned state and dead letters live
        ) as app,
    ):
        rag = app.serve("rag", RAG())

        print("One call, from this thread:")
        first = rag.call(question=QUESTIONS[0])
        print(f"  Q: {QUESTIONS[0]}\n  A: {first.answer}\n  from: {first.passages}\n")

        print("Many calls at once (at most 4 in flight):")
        for question, prediction in zip(
            QUESTIONS, rag.batch([{"question": q} for q in QUESTIONS], concurrency=4), strict=True
        ):
            print(f"  {question} -> {prediction.answer}")

        async def ask_from_asyncio() -> list[str]:
            answers = await asyncio.gather(*(rag.acall(question=q) for q in QUESTIONS[:2]))
            return [a.answer for a in answers]

        print("\nFrom asyncio:", asyncio.run(ask_from_asyncio()))

        # Crash the answering module's actor, as a bug or a kill would: its supervisor
        # restarts it (with its learned state) and calls go on.
        supervisors.kill(app.registry.lookup("rag-demo/rag@v1/answer"))
        again = rag.call(question=QUESTIONS[2])
        print(f"\nAfter the answer actor was killed and restarted: {again.answer}")

        print("\nThe live tree (one actor per module, under the program's supervisor):")
        print(app.tree().render())
        print(f"\nTokens spent by the program: {rag.usage.total_tokens}")


if __name__ == "__main__":
    main()
