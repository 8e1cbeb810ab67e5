"""Secrets (issue 20, item 2): whatever an API key's shape, no log line, event, error,
traceback, stored file or dead letter holds it. A run exercises every path that writes
(success, provider errors echoing the header, poison inputs quarantined, module crashes),
then everything the app wrote is scanned for the key in every form text can hold it."""

from __future__ import annotations

import json
import sqlite3
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

import dspy_actors as dsa
from dspy_actors.redaction import clean_api_key, exception_text, get_logger, redact
from dspy_actors.testing import FAST_RETRIES, Fault, SimLM, SimRequest

_TOKEN = "Zq7Xv2Lw9Rt4Ys8Kp3Nm6Bd1Hg5Jc0Fa"  # distinctive: any hit is the key leaking

KEY_SHAPES = {
    "trailing newline (as open(path).read() gives)": f"sk-live-{_TOKEN}\n",
    "surrounding whitespace and a tab": f"  \tsk-proj-{_TOKEN}  ",
    "very long": "sk-" + _TOKEN * 300,
    "not sk- shaped": f"tok_{_TOKEN[::-1]}_live",
}


def _leak_forms(key: str) -> set[str]:
    """The ways the key (or a telling piece of it) could appear in text."""
    core = key.strip()
    forms = {core, repr(core)[1:-1], json.dumps(core)[1:-1]}
    forms.add(core[:16])
    forms.add(core[-16:])
    forms.add(_TOKEN[:12])
    forms.add(_TOKEN[::-1][:12])
    return forms


def _assert_clean(where: str, text: str, key: str) -> None:
    for form in _leak_forms(key):
        assert form not in text, f"the API key leaked into {where}: ...{text[:400]!r}..."


def _files_text(root: Path) -> Iterator[tuple[str, str]]:
    """Every file under ``root``: raw bytes as text, and for SQLite files every row."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        yield str(path), raw.decode("utf-8", "backslashreplace")
        if raw.startswith(b"SQLite format 3"):
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
                for table in tables:
                    try:
                        rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
                    except sqlite3.Error:
                        continue
                    yield f"{path}:{table}", repr(rows)
            finally:
                conn.close()


class Leaky(dsa.Module):
    """A module whose bug puts what the provider said (with the header) in its crash."""

    def __init__(self) -> None:
        super().__init__()
        self.qa = dsa.Predict("question -> answer")

    def forward(self, question: str, api_key: str = "") -> Any:
        if question.startswith("crash"):
            raise RuntimeError(f"provider rejected: Authorization: Bearer {question[6:]}")
        return self.qa(question=question)


@pytest.mark.parametrize("key", list(KEY_SHAPES.values()), ids=list(KEY_SHAPES))
def test_nothing_the_app_writes_holds_the_key(
    key: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    sent_headers: list[str] = []

    def responder(request: SimRequest) -> Any:
        auth = request.headers.get("authorization", "")
        sent_headers.append(auth)
        if "echo" in request.last_user_text:  # a provider quoting the header it refused
            return Fault.status_error(401, body={"error": {"message": f"bad header {auth}"}})
        return "[[ ## answer ## ]]\nfine\n\n[[ ## completed ## ]]"

    seen_errors: list[BaseException] = []
    events: list[str] = []
    with SimLM(responder) as sim:
        lm = dsa.LM(
            "openai/sim-model",
            api_base=sim.openai_base,
            api_key=key,
            cache=False,
            retry_policy=FAST_RETRIES,
        )
        app = dsa.start(
            lm=lm,
            name="secrets",
            data_dir=tmp_path / "data",
            lm_max_in_flight=2,
            log="json",
            poison_threshold=2,
        )
        try:
            app.subscribe("*", lambda event: events.append(repr(event)))
            qa = app.serve("qa", Leaky())
            assert qa.call(question="hello").answer == "fine"
            assert sent_headers[-1] == f"Bearer {key.strip()}"  # the key works, cleaned
            for question in ("echo this", f"crash {key}", f"crash {key}", f"crash {key}"):
                try:
                    qa.call_with({"question": question, "api_key": key}, timeout=60.0)
                except Exception as error:
                    seen_errors.append(error)
            kinds = [type(e).__name__ for e in seen_errors]
            assert kinds[1:] == ["ModuleCrashed", "DeadLettered", "DeadLettered"], kinds
            letters = app.dead_letters("qa")
            assert len(letters) == 1
            for letter in letters:
                _assert_clean("a dead letter", repr(letter), key)
            app.events.flush(5.0)
        finally:
            app.stop()
            lm.close()
    out, err = capfd.readouterr()
    assert "lm.end" in err or "lm.end" in out  # the event log did run
    _assert_clean("stdout", out, key)
    _assert_clean("stderr", err, key)
    _assert_clean("events", "\n".join(events), key)
    for error in seen_errors:
        _assert_clean("an error", f"{error}\n{error!r}", key)
        _assert_clean("a traceback", "".join(traceback.format_exception(error)), key)
        cause = error.__cause__
        while cause is not None:
            _assert_clean("an error's cause", f"{cause}\n{cause!r}", key)
            cause = cause.__cause__
    for where, text in _files_text(tmp_path):
        _assert_clean(where, text, key)


def test_a_key_no_header_can_carry_is_refused_without_showing_it() -> None:
    key = f"sk-ünïcødé-☃-{_TOKEN}"
    with pytest.raises(ValueError, match=r"index 3 \(U\+00FC\)") as error:
        dsa.LM("openai/sim-model", api_base="http://127.0.0.1:9/v1", api_key=key)
    _assert_clean("the error", str(error.value), key)
    # Registered on the way: wherever it shows up later, in any encoding, it is masked.
    for form in (key, repr(key), json.dumps(key), repr(key.encode())):
        assert _TOKEN not in redact(f"header: {form}")
    assert clean_api_key(" sk-abc\n") == "sk-abc"


def test_logged_tracebacks_have_no_locals_and_are_redacted() -> None:
    key = f"sk-live-{_TOKEN}"
    clean_api_key(key)
    headers = {"Authorization": f"Bearer {key}"}
    with structlog.testing.capture_logs() as logs:
        try:
            raise ValueError(f"Invalid header value {headers['Authorization'].encode()!r}")
        except ValueError:
            get_logger("dspy_actors.test").exception("request_failed", headers=headers)
    [line] = logs
    # No exception object for a renderer to expand (with its frames' locals): plain text.
    assert "exc_info" not in line
    assert "Traceback (most recent call last)" in line["exception"]
    assert "ValueError: Invalid header value b'Bearer ***'" in line["exception"]
    assert line["headers"] == {"Authorization": "<redacted>"}
    assert _TOKEN not in repr(line)
    assert _TOKEN not in exception_text(ValueError(f"x-api-key: {key}"))
