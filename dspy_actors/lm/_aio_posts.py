"""An LM's whole-answer POSTs on asyncio, over kept-alive HTTP/1.1 connections of its own.

Why not ``aiohttp.ClientSession.post`` for these: on the LM loop's thread (the throughput
bound of a process with thousands of calls in flight) aiohttp's request machinery was ~60%
of the thread's CPU per call (profiled at 256 in flight, 100 ms latency): per request it
re-parses the URL, merges and copies header multidicts, builds a request, a response, a
payload stream, a timer context, a traces list, a cookie filter. An LM sends one kind of
request: a POST of a JSON body, to one URL, with fixed headers, answered by a JSON body
read whole. :class:`PostPool` sends exactly that: the request head is built once per
target, each request is one ``transport.write`` and one future the connection's protocol
completes, with one timer for the request's total timeout. What it keeps of aiohttp's
behaviour: the same bytes on the wire (Host, the target's headers, Content-Length; checked
against aiohttp in tests), keep-alive with idle connections closed after 30 s, TLS with the
LM's context, cookies the server sets sent back (aiohttp's ``CookieJar``, one per pool,
taking those of IP-address hosts too, as the sync transport does), gzip and deflate
answers decoded, chunked and until-close bodies, failures as ``TimeoutError`` and
``aiohttp.ClientError`` subclasses (a connect's own ``OSError`` as it is, where aiohttp
wrapped it: the LM maps both to ``LMConnectionError``).

The answer's framing is read by ``httptools.HttpResponseParser`` (llhttp, the C parser of
Node.js and of aiohttp's own C parser): status line, headers, Content-Length, chunked
bodies with their extensions and trailers, 1xx heads, keep-alive. Its errors are a
malformed answer (``aiohttp.ClientPayloadError``). This module only collects what the
parser's callbacks give, and ends an until-close body at the connection's end (httptools
does not expose llhttp's ``llhttp_finish``).

What stays on aiohttp (``_aio_transport.AioClients``): streamed answers (read as they
arrive, with back-pressure) and requests through a proxy.

A connection serves one request at a time and is reused only after a complete answer that
lets it be (HTTP/1.1 without ``Connection: close``); anything else (a timeout, a cancel, a
malformed answer, bytes after the answer) closes it. A request is never resent here: a
connection the server closed under a request is an ``aiohttp.ServerDisconnectedError``
for the LM's retry loop, as with aiohttp.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
import zlib
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any

import httptools
from yarl import URL

from dspy_actors._deferred_imports import lazy_module

if TYPE_CHECKING:
    import aiohttp
else:  # imported when a pool first needs it (see dspy_actors/_deferred_imports.py)
    aiohttp = lazy_module("aiohttp", globals())

__all__ = ["KEEPALIVE_SECONDS", "PostPool", "RawHeaders"]

# Idle connections older than this are closed (aiohttp's connector: keepalive_timeout=30).
KEEPALIVE_SECONDS = 30.0
# An answer whose head is not whole within its first this many bytes is refused (llhttp
# sets no limit of its own; aiohttp's parser: 8190 per line). 1xx heads before it count.
_MAX_HEAD = 64 * 1024
# How long a host name's addresses are reused (aiohttp's connector: ttl_dns_cache=10).
_DNS_SECONDS = 10.0

RawHeaders = list[tuple[str, str]]


class _Connection(asyncio.Protocol):
    """One kept-alive connection: writes a request, completes its waiter with
    (status, raw headers, body) once httptools' parser has read the answer whole."""

    def __init__(self, pool: PostPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[tuple[int, RawHeaders, bytes]] | None = None
        # llhttp keeps its state between answers: one parser for the connection's life.
        self._parser = httptools.HttpResponseParser(self)
        self._head_bytes = 0  # read since the request was sent, while no final head is whole
        # The answer being read (reset by on_message_begin, for each 1xx head too).
        self._status = 0
        self._headers: RawHeaders = []
        self._body: list[bytes] = []
        self._head_done = False  # the final (not 1xx) head is whole: later headers are trailers
        self._sized = False  # a Content-Length or a chunked Transfer-Encoding frames the body
        self._encoding = ""
        self._cookies: list[str] | None = None  # Set-Cookie values, if any

    # asyncio's callbacks. -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        parser = self._parser
        try:
            if self._head_done:
                parser.feed_data(data)
                return
            room = _MAX_HEAD - self._head_bytes
            self._head_bytes += len(data)
            if len(data) <= room:
                parser.feed_data(data)
                return
            # The final head must be whole within the answer's first _MAX_HEAD bytes.
            view = memoryview(data)
            parser.feed_data(view[:room])
            if not self._head_whole() and self._waiter is not None:
                self._fail(aiohttp.ClientPayloadError("the response head is too large"))
                return
            parser.feed_data(view[room:])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # (After an answer read whole: bytes nobody asked for; the connection closes.)
            self._fail(aiohttp.ClientPayloadError(f"a malformed answer: {exc!r}"))

    def _head_whole(self) -> bool:
        """The final head has been read whole (a method: feed_data's callbacks set it)."""
        return self._head_done

    def eof_received(self) -> bool | None:
        self.closed = True  # never reused after the server's end, whatever comes next
        if self._waiter is not None and self._head_done and not self._sized:
            # A body read until the connection closes ends here. (llhttp ends it in
            # llhttp_finish, which httptools does not expose: hence self._sized.)
            self._complete(keep_alive=False)
        return False  # (the transport closes itself)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self._waiter is not None:
            if exc is None:
                error: Exception = aiohttp.ServerDisconnectedError()
            else:
                error = aiohttp.ClientOSError(*exc.args) if isinstance(exc, OSError) else exc
            self._fail(error)

    # httptools' callbacks (from feed_data). -------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:  # an answer after the answer: bytes nobody asked for
            self.close()
        self._headers = []  # (new lists: the last answer's went to its caller)
        self._body = []
        self._head_done = False
        self._sized = False
        self._encoding = ""
        self._cookies = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:  # a chunked body's trailer: ignored, as aiohttp does
            return
        key = name.decode("latin-1")
        text = value.decode("latin-1").rstrip(" \t")  # (llhttp keeps trailing whitespace)
        self._headers.append((key, text))
        lowered = key.lower()
        if lowered == "content-encoding":
            self._encoding = text.lower()
        elif lowered == "set-cookie":
            if self._cookies is None:
                self._cookies = []
            self._cookies.append(text)
        elif lowered == "content-length":
            self._sized = True
        elif lowered == "transfer-encoding":
            self._sized = text.rsplit(",", 1)[-1].strip(" \t").lower() == "chunked"

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._head_done = self._status >= 200  # a 1xx head: the answer's comes next

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._head_done and self._waiter is not None:
            self._complete(self._parser.should_keep_alive())

    # The pool's side. -----------------------------------------------------------------

    def send(self, request: bytes, waiter: asyncio.Future[tuple[int, RawHeaders, bytes]]) -> None:
        assert self.transport is not None
        self._waiter = waiter
        self._head_bytes = 0
        self._head_done = False  # (the last answer's head was whole: this one's is not yet)
        self.transport.write(request)

    def reusable(self, now: float) -> bool:
        """Open, not closing, and idle for less than the keep-alive."""
        transport = self.transport
        return (
            not self.closed
            and transport is not None
            and not transport.is_closing()
            and now - self.idle_since < KEEPALIVE_SECONDS
        )

    def abandon(self, waiter: asyncio.Future[Any]) -> None:
        """The request of ``waiter`` ended unanswered (timed out, cancelled): this
        connection is mid-answer, so it is closed (unless it moved on already)."""
        if self._waiter is waiter:
            self._waiter = None
            self.close()

    def close(self) -> None:
        self.closed = True
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()  # an idle or abandoned connection: nothing to flush

    # The answer, read whole. ----------------------------------------------------------

    def _complete(self, keep_alive: bool) -> None:
        waiter = self._waiter
        self._waiter = None
        body = b"".join(self._body)
        if self._encoding:
            try:
                body = _decoded(body, self._encoding)
            except zlib.error as exc:
                if waiter is not None and not waiter.done():
                    problem = f"cannot decode the {self._encoding} body: {exc}"
                    waiter.set_exception(aiohttp.ClientPayloadError(problem))
                self.close()
                return
        if self._cookies:
            self._pool.keep_cookies(self._cookies)
        if keep_alive and not self.closed:
            self._pool.release(self)
        else:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, self._headers, body))

    def _fail(self, error: BaseException) -> None:
        waiter = self._waiter
        self._waiter = None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:  # raw deflate, without the zlib wrapper (some servers send it)
            return zlib.decompress(body, -zlib.MAX_WBITS)
    return body  # identity, or an encoding we did not ask for: as it came (aiohttp does too)


class PostPool:
    """Kept-alive connections to one origin, on one event loop, for POSTs to one URL."""

    def __init__(
        self,
        url: str,
        headers: list[tuple[str, str]],
        host_header: str,
        ssl_context: Callable[[], ssl.SSLContext],
    ) -> None:
        """``headers``: what every request carries after Host (the target's, in order);
        ``ssl_context``: the LM's TLS context (called once, for an https URL)."""
        parsed = URL(url)
        self._host = parsed.raw_host or ""
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._tls = parsed.scheme == "https"
        self._ssl_context = ssl_context
        self._url = parsed
        self._named = not _is_address(self._host)  # a name to resolve, not an address
        self._addresses: list[tuple[int, str, int]] = []
        self._resolved_until = 0.0
        head = [f"POST {parsed.raw_path_qs} HTTP/1.1", f"Host: {host_header}"]
        head += [f"{name}: {value}" for name, value in headers]
        # What aiohttp adds when the target's headers lack them (an LM's provider sets both).
        names = {name.lower() for name, _ in headers}
        if "accept" not in names:
            head.append("Accept: */*")
        if "content-type" not in names:
            head.append("Content-Type: application/octet-stream")
        self._head = "\r\n".join(head).encode("latin-1")
        self._idle: list[_Connection] = []
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self._jar: aiohttp.CookieJar | None = None  # made when a server first sets a cookie

    async def post(self, content: bytes, timeout: float) -> tuple[int, RawHeaders, bytes]:
        """POST ``content``; (status, raw headers, decoded body). ``timeout`` bounds the
        whole exchange, connecting included. Raises TimeoutError, aiohttp.ClientError, or
        the OSError of a connect."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        connection = self._kept(time.monotonic())
        if connection is None:
            async with asyncio.timeout_at(deadline):
                connection = await self._connect(loop)
        waiter: asyncio.Future[tuple[int, RawHeaders, bytes]] = loop.create_future()
        connection.send(self._request(content), waiter)
        timer = loop.call_at(deadline, _time_out, waiter)
        try:
            status, headers, body = await waiter
        finally:
            timer.cancel()
            connection.abandon(waiter)  # (a no-op when the answer was read whole)
        return status, headers, body

    def _request(self, content: bytes) -> bytes:
        cookie = b""
        if self._jar is not None and len(self._jar):
            cookies = self._jar.filter_cookies(self._url)
            if cookies:
                pairs = "; ".join(f"{m.key}={m.coded_value}" for m in cookies.values())
                cookie = b"\r\nCookie: " + pairs.encode("latin-1")
        length = b"\r\nContent-Length: %d\r\n\r\n" % len(content)
        return b"".join((self._head, cookie, length, content))

    def keep_cookies(self, values: list[str]) -> None:
        """Keep the cookies of an answer's Set-Cookie headers, for the next requests."""
        found: SimpleCookie = SimpleCookie()
        for value in values:
            try:
                found.load(value)
            except CookieError:
                continue  # one malformed cookie: aiohttp skips it too
        if found:
            if self._jar is None:
                # unsafe: cookies of a server named by its IP address are kept too, as the
                # sync transport (httpx's jar) keeps them.
                self._jar = aiohttp.CookieJar(unsafe=True)
            self._jar.update_cookies(found, self._url)

    def _kept(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()  # the most recently used: the likeliest still open
            if connection.reusable(now):
                return connection
            connection.close()
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        context = self._ssl_context() if self._tls else None
        hostname = self._host if self._tls else None
        if not self._named:
            _transport, connection = await loop.create_connection(
                lambda: _Connection(self),
                self._host,
                self._port,
                ssl=context,
                server_hostname=hostname,
            )
            return connection
        failure: OSError | None = None
        for family, address, port in await self._resolve(loop):
            try:
                _transport, connection = await loop.create_connection(
                    lambda: _Connection(self),
                    address,
                    port,
                    family=family,
                    ssl=context,
                    server_hostname=hostname,
                )
            except OSError as exc:  # the next address, as aiohttp's connector does
                failure = failure or exc
                continue
            return connection
        assert failure is not None  # (getaddrinfo raises rather than finding none)
        raise failure

    async def _resolve(self, loop: asyncio.AbstractEventLoop) -> list[tuple[int, str, int]]:
        if time.monotonic() < self._resolved_until:
            return self._addresses
        infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        self._addresses = [(info[0], str(info[4][0]), int(info[4][1])) for info in infos]
        self._resolved_until = time.monotonic() + _DNS_SECONDS
        return self._addresses

    def release(self, connection: _Connection) -> None:
        """A connection whose answer was read whole, free for the next request."""
        if self._closed:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        if self._sweep is None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(KEEPALIVE_SECONDS, self._close_expired)

    def _close_expired(self) -> None:
        """Close the connections idle for KEEPALIVE_SECONDS (and those closed meanwhile)."""
        self._sweep = None
        now = time.monotonic()
        keep: list[_Connection] = []
        for connection in self._idle:
            if connection.reusable(now):
                keep.append(connection)
            else:
                connection.close()
        self._idle = keep
        if keep and not self._closed:
            oldest = min(c.idle_since for c in keep)
            delay = max(0.05, oldest + KEEPALIVE_SECONDS - now)
            self._sweep = asyncio.get_running_loop().call_later(delay, self._close_expired)

    @property
    def closed(self) -> bool:
        """Closed by :meth:`close` (its owner makes a new pool for later requests)."""
        return self._closed

    @property
    def idle_connections(self) -> int:
        return sum(not c.closed for c in self._idle)

    def close(self) -> None:
        """Close every idle connection (those in use close when their answer is read)."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _time_out(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
