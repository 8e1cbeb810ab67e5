"""Usage accounting under many threads, and sampling-parameter precedence."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from dspy_actors import _settings as settings
from dspy_actors.lm import LM, RetryPolicy, UsageMeter, metering
from dspy_actors.testing import Fault, SimLM, SimRequest

MakeLM = Callable[..., LM]  # the make_lm fixture (see conftest.py)

THREADS = 32
CALLS_PER_THREAD = 10


def _words(n: int) -> str:
    return " ".join(["w"] * n)


def test_usage_totals_are_exact_under_32_threads(sim_lm: SimLM, make_lm: MakeLM) -> None:
    # Each call's prompt is i words and its answer (i % 5) + 1 words: every total is known.
    sim_lm.respond_with(lambda req: _words(len(req.last_user_text.split()) % 5 + 1))
    # Some transient faults too: retried attempts must not be counted.
    sim_lm.inject_rate(Fault.server_error(), rate=0.1)
    # Enough retries that no call runs out of them: with the default 3, one of the 320
    # calls failed four times in a row in about 3% of runs (0.1^4 each).
    retries = RetryPolicy(max_retries=9, base_delay=0.001, max_delay=0.005)
    lm = make_lm(api_base=sim_lm.openai_base, retry_policy=retries)
    thread_meters = [UsageMeter() for _ in range(THREADS)]
    outer = UsageMeter()
    barrier = threading.Barrier(THREADS, timeout=10)

    def worker(t: int) -> None:
        barrier.wait()
        with metering(outer), metering(thread_meters[t]):
            for c in range(CALLS_PER_THREAD):
                lm(_words(t * CALLS_PER_THREAD + c + 1))

    with ThreadPoolExecutor(THREADS, thread_name_prefix="usage-test") as pool:
        for future in [pool.submit(worker, t) for t in range(THREADS)]:
            future.result(timeout=60)

    sizes = range(1, THREADS * CALLS_PER_THREAD + 1)
    expected_prompt = sum(sizes)
    expected_completion = sum(i % 5 + 1 for i in sizes)
    calls = THREADS * CALLS_PER_THREAD
    for usage in (lm.usage, outer.total):
        assert (usage.prompt_tokens, usage.completion_tokens, usage.calls) == (
            expected_prompt,
            expected_completion,
            calls,
        )
    for t, meter in enumerate(thread_meters):
        mine = range(t * CALLS_PER_THREAD + 1, (t + 1) * CALLS_PER_THREAD + 1)
        assert meter.total.prompt_tokens == sum(mine)
        assert meter.total.completion_tokens == sum(i % 5 + 1 for i in mine)
        assert meter.total.calls == CALLS_PER_THREAD
    assert sim_lm.stats.served == calls
    assert lm.stats.requests == calls + lm.stats.retries


def test_calls_outside_metering_only_reach_the_lm_meter(sim_lm: SimLM, make_lm: MakeLM) -> None:
    lm = make_lm(api_base=sim_lm.openai_base)
    meter = UsageMeter()
    lm("outside")
    with metering(meter):
        lm("inside")
    assert lm.usage.calls == 2
    assert meter.total.calls == 1


def _temperature_seen(sim: SimLM) -> object:
    return sim.requests[-1].body.get("temperature")


def test_sampling_precedence_call_over_context_over_configure_over_defaults(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:

    lm = make_lm(api_base=sim_lm.openai_base, temperature=0.1, max_tokens=10)

    lm("q")
    assert _temperature_seen(sim_lm) == 0.1

    settings.configure(temperature=0.2)
    lm("q")
    assert _temperature_seen(sim_lm) == 0.2

    with settings.context(temperature=0.3):
        lm("q")
        assert _temperature_seen(sim_lm) == 0.3
        lm("q", temperature=0.4)
        assert _temperature_seen(sim_lm) == 0.4
    lm("q")
    assert _temperature_seen(sim_lm) == 0.2
    assert all(r.body["max_tokens"] == 10 for r in sim_lm.requests)


def test_context_overrides_are_per_thread(sim_lm: SimLM, make_lm: MakeLM) -> None:
    lm = make_lm(api_base=sim_lm.openai_base, temperature=0.0)
    seen: dict[str, object] = {}
    sim_lm.respond_with(lambda req: str(req.body.get("temperature")))
    ready = threading.Barrier(2, timeout=10)

    def run(name: str, temperature: float | None) -> None:
        ready.wait()
        if temperature is None:
            seen[name] = lm("q")[0]
        else:
            with settings.context(temperature=temperature):
                seen[name] = lm("q")[0]

    threads = [
        threading.Thread(target=run, args=("hot", 0.9)),
        threading.Thread(target=run, args=("plain", None)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"hot": "0.9", "plain": "0.0"}


def test_unknown_per_call_parameters_pass_through(sim_lm: SimLM, make_lm: MakeLM) -> None:
    captured: list[SimRequest] = []

    def responder(req: SimRequest) -> str:
        captured.append(req)
        return "ok"

    sim_lm.respond_with(responder)
    lm = make_lm(api_base=sim_lm.openai_base)
    lm("q", seed=7, logprobs=True)
    assert captured[0].body["seed"] == 7
    assert captured[0].body["logprobs"] is True
