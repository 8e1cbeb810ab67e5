"""The LM's sharded transport pool: threads share a bounded set of shards; close() closes all;
requests go out as an ``httpx.Client`` would send them (headers, auth, cookies, keep-alive)."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.server
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import httpx
import pytest

from dspy_actors.lm import LM
from dspy_actors.lm.providers._openai import OpenAIProvider
from dspy_actors.lm.transport import BACKENDS, Backend, ClientPool
from dspy_actors.testing import SimLM
from dspy_actors.testing._polling import wait_until

MakeLM = Callable[..., LM]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each pool-level test runs on both transports: they must behave alike."""
    value: Backend = request.param
    return value


_BODY = {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}


def _server_connections(sim: SimLM) -> int:
    prefix = f"sim-lm-{sim.port}-conn-"
    return sum(t.name.startswith(prefix) for t in threading.enumerate())


def test_threads_spread_over_shards_and_close_drops_every_connection(sim_lm: SimLM) -> None:
    sim_lm.latency = 0.05  # keep calls overlapping so threads hold distinct connections
    lm = LM("openai/sim", api_base=sim_lm.openai_base, api_key="k", cache=False)
    try:
        with ThreadPoolExecutor(8, thread_name_prefix="shard-test") as pool:
            outputs = list(pool.map(lambda i: lm(f"q{i}"), range(32)))
        assert len(outputs) == 32
        assert lm._clients.open_clients == 8  # one shard per thread, up to the shard count
        assert _server_connections(sim_lm) >= 8
    finally:
        lm.close()
    assert lm._clients.open_clients == 0
    wait_until(lambda: _server_connections(sim_lm) == 0, timeout=5.0, what="connections closed")


def test_lm_reconnects_after_close(sim_lm: SimLM) -> None:
    with LM("openai/sim", api_base=sim_lm.openai_base, api_key="k", cache=False) as lm:
        lm("before")
        lm.close()
        assert lm("after") == ["This is a simulated answer."]
    assert sim_lm.request_count == 2


def test_shard_count_bounds_the_clients(sim_lm: SimLM) -> None:
    pool = ClientPool(headers={}, timeout=5.0, shards=2)
    seen: set[int] = set()
    lock = threading.Lock()

    def grab() -> None:
        client = pool.client()
        assert pool.client() is client, "a thread keeps its client"
        with lock:
            seen.add(id(client))

    threads = [threading.Thread(target=grab) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    try:
        assert len(seen) == 2
        assert pool.open_clients == 2
    finally:
        pool.close()


def test_shards_must_be_positive() -> None:
    with pytest.raises(ValueError, match="shards must be >= 1"):
        ClientPool(headers={}, timeout=1.0, shards=0)


# ------------------------------------------------ the Client layers the shards replace


def test_requests_carry_the_headers_an_httpx_client_would_send(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    lm = make_lm("openai/sim", api_base=sim_lm.openai_base, api_key="k-123")
    lm("hello")
    sent = sim_lm.requests[-1].headers
    with httpx.Client(headers=OpenAIProvider().headers("k-123")) as client:
        expected = client.build_request("POST", lm.endpoint, content=b"{}").headers
    for name, value in expected.items():
        if name != "content-length":
            assert sent[name.lower()] == value, name
    assert int(sent["content-length"]) > 2
    assert sent["authorization"] == "Bearer k-123"
    assert sent["host"] == f"127.0.0.1:{sim_lm.port}"


def test_credentials_in_the_url_are_sent_as_basic_auth(sim_lm: SimLM, backend: Backend) -> None:
    base = sim_lm.openai_base.replace("http://", "http://user:p%40ss@")
    pool = ClientPool(headers={"Authorization": "Bearer other"}, timeout=5.0, backend=backend)
    try:
        r = pool.post(base + "/chat/completions", json.dumps(_BODY).encode())
    finally:
        pool.close()
    assert r.status_code == 200
    sent = sim_lm.requests[-1].headers
    assert sent["authorization"] == "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert sent["host"] == f"127.0.0.1:{sim_lm.port}"


def test_one_thread_reuses_one_kept_alive_connection_with_tcp_nodelay(
    sim_lm: SimLM, backend: Backend
) -> None:
    pool = ClientPool(headers={}, timeout=5.0, shards=1, backend=backend)
    url = sim_lm.openai_base + "/chat/completions"
    body = json.dumps(_BODY).encode()
    try:
        sockets = set()
        for _ in range(5):
            with pool.stream(url, body) as r:
                sock = r.extensions["network_stream"].get_extra_info("socket")
                sockets.add(id(sock))
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                assert json.loads(r.read())["choices"]
        assert len(sockets) == 1
        assert _server_connections(sim_lm) == 1
    finally:
        pool.close()
    wait_until(lambda: _server_connections(sim_lm) == 0, timeout=5.0, what="connections closed")


def test_a_shard_opens_concurrent_connections_then_keeps_them(
    sim_lm: SimLM, backend: Backend
) -> None:
    sim_lm.latency = 0.05
    pool = ClientPool(headers={}, timeout=5.0, shards=1, backend=backend)
    url = sim_lm.openai_base + "/chat/completions"
    body = json.dumps(_BODY).encode()
    barrier = threading.Barrier(6, timeout=5)

    def call(_i: int) -> int:
        barrier.wait()
        return pool.post(url, body).status_code

    try:
        with ThreadPoolExecutor(6, thread_name_prefix="shard-conc") as ex:
            assert list(ex.map(call, range(6))) == [200] * 6
        opened = _server_connections(sim_lm)
        assert opened == 6  # 6 in flight on one shard: one connection each
        for _ in range(3):
            assert pool.post(url, body).status_code == 200
        assert _server_connections(sim_lm) == opened  # kept alive and reused
    finally:
        pool.close()
    wait_until(lambda: _server_connections(sim_lm) == 0, timeout=5.0, what="connections closed")


def test_timeouts_and_refusals_raise_httpx_errors(sim_lm: SimLM, backend: Backend) -> None:
    pool = ClientPool(headers={}, timeout=5.0, backend=backend)
    body = json.dumps(_BODY).encode()
    sim_lm.latency = 0.5
    try:
        with pytest.raises(httpx.ReadTimeout):
            pool.post(sim_lm.openai_base + "/chat/completions", body, timeout=0.05)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(httpx.ConnectError):
            pool.post(f"http://127.0.0.1:{port}/v1/chat/completions", body)
    finally:
        pool.close()


class _CookieHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str | None]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(self.headers.get("Cookie"))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if len(type(self).seen) == 1:
            self.send_header("Set-Cookie", "session=abc; Path=/")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serving(
    handler: type[http.server.BaseHTTPRequestHandler], tls: tuple[str, str] | None = None
) -> Iterator[str]:
    """A real HTTP(S) server on loopback running ``handler``; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, name=f"{handler.__name__}-server")
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_cookies_the_server_sets_are_sent_back_like_a_client_would(backend: Backend) -> None:
    _CookieHandler.seen = []
    pool = ClientPool(headers={}, timeout=5.0, shards=1, backend=backend)
    with _serving(_CookieHandler) as base:
        try:
            for _ in range(3):
                assert pool.post(base + "/v1/chat/completions", b"{}").status_code == 200
        finally:
            pool.close()
    assert _CookieHandler.seen == [None, "session=abc", "session=abc"]


# ------------------------------------------------ TLS


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    """A certificate and key for 127.0.0.1, made with the openssl command line tool."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


class _TLSHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def test_https_verifies_the_server_certificate(
    tmp_path: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _self_signed(tmp_path)
    with _serving(_TLSHandler, tls=(cert, key)) as base:
        url = base + "/v1/chat/completions"
        # Not trusted: the handshake fails as a connect error, as httpx reports it.
        untrusted = ClientPool(headers={}, timeout=5.0, backend=backend)
        try:
            with pytest.raises(httpx.ConnectError):
                untrusted.post(url, b"{}")
        finally:
            untrusted.close()
        # Trusted through SSL_CERT_FILE (httpx's trust_env): the request goes through.
        monkeypatch.setenv("SSL_CERT_FILE", cert)
        trusted = ClientPool(headers={}, timeout=5.0, backend=backend)
        try:
            response = trusted.post(url, b"{}")
            assert response.status_code == 200
            assert json.loads(response.content) == {"ok": True}
        finally:
            trusted.close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("how", ["bundle", "context", "off"])
def test_verify_takes_a_ca_bundle_a_context_or_false(
    tmp_path: Any, backend: Backend, how: str
) -> None:
    cert, key = _self_signed(tmp_path)
    verify: bool | str | ssl.SSLContext
    if how == "bundle":
        verify = cert
    elif how == "context":
        verify = ssl.create_default_context(cafile=cert)
    else:
        verify = False
    pool = ClientPool(headers={}, timeout=5.0, backend=backend, verify=verify)
    with _serving(_TLSHandler, tls=(cert, key)) as base:
        try:
            assert pool.post(base + "/v1/chat/completions", b"{}").status_code == 200
        finally:
            pool.close()


def test_an_lm_with_a_ca_bundle_talks_to_a_tls_server(tmp_path: Any) -> None:
    cert, key = _self_signed(tmp_path)
    with SimLM() as plain:
        # A TLS front for the simulated LM, relaying to its plain HTTP port.
        _TLSProxy.upstream = plain.openai_base
        with (
            _serving(_TLSProxy, tls=(cert, key)) as base,
            LM("openai/sim", api_base=base + "/v1", api_key="k", cache=False, verify=cert) as lm,
        ):
            assert lm("hello")  # a completion came back through TLS
            assert plain.requests[-1].headers["authorization"] == "Bearer k"


class _TLSProxy(http.server.BaseHTTPRequestHandler):
    """Forwards a POST to the plain SimLM and relays its answer (TLS terminates here)."""

    protocol_version = "HTTP/1.1"
    upstream: ClassVar[str] = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.removeprefix("/v1")
        answer = httpx.post(
            self.upstream + path,
            content=body,
            headers={"Authorization": self.headers.get("Authorization", "")},
            timeout=5.0,
        )
        self.send_response(answer.status_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, *_args: Any) -> None:
        pass


class _GzipHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = gzip.compress(b'{"ok": "compressed"}')
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def test_a_gzip_encoded_answer_is_decoded(backend: Backend) -> None:
    pool = ClientPool(headers={}, timeout=5.0, shards=1, backend=backend)
    with _serving(_GzipHandler) as base:
        try:
            for _ in range(2):  # the second on the kept-alive connection
                response = pool.post(base + "/v1/chat/completions", b"{}")
                assert json.loads(response.content) == {"ok": "compressed"}
        finally:
            pool.close()


class _SlowSSEHandler(http.server.BaseHTTPRequestHandler):
    """One SSE event at once, the next after a pause: chunked, or until the socket closes."""

    protocol_version = "HTTP/1.1"
    chunked: ClassVar[bool] = True

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        for i, pause in enumerate((0.0, 0.5)):
            time.sleep(pause)
            event = f"data: {i}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event) if self.chunked else event)
            self.wfile.flush()
        if self.chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "until-close"])
def test_a_stream_delivers_each_event_as_it_arrives(backend: Backend, chunked: bool) -> None:
    _SlowSSEHandler.chunked = chunked
    pool = ClientPool(headers={}, timeout=5.0, shards=1, backend=backend)
    arrivals = []
    with _serving(_SlowSSEHandler) as base:
        try:
            started = time.monotonic()
            with pool.stream(base + "/v1/chat/completions", b"{}") as response:
                for line in response.iter_lines():
                    if line:
                        arrivals.append((line, time.monotonic() - started))
        finally:
            pool.close()
    assert [line for line, _ in arrivals] == ["data: 0", "data: 1"]
    # Buffering would hand both over together; streamed, they are the server's pause
    # apart (a gap, not a deadline: load delays both alike).
    gap = arrivals[1][1] - arrivals[0][1]
    assert gap >= 0.25, f"the first event waited for the second: {arrivals}"
