"""The LM's HTTP transport: a few transport shards shared by all calling threads.

Which transport: an ``httpx`` transport backed by urllib3 (``backend="urllib3"``, the
default, see :mod:`dspy_actors.lm._urllib3_transport` for why and what it measured), or
httpx's own ``httpx.HTTPTransport`` (``backend="httpx"``: httpcore and h11). Both take and
return ``httpx.Request``/``httpx.Response`` and raise httpx's exceptions.

Why shards: one httpx connection pool is thread-safe, but it does work proportional to its
open connections under one lock on every request. Measured on 2 cores against a loopback
server with 100 ms latency, 256 threads sharing one client reached ~135 req/s, while the
same threads spread over 8 clients reached ~600 and over 32 ~1,090 (and ``AsyncClient``
collapsed past ~16 in flight, see DESIGN.md). So each calling thread sticks to one of
``shards`` shards (assigned round-robin on its first call); the shards share one TLS context,
so creating them is cheap, and they are created only when first needed. (urllib3's pool does
constant work per request; it is sharded the same way, which costs it nothing measurable.)

Why transports rather than ``httpx.Client``: an LM sends one kind of request, a POST of a
JSON body to one URL with fixed headers, yet ``Client.post`` re-parses and merges the URL,
merges headers and cookies, builds the body stream and runs the auth and redirect machinery
on every call: about 100 us of CPU per request on this machine, a quarter of a whole call.
A shard prepares the URL and headers once and hands each ``httpx.Request`` straight to its
transport (the same timeouts, keep-alive and exception types). What a ``Client`` would do
that matters here is kept: the same default headers, Basic auth from credentials in the URL,
and cookies the server sets are sent back on later requests of the shard. Redirects are not
followed (nor were they: ``Client`` does not follow them by default), and httpx's
per-request INFO log line is not written.
"""

from __future__ import annotations

import base64
import itertools
import os
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import httpx

from dspy_actors.lm._urllib3_transport import Urllib3Transport

__all__ = ["ClientPool", "HTTPShard"]

DEFAULT_SHARDS = 32
# Per shard. With threads spread over the shards, a shard rarely holds more than a few.
_LIMITS_KEEPALIVE = 64
_LIMITS = httpx.Limits(
    max_connections=256, max_keepalive_connections=_LIMITS_KEEPALIVE, keepalive_expiry=30.0
)
# Requests go out as a header write then a body write: without TCP_NODELAY the second
# one can wait for a delayed ACK.
_SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
_MAX_TARGETS = 16

Backend = Literal["urllib3", "httpx"]
BACKENDS: tuple[Backend, ...] = ("urllib3", "httpx")


def _ssl_context(verify: bool | str | ssl.SSLContext) -> ssl.SSLContext:
    """The TLS context for ``verify`` (a CA bundle path is loaded here: httpx deprecates
    ``verify=<str>``)."""
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context(verify=verify)


def client_headers(headers: Mapping[str, str]) -> httpx.Headers:
    """The headers an ``httpx.Client(headers=headers)`` sends on every request: httpx's
    defaults (Accept, Accept-Encoding, Connection, User-Agent) overridden by ``headers``.
    Taken from a Client itself so that they follow the installed httpx (and its decoders)."""
    with httpx.Client(headers=headers, transport=httpx.BaseTransport()) as client:
        return httpx.Headers(client.headers)


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL parsed once, with the headers every request to it carries (Host included)."""

    url: httpx.URL
    headers: httpx.Headers


class HTTPShard:
    """One transport (a connection pool) and the cookies its server set."""

    __slots__ = ("_cookies", "_has_cookies", "transport")

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self.transport = transport
        self._cookies = httpx.Cookies()
        # Set once a response has set a cookie: until then requests skip the cookie jar.
        self._has_cookies = False

    def send(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; the response's body is not read yet (close the response)."""
        if self._has_cookies:
            self._cookies.set_cookie_header(request)
        response = self.transport.handle_request(request)
        response.request = request
        if "set-cookie" in response.headers:
            self._cookies.extract_cookies(response)
            self._has_cookies = bool(self._cookies)
        return response

    def close(self) -> None:
        self.transport.close()


class ClientPool:
    """``shards`` lazily created :class:`HTTPShard` objects; :meth:`client` returns the one
    the calling thread is assigned to. :meth:`post` and :meth:`stream` send through it.
    Thread-safe; :meth:`close` closes them all (later calls open new ones)."""

    def __init__(
        self,
        *,
        headers: Mapping[str, str],
        timeout: float,
        shards: int = DEFAULT_SHARDS,
        backend: Backend = "urllib3",
        verify: bool | str | ssl.SSLContext = True,
    ) -> None:
        """``verify``: as httpx's: True (certifi's CAs, or ``SSL_CERT_FILE``), a CA bundle
        path, an ``ssl.SSLContext``, or False (no certificate check; testing only)."""
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self._verify = verify
        self._headers = client_headers(headers)
        self._timeout = timeout
        self._clients: list[HTTPShard | None] = [None] * shards
        self._lock = threading.Lock()
        self._local = threading.local()
        self._next = itertools.count()
        self._generation = 0
        self._ssl: ssl.SSLContext | None = None
        self._targets: dict[str, _Target] = {}

    # ------------------------------------------------------------------ sending
    def post(self, url: str, content: bytes, timeout: float | None = None) -> httpx.Response:
        """POST ``content`` to ``url`` and read the whole response (closed on return).

        Raises ``httpx.HTTPError`` subclasses, exactly as ``httpx.Client.post`` would."""
        response = self.client().send(self._request(url, content, timeout))
        try:
            response.read()
        finally:
            response.close()
        return response

    @contextmanager
    def stream(
        self, url: str, content: bytes, timeout: float | None = None
    ) -> Iterator[httpx.Response]:
        """POST ``content`` to ``url``; the response with its body unread, closed on exit."""
        response = self.client().send(self._request(url, content, timeout))
        try:
            yield response
        finally:
            response.close()

    def _request(self, url: str, content: bytes, timeout: float | None) -> httpx.Request:
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) >= _MAX_TARGETS:
                self._targets.clear()  # an LM posts to one URL: a bound, not a cache policy
            target = self._targets[url] = self._target(url)
        limit = self._timeout if timeout is None else timeout
        # What httpx.Timeout(limit).as_dict() gives, without building a Timeout per call.
        phases = {"connect": limit, "read": limit, "write": limit, "pool": limit}
        request = httpx.Request(
            "POST",
            target.url,
            headers=target.headers,
            stream=httpx.ByteStream(content),
            extensions={"timeout": phases},
        )
        # The one header that changes per request (a Client adds it from the body too).
        request.headers["Content-Length"] = str(len(content))
        return request

    def _target(self, url: str) -> _Target:
        parsed = httpx.URL(url)
        headers = httpx.Headers({"Host": parsed.netloc.decode("ascii")})
        headers.update(self._headers)
        if parsed.username or parsed.password:
            # What a Client does for credentials in the URL (they beat an Authorization
            # header): Basic auth, and the credentials are not sent as part of the URL.
            userpass = f"{parsed.username}:{parsed.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(userpass).decode("ascii")
        return _Target(parsed, headers)

    # ------------------------------------------------------------------ shards
    def client(self) -> HTTPShard:
        """The calling thread's shard (hot path: one thread-local read)."""
        local = self._local
        if getattr(local, "generation", -1) == self._generation:
            client: HTTPShard = local.client
            return client
        return self._assign()

    def _assign(self) -> HTTPShard:
        with self._lock:
            index = next(self._next) % len(self._clients)
            client = self._clients[index]
            if client is None:
                client = self._clients[index] = self._make()
            self._local.client = client
            self._local.generation = self._generation
            return client

    def _make(self) -> HTTPShard:
        if self._ssl is None:
            # Loading the CA bundle takes ~25 ms: once per pool, not once per shard.
            self._ssl = _ssl_context(self._verify)
        if self.backend == "urllib3":
            # urllib3 sets TCP_NODELAY on its sockets by default.
            return HTTPShard(Urllib3Transport(ssl_context=self._ssl, maxsize=_LIMITS_KEEPALIVE))
        return HTTPShard(
            httpx.HTTPTransport(
                verify=self._ssl, limits=_LIMITS, retries=0, socket_options=_SOCKET_OPTIONS
            )
        )

    @property
    def open_clients(self) -> int:
        with self._lock:
            return sum(c is not None for c in self._clients)

    def close(self) -> None:
        """Close every shard (and so every connection)."""
        with self._lock:
            clients = [c for c in self._clients if c is not None]
            self._clients = [None] * len(self._clients)
            self._generation += 1
        for client in clients:
            client.close()
