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

Proxies: with ``trust_env=True`` (the default) the pool routes requests as
``httpx.Client(trust_env=True)`` would: ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` (or
their lowercase forms) name the proxy for http, https or any URL, and ``NO_PROXY`` lists the
hosts reached directly (``*`` for all; ``example.com`` also covers its subdomains,
``.example.com`` only them; nothing is exempt by default, not even ``localhost``). The
environment is read once, when the pool is made, and matched once per target URL (the
``_Target`` the pool keeps per URL), so the per-request path gains nothing but one ``is None``
test. A proxied target goes through a second transport of the shard, made on first use:
urllib3's ``ProxyManager`` (``backend="urllib3"``) or ``httpx.HTTPTransport(proxy=...)``;
either sends http:// requests to the proxy in absolute form and tunnels https:// ones
through ``CONNECT``, with any credentials in the proxy URL as ``Proxy-Authorization: Basic``.

Over 400 lines: the shard, its proxy routing and the two backends it drives are one request
path, measured as one (see above).
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import os
import re
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import httpx

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


# ---------------------------------------------------------------------- proxies


@dataclass(frozen=True, slots=True)
class _ProxyRule:
    """One of the proxy mounts ``httpx.Client(trust_env=True)`` makes from the environment:
    a URL pattern (``all://*example.com``, ``https://``...) and where matching URLs go,
    ``proxy`` or, if None, straight to the server. Matched as httpx's ``URLPattern``."""

    pattern: str
    scheme: str  # "" matches every scheme
    host: re.Pattern[str] | None  # None matches every host
    host_length: int
    port: int | None
    proxy: httpx.Proxy | None

    @classmethod
    def parse(cls, pattern: str, proxy: httpx.Proxy | None) -> _ProxyRule:
        url = httpx.URL(pattern)
        host = "" if url.host == "*" else url.host
        regex = None
        if host.startswith("*."):  # *.example.com: www.example.com, not example.com
            regex = re.compile(rf"^.+\.{re.escape(host[2:])}$")
        elif host.startswith("*"):  # *example.com: example.com and www.example.com
            regex = re.compile(rf"^(.+\.)?{re.escape(host[1:])}$")
        elif host:
            regex = re.compile(rf"^{re.escape(host)}$")
        scheme = "" if url.scheme == "all" else url.scheme
        return cls(pattern, scheme, regex, len(host), url.port, proxy)

    def matches(self, url: httpx.URL) -> bool:
        return (
            (not self.scheme or self.scheme == url.scheme)
            and (self.host is None or self.host.match(url.host) is not None)
            and (self.port is None or self.port == url.port)
        )

    @property
    def priority(self) -> tuple[int, int, int]:
        """httpx tries the most specific first: a port, then the longest host, then scheme."""
        return (0 if self.port is not None else 1, -self.host_length, -len(self.scheme))


def _is_ip(host: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        kind(host.split("/")[0])  # "10.0.0.0/8" counts as an address, as it does for httpx
    except ValueError:
        return False
    return True


def _environment_proxy_rules() -> tuple[_ProxyRule, ...]:
    """The proxy rules of the environment, most specific first (empty: no proxy at all).

    What ``httpx.Client(trust_env=True)`` mounts, reproduced here because httpx offers it
    only in private modules. The variables are read with ``urllib.request.getproxies()``,
    the function httpx itself reads them with, so that the same ones win: lowercase over
    uppercase, an empty lowercase one unsets the uppercase one, ``HTTP_PROXY`` is ignored in
    a CGI script (``REQUEST_METHOD`` set), and on macOS and Windows the system's proxy
    settings apply when the environment names none. ``NO_PROXY`` is not matched with
    ``urllib.request.proxy_bypass``, whose rules differ from httpx's (curl's)."""
    found = urllib.request.getproxies()
    mounts: dict[str, httpx.Proxy | None] = {}
    proxies: dict[str, httpx.Proxy] = {}  # one Proxy, so one connection pool, per proxy URL
    for scheme in ("http", "https", "all"):
        url = found.get(scheme)
        if url:
            url = url if "://" in url else f"http://{url}"
            if url not in proxies:
                try:
                    proxies[url] = httpx.Proxy(url)
                except (ValueError, httpx.InvalidURL) as exc:
                    raise ValueError(
                        f"the {scheme}_proxy environment variable is not a proxy URL httpx "
                        f"accepts ({exc}); pass trust_env=False to ignore the environment"
                    ) from None
            mounts[f"{scheme}://"] = proxies[url]
    for entry in found.get("no", "").split(","):
        host = entry.strip()
        if host == "*":
            return ()
        if not host:
            continue
        if "://" in host:
            mounts[host] = None
        elif _is_ip(host, ipaddress.IPv4Address) or host.lower() == "localhost":
            mounts[f"all://{host}"] = None
        elif _is_ip(host, ipaddress.IPv6Address):
            mounts[f"all://[{host}]"] = None
        else:  # a domain: itself and its subdomains ("www.example.com" for "example.com")
            mounts[f"all://*{host}"] = None
    if not proxies:
        return ()
    rules: list[_ProxyRule] = []
    for pattern, proxy in mounts.items():
        try:
            rules.append(_ProxyRule.parse(pattern, proxy))
        except httpx.InvalidURL as exc:
            raise ValueError(
                f"the proxy setting {pattern!r} from the environment is not a URL pattern "
                f"httpx accepts ({exc}); pass trust_env=False to ignore the environment"
            ) from None
    rules.sort(key=lambda rule: rule.priority)  # stable: ties keep httpx's order
    return tuple(rules)


def _proxy_for(url: httpx.URL, rules: tuple[_ProxyRule, ...]) -> httpx.Proxy | None:
    for rule in rules:
        if rule.matches(url):
            return rule.proxy
    return None


# ---------------------------------------------------------------------- shards


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL parsed once, with the headers every request to it carries (Host included) and
    the proxy it is reached through (None: directly)."""

    url: httpx.URL
    headers: httpx.Headers
    proxy: httpx.Proxy | None = None


class HTTPShard:
    """One transport (a connection pool) and the cookies its server set; plus, made on
    first use, one transport per proxy that some target is reached through."""

    __slots__ = ("_cookies", "_has_cookies", "_lock", "_make_proxied", "_proxied", "transport")

    def __init__(
        self,
        transport: httpx.BaseTransport,
        proxied: Callable[[httpx.Proxy], httpx.BaseTransport] | None = None,
    ) -> None:
        self.transport = transport
        self._make_proxied = proxied
        self._proxied: dict[httpx.Proxy, httpx.BaseTransport] = {}
        self._lock = threading.Lock()
        self._cookies = httpx.Cookies()
        # Set once a response has set a cookie: until then requests skip the cookie jar.
        self._has_cookies = False

    def send(self, request: httpx.Request, proxy: httpx.Proxy | None = None) -> httpx.Response:
        """Send ``request`` (through ``proxy`` if given); the response's body is not read
        yet (close the response)."""
        if self._has_cookies:
            self._cookies.set_cookie_header(request)
        transport = self.transport if proxy is None else self._via(proxy)
        response = transport.handle_request(request)
        response.request = request
        if "set-cookie" in response.headers:
            self._cookies.extract_cookies(response)
            self._has_cookies = bool(self._cookies)
        return response

    def _via(self, proxy: httpx.Proxy) -> httpx.BaseTransport:
        transport = self._proxied.get(proxy)
        if transport is None:
            with self._lock:
                transport = self._proxied.get(proxy)
                if transport is None:
                    if self._make_proxied is None:
                        raise ValueError("this shard was made without proxy support")
                    transport = self._proxied[proxy] = self._make_proxied(proxy)
        return transport

    def close(self) -> None:
        with self._lock:
            proxied = list(self._proxied.values())
            self._proxied.clear()
        self.transport.close()
        for transport in proxied:
            transport.close()


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
        trust_env: bool = True,
    ) -> None:
        """``verify``: as httpx's: True (certifi's CAs, or ``SSL_CERT_FILE``), a CA bundle
        path, an ``ssl.SSLContext``, or False (no certificate check; testing only).
        ``trust_env``: route requests through the proxies the environment names, as
        ``httpx.Client(trust_env=True)`` does (see the module docstring); False ignores
        them. Raises ValueError if the environment's proxy settings cannot be parsed."""
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
        self.trust_env = trust_env
        self._proxy_rules = _environment_proxy_rules() if trust_env else ()

    # ------------------------------------------------------------------ sending
    def post(self, url: str, content: bytes, timeout: float | None = None) -> httpx.Response:
        """POST ``content`` to ``url`` and read the whole response (closed on return).

        Raises ``httpx.HTTPError`` subclasses, exactly as ``httpx.Client.post`` would."""
        target = self._targets.get(url) or self._target_for(url)
        response = self.client().send(self._request(target, content, timeout), target.proxy)
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
        target = self._targets.get(url) or self._target_for(url)
        response = self.client().send(self._request(target, content, timeout), target.proxy)
        try:
            yield response
        finally:
            response.close()

    def target(self, url: str) -> _Target:
        """Where requests to ``url`` go: its parsed URL, headers and proxy (the async
        transport, ``_aio_transport``, sends the same)."""
        return self._targets.get(url) or self._target_for(url)

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of every shard (made once, on first use)."""
        if self._ssl is None:
            self._ssl = _ssl_context(self._verify)
        return self._ssl

    def _target_for(self, url: str) -> _Target:
        """The cached ``_Target`` for ``url`` (callers look the cache up inline first)."""
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) >= _MAX_TARGETS:
                self._targets.clear()  # an LM posts to one URL: a bound, not a cache policy
            target = self._targets[url] = self._target(url)
        return target

    def _request(self, target: _Target, content: bytes, timeout: float | None) -> httpx.Request:
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
        proxy = _proxy_for(parsed, self._proxy_rules) if self._proxy_rules else None
        return _Target(parsed, headers, proxy)

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
        proxied = self._proxied_transport if self._proxy_rules else None
        return HTTPShard(self._transport(self._ssl, None), proxied)

    def _proxied_transport(self, proxy: httpx.Proxy) -> httpx.BaseTransport:
        assert self._ssl is not None  # made with the shard's own transport
        return self._transport(self._ssl, proxy)

    def _transport(self, context: ssl.SSLContext, proxy: httpx.Proxy | None) -> httpx.BaseTransport:
        # SOCKS proxies go through httpx's transport on either backend: urllib3's would need
        # PySocks, httpx's needs socksio (``httpx[socks]``), and raises the ImportError an
        # httpx user would see without it.
        if self.backend == "urllib3" and (proxy is None or proxy.url.scheme in ("http", "https")):
            # Imported with the first shard, not with the package: an LM that only sends on
            # an event loop never loads urllib3.
            from dspy_actors.lm._urllib3_transport import Urllib3Transport

            # urllib3 sets TCP_NODELAY on its sockets by default.
            return Urllib3Transport(ssl_context=context, maxsize=_LIMITS_KEEPALIVE, proxy=proxy)
        return httpx.HTTPTransport(
            verify=context,
            limits=_LIMITS,
            retries=0,
            socket_options=_SOCKET_OPTIONS,
            proxy=proxy,
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
