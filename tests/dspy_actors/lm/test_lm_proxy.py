"""Proxies from the environment: both transports route requests as ``httpx.Client(trust_env=
True)`` would, through a real forwarding proxy on loopback (absolute-form requests for
http:// targets, ``CONNECT`` tunnels for https:// ones)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import itertools
import json
import select
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from dspy_actors.lm import LM
from dspy_actors.lm.transport import BACKENDS, Backend, ClientPool
from dspy_actors.testing import SimLM
from tests.dspy_actors.lm.test_lm_transport import _self_signed, _TLSHandler

MakeLM = Callable[..., LM]

_BODY = json.dumps({"model": "sim", "messages": [{"role": "user", "content": "hi"}]}).encode()
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
# Not forwarded by the proxy (RFC 9110 7.6.1), nor the ones it sets itself.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    value: Backend = request.param
    return value


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment without proxy settings (restored afterwards)."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return _self_signed(tmp_path_factory.mktemp("proxy-tls"))


# ------------------------------------------------------------------ a forwarding proxy


@dataclass(frozen=True)
class _Seen:
    method: str
    target: str
    proxy_authorization: str | None


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def do_POST(self) -> None:
        self.server.record(self)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urllib.parse.urlsplit(self.path)
        if url.scheme != "http" or url.hostname is None:
            self.send_error(400, "a proxy takes absolute-form http:// requests")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=5)
        try:
            upstream.request(
                "POST", url.path + (f"?{url.query}" if url.query else ""), body, headers
            )
            answer = upstream.getresponse()
            data = answer.read()
        except OSError:
            self.send_error(502)
            return
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_CONNECT(self) -> None:
        self.server.record(self)
        self.close_connection = True
        if self.server.refuse_tunnels:
            self.send_response(407, "Proxy Authentication Required")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=5)
        except OSError:
            self.send_error(502)
            return
        with upstream:
            self.send_response(200, "Connection established")
            self.end_headers()
            self.server.relay(self.connection, upstream)

    def log_message(self, *_args: Any) -> None:
        pass


class _ProxyServer(http.server.HTTPServer):
    """One thread per connection, named ``test-proxy-<port>-...``; :meth:`stop` closes
    every connection still open and joins every thread."""

    def __init__(self, *, refuse_tunnels: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.refuse_tunnels = refuse_tunnels
        self.seen: list[_Seen] = []
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._numbers = itertools.count()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self.serve_forever, args=(0.02,), name=f"{self.name}-server"
        )
        self._thread.start()

    @property
    def name(self) -> str:
        return f"test-proxy-{self.server_address[1]}"

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return len(self._threads)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, handler: _ProxyHandler) -> None:
        seen = _Seen(handler.command, handler.path, handler.headers.get("Proxy-Authorization"))
        with self._lock:
            self.seen.append(seen)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._open.add(request)
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"{self.name}-conn-{next(self._numbers)}",
        )
        self._threads.append(thread)
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except OSError:
            pass  # the client went away, or stop() closed the connection
        finally:
            with self._lock:
                self._open.discard(request)
            self.shutdown_request(request)

    def relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes (or the proxy stops)."""
        peers = {client: upstream, upstream: client}
        while not self._stopping.is_set():
            readable, _, _ = select.select(list(peers), [], [], 0.05)
            for sock in readable:
                data = sock.recv(65_536)
                if not data:
                    return
                peers[sock].sendall(data)

    def stop(self) -> None:
        self._stopping.set()
        self.shutdown()
        self._thread.join(5)
        with self._lock:
            still_open = list(self._open)
        for sock in still_open:  # a kept-alive connection would hold its thread forever
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
        self.server_close()

    def __enter__(self) -> _ProxyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def _tls_origin(tls_cert: tuple[str, str]) -> Iterator[str]:
    """An HTTPS server on loopback answering ``{"ok": true}``; yields its base URL. (As the
    transport tests' ``_serving``, polling for shutdown faster.)"""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TLSHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_cert)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, args=(0.02,), name=f"test-proxy-origin-{port}"
    )
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def proxy() -> Iterator[_ProxyServer]:
    with _ProxyServer() as server:
        yield server


def _trusting(cert: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert)


def _closed_port() -> int:
    """A loopback port nothing listens on (a proxy that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _post(url: str, **pool_kw: Any) -> httpx.Response:
    pool = ClientPool(headers={}, timeout=5.0, **pool_kw)
    try:
        return pool.post(url, _BODY)
    finally:
        pool.close()


# ------------------------------------------------------------------ routing


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_http_targets_go_through_the_http_proxy(
    sim_lm: SimLM,
    proxy: _ProxyServer,
    backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    monkeypatch.setenv(variable, proxy.url)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_closed_port()}")  # not for http
    url = sim_lm.openai_base + "/chat/completions"
    pool = ClientPool(headers={}, timeout=5.0, shards=1, backend=backend)
    try:
        for _ in range(2):  # the second on the kept-alive connection to the proxy
            assert pool.post(url, _BODY).status_code == 200
    finally:
        pool.close()
    # Absolute form, as a forward proxy needs it; the answer came from the origin.
    assert proxy.seen == [_Seen("POST", url, None)] * 2
    assert proxy.connections == 1
    assert sim_lm.request_count == 2
    assert sim_lm.requests[-1].headers["host"] == f"127.0.0.1:{sim_lm.port}"


def test_https_targets_are_tunnelled_through_the_https_proxy(
    proxy: _ProxyServer,
    backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
    tls_cert: tuple[str, str],
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")  # not for https
    cert = tls_cert[0]
    with _tls_origin(tls_cert) as base:
        response = _post(base + "/v1/chat/completions", backend=backend, verify=cert)
    assert response.status_code == 200
    assert json.loads(response.content) == {"ok": True}
    # One CONNECT; TLS ran end to end inside it (the certificate checked was the origin's).
    assert proxy.seen == [_Seen("CONNECT", base.removeprefix("https://"), None)]


@pytest.mark.parametrize(
    "no_proxy",
    ["127.0.0.1", "*", "example.com, localhost,127.0.0.1", "127.0.0.1:{port}", "http://127.0.0.1"],
)
def test_no_proxy_hosts_are_reached_directly(
    sim_lm: SimLM,
    proxy: _ProxyServer,
    backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: str,
) -> None:
    url = sim_lm.openai_base + "/chat/completions"
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    assert _post(url, backend=backend).status_code == 200
    assert len(proxy.seen) == 1  # without NO_PROXY: through the proxy
    monkeypatch.setenv("NO_PROXY", no_proxy.format(port=sim_lm.port))
    assert _post(url, backend=backend).status_code == 200
    assert sim_lm.request_count == 2
    assert len(proxy.seen) == 1  # with it: directly


@pytest.mark.parametrize(
    "no_proxy", ["localhost", "example.com", "127.0.0.1:1", "https://127.0.0.1"]
)
def test_no_proxy_entries_for_other_hosts_leave_the_proxy_in_use(
    sim_lm: SimLM,
    proxy: _ProxyServer,
    backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: str,
) -> None:
    # Nothing is exempt by default, not even localhost; "localhost" is not 127.0.0.1.
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert _post(sim_lm.openai_base + "/chat/completions", backend=backend).status_code == 200
    assert [seen.method for seen in proxy.seen] == ["POST"]


def test_credentials_in_the_proxy_url_reach_the_proxy_as_proxy_authorization(
    sim_lm: SimLM,
    proxy: _ProxyServer,
    backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
    tls_cert: tuple[str, str],
) -> None:
    with_credentials = proxy.url.replace("http://", "http://us%20er:p%40ss@")
    monkeypatch.setenv("HTTP_PROXY", with_credentials)
    monkeypatch.setenv("HTTPS_PROXY", with_credentials)
    expected = "Basic " + base64.b64encode(b"us er:p@ss").decode()
    url = sim_lm.openai_base + "/chat/completions"
    assert _post(url, backend=backend).status_code == 200
    cert = tls_cert[0]
    with _tls_origin(tls_cert) as base:
        assert _post(base + "/v1/chat/completions", backend=backend, verify=cert).status_code == 200
    assert proxy.seen == [
        _Seen("POST", url, expected),  # the proxy URL's credentials, not in the target
        _Seen("CONNECT", base.removeprefix("https://"), expected),
    ]
    assert "proxy-authorization" not in sim_lm.requests[-1].headers
    # What httpx.Client sends for the same environment.
    with httpx.Client(trust_env=True) as client:
        assert client.post(url, content=_BODY).status_code == 200
    assert proxy.seen[-1] == _Seen("POST", url, expected)


def test_trust_env_false_ignores_the_environment(
    sim_lm: SimLM, proxy: _ProxyServer, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    url = sim_lm.openai_base + "/chat/completions"
    assert _post(url, backend=backend, trust_env=False).status_code == 200
    assert proxy.seen == []
    assert _post(url, backend=backend).status_code == 200  # the same env, trusted
    assert len(proxy.seen) == 1


def test_settings_that_cannot_be_parsed_fail_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "ftp://proxy.example:21")
    with pytest.raises(ValueError, match="trust_env=False"):
        ClientPool(headers={}, timeout=1.0)
    with pytest.raises(ValueError, match="Unknown scheme"):
        httpx.Client(trust_env=True)  # httpx refuses the same environment
    ClientPool(headers={}, timeout=1.0, trust_env=False).close()


# ------------------------------------------------------------------ failures


def _error_type(call: Callable[[], object]) -> type[BaseException]:
    with pytest.raises(httpx.TransportError) as caught:
        call()
    return caught.type


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_that_is_down_raises_what_httpx_raises(
    sim_lm: SimLM,
    backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
    tls_cert: tuple[str, str],
    scheme: str,
) -> None:
    down = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("ALL_PROXY", down)
    cert = tls_cert[0]
    with contextlib.ExitStack() as stack:
        if scheme == "https":
            url = stack.enter_context(_tls_origin(tls_cert)) + "/v1/x"
        else:
            url = sim_lm.openai_base + "/chat/completions"
        ours = _error_type(lambda: _post(url, backend=backend, verify=cert))
        client = stack.enter_context(httpx.Client(trust_env=True, verify=_trusting(cert)))
        theirs = _error_type(lambda: client.post(url, content=_BODY))
    assert ours is theirs is httpx.ConnectError
    assert sim_lm.request_count == 0  # not reached directly either


def test_a_tunnel_the_proxy_refuses_raises_what_httpx_raises(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, tls_cert: tuple[str, str]
) -> None:
    cert = tls_cert[0]
    with (
        _ProxyServer(refuse_tunnels=True) as refusing,
        _tls_origin(tls_cert) as base,
        httpx.Client(trust_env=False, proxy=refusing.url, verify=_trusting(cert)) as client,
    ):
        monkeypatch.setenv("HTTPS_PROXY", refusing.url)
        url = base + "/v1/chat/completions"
        ours = _error_type(lambda: _post(url, backend=backend, verify=cert))
        theirs = _error_type(lambda: client.post(url, content=_BODY))
    assert ours is theirs is httpx.ProxyError
    assert [seen.method for seen in refusing.seen] == ["CONNECT", "CONNECT"]


# ------------------------------------------------------------------ the LM


def test_an_lm_completes_through_the_proxy(
    sim_lm: SimLM, proxy: _ProxyServer, make_lm: MakeLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    lm = make_lm("openai/sim", api_base=sim_lm.openai_base, api_key="k-1")
    assert lm("hello") == ["This is a simulated answer."]
    events = list(lm.stream([{"role": "user", "content": "stream it"}]))
    assert events[-1].response is not None
    assert events[-1].response.outputs == ["This is a simulated answer."]
    endpoint = sim_lm.openai_base + "/chat/completions"
    assert proxy.seen == [_Seen("POST", endpoint, None)] * 2
    assert sim_lm.requests[-1].headers["authorization"] == "Bearer k-1"
    # The copies an LM makes of itself (and rebuilds in a worker process) route alike.
    worker = LM.from_worker_spec(lm.worker_spec())
    try:
        worker("again")
    finally:
        worker.close()
    assert len(proxy.seen) == 3


def test_an_lm_with_trust_env_false_keeps_it_in_its_copies(
    sim_lm: SimLM, proxy: _ProxyServer, make_lm: MakeLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    lm = make_lm("openai/sim", api_base=sim_lm.openai_base, trust_env=False)
    spec = lm.worker_spec()
    assert spec.trust_env is False
    copies = [lm.copy(temperature=0.5), LM.from_worker_spec(spec)]
    try:
        for each in (lm, *copies):
            assert each("hello")
    finally:
        for each in copies:
            each.close()
    assert sim_lm.request_count == 3
    assert proxy.seen == []
    # Trusted (the default), the same environment sends it through the proxy.
    make_lm("openai/sim", api_base=sim_lm.openai_base)("hello")
    assert len(proxy.seen) == 1


# ------------------------------------------------------------------ parity with httpx

_H, _S, _A = "http://h.proxy:1", "http://s.proxy:2", "http://a.proxy:3"

_ENVIRONMENTS: list[dict[str, str]] = [
    {},
    {"NO_PROXY": "example.com"},
    {"HTTP_PROXY": _H},
    {"HTTP_PROXY": _H, "HTTPS_PROXY": _S},
    {"HTTP_PROXY": _H, "HTTPS_PROXY": _S, "ALL_PROXY": _A},
    {"ALL_PROXY": "a.proxy:3"},  # no scheme: http:// is assumed
    {"http_proxy": _A, "HTTP_PROXY": _H},  # lowercase wins
    {"https_proxy": "", "HTTPS_PROXY": _S, "ALL_PROXY": _A},  # an empty one unsets
    {"ALL_PROXY": _A, "NO_PROXY": "*"},
    {"ALL_PROXY": _A, "NO_PROXY": "example.com,*"},
    {"ALL_PROXY": _A, "NO_PROXY": "localhost"},
    {"ALL_PROXY": _A, "NO_PROXY": "LOCALHOST, 127.0.0.1"},
    {"ALL_PROXY": _A, "NO_PROXY": "example.com"},
    {"ALL_PROXY": _A, "no_proxy": ".example.com"},
    {"ALL_PROXY": _A, "NO_PROXY": "10.0.0.0/8,::1"},
    {"ALL_PROXY": _A, "NO_PROXY": "internal.corp:8443"},
    {"HTTP_PROXY": _H, "HTTPS_PROXY": _S, "NO_PROXY": "http://internal.corp"},
    {"HTTP_PROXY": _H, "HTTPS_PROXY": _S, "NO_PROXY": "https://"},
    {"HTTP_PROXY": _H, "ALL_PROXY": _A, "NO_PROXY": " , .corp ,example.com:8000"},
]

_URLS = [
    "http://localhost:8000/v1/chat/completions",
    "http://127.0.0.1:8000/v1/chat/completions",
    "https://127.0.0.1/v1/chat/completions",
    "http://[::1]:8000/v1",
    "https://api.openai.com/v1/chat/completions",
    "https://example.com/v1",
    "https://www.example.com/v1",
    "https://wwwexample.com/v1",
    "http://EXAMPLE.com:8000/v1",
    "https://10.1.2.3/v1",
    "http://10.0.0.0/v1",
    "http://internal.corp/v1",
    "https://internal.corp/v1",
    "https://internal.corp:8443/v1",
    "https://llm.internal.corp/v1",
]


def _httpx_choice(client: httpx.Client, url: str) -> str | None:
    """The proxy (host:port) httpx.Client sends ``url`` through, None for none. Reads
    httpx's private routing (``_transport_for_url``): the point is to follow httpx."""
    transport: Any = client._transport_for_url(httpx.URL(url))
    if transport is client._transport:
        return None
    proxy_url = transport._pool._proxy_url
    return f"{proxy_url.host.decode()}:{proxy_url.port}"


def _our_choice(pool: ClientPool, url: str) -> str | None:
    proxy = pool._target_for(url).proxy
    return None if proxy is None else f"{proxy.url.host}:{proxy.url.port}"


def test_the_proxy_chosen_for_a_url_is_the_one_httpx_client_chooses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every URL of ``_URLS`` under every environment of ``_ENVIRONMENTS``: our pool and
    ``httpx.Client(trust_env=True)`` send it through the same proxy, or both directly."""
    mismatches = []
    proxied = 0
    for env in _ENVIRONMENTS:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            pool = ClientPool(headers={}, timeout=1.0)
            with httpx.Client(trust_env=True, verify=False) as client:  # (no CA bundle load)
                for url in _URLS:
                    ours, theirs = _our_choice(pool, url), _httpx_choice(client, url)
                    proxied += theirs is not None
                    if ours != theirs:
                        mismatches.append(f"{env} {url}: ours {ours}, httpx's {theirs}")
            pool.close()
            if not any(k.lower() in ("http_proxy", "https_proxy", "all_proxy") for k in env):
                assert pool._proxy_rules == (), env  # nothing to match for a new URL
    assert mismatches == []
    assert proxied > len(_URLS) * 4  # a comparison of mostly direct routes would prove little
