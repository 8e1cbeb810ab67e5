"""Fault plans as data and files, rate semantics, scripted responders, the CLI entry."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from dspy_actors.testing import Fault, FaultPlan, FaultRule, SimLM, SimReply, SimRequest, scripted


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def _ask(sim: SimLM, client: httpx.Client, text: str = "hi", model: str = "m") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return client.post(sim.openai_base + "/chat/completions", json=body)


def _request(model: str = "m", text: str = "hi") -> SimRequest:
    return SimRequest("openai", model, [{"role": "user", "content": text}], {}, {})


def test_rates_of_different_rules_add_up_instead_of_shadowing() -> None:
    plan = FaultPlan(
        [
            FaultRule(Fault.server_error(), rate=0.2),
            FaultRule(Fault.rate_limited(retry_after=1), rate=0.1),
            FaultRule(Fault.hang(1.0), rate=0.05),
        ],
        seed=7,
    )
    names = [getattr(plan.next_fault(_request(), 0.0), "name", "ok") for _ in range(20_000)]
    share = {n: names.count(n) / len(names) for n in set(names)}
    assert share["status_500"] == pytest.approx(0.20, abs=0.015)
    assert share["status_429"] == pytest.approx(0.10, abs=0.015)
    assert share["hang"] == pytest.approx(0.05, abs=0.01)
    assert share["ok"] == pytest.approx(0.65, abs=0.015)


def test_plan_from_dict() -> None:
    plan = FaultPlan.from_dict(
        {
            "seed": 3,
            "rules": [
                {"fault": {"type": "status", "status": 418}, "times": 1, "model": "teapot"},
                {"fault": {"type": "rate_limited", "retry_after": 2}, "times": 1},
                {"fault": {"type": "server_error", "status": 503}, "start_s": 2, "end_s": 4},
                {"fault": {"type": "unparseable", "text": "??"}, "prompt_contains": "riddle"},
            ],
        }
    )
    assert plan.next_fault(_request(model="teapot"), 0.0) == Fault.status_error(418)
    rate_limited = plan.next_fault(_request(), 0.0)
    assert rate_limited is not None
    assert dict(rate_limited.headers) == {"Retry-After": "2"}
    assert plan.next_fault(_request(), 0.0) is None
    assert plan.next_fault(_request(), 3.0) == Fault.server_error(503)
    assert plan.next_fault(_request(), 4.0) is None
    assert plan.next_fault(_request(text="a riddle"), 5.0) == Fault.unparseable("??")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"fault": {"type": "explode"}}, "unknown fault type 'explode'"),
        ({"fault": {"type": "reset"}, "sometimes": True}, "unknown fault rule key"),
        ({"rate": 0.5}, "has no 'fault'"),
    ],
)
def test_bad_plan_data_is_reported(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultRule.from_dict(data)


def test_plan_files_json_and_yaml(tmp_path: Path, client: httpx.Client) -> None:
    rules = [{"fault": {"type": "server_error", "status": 502}, "times": 2}]
    (tmp_path / "plan.json").write_text(json.dumps({"rules": rules}))
    (tmp_path / "plan.yaml").write_text(
        "rules:\n  - fault: {type: server_error, status: 502}\n    times: 2\n"
    )
    for name in ("plan.json", "plan.yaml"):
        with SimLM(faults=FaultPlan.load(tmp_path / name)) as sim:
            codes = [_ask(sim, client).status_code for _ in range(3)]
        assert codes == [502, 502, 200], name
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="a fault plan is a mapping"):
        FaultPlan.load(tmp_path / "bad.json")


def test_scripted_responder_matches_prompts(sim_lm: SimLM, client: httpx.Client) -> None:
    sim_lm.respond_with(
        scripted(
            [
                ("capital of France", "Paris"),
                (re.compile(r"\bcrash\b"), Fault.server_error(503)),
                ("two", SimReply(["a", "b"])),
                ("echo", lambda req: req.last_user_text.upper()),
            ],
            default=lambda req: "default",
        )
    )

    def content(text: str) -> str:
        return str(_ask(sim_lm, client, text).json()["choices"][0]["message"]["content"])

    assert content("What is the capital of France?") == "Paris"
    assert _ask(sim_lm, client, "please crash now").status_code == 503
    assert content("two choices") == "a"
    assert content("echo me") == "ECHO ME"
    assert content("something else") == "default"


def test_cli_serves_with_a_fault_plan(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"rules": [{"fault": {"type": "unauthorized"}, "times": 1}]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dspy_actors.testing", "--faults", str(plan)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(timeout=10) as c:
            body = {"model": "m", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
            first = c.post(url + "/v1/chat/completions", json=body)
            second = c.post(url + "/v1/chat/completions", json=body)
        assert first.status_code == 401
        assert second.json()["choices"][0]["message"]["content"] == "5"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_plugin_fixtures(
    make_sim_lm: Callable[..., SimLM], sim_lm_session: SimLM, client: httpx.Client
) -> None:
    slow = make_sim_lm(latency=0.05, responder=lambda req: "slow")
    assert _ask(slow, client).json()["choices"][0]["message"]["content"] == "slow"
    assert _ask(sim_lm_session, client, "What is 1 + 1?").status_code == 200
    assert all(t.startswith("sim-lm-session") for t in _thread_names(sim_lm_session.port))


def _thread_names(port: int) -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if f"-{port}" in t.name]
