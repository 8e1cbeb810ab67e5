"""The application tree, program trees, handles and context propagation, against SimLM."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from dspy_actors import _settings as settings
from dspy_actors.modules._chain_of_thought import ChainOfThought
from dspy_actors.modules._predict import Predict
from dspy_actors.testing.sim_lm import SimLM, SimRequest
from dspy_actors.testing.sim_responder import default_responder
from tests.dspy_actors.runtime.conftest import StartApp
from tests.dspy_actors.runtime.programs import RAG, Retriever


def test_start_builds_the_designed_tree_and_stop_leaves_nothing(start_app: StartApp) -> None:
    app = start_app(name="svc", lm_max_in_flight=3, lm_loops=2)
    top = [(n.id, n.kind) for n in app.tree().children]
    assert top == [
        ("store", "worker"),
        ("events", "worker"),
        ("lm", "supervisor"),
        ("modules", "supervisor"),
        ("runs", "supervisor"),
    ]
    lm = app.tree().children[2]
    assert [c.id for c in lm.children] == ["router", "workers"]
    assert [c.id for c in lm.children[1].children] == ["loop-0", "loop-1"]
    app.stop()
    assert not app.root.is_alive


def test_pipeline_merges_each_steps_outputs_into_the_next_inputs(
    start_app: StartApp, sim: SimLM
) -> None:
    app = start_app()
    qa = app.program(
        "qa",
        [
            ("retrieve", Retriever, {"k": 2}),
            ("answer", ChainOfThought, {"signature": "context: list[str], question -> answer"}),
        ],
    )
    prediction = qa.call(question="What is 2 + 2?")
    assert prediction.answer == "4"
    assert prediction.reasoning
    (request,) = sim.requests
    assert "passage 1 about What is 2 + 2?" in request.last_user_text
    assert [n.id for n in app.tree().walk() if n.id.startswith("qa")] == ["qa@v1"]


def test_served_composite_mirrors_its_composition_and_forward_runs_unchanged(
    start_app: StartApp, sim: SimLM
) -> None:
    app = start_app()
    rag = app.serve("rag", RAG())
    prediction = rag.call(question="Who wrote Erlang?")
    assert prediction.answer
    subtree = next(n for n in app.tree().walk() if n.id == "rag@v1")
    assert [(c.id, c.kind) for c in subtree.children] == [
        ("retrieve", "worker"),
        ("answer", "worker"),
        ("entry", "worker"),
    ]
    assert "passage 0 about Who wrote Erlang?" in sim.requests[-1].last_user_text


def test_many_callers_at_once_all_get_answers(start_app: StartApp) -> None:
    app = start_app(lm_max_in_flight=16)
    rag = app.serve("rag", RAG())
    results: list[Any] = []
    lock = threading.Lock()

    def caller(n: int) -> None:
        for i in range(10):
            prediction = rag.call(question=f"q{n}-{i}")
            with lock:
                results.append(prediction.answer)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60.0)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == 240
    assert all(results)


def test_one_predictor_actor_serves_many_calls_in_flight(start_app: StartApp, sim: SimLM) -> None:
    """The actor sends LM requests and keeps serving: the server sees them concurrently.

    No request is answered until 10 are in flight at once; an actor that serialised its
    calls would never get there (its first request would be held until the 30 s timeout)."""
    in_flight = 0
    peak = 0
    lock = threading.Condition()

    def held_until_ten_in_flight(request: SimRequest) -> Any:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
            lock.notify_all()
            lock.wait_for(lambda: peak >= 10, timeout=30.0)
            in_flight -= 1
        return default_responder(request)

    sim.respond_with(held_until_ten_in_flight)
    app = start_app(lm_max_in_flight=16)
    qa = app.serve("qa", Predict("question -> answer"))
    futures = [qa.submit(question=f"q{i}") for i in range(12)]
    assert all(f.result(timeout=60.0).answer for f in futures)
    assert peak >= 10, f"the predictor actor serialised its calls (peak {peak} in flight)"


def test_submit_acall_and_batch(start_app: StartApp) -> None:
    app = start_app()
    qa = app.serve("qa", Predict("question -> answer"))
    assert qa.submit(question="a").result(timeout=30.0).answer

    async def run() -> list[Any]:
        return list(await asyncio.gather(*(qa.acall(question=f"q{i}") for i in range(5))))

    assert len(asyncio.run(run())) == 5
    results = qa.batch([{"question": f"b{i}"} for i in range(20)], concurrency=4)
    assert len(results) == 20
    # A call that fails (a signature that is not one) is returned or raised, the rest answer.
    bad = qa.batch([{"question": "ok"}, {"question": "x", "signature": 5}], return_exceptions=True)
    assert isinstance(bad[1], TypeError)
    assert "expected a Signature class or a string" in str(bad[1])
    with pytest.raises(TypeError, match="expected a Signature class or a string"):
        qa.batch([{"question": "x", "signature": 5}])


def test_context_overrides_travel_with_the_call(start_app: StartApp, sim: SimLM) -> None:
    app = start_app()
    qa = app.serve("qa", Predict("question -> answer"))
    with settings.context(temperature=0.7):
        qa.call(question="warm")
    qa.call_with({"question": "hot"}, temperature=1.3)
    qa.call(question="default")
    temps = [r.body.get("temperature") for r in sim.requests]
    assert temps == [0.7, 1.3, None]


def test_a_per_call_lm_override_reaches_another_server(
    start_app: StartApp, make_lm: Any, sim: SimLM
) -> None:
    from dspy_actors.lm import LM

    app = start_app()
    qa = app.serve("qa", Predict("question -> answer"))
    with SimLM() as other:
        other_lm = LM("openai/other", api_base=other.openai_base, api_key="k", cache=False)
        try:
            with settings.context(lm=other_lm):
                qa.call(question="elsewhere")
        finally:
            other_lm.close()
        assert len(other.requests) == 1
    assert sim.requests == []


def test_unknown_program_and_bad_names_are_clear_errors(start_app: StartApp) -> None:
    app = start_app()
    app.serve("qa", Predict("q -> a"))
    with pytest.raises(KeyError, match="no program named 'nope'; served: \\['qa'\\]"):
        app.handle("nope")
    with pytest.raises(ValueError, match="already served"):
        app.serve("qa", Predict("q -> a"))
    with pytest.raises(ValueError, match="without '/'"):
        app.serve("a/b", Predict("q -> a"))
    with pytest.raises(TypeError, match="needs a Module"):
        app.serve("x", "not a module")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate step ids"):
        app.program("p", [("s", Retriever), ("s", Retriever)])
    with pytest.raises(TypeError, match="a program step is"):
        app.program("p2", ["just a string"])  # type: ignore[list-item]


def test_cache_hits_are_answered_in_the_module_actor_without_the_lm_pool(
    start_app: StartApp, make_lm: Any, sim: SimLM, tmp_path: Any
) -> None:
    from dspy_actors.lm.cache import Cache

    cache = Cache(disk_path=None)
    app = start_app(lm=make_lm(cache=True, cache_store=cache))
    pool_requests: list[Any] = []
    app.subscribe("lm.start", pool_requests.append)
    qa = app.serve("qa", Predict("question -> answer"))
    first = qa.call(question="same")
    second = qa.call(question="same")
    assert first.answer == second.answer
    assert len(sim.requests) == 1
    assert app.events.flush(5.0)
    assert len(pool_requests) == 1, "the hit must not go through an LM worker"
    cache.close()


def test_a_miss_is_looked_up_once_and_stored_under_the_probed_key(
    start_app: StartApp, make_lm: Any, sim: SimLM, tmp_path: Any
) -> None:
    """The module actor's probe misses; the LM worker neither looks the cache up again
    nor recomputes the key, and what it stores is what the next identical call hits."""
    from dspy_actors.lm.cache import Cache

    cache = Cache(disk_path=tmp_path / "cache.sqlite3")
    lm = make_lm(cache=True, cache_store=cache)
    lookups: list[str] = []
    original = cache.get

    def counting_get(key: str) -> Any:
        lookups.append(key)
        return original(key)

    cache.get = counting_get  # type: ignore[method-assign]
    app = start_app(lm=lm)
    qa = app.serve("qa", Predict("question -> answer"))
    first = qa.call(question="once")
    assert len(sim.requests) == 1
    assert len(lookups) == 1, f"one lookup per miss, got {len(lookups)}"
    second = qa.call(question="once")
    assert second.answer == first.answer
    assert len(sim.requests) == 1  # the stored answer was found under the probed key
    assert lookups == [lookups[0], lookups[0]]
    cache.close()
