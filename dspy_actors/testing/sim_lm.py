"""SimLM: a simulated LM server on loopback, for tests and benchmarks.

A real HTTP/1.1 server (keep-alive, one thread per connection) on ``127.0.0.1:<ephemeral>``
that speaks OpenAI chat completions (``POST /v1/chat/completions``) and Anthropic messages
(``POST /v1/messages``), streaming over SSE included. What it answers comes from a
*responder* (a function of the :class:`SimRequest`); what goes wrong comes from a
:class:`~dspy_actors.testing._faults.FaultPlan`. Counters say what it served and injected.

    with SimLM(latency=0.01) as sim:
        sim.inject(Fault.rate_limited(retry_after=1))          # the next request gets a 429
        sim.inject_rate(Fault.server_error(), rate=0.2)        # then 20% of requests fail
        lm = LM("openai/sim", api_base=sim.openai_base, api_key="k")

Every thread it starts is named with ``thread_name_prefix`` ("sim-lm" by default) and
``stop()`` shuts the server down, drops open keep-alive connections, cuts hangs and latency
short, and joins its threads (bounded by a timeout).

Over 400 lines: one HTTP server: request parsing, responders, faults and counters share its
connection threads; the wire formats are in _sim_wire.py.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dspy_actors.testing import _sim_wire as wire
from dspy_actors.testing._faults import Fault, FaultPlan, FaultRule
from dspy_actors.testing.sim_responder import default_responder

__all__ = [
    "Fault",
    "FaultPlan",
    "FaultRule",
    "Responder",
    "SimLM",
    "SimReply",
    "SimRequest",
    "SimStats",
]


@dataclass(slots=True)
class SimRequest:
    """One request as the simulator received it. ``messages`` are OpenAI-format (an
    Anthropic request's top-level ``system`` becomes the first message)."""

    provider: str
    model: str
    messages: list[dict[str, Any]]
    body: dict[str, Any]
    headers: dict[str, str]
    path: str = ""
    index: int = 0  # 0-based arrival order on this server
    elapsed_s: float = 0.0  # seconds since the server started

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def n(self) -> int:
        n = self.body.get("n", 1)
        return n if isinstance(n, int) and n > 0 else 1

    @property
    def last_user_text(self) -> str:
        """The text of the last user message ("" if there is none)."""
        for msg in reversed(self.messages):
            if msg.get("role") == "user":
                return wire.message_text(msg)
        return ""


@dataclass(frozen=True, slots=True)
class SimReply:
    """What a responder may return instead of a plain string: one text for every choice,
    or one text per choice (``n > 1``), and optionally a finish reason."""

    text: str | Sequence[str]
    finish_reason: str | None = None  # None = the provider's normal "stop" / "end_turn"
    # Native tool calls (``{"name", "args"}``, optionally ``"id"``) every choice makes.
    tool_calls: Sequence[Mapping[str, Any]] | None = None


Responder = Callable[[SimRequest], "str | SimReply | Fault"]
Latency = float | Callable[[SimRequest], float]


@dataclass(frozen=True, slots=True)
class SimStats:
    """A snapshot of the server's counters.

    ``requests`` = every POST received; ``served`` = completions answered normally
    (unparseable-completion faults included); ``injected`` = faults by name (e.g.
    ``status_429``, ``hang``, ``reset``); ``errors`` = requests refused on their own
    merits (bad JSON, wrong API key, unknown path, responder exceptions).
    """

    requests: int
    served: int
    injected: Mapping[str, int]
    errors: Mapping[str, int]

    @property
    def injected_total(self) -> int:
        return sum(self.injected.values())


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # small writes must not wait for delayed ACKs
    server: _Server
    # Lower-cased request headers. The stdlib parses headers with the email package
    # (~80 us a request); this simulator must stay cheap next to the client it measures.
    lean_headers: dict[str, str]

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def parse_request(self) -> bool:
        """A lean HTTP/1.1 request-line and header parser (replaces the stdlib's)."""
        self.command = ""
        self.close_connection = True
        raw: bytes = getattr(self, "raw_requestline", b"")
        self.requestline = str(raw, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self.request_version = "HTTP/0.9"
            self.send_error(400, f"Bad request line {self.requestline!r}")
            return False
        self.command, self.path, self.request_version = words
        headers: dict[str, str] = {}
        for _ in range(200):
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("iso-8859-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            self.send_error(431, "Too many headers")
            return False
        self.lean_headers = headers
        conn = headers.get("connection", "").lower()
        keep_alive = self.request_version >= "HTTP/1.1" or conn == "keep-alive"
        self.close_connection = conn == "close" or not keep_alive
        return True

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/health"):
            self._send_json(200, {"status": "ok"})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        self.server.sim._handle(self)

    # -- helpers used by SimLM._handle -------------------------------------------------
    def _read_body(self) -> bytes:
        length = int(self.lean_headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self._send_bytes(status, data, "application/json", headers)

    def _head(self, status: int, fields: Mapping[str, str]) -> bytes:
        reason = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines.extend(f"{k}: {v}" for k, v in fields.items())
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send_bytes(
        self,
        status: int,
        data: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
        declared_length: int | None = None,
    ) -> None:
        fields = {"Content-Type": content_type, "Content-Length": str(declared_length or len(data))}
        fields.update(headers or {})
        # One write for head and body: one segment on the wire for small answers.
        self.wfile.write(self._head(status, fields) + data)

    def _start_sse(self) -> None:
        fields = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "Transfer-Encoding": "chunked",
        }
        self.wfile.write(self._head(200, fields))

    def _send_chunk(self, frame: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _abort(self) -> None:
        """Drop the connection with a TCP reset, answering nothing more."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class _Server(http.server.HTTPServer):
    """An HTTP server whose per-connection threads are named, tracked and joinable."""

    daemon_threads = True
    allow_reuse_address = True
    # The stdlib default backlog (5) drops SYNs under hundreds of concurrent connects,
    # which costs clients a 1 s retransmit each.
    request_queue_size = 1024

    def __init__(self, sim: SimLM, address: tuple[str, int], prefix: str) -> None:
        self.sim = sim
        self.prefix = prefix
        self._conn_lock = threading.Lock()
        self._conns: dict[threading.Thread, socket.socket] = {}
        self._conn_seq = 0
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse-DNS lookup (getfqdn); skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._conn_seq += 1
            name = f"{self.prefix}-{self.server_port}-conn-{self._conn_seq}"
            thread = threading.Thread(
                target=self._serve_connection,
                args=(request, client_address),
                name=name,
                daemon=True,
            )
            self._conns[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            pass
        finally:
            self.shutdown_request(request)
            with self._conn_lock:
                self._conns.pop(threading.current_thread(), None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connection errors are part of the job (faults, clients timing out): stay quiet."""

    def drop_connections(self) -> list[threading.Thread]:
        """Shut every open connection down (unblocking its thread); return the threads."""
        with self._conn_lock:
            conns = list(self._conns.items())
        for _, sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return [t for t, _ in conns]


class SimLM:
    """A simulated OpenAI/Anthropic LM server on loopback. Use as a context manager, or
    call :meth:`start` and :meth:`stop`.

    ``responder`` maps a :class:`SimRequest` to the completion text (a ``str``), a
    :class:`SimReply` (per-choice texts, finish reason) or a :class:`Fault`; by default the
    answers follow the adapters' formats (see ``sim_responder``). ``latency`` (seconds, or a
    function of the request) delays every answer. ``faults`` is the fault plan to start
    with (``FaultPlan.load("plan.yaml")``, say; ``seed`` seeds an empty one otherwise).
    ``api_key``, if given, is required (``Authorization: Bearer`` or ``x-api-key``); a
    wrong or missing key gets a 401.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        latency: Latency = 0.0,
        api_key: str | None = None,
        faults: FaultPlan | None = None,
        seed: int | None = None,
        record_requests: bool = True,
        thread_name_prefix: str = "sim-lm",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._responder: Responder = responder or default_responder
        self.latency: Latency = latency
        self.faults = faults if faults is not None else FaultPlan(seed=seed)
        self._api_key = api_key
        self._record = record_requests
        self._prefix = thread_name_prefix
        self._address = (host, port)
        self._lock = threading.Lock()
        self._requests: list[SimRequest] = []
        self._count = 0
        self._served = 0
        self._injected: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self.responder_errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self.abandoned_threads: list[str] = []

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> SimLM:
        """Bind and serve in a background thread. Returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(self, self._address, self._prefix)
        self._server = server
        self._started_at = time.monotonic()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self._prefix}-{server.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, drop open connections, end hangs, and join every thread this
        server started (waiting at most ``timeout`` seconds overall)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        deadline = time.monotonic() + timeout
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        # A handler may accept one more request between the drop and its exit: repeat.
        while True:
            threads = server.drop_connections()
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            alive = [t for t in threads if t.is_alive()]
            if not threads or time.monotonic() >= deadline:
                self.abandoned_threads = [t.name for t in alive]
                break
        self._server = None
        self._thread = None

    def __enter__(self) -> SimLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- addresses
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("SimLM is not running: call start() or use it as a context manager")
        return self._server.server_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base(self) -> str:
        return self.url

    # ---------------------------------------------------------------- scripting
    def respond_with(self, responder: Responder | None) -> None:
        """Replace the responder (None = the default, adapter-format responder)."""
        self._responder = responder or default_responder

    def inject(
        self, fault: Fault, times: int = 1, *, match: Callable[[SimRequest], bool] | None = None
    ) -> FaultRule:
        """Make the next ``times`` (matching) requests fail with ``fault``. Rules fire in
        the order they were added, so successive calls queue faults."""
        return self.faults.add(FaultRule(fault, times=times, match=match))

    def inject_rate(
        self,
        fault: Fault,
        rate: float,
        *,
        match: Callable[[SimRequest], bool] | None = None,
        start_s: float | None = None,
        end_s: float | None = None,
    ) -> FaultRule:
        """Fail a random ``rate`` fraction of (matching) requests with ``fault``, optionally
        only between ``start_s`` and ``end_s`` seconds after the server started."""
        return self.faults.add(
            FaultRule(fault, rate=rate, match=match, start_s=start_s, end_s=end_s)
        )

    def clear_faults(self) -> None:
        self.faults.clear()

    # ---------------------------------------------------------------- counters
    @property
    def requests(self) -> list[SimRequest]:
        """Every request received so far (a snapshot), in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._count

    @property
    def stats(self) -> SimStats:
        with self._lock:
            return SimStats(self._count, self._served, dict(self._injected), dict(self._errors))

    def reset_counters(self) -> None:
        """Forget recorded requests and zero the counters."""
        with self._lock:
            self._requests.clear()
            self._count = self._served = 0
            self._injected.clear()
            self._errors.clear()
            self.responder_errors.clear()

    # ---------------------------------------------------------------- request handling
    def _error(self, name: str) -> None:
        with self._lock:
            self._errors[name] += 1

    def _handle(self, h: _Handler) -> None:
        raw = h._read_body()
        path, _, query = h.path.partition("?")
        path = path.rstrip("/")
        found = wire.route(path)
        if found is None:
            self._error("not_found")
            h._send_json(404, wire.error_body("openai", "not_found", f"no route {h.path}"))
            return
        provider = found.provider
        if provider == "azure" and "api-version=" not in query:
            self._error("bad_request")
            h._send_json(400, wire.error_body("openai", "bad_request", "missing api-version"))
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
        except ValueError as exc:
            self._error("bad_json")
            h._send_json(400, wire.error_body(provider, "bad_request", f"invalid JSON body: {exc}"))
            return
        if provider == "anthropic":
            messages = wire.anthropic_to_openai_messages(body)
        elif provider == "gemini":
            messages = wire.gemini_to_openai_messages(body)
            # The path says the model and whether to stream; SimRequest reads the body.
            body = {**body, "model": found.model, "stream": bool(found.stream)}
            body["n"] = wire.gemini_candidate_count(body)
        else:
            messages = list(body.get("messages") or [])
        if provider == "azure":
            body = {**body, "model": found.model}  # the deployment names the model
        headers = h.lean_headers
        with self._lock:
            req = SimRequest(
                provider,
                str(body.get("model", "")),
                messages,
                body,
                headers,
                path,
                self._count,
                time.monotonic() - self._started_at,
            )
            self._count += 1
            if self._record:
                self._requests.append(req)
        if self._api_key is not None and not self._authorized(headers):
            self._error("unauthorized")
            h._send_json(401, wire.error_body(provider, "auth"))
            return
        fault = self.faults.next_fault(req, req.elapsed_s)
        delay = self.latency(req) if callable(self.latency) else self.latency
        if delay > 0 and self._stopping.wait(delay):
            h._abort()
            return
        if fault is None:
            try:
                reply = self._responder(req)
            except Exception as exc:
                with self._lock:
                    self._errors["responder_exception"] += 1
                    self.responder_errors.append(exc)
                h._send_json(500, wire.error_body(provider, "server", f"responder failed: {exc!r}"))
                return
            if isinstance(reply, Fault):
                fault = reply
        if fault is not None and fault.kind != "unparseable":
            with self._lock:
                self._injected[fault.name] += 1
            self._apply_fault(h, req, fault)
            return
        if fault is not None:
            with self._lock:
                self._injected[fault.name] += 1
            reply = fault.text
        assert not isinstance(reply, Fault)
        # Count before writing: a client that has its answer must see it counted.
        with self._lock:
            self._served += 1
        try:
            self._answer(h, req, reply)
        except OSError:
            with self._lock:
                self._served -= 1
                self._errors["client_gone"] += 1
            raise

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        bearer = headers.get("authorization", "")
        return bearer == f"Bearer {self._api_key}" or self._api_key in (
            headers.get("x-api-key"),  # Anthropic
            headers.get("api-key"),  # Azure OpenAI
            headers.get("x-goog-api-key"),  # Gemini
        )

    def _answer(self, h: _Handler, req: SimRequest, reply: str | SimReply) -> None:
        calls = None
        if isinstance(reply, SimReply):
            texts = [reply.text] if isinstance(reply.text, str) else list(reply.text)
            finish = reply.finish_reason
            calls = reply.tool_calls
        else:
            texts, finish = [reply], None
        n = req.n if req.provider in ("openai", "azure", "gemini") else 1
        if len(texts) == 1 and n > 1:
            texts = texts * n
        ptoks = wire.prompt_tokens(req.messages)
        if req.provider == "gemini":
            reason = finish or "STOP"
            if req.stream:
                self._stream(h, wire.gemini_stream(req.model, texts, ptoks, reason))
            else:
                h._send_json(200, wire.gemini_response(req.model, texts, ptoks, reason))
            return
        if req.provider == "anthropic":
            stop = finish or "end_turn"
            if req.stream:
                frames = wire.anthropic_stream(req.model, texts[0], ptoks, stop, calls)
                self._stream(h, frames)
            else:
                body = wire.anthropic_message(req.model, texts[0], ptoks, stop, calls)
                h._send_json(200, body)
            return
        finish = finish or "stop"
        if req.stream:
            opts = req.body.get("stream_options") or {}
            include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
            frames = wire.openai_stream(req.model, texts, ptoks, include_usage, finish, calls)
            self._stream(h, frames)
        else:
            h._send_json(200, wire.openai_completion(req.model, texts, ptoks, finish, calls))

    def _stream(self, h: _Handler, frames: Iterator[bytes], limit: int | None = None) -> None:
        h._start_sse()
        for i, frame in enumerate(frames):
            if limit is not None and i >= limit:
                h._abort()
                return
            h._send_chunk(frame)
        h._end_chunks()

    def _apply_fault(self, h: _Handler, req: SimRequest, fault: Fault) -> None:
        if fault.kind == "status":
            body = (
                fault.body
                if fault.body is not None
                else wire.error_body(req.provider, fault.error, fault.message)
            )
            h._send_json(fault.status, body, fault.headers)
        elif fault.kind == "hang":
            self._stopping.wait(fault.seconds)
            h._abort()
        elif fault.kind == "reset":
            h._abort()
        elif fault.kind == "malformed_json":
            h._send_bytes(
                200, b'{"id": "broken", "choices": [{"index": 0, "mess', "application/json"
            )
        elif fault.kind == "truncated":
            if req.stream:
                text = self._safe_text(req)
                ptoks = wire.prompt_tokens(req.messages)
                if req.provider == "anthropic":
                    frames = wire.anthropic_stream(req.model, text, ptoks)
                elif req.provider == "gemini":
                    frames = wire.gemini_stream(req.model, [text] * req.n, ptoks)
                else:
                    frames = wire.openai_stream(req.model, [text] * req.n, ptoks, True)
                self._stream(h, frames, limit=fault.after_chunks)
            else:
                data = json.dumps(wire.openai_completion(req.model, ["partial"], 1)).encode()
                # Promise the whole body, send half, hang up.
                h._send_bytes(
                    200, data[: len(data) // 2], "application/json", declared_length=len(data)
                )
                h._abort()

    def _safe_text(self, req: SimRequest) -> str:
        try:
            reply = self._responder(req)
        except Exception:
            return "partial answer"
        if isinstance(reply, SimReply):
            return reply.text if isinstance(reply.text, str) else reply.text[0]
        return reply if isinstance(reply, str) else "partial answer"


def main(argv: Sequence[str] | None = None) -> None:
    """Run a SimLM in the foreground: ``python -m dspy_actors.testing --port 8000``.

    Prints the base URL on the first line of stdout, then serves until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(description="Simulated OpenAI/Anthropic LM server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--faults", help="a fault plan file (JSON, or YAML with PyYAML)")
    args = parser.parse_args(argv)
    plan = FaultPlan.load(args.faults) if args.faults else None
    sim = SimLM(
        latency=args.latency, faults=plan, host=args.host, port=args.port, record_requests=False
    )
    with sim:
        print(sim.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
