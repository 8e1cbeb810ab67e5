"""LM worker processes: the LM pool's workers with ``dsa.start(lm_processes=N)``.

With hundreds of LM calls in flight, the HTTP client's CPU under one GIL limits the whole
service (see ``bench/bench_runtime.py``). With ``lm_processes``, the HTTP part of every LM
call (``LM.run``: build the body, POST, retry, parse) runs in ``N`` worker processes, and
this process keeps everything else. The call flow of DESIGN.md is unchanged: the module
actor hands its request to the LM pool and resumes when the reply arrives as a message.
Only the pool's workers differ:

- Each worker process is owned by an :class:`LMProcess` actor under the pool's
  supervisor (the shape every slot host shares: ``_lm_host``). The process offers
  ``slots`` slots to the pool's dispatcher (``lm_max_in_flight`` spread over the
  processes), each running one request at a time, so the pool's bounds, breakers, rate
  limits and fallbacks work as with the event loops. In the process a slot's call holds
  a thread (``LM.run`` is blocking HTTP); threads start as calls arrive, up to the slots.
- A request handed to a slot is prepared in the sending thread (parameters resolved in
  the caller's context, cache checked: ``LM.prepare``) and written to the process's pipe;
  the process's reader thread settles the answer (usage, cache, history: ``LM.settle``)
  in the caller's context and completes the reply. No thread waits on the request.
- If the process dies, its owner crashes and is restarted with a new process; requests the
  dead process held are retried once on another slot (an LM completion is safe to
  repeat), as when an event loop's actor crashes.

Only a plain :class:`~dspy_actors.lm.LM` can be sent. A call for anything else (an
LM-like object, an ``LM`` subclass whose overrides a plain LM in the process would skip,
``verify=<ssl.SSLContext>``) runs in a thread of this process instead, holding its slot.
Streaming (``LM.stream``) does not go through the pool and is not affected.

Over 400 lines: the worker process, its owner actor and the pipe protocol between them
change together.
"""

from __future__ import annotations

import itertools
import os
import pickle
import select
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import pykka

from dspy_actors.lm._lm import LM, PreparedCall, WorkerSpec
from dspy_actors.lm._types import Completion, LMResponse
from dspy_actors.lm._worker_main import worker_command
from dspy_actors.lm._worker_process import encode_frame, read_frame
from dspy_actors.lm.errors import LMError
from dspy_actors.runtime._context import restored
from dspy_actors.runtime._futures import reject
from dspy_actors.runtime._lm_host import SlotHostActor
from dspy_actors.runtime._lm_pool import Dispatcher, LMAttempt, LMPublisher, Slot, Work

__all__ = ["LMProcess", "LMProcessExited", "WorkerProcess"]

_READY_SECONDS = 60.0
_STOP_SECONDS = 2.0
_WRITE_SECONDS = 5.0
# The heartbeat: a ping every _HEARTBEAT_SECONDS; a worker that has not answered one for
# _HEARTBEAT_TIMEOUT_SECONDS is hung (stopped, or stuck holding its GIL) and is killed.
# Pings and pongs are single bytes on a pipe pair of their own, not frames among the calls
# and answers: a ping never waits on the write lock senders share, a pong never waits
# behind the worker's answers (its write lock, a full pipe, this process's reader settling
# a backlog). Those waits starved a healthy worker holding thousands of calls under load,
# and it was killed as hung; the heartbeat asks only whether the worker's interpreter runs.
_HEARTBEAT_SECONDS = 1.0
_HEARTBEAT_TIMEOUT_SECONDS = 10.0

Publisher = LMPublisher  # where requests are counted and their lm.* events published

# Per thread: requests handed over while this thread is already sending (see ``send``).
_sending = threading.local()


class LMProcessExited(RuntimeError):
    """An LM worker process ended while its owner still needed it."""


@dataclass(slots=True, eq=False)
class _Sent:
    slot: Slot
    lm: LM
    attempt: LMAttempt
    prepared: PreparedCall


class WorkerProcess:
    """One LM worker process, its pipe and its reader thread. Thread-safe: the dispatcher
    sends from any thread; the reader thread settles answers."""

    def __init__(
        self,
        name: str,
        dispatcher: Dispatcher,
        slots: int,
        publisher: Publisher | None = None,
        on_exit: Callable[[int | None], None] = lambda _code: None,
    ) -> None:
        if slots < 1:
            raise ValueError(f"an LM worker process needs at least 1 slot, got {slots}")
        self.name = f"{name}-{uuid.uuid4().hex[:8]}"
        self._dispatcher = dispatcher
        self._publisher = publisher
        self._on_exit = on_exit
        self.slots = [Slot(self, i, "process") for i in range(slots)]
        self._ids = itertools.count(1)
        self._pending: dict[int, _Sent] = {}
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()
        # One LM in the process per distinct spec (deployment, key, timeout, retries, TLS):
        # bounded by the deployments, however many LM objects the calls bring.
        self._lm_ids: dict[WorkerSpec, int] = {}
        self._lm_lock = threading.Lock()
        self._lms_sent: set[int] = set()  # (under the write lock)
        self._ready = threading.Event()
        self._ready_seen = False  # the process said "ready" (the event is also set at exit)
        self._stopping = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._command = worker_command()
        # How long a send may wait for a process that stopped reading its pipe.
        self.write_timeout = _WRITE_SECONDS
        self.heartbeat_interval = _HEARTBEAT_SECONDS
        self.heartbeat_timeout = _HEARTBEAT_TIMEOUT_SECONDS
        self._last_pong = time.monotonic()
        self._heart_stop = threading.Event()
        self._heart: threading.Thread | None = None
        # This process's ends of the heartbeat pipes (-1: none open): pings out, pongs in.
        self._ping_fd = -1
        self._pong_fd = -1

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def last_pong(self) -> float:
        """When (``time.monotonic()``) the process last answered a heartbeat ping, as seen
        by the heart thread (at most ``heartbeat_interval`` late)."""
        return self._last_pong

    # Life. ------------------------------------------------------------------------------

    def start(self, timeout: float = _READY_SECONDS) -> None:
        """Start the process and wait until it is ready to take calls."""
        # The heartbeat's pipes; the process is told their numbers after its command.
        ping_read, self._ping_fd = os.pipe()
        self._pong_fd, pong_write = os.pipe()
        try:
            proc = self._proc = subprocess.Popen(
                [*self._command, str(ping_read), str(pong_write)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(ping_read, pong_write),
            )
        except BaseException:
            self._close_heartbeat_pipes()
            raise
        finally:
            os.close(ping_read)
            os.close(pong_write)
        # Neither end ever blocks the heart: a ping into a full pipe is one the process
        # does not read (the timeout decides); a drained pong pipe is an answer not given.
        os.set_blocking(self._ping_fd, False)
        os.set_blocking(self._pong_fd, False)
        assert proc.stdin is not None
        assert proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(proc.stdout,), name=f"{self.name}-reader", daemon=True
        )
        self._reader.start()
        # Writes go straight to the non-blocking pipe (see _write), never through the
        # file object's buffer.
        os.set_blocking(proc.stdin.fileno(), False)
        self._post(encode_frame(("hello", len(self.slots))))  # if it fails: reported below
        ended = self._ready.wait(timeout)  # set by "ready", or by the end of its output
        if self._ready_seen:
            self._last_pong = time.monotonic()
            self._heart = threading.Thread(
                target=self._beat, name=f"{self.name}-heart", daemon=True
            )
            self._heart.start()
        if not self._ready_seen:
            code = self._exit_code() if ended else None
            self.stop()
            if code is None:
                raise LMProcessExited(
                    f"LM worker process {self.name} was not ready after {timeout:g}s"
                )
            raise LMProcessExited(
                f"LM worker process {self.name} exited with code {code} before it was "
                f"ready (its stderr is this process's stderr; interpreter {self._command[0]})"
            )

    def stop(self, timeout: float = _STOP_SECONDS) -> None:
        """End the process (its stdin closes; killed if it lingers) and the reader."""
        self._stopping = True
        self._heart_stop.set()
        if self._heart is not None and self._heart is not threading.current_thread():
            self._heart.join(timeout=timeout)
        proc = self._proc
        if proc is not None:
            # A sender blocked on a full pipe (a process that stopped reading) holds the
            # write lock: then kill the process, which fails that write, rather than wait.
            if self._write_lock.acquire(timeout=timeout):
                try:
                    if proc.stdin is not None:
                        proc.stdin.close()
                except OSError:
                    pass
                finally:
                    self._write_lock.release()
            else:
                proc.kill()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=timeout)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._heart is None or not self._heart.is_alive():
            self._close_heartbeat_pipes()  # (else the heart, still running, owns them)

    def _close_heartbeat_pipes(self) -> None:
        fds, self._ping_fd, self._pong_fd = (self._ping_fd, self._pong_fd), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def abandon_requests(self, reason: str) -> None:
        """Forget the requests this process held and withdraw its slots from the pool:
        the dispatcher retries each unanswered request once on another worker."""
        with self._pending_lock:
            self._pending.clear()
        self._dispatcher.workers_died(self.slots, reason)

    # Sending (any thread). ----------------------------------------------------------------

    def send(self, slot: Slot, work: Work) -> None:
        """Hand ``work`` to the process, or answer it here (a cache hit, an LM that cannot
        be sent, a deadline already past) and free the slot."""
        backlog: deque[tuple[WorkerProcess, Slot, Work]] | None = getattr(_sending, "backlog", None)
        if backlog is not None:
            # Freeing a slot below makes the dispatcher hand this thread the next request:
            # queue it instead of recursing (a long queue of such requests would otherwise
            # run out of stack).
            backlog.append((self, slot, work))
            return
        backlog = _sending.backlog = deque([(self, slot, work)])
        try:
            while backlog:
                process, next_slot, next_work = backlog.popleft()
                try:
                    process._send_one(next_slot, next_work)
                except Exception as error:  # a bug: the caller hears of it, the slot frees
                    reject(next_work.pending.request.reply, error)
                    process._dispatcher.finished(next_slot, "ignore", 0.0)
        finally:
            _sending.backlog = None

    def _send_one(self, slot: Slot, work: Work) -> None:
        request = work.pending.request
        lm = work.lm
        attempt = LMAttempt.begin(request, lm, work.key, self._publisher)
        if attempt is None:
            self._dispatcher.finished(slot, "ignore", 0.0)
            return
        outcome = self._send(slot, lm, attempt)
        if outcome is not None:  # answered here, without the process
            self._dispatcher.finished(slot, outcome, time.monotonic() - attempt.started)

    def _lm_id(self, spec: WorkerSpec) -> int:
        """The id the process knows the LM of ``spec`` by."""
        lm_id = self._lm_ids.get(spec)
        if lm_id is None:
            with self._lm_lock:
                lm_id = self._lm_ids.get(spec)
                if lm_id is None:
                    lm_id = self._lm_ids[spec] = len(self._lm_ids) + 1
        return lm_id

    def _send(self, slot: Slot, lm: Any, attempt: LMAttempt) -> str | None:
        request = attempt.request
        if type(lm) is not LM:
            # An LM-like object, or a subclass whose overrides the process's plain LM would
            # skip: run it here instead.
            self._run_here(slot, lm, attempt)
            return None
        try:
            with restored(request.ctx):
                prepared = lm.prepare(request.messages, **attempt.kwargs)
            if isinstance(prepared, LMResponse):  # a cache hit (a fallback LM's cache)
                return attempt.succeeded(prepared)
            spec = lm.worker_spec()  # ValueError for an LM that cannot be sent
            lm_id = self._lm_id(spec)
            call_id = next(self._ids)
            call_frame = encode_frame(
                (
                    "call",
                    call_id,
                    lm_id,
                    prepared.messages,
                    prepared.params,
                    prepared.response_format,
                    prepared.timeout,
                    prepared.deadline,
                )
            )
        except LMError as error:
            return attempt.failed(error)
        except (pickle.PicklingError, TypeError, AttributeError, ValueError):
            # Cannot be sent (verify=<SSLContext>, a message that does not pickle).
            self._run_here(slot, lm, attempt)
            return None
        with self._pending_lock:
            self._pending[call_id] = _Sent(slot, lm, attempt, prepared)
        # If it cannot be sent, the process is dead (or killed as hung): its owner's restart
        # retries this request.
        self._post(call_frame, (lm_id, spec))
        return None

    def _run_here(self, slot: Slot, lm: Any, attempt: LMAttempt) -> None:
        """Run a call that cannot go to the process in a thread of this process. It holds
        its slot until it ends, so the pool's bound holds."""
        threading.Thread(
            target=self._dispatcher.run_attempt,
            args=(slot, attempt, lm),
            name=f"{self.name}-here",
            daemon=True,
        ).start()

    def _post(self, frame: bytes, lm: tuple[int, WorkerSpec] | None = None) -> bool:
        """Write ``frame`` to the process, after the frame of ``lm`` (its id and spec) if
        the process does not know that LM yet. False if the process is gone, or hung: one
        that took no input for ``write_timeout`` is killed, as a dead one (its owner
        restarts it and the requests it held are retried elsewhere)."""
        proc = self._proc
        assert proc is not None
        with self._write_lock:
            try:
                if lm is not None and lm[0] not in self._lms_sent:
                    self._write(encode_frame(("lm", *lm)))  # before the LM's first call
                    self._lms_sent.add(lm[0])
                self._write(frame)
            except TimeoutError:  # (before OSError, its base class)
                proc.kill()
                return False
            except (OSError, ValueError):
                return False  # it died, or is stopping (stdin closed)
        return True

    def _write(self, data: bytes) -> None:
        """Write all of ``data`` to the process's stdin (under the write lock). The pipe is
        non-blocking: a process that stops reading makes this wait at most
        ``write_timeout`` seconds in all, then raise TimeoutError; the sending thread (a
        module actor's, say) never waits on a hung worker for longer."""
        proc = self._proc
        assert proc is not None
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        view = memoryview(data)
        deadline = time.monotonic() + self.write_timeout
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"LM worker process {self.name} took no input for {self.write_timeout:g} s"
                    ) from None
                select.select([], [fd], [], remaining)

    # Answers (the reader thread). -----------------------------------------------------------

    def _read(self, stream: IO[bytes]) -> None:
        try:
            while (frame := read_frame(stream)) is not None:
                if frame[0] == "ready":
                    self._ready_seen = True
                    self._ready.set()
                elif frame[0] == "done":
                    _, call_id, ok, value, requests, retries = frame
                    with self._pending_lock:
                        sent = self._pending.pop(call_id, None)
                    if sent is None:
                        continue
                    try:
                        self._settle(sent, ok, value, requests, retries)
                    except Exception as error:  # a bug: that call's answer; reading goes on
                        reject(sent.attempt.request.reply, error)
                        self._dispatcher.finished(sent.slot, "ignore", 0.0)
        except Exception:
            # A frame that cannot be read: the stream is lost. End the process, so that its
            # owner restarts it and the requests it held are retried.
            if self._proc is not None:
                self._proc.kill()
        finally:
            self._heart_stop.set()
            self._ready.set()  # wakes start() if the process died before it was ready
            if not self._stopping:
                self._on_exit(self._exit_code())

    def _beat(self) -> None:
        """Ping the process; kill it if it has not answered for ``heartbeat_timeout``. Its
        pipe may have room, so a write alone would not notice that it stopped reading.
        Pings and pongs go over the heartbeat pipes, so nothing the calls do delays them."""
        proc = self._proc
        assert proc is not None
        ping_fd, pong_fd = self._ping_fd, self._pong_fd
        while not self._heart_stop.wait(self.heartbeat_interval):
            try:
                answered = _drain(pong_fd)
            except EOFError:
                return  # it exited (the reader reports it)
            now = time.monotonic()
            if answered:
                self._last_pong = now
            elif now - self._last_pong > self.heartbeat_timeout:
                proc.kill()  # the reader sees the end and reports the exit
                return
            try:
                os.write(ping_fd, b"p")
            except BlockingIOError:
                pass  # its ping pipe is full: it reads no pings (the timeout decides)
            except OSError:
                return  # it exited (the reader reports it)

    def _exit_code(self) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        try:  # its output ended: it is exiting, give it a moment to say with what
            return proc.wait(timeout=_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            return None

    def _settle(self, sent: _Sent, ok: bool, value: Any, requests: int, retries: int) -> None:
        attempt = sent.attempt
        sent.lm.count_remote(requests, retries, failed=not ok)
        if ok:
            try:
                with restored(attempt.request.ctx):
                    response = sent.lm.settle(sent.prepared, Completion(*value))
            except Exception as error:  # a cache that cannot store: still the call's answer
                reject(attempt.request.reply, error)
                outcome = "ignore"
            else:
                outcome = attempt.succeeded(response)
        elif isinstance(value, LMError):
            outcome = attempt.failed(value)
        else:
            reject(attempt.request.reply, value)
            outcome = "ignore"
        self._dispatcher.finished(sent.slot, outcome, time.monotonic() - attempt.started)


def _drain(fd: int) -> bool:
    """Read every pong waiting on the non-blocking ``fd``: whether there was one. Raises
    EOFError once the process has closed its end (it exited)."""
    answered = False
    while True:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return answered
        if not data:
            raise EOFError
        answered = True


@dataclass(frozen=True, slots=True)
class _Exited:
    code: int | None


class LMProcess(SlotHostActor[WorkerProcess]):
    """Owns one :class:`WorkerProcess` (the shared shape: ``_lm_host``), and crashes (to be
    restarted with a new process) when the process dies."""

    what = "the LM worker process"
    ended_by_crash = "died"

    def _open(self) -> WorkerProcess:
        ref = self.actor_ref

        def exited(code: int | None) -> None:
            try:
                ref.tell(_Exited(code))
            except pykka.ActorDeadError:
                pass  # stopping anyway

        process = WorkerProcess(
            self._name, self._dispatcher, self._slots, self._publisher, on_exit=exited
        )
        process.start()
        return process

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Exited):
            raise LMProcessExited(
                f"LM worker process {self._name} exited (code {message.code}); restarting it"
            )
        return super().on_receive(message)

    def _details(self, host: WorkerProcess) -> dict[str, Any]:
        return {"pid": host.pid}

    @property
    def process(self) -> WorkerProcess | None:
        return self.host
