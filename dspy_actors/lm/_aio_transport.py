"""The LM's HTTP on asyncio: per event loop and LM, one ``aiohttp`` session (streamed
answers, proxies) and one :class:`~dspy_actors.lm._aio_posts.PostPool` per URL (whole
answers from a server reached directly: the hot path, see ``_aio_posts``).

Why aiohttp: measured on 2 cores against a loopback server with 2 s latency
(``bench/bench_async_clients.py``, both clients in the same run), aiohttp kept 256 requests
in flight at 120 calls/s (ideal 128) and 4,096 at ~800/s (CPU-bound), while httpx's
``AsyncClient`` spent ~20 ms of CPU per request at 256 (30 calls/s) and did not finish at
4,096. A request in flight on a loop costs a socket and a few kilobytes, not a thread.

A session belongs to the loop it was made on, so :class:`AioClients` keeps one per loop and
registers each with that loop, for :func:`close_loop_sessions` (what the loop's owner awaits
before it stops the loop). What the sync transport does holds here too: the same target
headers (``transport.ClientPool``'s: Host, httpx's defaults, Basic auth from credentials in
the URL), the same TLS context (``verify``), and the same proxy routing from the environment
(``trust_env``), sent as aiohttp's ``proxy=``/``proxy_headers=``: http:// targets in absolute
form, https:// ones through ``CONNECT``. A SOCKS proxy is not something aiohttp speaks: such
a request reports ``needs_thread`` and the LM runs its sync path in a thread instead.
Failures are mapped by the LM: ``TimeoutError`` (the request's total timeout) and
``aiohttp.ClientError``.
"""

from __future__ import annotations

import asyncio
import base64
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from multidict import CIMultiDict

from dspy_actors._deferred_imports import lazy_module
from dspy_actors.lm._aio_posts import PostPool
from dspy_actors.lm.transport import ClientPool

# aiohttp is imported when an LM first sends on an event loop, not with the package.
if TYPE_CHECKING:
    import aiohttp
else:
    aiohttp = lazy_module("aiohttp", globals())

__all__ = ["AioClients", "AioTarget", "aiter_sse", "close_loop_sessions"]

# Headers aiohttp sets itself per request, or that would promise encodings it cannot decode.
_DROPPED = frozenset({"host", "content-length", "connection", "accept-encoding"})

# Every session and post pool made on a loop, to close before the loop stops.
_loop_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[aiohttp.ClientSession]]
_loop_sessions = weakref.WeakKeyDictionary()
_loop_posts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[PostPool]]
_loop_posts = weakref.WeakKeyDictionary()

# (See AioClients.stream.)
_STREAM_READ_BUFSIZE = 16 * 1024


@dataclass(frozen=True, slots=True)
class AioTarget:
    """Where one URL's requests go: the URL, headers, and proxy (with its credentials)."""

    url: str
    headers: Mapping[str, str]
    proxy: str | None
    proxy_headers: Mapping[str, str] | None  # Proxy-Authorization, from the proxy URL
    needs_thread: bool  # a SOCKS proxy: aiohttp cannot reach it
    host: str  # the Host header (the sync transport's)


class AioClients:
    """Sessions of one LM, one per event loop, made on first use on that loop."""

    def __init__(self, pool: ClientPool, verify_context: Any) -> None:
        """``pool``: the LM's sync transport pool (its targets: headers and proxies);
        ``verify_context``: a callable giving the TLS context (made once, shared)."""
        self._pool = pool
        self._verify_context = verify_context
        self._sessions: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, aiohttp.ClientSession
        ] = weakref.WeakKeyDictionary()
        self._targets: dict[str, AioTarget] = {}
        self._posts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, PostPool]]
        self._posts = weakref.WeakKeyDictionary()

    def target(self, url: str) -> AioTarget:
        found = self._targets.get(url)
        if found is None:
            sync = self._pool.target(url)
            headers = {k: v for k, v in sync.headers.items() if k.lower() not in _DROPPED}
            headers["Accept-Encoding"] = "gzip, deflate"
            proxy = sync.proxy
            proxy_url: str | None = None
            auth: dict[str, str] | None = None
            socks = False
            if proxy is not None:
                socks = proxy.url.scheme not in ("http", "https")
                proxy_url = str(proxy.url.copy_with(username=None, password=None))
                if proxy.auth is not None:
                    userpass = f"{proxy.auth[0]}:{proxy.auth[1]}".encode()
                    auth = {"Proxy-Authorization": "Basic " + base64.b64encode(userpass).decode()}
            if auth is not None and sync.url.scheme == "http":
                # Sent to the proxy itself (absolute form): aiohttp adds proxy_headers only
                # to a CONNECT. Never to an https:// origin: those headers go in the tunnel.
                headers.update(auth)
            origin = str(_without_userinfo(sync.url))
            host = sync.headers.get("host") or sync.url.netloc.decode("ascii")
            found = AioTarget(origin, headers, proxy_url, auth, socks, host)
            if len(self._targets) >= 16:
                self._targets.clear()  # an LM posts to one URL: a bound, not a policy
            self._targets[url] = found
        return found

    def session(self) -> aiohttp.ClientSession:
        """The running loop's session (made now if it has none, or it was closed)."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=0,  # the LM pool above bounds requests in flight, not the connector
                ssl=self._verify_context(),
                keepalive_timeout=30.0,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
            self._sessions[loop] = session
            _loop_sessions.setdefault(loop, set()).add(session)
        return session

    async def post(self, url: str, content: bytes, timeout: float) -> tuple[int, Any, bytes]:
        """POST ``content``; (status, headers, body). Raises TimeoutError,
        aiohttp.ClientError or (a connect's) OSError."""
        target = self.target(url)
        if target.proxy is None:  # the hot path: straight to the server (_aio_posts)
            status, raw, body = await self._post_pool(target).post(content, timeout)
            return status, CIMultiDict(raw), body
        async with self.session().post(
            target.url,
            data=content,
            headers=target.headers,
            proxy=target.proxy,
            proxy_headers=target.proxy_headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            body = await response.read()
            return response.status, response.headers, body

    def _post_pool(self, target: AioTarget) -> PostPool:
        """The running loop's connections for ``target`` (made on first use)."""
        loop = asyncio.get_running_loop()
        pools = self._posts.get(loop)
        if pools is None:
            pools = self._posts[loop] = {}
        pool = pools.get(target.url)
        if pool is None or pool.closed:  # (closed by close_loop_sessions: the loop goes on)
            headers = list(target.headers.items())
            pool = pools[target.url] = PostPool(
                target.url, headers, target.host, self._verify_context
            )
            _loop_posts.setdefault(loop, set()).add(pool)
        return pool

    @asynccontextmanager
    async def stream(
        self, url: str, content: bytes, timeout: float
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST ``content``; the response with its body unread (``timeout`` bounds the
        whole exchange, as the sync stream's read timeout bounds each read)."""
        target = self.target(url)
        async with self.session().post(
            target.url,
            data=content,
            headers=target.headers,
            proxy=target.proxy,
            proxy_headers=target.proxy_headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            # What aiohttp reads ahead of a stream's reader before it pauses the socket
            # (twice this): a stalled reader then holds ~32 KiB here, not ~128 KiB.
            read_bufsize=_STREAM_READ_BUFSIZE,
        ) as response:
            yield response

    async def aclose(self) -> None:
        """Close the running loop's session and connections of this LM."""
        loop = asyncio.get_running_loop()
        for pool in (self._posts.pop(loop, None) or {}).values():
            _loop_posts.get(loop, set()).discard(pool)
            pool.close()
        session = self._sessions.pop(loop, None)
        if session is not None:
            _loop_sessions.get(loop, set()).discard(session)
            await session.close()
        await asyncio.sleep(0)  # (closed transports let go of their sockets on the next turn)


async def close_loop_sessions() -> None:
    """Close every LM session and connection made on the running loop (its owner calls
    this before it stops the loop, so that no connection is left unclosed)."""
    loop = asyncio.get_running_loop()
    for pool in _loop_posts.pop(loop, set()):
        pool.close()
    sessions = _loop_sessions.pop(loop, set())
    for session in sessions:
        await session.close()
    await asyncio.sleep(0)


def _without_userinfo(url: httpx.URL) -> httpx.URL:
    # Credentials in the URL were turned into an Authorization header already.
    if url.username or url.password:
        return url.copy_with(username=None, password=None)
    return url


async def aiter_sse(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of a server-sent-event response, as they arrive (the same rules
    as ``providers.base.iter_sse``)."""
    event = ""
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
        elif line.startswith("event:"):
            event = line[6:].strip()
    if data:
        yield event, "\n".join(data)
