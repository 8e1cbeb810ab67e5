"""The API key reaches the server and nowhere else."""

from __future__ import annotations

import copy
import json
import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from dspy_actors.lm import LM, AuthenticationError, RetryPolicy
from dspy_actors.lm.cache import Cache
from dspy_actors.testing import Fault, SimLM

MakeLM = Callable[..., LM]  # the make_lm fixture (see conftest.py)

SECRET = "sk-test-very-secret-0123456789"


def test_key_reaches_the_server_but_not_repr_history_or_state(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    lm = make_lm(api_base=sim_lm.openai_base, api_key=SECRET, temperature=0.5)
    lm("hello")

    assert sim_lm.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in repr(lm)
    assert SECRET not in str(list(lm.history))
    assert SECRET not in lm.inspect_history(5)
    assert SECRET not in json.dumps(lm.dump_state())
    assert SECRET not in repr(vars(lm))
    assert SECRET.encode() not in pickle.dumps(lm)


def test_pickled_lm_rebuilds_without_the_key(
    sim_lm: SimLM, monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lm = LM("openai/sim", api_base=sim_lm.openai_base, api_key=SECRET, cache=False, top_p=0.5)
    clone = pickle.loads(pickle.dumps(lm))
    try:
        assert clone.dump_state() == lm.dump_state()
        clone("hi")
        assert "authorization" not in sim_lm.requests[-1].headers
    finally:
        lm.close()
        clone.close()


def test_pickled_lm_keeps_its_tls_and_proxy_choices(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")  # only its path is kept; no connection is made
    lm = LM(
        "openai/sim", api_base="https://example.invalid/v1", verify=str(bundle), trust_env=False
    )
    clone = pickle.loads(pickle.dumps(lm))
    try:
        assert clone.dump_state()["verify"] == str(bundle)
        assert clone.dump_state()["trust_env"] is False
        assert clone.worker_spec() == lm.worker_spec()
        # The defaults stay out of the state, as before.
        plain = LM("openai/sim", api_base="https://example.invalid/v1")
        assert "verify" not in plain.dump_state()
        assert "trust_env" not in plain.dump_state()
        plain.close()
    finally:
        lm.close()
        clone.close()


def test_deepcopy_shares_the_lm(sim_lm: SimLM) -> None:
    with LM("openai/sim", api_base=sim_lm.openai_base, api_key=SECRET, cache=False) as lm:
        assert copy.deepcopy({"lm": lm})["lm"] is lm


def test_key_from_environment(sim_lm: SimLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "env-openai")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "env-anthropic")
    with (
        LM("openai/sim", api_base=sim_lm.openai_base, cache=False) as oai,
        LM("anthropic/sim", api_base=sim_lm.anthropic_base, cache=False) as ant,
    ):
        oai("hi")
        ant("hi")
    first, second = sim_lm.requests
    assert first.headers["authorization"] == "Bearer env-openai"
    assert second.headers["x-api-key"] == "env-anthropic"


def test_argument_beats_environment(sim_lm: SimLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "env-openai")
    with LM("openai/sim", api_base=sim_lm.openai_base, api_key="arg", cache=False) as lm:
        lm("hi")
    assert sim_lm.requests[0].headers["authorization"] == "Bearer arg"


def test_key_echoed_by_the_server_is_scrubbed_from_errors(sim_lm: SimLM, make_lm: MakeLM) -> None:
    body = {
        "error": {"message": f"Incorrect API key provided: {SECRET}", "code": "invalid_api_key"}
    }
    sim_lm.inject(Fault.status_error(401, body=body))
    lm = make_lm(api_base=sim_lm.openai_base, api_key=SECRET)

    with pytest.raises(AuthenticationError) as info:
        lm("hi")

    assert SECRET not in str(info.value)
    assert "Incorrect API key provided: ***" in str(info.value)


def test_key_is_not_logged_during_retries(
    sim_lm: SimLM, make_lm: MakeLM, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"error": {"message": f"overloaded for key {SECRET}"}}
    sim_lm.inject(Fault.status_error(503, body=body), times=2)
    lm = make_lm(api_base=sim_lm.openai_base, api_key=SECRET)

    with caplog.at_level(logging.DEBUG):
        lm("hi")

    assert lm.stats.retries == 2
    assert "retry" in caplog.text
    assert SECRET not in caplog.text


def test_key_is_not_in_cache_keys_or_the_cache_file(sim_lm: SimLM, tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    store = Cache(disk_path=path)
    try:
        with (
            LM(
                "openai/sim",
                api_base=sim_lm.openai_base,
                api_key=SECRET,
                cache_store=store,
                retry_policy=RetryPolicy(base_delay=0.005),
            ) as a,
            LM(
                "openai/sim", api_base=sim_lm.openai_base, api_key="another-key", cache_store=store
            ) as b,
        ):
            a("cache me")
            # The key is not part of the cache key: the same request with another key hits.
            assert b.complete([{"role": "user", "content": "cache me"}]).cache_hit
    finally:
        store.close()
    assert sim_lm.request_count == 1
    for file in tmp_path.iterdir():
        assert SECRET.encode() not in file.read_bytes(), file.name
