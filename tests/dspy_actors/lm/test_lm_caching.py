"""Caching through the LM: what hits, what must not, and what a hit costs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dspy_actors import _settings as settings
from dspy_actors.lm import LM, UsageMeter, metering
from dspy_actors.lm.cache import Cache
from dspy_actors.testing import SimLM

MakeLM = Callable[..., LM]  # the make_lm fixture (see conftest.py)

MESSAGES = [{"role": "user", "content": "What is 5 + 5?"}]


@pytest.fixture
def store() -> Iterator[Cache]:
    cache = Cache(disk_path=None)
    yield cache
    cache.close()


def test_a_hit_does_not_call_the_server(sim_lm: SimLM, make_lm: MakeLM, store: Cache) -> None:
    lm = make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=store)

    first = lm.complete(MESSAGES)
    second = lm.complete(MESSAGES)

    assert sim_lm.request_count == 1
    assert not first.cache_hit
    assert second.cache_hit
    assert second.outputs == first.outputs == ["10"]
    assert second.finish_reasons == first.finish_reasons
    assert second.usage.total_tokens == 0
    assert second.usage.calls == 0
    assert lm.usage == first.usage, "a hit adds nothing to the LM's meter"
    assert lm.stats.cache_hits == 1
    assert lm.history[-1]["cache_hit"] is True


def test_a_hit_adds_nothing_to_active_meters(sim_lm: SimLM, make_lm: MakeLM, store: Cache) -> None:
    lm = make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=store)
    lm.complete(MESSAGES)
    meter = UsageMeter()
    with metering(meter):
        assert lm.complete(MESSAGES).cache_hit
    assert meter.total.calls == 0
    assert meter.total.total_tokens == 0


def test_outputs_of_a_hit_can_be_changed_without_poisoning_the_cache(
    sim_lm: SimLM, make_lm: MakeLM, store: Cache
) -> None:
    lm = make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=store)
    lm.complete(MESSAGES)
    lm.complete(MESSAGES).outputs.append("junk")
    assert lm.complete(MESSAGES).outputs == ["10"]


def test_two_servers_with_the_same_model_name_do_not_share_entries(
    make_lm: MakeLM, store: Cache
) -> None:

    with SimLM(lambda r: "from A") as a, SimLM(lambda r: "from B") as b:
        lm_a = make_lm("openai/same-model", api_base=a.openai_base, cache=True, cache_store=store)
        lm_b = make_lm("openai/same-model", api_base=b.openai_base, cache=True, cache_store=store)
        assert lm_a(messages=MESSAGES) == ["from A"]
        assert lm_b(messages=MESSAGES) == ["from B"]
        assert lm_a(messages=MESSAGES) == ["from A"]
        assert (a.request_count, b.request_count) == (1, 1)


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.9},
        {"max_tokens": 5},
        {"n": 2},
        {"response_format": {"type": "json_object"}},
    ],
)
def test_every_parameter_is_part_of_the_key(
    sim_lm: SimLM, make_lm: MakeLM, store: Cache, change: dict[str, Any]
) -> None:
    lm = make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=store, temperature=0.0)
    lm.complete(MESSAGES)
    assert not lm.complete(MESSAGES, **change).cache_hit
    assert lm.complete(MESSAGES, **change).cache_hit
    assert sim_lm.request_count == 2


def test_other_messages_or_models_miss(sim_lm: SimLM, make_lm: MakeLM, store: Cache) -> None:
    lm = make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=store)
    other_model = make_lm(
        "openai/other", api_base=sim_lm.openai_base, cache=True, cache_store=store
    )
    lm.complete(MESSAGES)
    lm.complete([{"role": "user", "content": "What is 5 + 6?"}])
    other_model.complete(MESSAGES)
    assert sim_lm.request_count == 3


def test_cache_switches_per_call_per_context_and_per_lm(
    sim_lm: SimLM, make_lm: MakeLM, store: Cache
) -> None:
    lm = make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=store)
    lm.complete(MESSAGES)
    assert not lm.complete(MESSAGES, cache=False).cache_hit
    with settings.context(cache=False):
        assert not lm.complete(MESSAGES).cache_hit
        assert lm.complete(MESSAGES, cache=True).cache_hit
    assert sim_lm.request_count == 3

    off = make_lm(api_base=sim_lm.openai_base, cache=False, cache_store=store)
    assert not off.complete(MESSAGES).cache_hit
    assert off.complete(MESSAGES, cache=True).cache_hit


def test_failed_calls_are_not_cached(sim_lm: SimLM, make_lm: MakeLM, store: Cache) -> None:
    from dspy_actors.lm import BadRequest
    from dspy_actors.testing import Fault

    sim_lm.inject(Fault.bad_request())
    lm = make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=store)
    with pytest.raises(BadRequest):
        lm.complete(MESSAGES)
    assert lm.complete(MESSAGES).outputs == ["10"]
    assert sim_lm.request_count == 2


def test_streamed_answers_are_cached_and_replayed(
    sim_lm: SimLM, make_lm: MakeLM, store: Cache
) -> None:
    sim_lm.respond_with(lambda req: "streamed words here")
    lm = make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=store)

    first = list(lm.stream(MESSAGES))
    replay = list(lm.stream(MESSAGES))
    whole = lm.complete(MESSAGES)

    assert sim_lm.request_count == 1
    assert "".join(e.text for e in replay) == "streamed words here"
    assert replay[-1].response is not None
    assert replay[-1].response.cache_hit
    assert first[-1].response is not None
    assert not first[-1].response.cache_hit
    assert whole.cache_hit
    assert whole.outputs == ["streamed words here"]


def test_parameters_the_cache_cannot_key_skip_the_cache(
    sim_lm: SimLM, make_lm: MakeLM, store: Cache
) -> None:
    lm = make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=store)
    # NaN is sendable (Python's JSON writes it) but not keyable: the calls go uncached.
    for _ in range(2):
        assert not lm.complete(MESSAGES, temperature=float("nan")).cache_hit
    assert sim_lm.request_count == 2


def test_parameters_that_are_not_json_fail_before_sending(
    sim_lm: SimLM, make_lm: MakeLM, store: Cache
) -> None:
    lm = make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=store)
    with pytest.raises(TypeError):
        lm.complete(MESSAGES, metadata={1, 2})
    assert sim_lm.request_count == 0


def test_hits_survive_a_new_cache_on_the_same_file(
    sim_lm: SimLM, make_lm: MakeLM, tmp_path: Path
) -> None:
    path = tmp_path / "lm.sqlite3"
    with Cache(disk_path=path) as first_store:
        make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=first_store)("persist")
    with Cache(disk_path=path) as second_store:
        lm = make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=second_store)
        assert lm.complete([{"role": "user", "content": "persist"}]).cache_hit
    assert sim_lm.request_count == 1


_CHILD = """
import sys
from dspy_actors.lm import LM
from dspy_actors.lm.cache import Cache
url, path = sys.argv[1], sys.argv[2]
with Cache(disk_path=path) as store, LM("openai/sim", api_base=url, api_key="k",
                                         cache_store=store) as lm:
    response = lm.complete([{"role": "user", "content": "shared across processes"}])
    print(response.cache_hit, response.outputs[0])
"""


def test_a_hit_across_two_processes_sharing_the_file(sim_lm: SimLM, tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"

    def child() -> str:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, sim_lm.openai_base, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    sim_lm.respond_with(lambda req: "from the server")
    assert child() == "False from the server"
    assert child() == "True from the server"
    assert sim_lm.request_count == 1
