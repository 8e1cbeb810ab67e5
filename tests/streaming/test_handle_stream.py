"""handle.stream / handle.astream through the runtime, against SimLM over real HTTP."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from typing import Any

import dspy_actors as dsa
from dspy_actors.lm import LM
from dspy_actors.streaming import StatusMessage, StreamListener, StreamResponse
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.runtime.programs import RAG
from tests.streaming.conftest import StartApp

LONG = " ".join(f"word{i}" for i in range(400))


def chat_answer(**fields: str) -> str:
    body = "".join(f"[[ ## {name} ## ]]\n{text}\n\n" for name, text in fields.items())
    return body + "[[ ## completed ## ]]"


def texts(pieces: list[Any]) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for piece in pieces:
        if isinstance(piece, StreamResponse):
            key = (piece.predict_name, piece.signature_field_name)
            out[key] = out.get(key, "") + piece.chunk
    return out


def test_stream_yields_field_pieces_status_and_prediction_last(
    sim: SimLM, start_app: StartApp
) -> None:
    sim.respond_with(lambda req: chat_answer(answer=LONG))
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    pieces = list(qa.stream(question="q?"))
    prediction = pieces[-1]
    assert isinstance(prediction, dsa.Prediction)
    assert prediction.answer == LONG
    streamed = [p for p in pieces if isinstance(p, StreamResponse)]
    assert len(streamed) > 10  # it came in pieces, as SimLM sent them
    assert texts(pieces) == {("qa", "answer"): LONG}
    assert [p.is_last_chunk for p in streamed].count(True) == 1
    assert streamed[-1].is_last_chunk
    status = [p.message for p in pieces if isinstance(p, StatusMessage)]
    assert status[0] == "Calling qa..."
    assert status[-1] == "Finished."
    assert qa.usage.completion_tokens > 0  # usage accounted as for call


def test_astream_through_a_composite_names_each_predictor(sim: SimLM, start_app: StartApp) -> None:
    sim.respond_with(lambda req: chat_answer(reasoning="Look it up.", answer="Paris."))
    app = start_app()
    rag = app.serve("rag", RAG())

    async def consume() -> list[Any]:
        return [piece async for piece in rag.astream(question="capital?")]

    pieces = asyncio.run(consume())
    assert isinstance(pieces[-1], dsa.Prediction)
    assert texts(pieces) == {
        ("rag.answer", "reasoning"): "Look it up.",
        ("rag.answer", "answer"): "Paris.",
    }
    status = [p.message for p in pieces if isinstance(p, StatusMessage)]
    assert "Calling rag..." in status
    assert "Calling rag.answer..." in status


def test_json_adapter_and_anthropic_stream_fields(sim: SimLM, start_app: StartApp) -> None:
    sim.respond_with(lambda req: '{"reasoning": "Because \\"x\\".", "answer": "Paris"}')
    lm = LM("anthropic/claude-sim", api_base=sim.anthropic_base, api_key="k", cache=False)
    try:
        app = start_app(lm=lm)
        with dsa.context(adapter=dsa.JSONAdapter()):
            cot = app.serve("cot", dsa.ChainOfThought("question -> answer"))
            pieces = list(cot.stream_with({"question": "q"}, adapter=dsa.JSONAdapter()))
    finally:
        lm.close()
    assert pieces[-1].answer == "Paris"
    got = texts(pieces)
    assert got[("cot", "answer")] == "Paris"
    assert got[("cot", "reasoning")] == 'Because "x".'


def test_cache_hit_streams_each_field_as_one_chunk(
    sim: SimLM, start_app: StartApp, make_lm: Callable[..., LM]
) -> None:
    sim.respond_with(lambda req: chat_answer(answer=LONG))
    app = start_app(lm=make_lm(cache=True))
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    assert qa.call(question="same").answer == LONG
    pieces = list(qa.stream(question="same"))
    streamed = [p for p in pieces if isinstance(p, StreamResponse)]
    assert streamed == [StreamResponse("qa", "answer", LONG, True)]


def test_listeners_pick_fields_and_concurrent_streams_do_not_mix(
    sim: SimLM, start_app: StartApp
) -> None:
    def responder(req: Any) -> str:
        asked = re.search(r"q\d{5}", req.last_user_text)
        tag = asked.group(0) if asked else "?"
        return chat_answer(reasoning="think " + tag, answer=tag)

    sim.respond_with(responder)
    app = start_app()
    cot = app.serve("cot", dsa.ChainOfThought("question -> answer"))
    listener = StreamListener("answer")  # one listener object shared by every stream
    results: dict[int, dict[tuple[str, str], str]] = {}

    def run(i: int) -> None:
        pieces = list(cot.stream_with({"question": f"q{i:05d}"}, stream_listeners=[listener]))
        results[i] = texts(pieces)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 20
    for i, got in results.items():
        assert list(got) == [("cot", "answer")]
        assert f"{i:05d}" in got[("cot", "answer")]
