"""An LM worker process: runs the HTTP part of LM calls (``LM.run``) for a parent process.

Why processes: with a few hundred LM calls in flight, the HTTP client's own CPU (request
building, socket I/O, response parsing: about 300 us a call on one thread, 500 once hundreds
of threads share the GIL) is what limits a Python process. A worker process does that work
under its own GIL; the parent only resolves parameters, checks the cache, and accounts the
answer (see ``dspy_actors.runtime._lm_process``, which owns these processes).

Started by ``_worker_main.worker_command()``. The protocol is length-prefixed
pickles (``write_frame``/``read_frame``) over the child's stdin and stdout, between two
processes of the same program (so pickle is safe here: nothing else writes to these pipes):

- parent -> child: ``("hello", threads)`` once (``threads``: the most calls it sends at
  once), then ``("lm", lm_id, WorkerSpec)`` before the first call of each LM, and per
  call ``("call", call_id, lm_id, messages, params, response_format, timeout, deadline)``
  (a ``PreparedCall``'s fields; ``deadline`` is a ``time.monotonic()`` instant, a clock
  both processes share on Linux);
- the heartbeat is not a frame: a byte a second on a pipe of its own (its number the
  command line's second-last argument), answered by a byte on another (the last), from a
  thread that does nothing else, so that no call or answer in the frame pipes can delay
  it (the parent kills a child that stops answering);
- child -> parent: ``("ready", pid)`` once, then per call ``("done", call_id, ok, value,
  requests, retries)``: ``value`` is the ``Completion``'s fields as a tuple, or the
  exception; ``requests`` and ``retries`` the HTTP attempts the call made (``LM.stats``).

Frames carry tuples, not dataclasses: pickling a slotted dataclass walks its fields in
Python, which cost more than the rest of a frame.

The child exits when its stdin closes (the parent stopped or died), so it never outlives
the parent. Anything the child prints goes to stderr: stdout carries frames only.
"""

from __future__ import annotations

import os
import pickle
import queue
import struct
import sys
import threading
from typing import IO, Any

_LENGTH = struct.Struct("!I")


def encode_frame(value: object) -> bytes:
    """One frame's bytes (raises what pickle raises for a value it cannot serialize)."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def write_frame(stream: IO[bytes], value: object) -> None:
    """Write one frame (writers of one stream must take turns)."""
    stream.write(encode_frame(value))
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    """The next frame, or None at the end of the stream (a torn frame is an end too)."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


class _Tally(threading.local):
    requests = 0
    retries = 0


def _counting_lm_class() -> Any:
    # Imported here: the parent imports this module for the framing only.
    from dspy_actors.lm._lm import LM

    tally = _Tally()

    class CountingLM(LM):
        """Counts each call's HTTP attempts in the calling thread, to report them back."""

        def _count(self, name: str, amount: int = 1) -> None:
            if name == "requests":
                tally.requests += amount
            elif name == "retries":
                tally.retries += amount

    return CountingLM, tally


def _picklable(error: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def serve(source: IO[bytes], sink: IO[bytes]) -> None:
    """Answer calls read from ``source`` on ``sink`` until ``source`` ends."""
    from dspy_actors.lm._lm import PreparedCall

    counting_lm, tally = _counting_lm_class()
    hello = read_frame(source)
    if hello is None:
        return
    _, threads = hello
    lms: dict[int, Any] = {}
    write_lock = threading.Lock()

    def answer(frame: tuple[Any, ...]) -> None:
        with write_lock:
            write_frame(sink, frame)

    def run(call_id: int, lm: Any, prepared: PreparedCall) -> None:
        tally.requests = tally.retries = 0
        try:
            c = lm.run(prepared)
        except BaseException as error:  # every error is the call's answer, bugs included
            answer(("done", call_id, False, _picklable(error), tally.requests, tally.retries))
            return
        fields = (
            c.outputs,
            c.finish_reasons,
            c.prompt_tokens,
            c.completion_tokens,
            c.model,
            c.tool_calls,
        )
        answer(("done", call_id, True, fields, tally.requests, tally.retries))

    # Threads on one SimpleQueue rather than a ThreadPoolExecutor: no Future and no
    # work-item object per call, and a C queue between the reader and the threads. A
    # thread starts when a call arrives and none is free, up to ``threads`` (the parent's
    # slots, which bound the calls it sends): the process holds as many threads as it
    # ever had calls at once, not one per slot (the parent's slots default to thousands).
    work: queue.SimpleQueue[tuple[int, Any, PreparedCall]] = queue.SimpleQueue()
    free = 0  # threads waiting for a call no other call has claimed (under count_lock)
    started = 0
    count_lock = threading.Lock()

    def http_thread() -> None:
        nonlocal free
        while True:
            run(*work.get())
            with count_lock:
                free += 1

    def hand(item: tuple[int, Any, PreparedCall]) -> None:
        nonlocal free, started
        with count_lock:
            if free > 0:
                free -= 1
            elif started < threads:
                started += 1
                name = f"lm-http-{started}"
                threading.Thread(target=http_thread, name=name, daemon=True).start()
        work.put(item)

    answer(("ready", os.getpid()))
    while (frame := read_frame(source)) is not None:
        if frame[0] == "lm":
            _, lm_id, spec = frame
            lms[lm_id] = counting_lm.from_worker_spec(spec)
        elif frame[0] == "call":
            _, call_id, lm_id, messages, params, response_format, timeout, deadline = frame
            prepared = PreparedCall(messages, params, response_format, timeout, None, 0.0, deadline)
            hand((call_id, lms[lm_id], prepared))
    # The parent is gone or stopping: nobody waits for the calls still running, so do not
    # wait for them either.
    os._exit(0)


def answer_heartbeat(pings: int, pongs: int) -> None:
    """A pong byte on ``pongs`` for every read of ping bytes on ``pings``, until either
    pipe closes. Run in a thread of its own: the answers' write lock, a full answer pipe or
    thousands of busy call threads never stand between a ping and its pong, only the
    interpreter itself (stopped, or stuck holding its GIL: what the heartbeat looks for)."""
    try:
        while os.read(pings, 64):
            os.write(pongs, b"p")
    except OSError:
        pass  # the parent is gone: stdin closes too, and serve() ends the process
    finally:
        os.close(pings)
        os.close(pongs)


def main() -> None:
    sink = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt frames
    pings, pongs = int(sys.argv[-2]), int(sys.argv[-1])  # the heartbeat's pipes
    threading.Thread(
        target=answer_heartbeat, args=(pings, pongs), name="heartbeat", daemon=True
    ).start()
    serve(sys.stdin.buffer, sink)
