"""LM worker processes (``dsa.start(lm_processes=N)``): real child processes doing the
HTTP of LM calls against the test's loopback SimLM, killed with SIGKILL mid-flight."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pykka
import pytest

import dspy_actors as dsa
from dspy_actors.lm import LM, _worker_main
from dspy_actors.lm._breaker import CircuitOpen
from dspy_actors.lm._worker_process import encode_frame, read_frame
from dspy_actors.lm.cache import Cache
from dspy_actors.lm.errors import BadRequest, LMTimeout, ServerError
from dspy_actors.modules._predict import Predict
from dspy_actors.runtime import _lm_process as lm_process
from dspy_actors.runtime._context import capture
from dspy_actors.runtime._errors import DeadlineExceeded, RuntimeCallError
from dspy_actors.runtime._lm_pool import Dispatcher, LMPoolConfig, LMWorkerCrashed
from dspy_actors.runtime._lm_process import LMProcessExited, WorkerProcess
from dspy_actors.runtime._messages import LMRequest
from dspy_actors.runtime.app import App
from dspy_actors.testing._faults import Fault
from dspy_actors.testing._held_responder import HeldResponder, slow_responder
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.runtime.conftest import StartApp, run_in_threads
from tests.dspy_actors.runtime.programs import RecordingLM


def _process_pids(app: App) -> list[int]:
    """The pids of the app's live LM worker processes, by asking their owners (asked again
    while one of them is being restarted)."""
    workers = app.root.supervisor("lm").supervisor("workers")
    deadline = time.monotonic() + 30
    while True:
        try:
            return [
                child.ref.proxy().describe().get(timeout=10)["pid"]
                for child in workers.which_children()
                if child.ref is not None
            ]
        except pykka.ActorDeadError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_frames_round_trip_and_a_torn_frame_ends_the_stream() -> None:
    stream = io.BytesIO(encode_frame(("call", 1, {"a": [1, 2]})) + encode_frame("next"))
    assert read_frame(stream) == ("call", 1, {"a": [1, 2]})
    assert read_frame(stream) == "next"
    assert read_frame(stream) is None
    torn = encode_frame("whole")[:-2]
    assert read_frame(io.BytesIO(torn)) is None


def test_calls_from_many_threads_are_answered_through_worker_processes(
    start_app: StartApp, sim: SimLM
) -> None:
    sim.respond_with(slow_responder(0.05))
    app = start_app(lm_processes=2, lm_max_in_flight=16)
    assert len(_process_pids(app)) == 2
    qa = app.program("qa", [("answer", Predict, {"signature": "question -> answer"})])
    answers: dict[int, Any] = {}

    def caller(i: int) -> None:
        for j in range(5):
            answers[i * 5 + j] = qa.call(question=f"What is {i} + {j}?").answer

    run_in_threads(caller, 24)
    assert len(answers) == 120
    assert all(answers.values())
    assert sim.request_count == 120
    # The parent's LM accounted what the processes did.
    lm = app.lm
    assert lm is not None
    assert lm.stats.requests == 120
    assert lm.stats.failures == 0
    assert lm.usage.calls == 120
    assert lm.usage.prompt_tokens > 0
    assert len(lm.history) == 120


def test_the_cache_and_settings_stay_in_the_calling_process(
    start_app: StartApp, make_lm: Callable[..., LM], sim: SimLM
) -> None:
    lm = make_lm(cache=True, cache_store=Cache(disk_path=None))
    app = start_app(lm=lm, lm_processes=1, lm_max_in_flight=4)
    qa = app.serve("qa", Predict("question -> answer"))
    with dsa.context(temperature=0.25):
        first = qa.call(question="What is 2 + 3?").answer
    assert sim.requests[-1].body["temperature"] == 0.25
    with dsa.context(temperature=0.25):
        again = qa.call(question="What is 2 + 3?").answer
    assert again == first
    assert sim.request_count == 1, "the second call is a cache hit in this process"
    assert lm.stats.cache_hits == 1


def test_errors_keep_their_type_and_retries_are_counted(start_app: StartApp, sim: SimLM) -> None:
    app = start_app(lm_processes=1, lm_max_in_flight=4)
    qa = app.serve("qa", Predict("question -> answer"))
    sim.inject(Fault.bad_request("no such parameter: frobnicate"))
    with pytest.raises(BadRequest, match="frobnicate") as caught:
        qa.call(question="q1")
    assert caught.value.status == 400
    assert caught.value.model == "openai/sim-model"
    sim.inject(Fault.rate_limited(retry_after=0.01))
    assert qa.call(question="q2").answer
    lm = app.lm
    assert lm is not None
    stats = lm.stats
    assert (stats.requests, stats.retries, stats.failures) == (3, 1, 1)


def test_a_deadline_shorter_than_the_server_fails_the_call_clearly(
    start_app: StartApp, sim: SimLM
) -> None:
    sim.respond_with(slow_responder(1.0))
    app = start_app(lm_processes=1, lm_max_in_flight=4)
    qa = app.serve("qa", Predict("question -> answer"))
    started = time.monotonic()
    with pytest.raises((DeadlineExceeded, LMTimeout)):
        qa.call_with({"question": "slow"}, timeout=0.3)
    assert time.monotonic() - started < 5.0


def test_a_killed_worker_process_is_replaced_and_its_calls_retried(
    start_app: StartApp, sim: SimLM
) -> None:
    sim.respond_with(slow_responder(0.4))
    app = start_app(lm_processes=2, lm_max_in_flight=32)
    qa = app.serve("qa", Predict("question -> answer"))
    before = _process_pids(app)
    futures = [qa.submit(question=f"q{i}") for i in range(32)]
    time.sleep(0.2)  # the requests are in the processes, the server is sleeping on them
    os.kill(before[0], signal.SIGKILL)
    outcomes = [f.exception(timeout=60) for f in futures]
    assert outcomes == [None] * 32, "every call is retried once on the other process"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = _process_pids(app)
        if before[0] not in after and len(after) == 2:
            break
        time.sleep(0.05)
    assert before[0] not in after
    assert before[1] in after
    assert len(after) == 2
    assert not _alive(before[0])
    # The new process serves too (32 at once: both processes' slots).
    after_kill = [qa.submit(question=f"after {i}") for i in range(32)]
    assert all(f.result(timeout=30).answer for f in after_kill)


def test_stopping_the_app_ends_its_worker_processes(start_app: StartApp) -> None:
    app = start_app(lm_processes=2, lm_max_in_flight=4)
    pids = _process_pids(app)
    app.stop()
    assert not any(_alive(pid) for pid in pids)


def test_an_lm_with_an_ssl_context_and_bad_sizes_are_refused_at_start(
    start_app: StartApp, make_lm: Callable[..., LM]
) -> None:
    pinned = make_lm(verify=ssl.create_default_context())
    with pytest.raises(ValueError, match="cannot be sent to an LM worker process"):
        start_app(lm=pinned, lm_processes=1)
    with pytest.raises(ValueError, match="lm_processes"):
        start_app(lm_processes=5, lm_max_in_flight=4)


def test_calls_that_cannot_be_sent_run_in_this_process_holding_their_slot(
    start_app: StartApp, make_lm: Callable[..., LM], sim: SimLM
) -> None:
    app = start_app(lm_processes=1, lm_max_in_flight=2)
    qa = app.serve("qa", Predict("question -> answer"))

    # An LM-like object: nothing to send; its complete() runs here.
    echo = _EchoLM()
    with dsa.context(lm=echo):
        assert qa.call(question="to the echo").answer == "echo"
    assert echo.threads
    assert threading.get_ident() not in echo.threads

    # A subclass: a plain LM in the process would skip its override, so it runs here too.
    marked = RecordingLM(
        "openai/sim-model", api_base=sim.openai_base, api_key="sim", cache=False, delay=0.05
    )
    answers: list[str] = []

    def call(i: int) -> None:
        with dsa.context(lm=marked):
            answers.append(qa.call(question=f"marked {i}").answer)

    run_in_threads(call, 6)
    assert len(answers) == 6
    assert all(answers)
    assert marked.completed == 6  # the override ran: the call was not sent to the process
    assert marked.most <= 2  # never more at once than the pool's slots
    # And an LM whose TLS context cannot be pickled, given per call.
    pinned = make_lm(verify=ssl.create_default_context())
    assert qa.call_with({"question": "pinned"}, lm=pinned).answer
    marked.close()


def test_the_tree_shows_the_worker_processes(start_app: StartApp) -> None:
    app = start_app(lm_processes=2, lm_max_in_flight=4)
    tree = str(app.tree())
    assert "process-0 (worker) running" in tree
    assert "process-1 (worker) running" in tree
    pids = _process_pids(app)
    assert len(set(pids)) == 2
    assert os.getpid() not in pids


def test_under_load_with_processes_killed_repeatedly_no_call_hangs(
    start_app: StartApp, sim: SimLM
) -> None:
    """48 callers; a worker process is SIGKILLed every 0.3 s, four times. Every call ends
    with an answer or with a clear LM error; none is lost or hangs."""
    sim.respond_with(slow_responder(0.1))
    app = start_app(lm_processes=2, lm_max_in_flight=32)
    qa = app.serve("qa", Predict("question -> answer"))
    outcomes: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def caller(i: int) -> None:
        j = 0
        while not stop.is_set():
            try:
                qa.call_with({"question": f"q{i}-{j}"}, timeout=30).answer  # noqa: B018
                outcome = "ok"
            except LMWorkerCrashed:
                outcome = "crashed"  # its request died in two processes: said clearly
            with lock:
                outcomes.append(outcome)
            j += 1

    callers = [threading.Thread(target=caller, args=(i,)) for i in range(48)]
    for thread in callers:
        thread.start()
    killed = []

    def answered() -> int:
        with lock:
            return outcomes.count("ok")

    def thirty_more_answered() -> None:
        target = answered() + 30
        wait_until(lambda: answered() >= target, timeout=60.0, what="30 more answers")

    # Each kill once 30 more calls were answered (calls are in flight all along: 48
    # callers), and the traffic stops once 30 more were answered after the last: paced by
    # progress, not by the clock, so a busy machine only makes it slower.
    for _ in range(4):
        thirty_more_answered()
        pid = _process_pids(app)[0]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        wait_until(
            lambda pid=pid: pid not in _process_pids(app), timeout=30.0, what="a new process"
        )
    thirty_more_answered()
    stop.set()
    for thread in callers:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in callers), "a call hung"
    assert outcomes.count("ok") >= 150
    # A call fails only if its request died in both processes: at most a process's slots
    # (16 of 32 workers) per kill.
    assert outcomes.count("crashed") <= 16 * len(killed)
    assert set(outcomes) <= {"ok", "crashed"}
    assert not any(_alive(pid) for pid in killed)
    assert qa.call(question="after the storm").answer


def test_stopping_the_app_mid_flight_answers_every_call(start_app: StartApp, sim: SimLM) -> None:
    sim.respond_with(slow_responder(0.5))
    app = start_app(lm_processes=2, lm_max_in_flight=8)
    qa = app.serve("qa", Predict("question -> answer"))
    pids = _process_pids(app)
    futures = [qa.submit(question=f"q{i}") for i in range(16)]  # 8 running, 8 queued
    wait_until(lambda: len(sim.requests) >= 8, timeout=30.0, what="8 requests in the processes")
    app.stop()
    errors = [f.exception(timeout=30) for f in futures]
    assert all(isinstance(e, RuntimeCallError) for e in errors), errors
    assert not any(_alive(pid) for pid in pids)


class _EchoLM:
    """An LM-like object that is not a dspy_actors.LM: it cannot go to a worker process."""

    model = "echo/echo"
    provider = "openai"
    api_base = "local"
    model_name = "echo"

    def __init__(self) -> None:
        self.threads: list[int] = []

    def complete(self, messages: list[dict[str, Any]], **_kw: Any) -> Any:
        from dspy_actors.lm._types import LMResponse
        from dspy_actors.lm._usage import ZERO_USAGE

        self.threads.append(threading.get_ident())
        return LMResponse(["[[ ## answer ## ]]\necho"], ZERO_USAGE, "echo", ["stop"], False, 0.0)


def test_a_process_that_dies_before_it_is_ready_is_reported_with_its_code() -> None:
    process = WorkerProcess("broken", Dispatcher(LMPoolConfig()), slots=1)
    process._command = [sys.executable, "-c", "import sys; sys.exit(3)"]
    with pytest.raises(LMProcessExited, match="exited with code 3 before it was ready"):
        process.start()


def test_a_process_that_never_gets_ready_is_killed_after_the_timeout() -> None:
    process = WorkerProcess("stuck", Dispatcher(LMPoolConfig()), slots=1)
    process._command = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(LMProcessExited, match=r"not ready after 0\.5s"):
        process.start(timeout=0.5)
    assert process.pid is not None
    assert not _alive(process.pid)


def test_thousands_of_queued_requests_answered_at_once_do_not_recurse(sim: SimLM) -> None:
    """Requests answered in the sending thread (here: cache hits of a fallback-free LM) free
    the slot, which hands that thread the next queued request: a loop, not a recursion."""
    lm = LM(
        "openai/sim-model",
        api_base=sim.openai_base,
        api_key="sim",
        cache_store=Cache(disk_path=None),
    )
    messages = [{"role": "user", "content": "hi"}]
    lm.complete(messages)  # fills the cache: every request below is a hit
    dispatcher = Dispatcher(LMPoolConfig(max_queue=5000))
    replies: list[Future[Any]] = []
    for _ in range(3000):
        reply: Future[Any] = Future()
        dispatcher.submit(LMRequest(lm, messages, {}, capture(timeout=60), reply))
        replies.append(reply)
    process = WorkerProcess("flood", dispatcher, slots=1)
    process.start()
    try:
        dispatcher.add_worker(process.slots[0])
        answers = [r.result(timeout=30) for r in replies]
    finally:
        process.stop()
        lm.close()
    assert all(a.cache_hit for a in answers)
    assert sim.request_count == 1


def test_lm_events_and_the_breaker_work_as_with_threads(start_app: StartApp, sim: SimLM) -> None:
    app = start_app(
        lm_processes=1,
        lm_max_in_flight=2,
        breaker={
            "window_size": 4,
            "minimum_calls": 3,
            "failure_rate_threshold": 0.5,
            "wait_in_open": 30.0,
        },
    )
    ends: list[Any] = []
    app.subscribe("lm.end", ends.append)
    qa = app.serve("qa", Predict("question -> answer"))
    assert qa.call(question="fine").answer
    sim.inject(Fault.server_error(503), times=10)
    for i in range(2):
        with pytest.raises(ServerError):
            qa.call(question=f"failing {i}")
    seen = sim.request_count
    with pytest.raises(CircuitOpen):
        qa.call(question="refused at once")
    assert sim.request_count == seen, "an open breaker sends nothing to the process"
    assert app.events.flush(5.0)
    assert len(ends) == 3
    assert ends[0].prompt_tokens > 0
    assert ends[0].error_type is None
    assert [e.error_type for e in ends[1:3]] == ["ServerError", "ServerError"]


def test_worker_processes_exit_when_their_parent_is_killed(tmp_path: Any, sim: SimLM) -> None:
    """kill -9 of the service: its worker processes see their stdin close and exit."""
    script = f"""
import sys, time
import dspy_actors as dsa
lm = dsa.LM("openai/sim-model", api_base={sim.openai_base!r}, api_key="k", cache=False)
app = dsa.start(lm=lm, data_dir={str(tmp_path)!r}, lm_max_in_flight=2, lm_processes=2)
workers = app.root.supervisor("lm").supervisor("workers").which_children()
print("PIDS", " ".join(str(c.ref.proxy().describe().get(timeout=10)["pid"]) for c in workers))
sys.stdout.flush()
time.sleep(120)
"""
    service = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout is not None
        # The app may log to stdout first (a slow start on a busy machine warns): read on
        # to the line the script prints; an empty line means the service died before it.
        line = "-"
        while line and not line.startswith("PIDS "):
            line = service.stdout.readline()
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2, f"the service did not print its worker pids: {line!r}"
        assert all(_alive(pid) for pid in pids)
        service.kill()
        service.wait(timeout=10)
        wait_until(
            lambda: not any(_alive(pid) for pid in pids),
            timeout=30.0,
            what="the orphaned worker processes to exit",
        )
    finally:
        service.kill()
        service.wait(timeout=10)
        if service.stdout is not None:
            service.stdout.close()


def test_a_prompt_larger_than_a_pipe_buffer_goes_through(start_app: StartApp, sim: SimLM) -> None:
    app = start_app(lm_processes=1, lm_max_in_flight=4)
    qa = app.serve("qa", Predict("question -> answer"))
    question = "What is 2 + 3? " + "padding " * 150_000  # ~1.2 MB, far past 64 KB
    futures = [qa.submit(question=question) for _ in range(4)]
    assert all(f.result(timeout=60).answer for f in futures)
    assert len(sim.requests[-1].messages[-1]["content"]) > 1_000_000


def test_a_corrupt_frame_ends_the_process_and_reports_its_exit() -> None:
    """A worker whose output cannot be read any more is killed, and its owner told."""
    exits: list[int | None] = []
    ended = threading.Event()

    def on_exit(code: int | None) -> None:
        exits.append(code)
        ended.set()

    process = WorkerProcess("garbled", Dispatcher(LMPoolConfig()), slots=1, on_exit=on_exit)
    process._command = [
        sys.executable,
        "-c",
        "import sys, time\n"
        "from dspy_actors.lm._worker_process import encode_frame\n"
        "out = sys.stdout.buffer\n"
        "out.write(encode_frame(('ready', 0)))\n"
        "out.write(b'\\x00\\x00\\x00\\x05not-a-pickle')\n"
        "out.flush()\n"
        "time.sleep(60)\n",
    ]
    process.start()
    try:
        assert ended.wait(10)
        assert exits == [-signal.SIGKILL]
    finally:
        process.stop()


def test_a_worker_that_stops_reading_is_killed_not_waited_on(sim: SimLM) -> None:
    """A sender never blocks for long on a hung worker (stopped, stuck): once its pipe is
    full, a write waits ``write_timeout`` at most, then the process is killed (its owner
    restarts it and the requests it held are retried)."""
    exits: list[int | None] = []
    ended = threading.Event()

    def on_exit(code: int | None) -> None:
        exits.append(code)
        ended.set()

    dispatcher = Dispatcher(LMPoolConfig())
    process = WorkerProcess("hung", dispatcher, slots=4, on_exit=on_exit)
    # Says it is ready, then never reads its stdin again.
    process._command = [
        sys.executable,
        "-c",
        "import sys, time\n"
        "from dspy_actors.lm._worker_process import encode_frame\n"
        "sys.stdout.buffer.write(encode_frame(('ready', 0)))\n"
        "sys.stdout.buffer.flush()\n"
        "time.sleep(60)\n",
    ]
    process.write_timeout = 0.5
    lm = LM("openai/sim-model", api_base=sim.openai_base, api_key="k", cache=False)
    process.start()
    try:
        for slot in process.slots:
            dispatcher.add_worker(slot)
        big = [{"role": "user", "content": "x" * 200_000}]  # past the 64 KB pipe buffer
        replies: list[Future[Any]] = []
        started = time.monotonic()
        for _ in range(4):
            reply: Future[Any] = Future()
            dispatcher.submit(LMRequest(lm, big, {}, capture(timeout=60), reply))
            replies.append(reply)
        assert time.monotonic() - started < 5.0, "the sender waited on the hung worker"
        assert ended.wait(10)
        assert exits == [-signal.SIGKILL]
    finally:
        process.stop()
        lm.close()


def test_a_stopped_worker_misses_its_heartbeats_and_is_replaced(
    start_app: StartApp, sim: SimLM
) -> None:
    """SIGSTOP: the worker neither answers nor dies, and its pipe still has room. The
    heartbeat notices; the worker is killed and replaced, and its calls are retried.
    At the default heartbeat (a ping a second, 10 s to answer): shortened to 3 s, a CPU
    hog on every core starved the healthy worker's pongs too and it was killed as well."""
    assert lm_process._HEARTBEAT_TIMEOUT_SECONDS == 10.0
    held = HeldResponder()
    sim.respond_with(held)
    app = start_app(lm_processes=2, lm_max_in_flight=8)
    qa = app.serve("qa", Predict("question -> answer"))
    stopped = _process_pids(app)[0]
    futures = [qa.submit(question=f"q{i}") for i in range(8)]
    held.wait_for_arrivals(8)  # all in the processes, the server holding them
    os.kill(stopped, signal.SIGSTOP)
    held.open()
    try:
        assert all(f.result(timeout=90).answer for f in futures)
        # The calls may all have been answered by the other process; the heartbeat still
        # finds the stopped one and kills it.
        wait_until(lambda: not _alive(stopped), timeout=60.0, what="the stopped worker killed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopped, signal.SIGCONT)

    # Its owner notices the exit and is restarted with a new process: wait for that, as the
    # pid the old owner reports can outlive the process for a moment.
    def replaced() -> bool:
        pids = _process_pids(app)
        return stopped not in pids and len(pids) == 2

    wait_until(replaced, timeout=60.0, what="the stopped worker replaced by a new process")


def test_pings_are_answered_while_a_sender_holds_the_write_path() -> None:
    """A sender writing a call holds the lock on the worker's stdin (for up to
    ``write_timeout`` on a full pipe; thousands of senders take turns on it under load).
    The heartbeat does not queue for it: pongs keep coming while it is held."""
    process = WorkerProcess("beat", Dispatcher(LMPoolConfig()), slots=1)
    process.heartbeat_interval = 0.05
    process.start()
    try:
        with process._write_lock:
            held_at = time.monotonic()
            wait_until(lambda: process.last_pong > held_at, what="a pong while the lock is held")
        assert process.pid is not None
        assert _alive(process.pid)
    finally:
        process.stop()


def test_pings_are_answered_while_the_workers_answers_are_held_up(sim: SimLM) -> None:
    """This process's reader stops (here: a reply callback that blocks; under load: a
    backlog of answers to settle), so the worker's answers fill its stdout pipe and its
    call threads block writing them, holding its write lock. The worker is still alive
    and says so: pongs keep coming, and every call is answered once the reader goes on."""
    big = "[[ ## answer ## ]]\n" + "x" * 40_000 + "\n\n[[ ## completed ## ]]"
    sim.respond_with(lambda _request: big)  # 8 answers: ~320 KB, far past a 64 KB pipe
    lm = LM("openai/sim-model", api_base=sim.openai_base, api_key="k", cache=False)
    dispatcher = Dispatcher(LMPoolConfig())
    process = WorkerProcess("jammed", dispatcher, slots=8)
    process.heartbeat_interval = 0.05
    reader_held = threading.Event()
    release = threading.Event()

    def hold_the_reader(_reply: Future[Any]) -> None:
        reader_held.set()
        release.wait(60)

    replies: list[Future[Any]] = []
    process.start()
    try:
        for slot in process.slots:
            dispatcher.add_worker(slot)
        for i in range(8):
            reply: Future[Any] = Future()
            reply.add_done_callback(hold_the_reader)
            messages = [{"role": "user", "content": f"q{i}"}]
            dispatcher.submit(LMRequest(lm, messages, {}, capture(timeout=60), reply))
            replies.append(reply)
        assert reader_held.wait(30)
        wait_until(lambda: sim.request_count == 8, what="every call sent by the worker")
        held_at = time.monotonic()
        wait_until(lambda: process.last_pong > held_at, what="a pong while the answers are held up")
        release.set()
        assert all(r.result(timeout=30).outputs[0].endswith("completed ## ]]") for r in replies)
        assert process.pid is not None
        assert _alive(process.pid)
    finally:
        release.set()
        process.stop()
        lm.close()


def test_a_worker_process_imports_only_the_lm_layer() -> None:
    # The bootstrap skips the package's __init__ (runtime, optimizers, ...): a worker starts
    # in well under half the time, and so restarts faster after a crash.
    code = (
        _worker_main.BARE_PACKAGE
        + "import dspy_actors.lm._worker_process\n"
        + "print(sorted(m for m in sys.modules if m.startswith('dspy_actors')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", code, _worker_main.PACKAGE_DIR],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    loaded = ast.literal_eval(out)
    assert "dspy_actors.lm._lm" in loaded
    assert not [
        m for m in loaded if m.startswith(("dspy_actors.runtime", "dspy_actors.optimizers"))
    ]


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_a_process_takes_its_slots_from_lm_max_in_flight_and_starts_threads_as_calls_come(
    start_app: StartApp, sim: SimLM
) -> None:
    held = HeldResponder()
    sim.respond_with(held)
    app = start_app(lm_processes=2, lm_max_in_flight=200)
    workers = app.root.supervisor("lm").supervisor("workers").which_children()
    described = [w.ref.proxy().describe().get(timeout=10) for w in workers if w.ref is not None]
    assert [d["slots"] for d in described] == [100, 100]  # 200 spread over the two
    pids = [d["pid"] for d in described]
    before = sum(_threads(pid) for pid in pids)
    assert before <= 4  # its main threads only: no thread per slot
    qa = app.serve("qa", Predict("question -> answer"))
    futures = [qa.submit(question=f"q{i}") for i in range(6)]
    try:
        held.wait_for_arrivals(6)
        # A thread per call in flight, started as the calls came.
        assert sum(_threads(pid) for pid in pids) == before + 6
    finally:
        held.open()
    assert all(f.result(timeout=30.0).answer for f in futures)
    assert sum(_threads(pid) for pid in pids) == before + 6  # kept for the next calls
