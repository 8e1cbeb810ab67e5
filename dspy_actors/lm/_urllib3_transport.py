"""An ``httpx`` transport whose connections and HTTP/1.1 wire work are urllib3's.

Why: an LM call is one small JSON POST, and under many threads the client's CPU per request
is what bounds throughput (the GIL). Measured on 2 cores against a loopback server with
100 ms latency, 256 threads: a bare ``httpx.Client`` (httpcore + h11) ~890 us of CPU per
request and ~940 req/s, bare urllib3 2.x ~430 us and ~1,780 req/s. Behind our sharded pool
the gap is smaller (``bench/bench_transport.py``): the same CPU on one thread (291 vs 293 us
per request, interleaved call by call), 16% less under load (546 vs 654 us at 64 threads,
669 vs 798 at 256) and 8% more requests/s at 256 threads.
httpx stays the interface: requests and responses are
``httpx.Request``/``httpx.Response``, timeouts come from the request's ``timeout``
extension, and failures are raised as the httpx exception a caller of httpx expects
(``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``ReadError``, ...), so code above
the transport cannot tell the difference.

Through a proxy (``proxy=``, an ``httpx.Proxy``: the pool above decides which requests
need one, from the environment, as ``httpx.Client`` does) it is urllib3's ``ProxyManager``:
an http:// request goes to the proxy in absolute form (``POST http://host/path``), an
https:// one through a ``CONNECT`` tunnel, and credentials in the proxy URL are sent as
``Proxy-Authorization: Basic``, as httpcore sends them. Failures map as httpx's do: a proxy
that cannot be reached is a ``ConnectError`` (or ``ConnectTimeout``), a tunnel the proxy
refuses a ``ProxyError``.

What it does not do (nor does the httpx transport it replaces): retries (the LM has its own
policy), redirects. SOCKS proxies are left to httpx's transport (see the pool).
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import urllib3
from urllib3 import exceptions as u3

__all__ = ["Urllib3Transport"]

_CHUNK = 65_536


class Urllib3Transport(httpx.BaseTransport):
    """Sends ``httpx.Request``s over a ``urllib3.PoolManager``. Thread-safe.

    ``maxsize`` connections are kept alive per origin; more may be open at once (they are
    closed when returned to a full pool), so concurrency is never capped here: the LM pool
    above bounds it.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        maxsize: int = 256,
        proxy: httpx.Proxy | None = None,
    ) -> None:
        if proxy is None:
            self._manager = urllib3.PoolManager(
                num_pools=16, maxsize=maxsize, block=False, ssl_context=ssl_context
            )
        else:
            self._manager = urllib3.ProxyManager(
                str(proxy.url),
                num_pools=16,
                maxsize=maxsize,
                block=False,
                ssl_context=ssl_context,
                proxy_headers=_proxy_headers(proxy),
                proxy_ssl_context=_proxy_ssl_context(proxy),
            )
        # http:// requests through a proxy name their whole URL (https:// ones are tunnelled).
        self._forward = proxy is not None
        self._pools: dict[tuple[str, str, int | None], urllib3.HTTPConnectionPool] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.scheme, url.host, url.port)
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = self._manager.connection_from_host(
                url.host, url.port, url.scheme
            )
        phases: dict[str, float | None] = request.extensions.get("timeout", {})
        timeout = urllib3.Timeout(connect=phases.get("connect"), read=phases.get("read"))
        # From the raw pairs: Headers' own mapping API re-decodes and re-scans per key.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw}
        target = url.raw_path.decode("ascii")
        if self._forward and url.scheme == "http":
            # Absolute form, without any credentials in the URL (httpcore sends the same).
            target = f"http://{url.netloc.decode('ascii')}{target}"
        try:
            response = pool.urlopen(
                request.method,
                target,
                body=request.read(),
                headers=headers,
                retries=False,
                redirect=False,
                timeout=timeout,
                preload_content=False,
                decode_content=False,
                assert_same_host=False,
            )
        except u3.HTTPError as exc:
            raise _httpx_error(exc, request) from exc
        return httpx.Response(
            response.status,
            headers=list(response.headers.items()),
            stream=_ResponseStream(response, request),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode(),
                "network_stream": _NetworkStream(response),
            },
        )

    def close(self) -> None:
        # PoolManager.clear() only forgets its pools (urllib3 2.x): close each one, so every
        # idle connection is closed now, not whenever the garbage collector gets to it.
        pools = list(self._pools.values())
        self._pools.clear()
        self._manager.clear()
        for pool in pools:
            pool.close()


def _proxy_headers(proxy: httpx.Proxy) -> dict[str, str]:
    """The headers for the proxy: httpx's, with its credentials as Basic auth (httpcore's
    header: the URL-decoded user and password, UTF-8 encoded)."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in proxy.headers.raw}
    if proxy.raw_auth is not None:
        user, password = proxy.raw_auth
        token = base64.b64encode(user + b":" + password).decode("ascii")
        headers["Proxy-Authorization"] = f"Basic {token}"
    return headers


def _proxy_ssl_context(proxy: httpx.Proxy) -> ssl.SSLContext | None:
    """How an https:// proxy's own certificate is checked: as httpcore checks it (certifi's
    CAs, not ``verify`` nor ``SSL_CERT_FILE``) unless the ``httpx.Proxy`` carries a context."""
    if proxy.url.scheme != "https":
        return None
    return proxy.ssl_context or httpx.create_ssl_context(trust_env=False)


class _NetworkStream:
    """httpx's ``network_stream`` response extension: ``get_extra_info("socket")`` etc."""

    __slots__ = ("_response",)

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response

    def get_extra_info(self, info: str) -> Any:
        connection = getattr(self._response, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is None:
            return None
        if info == "socket":
            return sock
        if info == "client_addr":
            return sock.getsockname()
        if info == "server_addr":
            return sock.getpeername()
        return None


class _ResponseStream(httpx.SyncByteStream):
    """The raw (still encoded) body, read as it arrives; httpx decodes it."""

    def __init__(self, response: urllib3.BaseHTTPResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request
        self._complete = False

    def __iter__(self) -> Iterator[bytes]:
        response = self._response
        try:
            if response.chunked:
                # Each chunk as soon as it arrives: what SSE streaming needs.
                yield from response.read_chunked(decode_content=False)
            else:
                while data := response.read1(_CHUNK, decode_content=False):
                    yield data
        except u3.HTTPError as exc:
            raise _httpx_error(exc, self._request) from exc
        self._complete = True

    def close(self) -> None:
        response = self._response
        if not self._complete:
            # Body left unread: the connection cannot carry the next request.
            response.close()
        response.release_conn()


def _httpx_error(exc: u3.HTTPError, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception its own transport would raise for the same failure."""
    message = str(exc)
    error_class: type[httpx.TransportError]
    if isinstance(exc, u3.ProxyError):
        # No tunnel (the proxy refused the CONNECT: httpx's ProxyError), or the proxy could
        # not be reached, which httpx reports as for any server (ConnectError, ...).
        proxy_cause = exc.original_error
        if _tunnel_refused(proxy_cause):
            error_class = httpx.ProxyError
        elif isinstance(proxy_cause, u3.HTTPError):
            error_class = type(_httpx_error(proxy_cause, request))
        elif isinstance(proxy_cause, TimeoutError):
            error_class = httpx.ConnectTimeout
        else:
            error_class = httpx.ConnectError
    elif isinstance(exc, u3.NewConnectionError | u3.SSLError):  # before ConnectTimeoutError
        error_class = httpx.ConnectError
    elif isinstance(exc, u3.ConnectTimeoutError):
        error_class = httpx.ConnectTimeout
    elif isinstance(exc, u3.ReadTimeoutError):
        error_class = httpx.ReadTimeout
    elif isinstance(exc, u3.ProtocolError):
        cause: Any = exc.args[1] if len(exc.args) > 1 else None
        if isinstance(cause, TimeoutError):
            error_class = httpx.ReadTimeout
        elif isinstance(cause, ConnectionError | OSError):
            error_class = httpx.ReadError
        else:
            error_class = httpx.RemoteProtocolError
    else:
        error_class = httpx.TransportError
    return error_class(message, request=request)


def _tunnel_refused(cause: object) -> bool:
    """Whether ``cause`` is http.client's error for a ``CONNECT`` the proxy answered with a
    status other than 2xx (httpx raises ``ProxyError`` for it)."""
    return isinstance(cause, OSError) and str(cause).startswith("Tunnel connection failed")
