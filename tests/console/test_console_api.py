"""The console's HTTP API and event stream, over real HTTP (httpx) against a real app."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import dspy_actors as dsa
from dspy_actors.console import Console
from dspy_actors.runtime._errors import DeadLettered
from tests.console.conftest import API_KEY, Fragile


def _client(console: Console, **headers: str) -> httpx.Client:
    return httpx.Client(
        base_url=console.base_url,
        headers={"Authorization": f"Bearer {console.token}", **headers},
        timeout=30.0,
    )


def _wait(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _quarantine(app: Any, question: str) -> str:
    Fragile.broken.add(question)
    before = {d.id for d in app.dead_letters("svc")}
    svc = (
        app.serve("svc", Fragile(), idempotent=True)
        if app.programs.find("svc") is None
        else (app.handle("svc"))
    )
    with pytest.raises(DeadLettered):
        svc.call(question=question)
    (letter,) = [d for d in app.dead_letters("svc") if d.id not in before]
    return str(letter.id)


@pytest.fixture(autouse=True)
def _clear_fragile() -> Iterator[None]:
    yield
    Fragile.broken.clear()


def test_every_route_needs_the_token(console: Console) -> None:
    routes = ["/", "/static/console.js", "/api/state", "/api/events", "/metrics",
              "/api/actions", "/api/dead_letters/x"]  # fmt: skip
    with httpx.Client(base_url=console.base_url, timeout=30.0) as anonymous:
        for route in routes:
            answer = anonymous.get(route)
            assert answer.status_code == 401, route
            assert "token" in answer.text
        wrong = anonymous.get("/api/state", headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        assert anonymous.get("/?token=wrong").status_code == 401
        posted = anonymous.post("/api/dead_letters/x/replay")
        assert posted.status_code == 401


def test_the_token_in_the_url_becomes_a_cookie_and_the_page_renders(console: Console) -> None:
    with httpx.Client(base_url=console.base_url, timeout=30.0) as browser:
        first = browser.get(f"/?token={console.token}")
        assert first.status_code == 303
        assert first.headers["location"] == "/"
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        page = browser.get("/")
        assert page.status_code == 200
        assert console.csrf_token in page.text
        assert "/static/console.js" in page.text
        assert "http" not in page.text.split("<body>")[1]
        assert browser.get("/static/console.js").text.startswith("// The dspy-actors console")


def test_binds_to_loopback_by_default(console: Console) -> None:
    assert console.host == "127.0.0.1"
    assert console.base_url.startswith("http://127.0.0.1:")


def test_state_shows_tree_programs_and_deployments(app: Any, console: Console) -> None:
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    for i in range(3):
        qa.call(question=f"{i} + 1?")
    assert app.events.flush(10.0)
    with _client(console) as client:
        state = client.get("/api/state").json()
    assert state["tree"]["id"] == app.name
    ids = json.dumps(state["tree"])
    assert "qa@v1" in ids
    assert "events" in ids
    (program,) = [p for p in state["programs"] if p["name"] == "qa"]
    assert program["calls"] == 3
    assert program["version"] == 1
    assert program["p50_s"] is not None
    assert program["p99_s"] >= program["p50_s"]
    assert program["prompt_tokens"] > 0
    assert program["lm_calls"] == 3
    (deployment,) = state["deployments"]
    assert deployment["requests"] == 3
    assert deployment["breaker"]["state"] == "closed"
    assert deployment["in_flight"] == 0


def test_errors_by_type_and_upgrades_show(app: Any, console: Console) -> None:
    svc = app.serve("svc", Fragile())
    Fragile.broken.add("bad")
    with pytest.raises(Exception, match="crashed"):
        svc.call(question="bad")
    svc.upgrade(Fragile())
    assert app.events.flush(10.0)
    with _client(console) as client:
        (program,) = [p for p in client.get("/api/state").json()["programs"] if p["name"] == "svc"]
        activity = client.get("/api/state").json()["activity"]
    assert program["errors"] == {"RuntimeError": 1}
    assert program["version"] == 2
    served = [e["text"] for e in activity if e["kind"] == "serve"]
    assert "serving svc@v2" in served


def _read_sse(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event is not None:
            yield event, json.loads(line[6:])
            event = None


def test_the_event_stream_pushes_a_crash_as_it_happens(app: Any, console: Console) -> None:
    import supervisors

    app.serve("qa", dsa.Predict("question -> answer"))
    with _client(console) as client, client.stream("GET", "/api/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _read_sse(response)
        kind, snapshot = next(events)
        assert kind == "snapshot"
        assert set(snapshot) >= {"tree", "programs", "dead_letters"}
        supervisors.kill(app.registry.lookup(f"{app.name}/qa@v1/"))
        for kind, data in events:
            if kind == "section" and data["name"] == "activity":
                texts = [e["text"] for e in data["data"]]
                if any("qa@v1" in t and "exited" in t for t in texts):
                    break
        crash = [e for e in data["data"] if e["kind"] == "crash"]
        assert crash
        assert "killed" in crash[-1]["text"]


def test_dead_letters_inspect_replay_and_discard_are_recorded(app: Any, console: Console) -> None:
    first = _quarantine(app, "poison one")
    second = _quarantine(app, "poison two")
    with _client(console, **{"X-Console-User": "alice"}) as client:
        listed = client.get("/api/state").json()["dead_letters"]
        assert {d["id"] for d in listed} == {first, second}
        detail = client.get(f"/api/dead_letters/{first}").json()
        assert detail["inputs"] == {"question": "poison one"}
        assert "cannot digest" in detail["traceback"]
        assert "RuntimeError" in detail["traceback"]
        Fragile.broken.clear()  # the bug is fixed: the replay is answered
        replayed = client.post(f"/api/dead_letters/{first}/replay")
        assert replayed.status_code == 200, replayed.text
        assert "fixed: poison one" in replayed.json()["outcome"]
        discarded = client.post(f"/api/dead_letters/{second}/discard")
        assert discarded.status_code == 200
        assert client.post(f"/api/dead_letters/{second}/discard").status_code == 404
        assert client.get("/api/state").json()["dead_letters"] == []
        actions = client.get("/api/actions").json()
    assert [(a["action"], a["target"], a["who"], a["ok"]) for a in actions] == [
        ("replay", first, "alice", True),
        ("discard", second, "alice", True),
    ]
    assert all(a["via"] == "bearer" and a["when"] > 0 for a in actions)
    # The discarded input is no longer quarantined: it is called (and answered) again.
    assert app.handle("svc").call(question="poison two").answer == "fixed: poison two"


def test_cookie_mutations_need_the_csrf_token_and_same_origin(app: Any, console: Console) -> None:
    letter = _quarantine(app, "poison")
    with httpx.Client(base_url=console.base_url, timeout=30.0) as browser:
        browser.get(f"/?token={console.token}")
        url = f"/api/dead_letters/{letter}/discard"
        missing = browser.post(url)
        assert missing.status_code == 403
        assert "X-CSRF-Token" in missing.text
        cross = browser.post(
            url, headers={"X-CSRF-Token": console.csrf_token, "Origin": "http://evil.example"}
        )
        assert cross.status_code == 403
        assert "cross-origin" in cross.text
        assert [d.id for d in app.dead_letters()] == [letter]  # nothing was done
        ok = browser.post(url, headers={"X-CSRF-Token": console.csrf_token})
        assert ok.status_code == 200
    assert app.dead_letters() == []


def test_no_api_key_on_any_page_or_response(app: Any, console: Console) -> None:
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    qa.call(question=f"what is {API_KEY}?")
    letter = _quarantine(app, f"leak {API_KEY}")
    assert app.events.flush(10.0)
    with _client(console) as client:
        bodies = [
            client.get(route).text
            for route in ("/api/state", f"/api/dead_letters/{letter}", "/metrics", "/api/actions")
        ]
        bodies.append(client.post(f"/api/dead_letters/{letter}/replay").text)
        with client.stream("GET", "/api/events") as response:
            bodies.append(json.dumps(next(_read_sse(response))[1]))
    with httpx.Client(base_url=console.base_url, timeout=30.0) as browser:
        browser.get(f"/?token={console.token}")
        bodies.append(browser.get("/").text)
    core = API_KEY[8:]
    for body in bodies:
        assert API_KEY not in body
        assert core[:12] not in body
        assert core[-12:] not in body
    assert "cannot digest" in bodies[1]  # the traceback is there, the key is not


def test_runs_are_listed_with_scores_and_can_be_cancelled(app: Any, console: Console) -> None:
    from dspy_actors.runtime import _events as ev

    app.events.publish(ev.RunProgress(run_id="r1", kind="optimize", completed=1, score=0.25))
    app.events.publish(ev.RunProgress(run_id="r1", kind="optimize", completed=2, score=0.5))
    assert app.events.flush(10.0)
    with _client(console) as client:
        (run,) = client.get("/api/state").json()["runs"]
        assert run["scores"] == [[1, 0.25], [2, 0.5]]
        assert run["best_score"] == 0.5
        missing = client.post("/api/runs/r1/cancel")
    assert missing.status_code == 404
    assert "no running run" in missing.text


def test_lm_requests_are_pushed_live_without_an_event_per_request(
    app: Any, console: Console
) -> None:
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    with _client(console) as client, client.stream("GET", "/api/events") as response:
        events = _read_sse(response)
        kind, _snapshot = next(events)
        assert kind == "snapshot"
        assert app.events.flush(10.0)
        published = app.events.stats.published
        for i in range(3):
            qa.call(question=f"{i} + 2?")
        for kind, data in events:  # the server looks once a second, then pushes
            if kind == "section" and data["name"] == "deployments":
                (deployment,) = data["data"]
                if deployment["requests"] == 3:
                    break
        assert deployment["in_flight"] == 0
        assert deployment["errors"] == {}
    assert app.events.flush(10.0)
    assert app.events.stats.published == published  # no lm.* (nor module.*) event
