"""Crashes mid-flight, LM worker deaths, breakers, overload, deadlines and poison inputs."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import supervisors
from dspy_actors.lm import LM
from dspy_actors.lm.errors import ServerError
from dspy_actors.modules._predict import Predict
from dspy_actors.runtime._errors import DeadlineExceeded, ModuleCrashed, Overloaded
from dspy_actors.runtime._lm_pool import PoolStats
from dspy_actors.testing._faults import Fault
from dspy_actors.testing._held_responder import HeldResponder
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.sim_lm import SimLM, SimRequest
from dspy_actors.testing.sim_responder import default_responder
from tests.dspy_actors.runtime.conftest import StartApp
from tests.dspy_actors.runtime.programs import RAG, Poisonable, Retriever, TracedPredict


def _actor(app: Any, child_path: str) -> Any:
    """The live ref registered for a module path of a served program."""
    return app.registry.lookup(f"{app.name}/{child_path}")


def test_killing_a_module_actor_mid_flight_fails_its_calls_clearly(
    start_app: StartApp, sim: SimLM
) -> None:
    # A user-written forward (RAG's) is not repeated without idempotent=True: its calls
    # in flight fail. (A predictor's are sent again: test_predictor_calls_repeat.py.)
    held = HeldResponder()
    sim.respond_with(held)
    app = start_app()
    qa = app.serve("qa", RAG())
    futures = [qa.submit(question=f"q{i}") for i in range(6)]
    held.wait_for_arrivals(6)  # every call is in flight, waiting on the LM
    supervisors.kill(_actor(app, "qa@v1/"))
    wait_until(lambda: all(f.done() for f in futures), what="the killed calls to fail")
    held.open()
    outcomes = [f.exception(timeout=30.0) for f in futures]
    assert all(isinstance(e, ModuleCrashed) for e in outcomes), outcomes
    crashes = [e for e in outcomes if isinstance(e, ModuleCrashed)]
    assert all("module 'qa' crashed" in str(c) and "was killed" in str(c) for c in crashes)
    assert not any(c.repeatable for c in crashes)
    # The supervisor restarted it: the next call is answered.
    assert qa.call(question="after").answer


def test_killing_a_predictor_mid_flight_sends_its_calls_again(
    start_app: StartApp, sim: SimLM
) -> None:
    held = HeldResponder()
    sim.respond_with(held)
    app = start_app()
    qa = app.serve("qa", Predict("question -> answer"))
    futures = [qa.submit(question=f"q{i}") for i in range(6)]
    held.wait_for_arrivals(6)  # every call is in flight, waiting on the LM
    supervisors.kill(_actor(app, "qa@v1/"))
    held.wait_for_arrivals(12)  # each dropped call was sent again
    held.open()
    assert all(f.result(timeout=30.0).answer for f in futures)


def test_idempotent_calls_are_retried_after_a_crash(start_app: StartApp, sim: SimLM) -> None:
    held = HeldResponder()
    sim.respond_with(held)
    app = start_app()
    qa = app.serve("qa", Predict("question -> answer"), idempotent=True)
    futures = [qa.submit(question=f"q{i}") for i in range(6)]
    held.wait_for_arrivals(6)  # every call is in flight on the actor the kill hits
    supervisors.kill(_actor(app, "qa@v1/"))
    # The calls are sent again to the restarted actor (the held first requests keep the
    # pool's slots until the server answers, so only a few fit in before that).
    held.wait_for_arrivals(7)
    held.open()
    assert all(f.result(timeout=30.0).answer for f in futures)
    assert held.arrived >= 12  # all six were lost with the actor, and all six sent again


def test_lm_loops_killed_mid_call_have_it_retried_and_are_replaced(
    start_app: StartApp, sim: SimLM
) -> None:
    """The killed loop's request, unanswered, is sent again on its replacement: the call is
    answered, the loop replaced with its slots."""
    entered = threading.Event()

    def respond(request: SimRequest) -> Any:
        entered.set()
        time.sleep(0.3)
        return default_responder(request)

    sim.respond_with(respond)
    app = start_app(lm_max_in_flight=2, lm_loops=2)
    qa = app.serve("qa", Predict("question -> answer"))
    future = qa.submit(question="survive")
    assert entered.wait(10.0)
    workers = app.root.supervisor("lm").supervisor("workers")
    router = app.registry.lookup(app.router_name)
    assert supervisors.ask(router, PoolStats(), timeout=5.0)["busy"] == 1
    before = [info.ref for info in workers.which_children()]
    assert all(ref is not None for ref in before)
    # Kill the loop holding the request first: killed at once, the other loop might take
    # the retried request just before its own kill, and a request that dies twice fails
    # (LMWorkerCrashed), by design.
    holding = [r for r in before if r.proxy().describe().get(timeout=10.0)["in_flight"] == 1]
    assert len(holding) == 1
    supervisors.kill(holding[0])
    assert future.result(timeout=30.0).answer
    for ref in before:
        if ref is not holding[0]:
            supervisors.kill(ref)
    wait_until(
        lambda: all(
            info.ref is not None and info.ref not in before for info in workers.which_children()
        ),
        timeout=30.0,
        what="both loops replaced",
    )
    wait_until(
        lambda: supervisors.ask(router, PoolStats(), timeout=5.0)["idle"] == 2,
        timeout=30.0,
        what="both replaced loops' slots idle",
    )
    assert qa.call(question="next").answer


class DiesOnce:
    """An LM-like object (only ``complete``: the pool runs it in a thread holding its slot)
    whose first call tears that thread down outright."""

    died = 0

    def __init__(self, lm: LM) -> None:
        self._lm = lm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lm, name)

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        if DiesOnce.died == 0:
            DiesOnce.died += 1
            raise SystemExit("the thread running the request torn down mid-call")
        return self._lm.complete(messages, **kwargs)


# The torn-down thread's SystemExit goes on after the request is handed back (as it should);
# pytest reports any exception ending a thread, this one included.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_thread_torn_down_without_answering_has_its_request_retried(
    start_app: StartApp, sim: SimLM
) -> None:
    DiesOnce.died = 0
    lm = LM("openai/sim-model", api_base=sim.openai_base, api_key="k", cache=False)
    try:
        app = start_app(lm=DiesOnce(lm), lm_max_in_flight=2)
        qa = app.serve("qa", TracedPredict())
        assert qa.call(question="retried").answer
        assert DiesOnce.died == 1
        assert len(sim.requests) == 1
    finally:
        lm.close()


def test_overload_fails_fast_instead_of_queueing(start_app: StartApp, sim: SimLM) -> None:
    held = HeldResponder()
    sim.respond_with(held)
    app = start_app(max_in_flight=3)
    qa = app.serve("qa", Predict("question -> answer"))
    futures = [qa.submit(question=f"q{i}") for i in range(3)]
    held.wait_for_arrivals(3)
    try:
        with pytest.raises(Overloaded, match="3 calls already in flight"):
            qa.call(question="one too many")
    finally:
        held.open()
    assert all(f.result(timeout=30.0).answer for f in futures)
    assert held.arrived == 3  # the refused call never reached the LM


def test_a_deadline_bounds_every_hop_beneath_the_call(start_app: StartApp, sim: SimLM) -> None:
    held = HeldResponder(hold_limit=60.0)
    sim.respond_with(held)
    app = start_app(lm_max_in_flight=1)
    rag = app.serve("rag", RAG())  # entry -> answer (predictor) -> LM pool: three hops
    try:
        with pytest.raises(DeadlineExceeded):
            rag.call_with({"question": "slow"}, timeout=0.3)
        # The LM request carried the deadline as its HTTP timeout, so no worker stays
        # stuck: the pool is idle again while the server still holds the request (it would
        # answer only after 60 s).
        held.wait_for_arrivals(1)
        router = app.registry.lookup(app.router_name)
        wait_until(
            lambda: supervisors.ask(router, PoolStats(), timeout=5.0)["busy"] == 0,
            timeout=30.0,
            what="the LM worker to give up the request at the deadline",
        )
        assert held.in_flight == 1, "the server must still be holding the request"
    finally:
        held.open()


def test_a_crash_in_a_pipeline_step_reaches_the_caller(start_app: StartApp) -> None:
    app = start_app()
    pipe = app.program("p", [("retrieve", Retriever), ("svc", Poisonable)])
    with pytest.raises(ModuleCrashed, match="cannot digest"):
        pipe.call(question="poison")
    assert pipe.call(question="fine").answer


def test_fallback_deployment_serves_while_the_primary_breaker_is_open(
    start_app: StartApp, make_lm: Any, sim: SimLM
) -> None:
    with SimLM() as backup:
        backup_lm = LM("openai/backup", api_base=backup.openai_base, api_key="k", cache=False)
        try:
            app = start_app(
                fallbacks=[backup_lm],
                breaker={"window_size": 2, "minimum_calls": 2, "wait_in_open": 30.0},
            )
            qa = app.serve("qa", Predict("question -> answer"))
            sim.inject(Fault.server_error(500), times=1000)
            for i in range(2):
                with pytest.raises(ServerError):
                    qa.call(question=f"primary fails {i}")
            assert qa.call(question="served by the backup").answer
            assert len(backup.requests) == 1
            assert backup.requests[0].model == "backup"
        finally:
            backup_lm.close()


def test_restarts_are_published_as_runtime_events(start_app: StartApp) -> None:
    app = start_app()
    restarts: list[Any] = []
    app.subscribe("runtime.restart", restarts.append)
    qa = app.serve("qa", Predict("question -> answer"))
    qa.call(question="warm")
    supervisors.kill(_actor(app, "qa@v1/"))
    wait_until(lambda: app.events.flush(1.0) and restarts, timeout=30.0, what="a restart event")
    assert [(e.supervisor, e.child_id) for e in restarts] == [(f"{app.name}/modules", "qa@v1")]


def test_programs_are_served_again_when_the_modules_supervisor_restarts(
    start_app: StartApp,
) -> None:
    app = start_app()
    qa = app.serve("qa", Predict("question -> answer"))
    assert qa.call(question="before").answer
    modules = app.root.child("modules")
    assert modules is not None
    supervisors.kill(modules)
    # (A call racing the kill could land on the old actor and be cut short: ModuleCrashed,
    # by design, for a call that is not idempotent. Here we test what comes after.)
    assert supervisors.wait_for_exit(modules, 10.0) is not None
    # The root restarts `modules` (empty, as any DynamicSupervisor); the app serves its
    # programs again, and calls in the gap are retried until they can reach them.
    assert qa.call_with({"question": "after"}, timeout=30.0).answer
    assert [n.id for n in app.tree().walk() if n.id.startswith("qa@")] == ["qa@v1"]


def test_the_owner_learns_how_the_app_exited(start_app: StartApp) -> None:
    exits: list[Any] = []
    app = start_app(on_exit=exits.append)
    app.stop()
    wait_until(lambda: exits, timeout=30.0, what="the exit callback")
    assert exits == [supervisors.SHUTDOWN]
