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

from yarl import URL

from dspy_actors._deferred_imports import lazy_module

if TYPE_CHECKING:
    import aiohttp
else:  # imported when a pool first needs it (see dspy_actors/_deferred_imports.py)
    aiohttp = lazy_module("aiohttp", globals())

__all__ = ["KEEPALIVE_SECONDS", "PostPool", "RawHeaders"]

# Idle connections older than this are closed (aiohttp's connector: keepalive_timeout=30).
KEEPALIVE_SECONDS = 30.0
# A response head larger than this is refused (aiohttp's parser: 8190 per line).
_MAX_HEAD = 64 * 1024
# How long a host name's addresses are reused (aiohttp's connector: ttl_dns_cache=10).
_DNS_SECONDS = 10.0

RawHeaders = list[tuple[str, str]]


class _Answer:
    """The head of the answer being read, and how its body is framed."""

    __slots__ = (
        "chunk_left",
        "chunks",
        "cookies",
        "encoding",
        "headers",
        "keep_alive",
        "length",
        "status",
    )

    def __init__(self, status: int, headers: RawHeaders) -> None:
        self.status = status
        self.headers = headers
        self.keep_alive = True
        self.encoding = ""
        # The body's framing: a length, -1 chunked, -2 until the connection closes.
        self.length = -2
        self.chunk_left = -1  # chunked: bytes left of the current chunk (-1: a size line next)
        self.chunks: list[bytes] = []
        self.cookies: list[str] | None = None  # Set-Cookie values, if any


class _Connection(asyncio.Protocol):
    """One kept-alive connection: writes a request, completes its waiter with
    (status, raw headers, body) once the answer is whole."""

    def __init__(self, pool: PostPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[tuple[int, RawHeaders, bytes]] | None = None
        self._buf = bytearray()
        self._answer: _Answer | None = None

    # asyncio's callbacks. -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        self._buf += data
        try:
            self._parse()
        except _ProtocolError as exc:
            self._fail(aiohttp.ClientPayloadError(str(exc)))

    def eof_received(self) -> bool | None:
        self.closed = True  # never reused after the server's end, whatever comes next
        answer = self._answer
        if self._waiter is not None and answer is not None and answer.length == -2:
            body = bytes(self._buf)
            self._buf.clear()
            answer.keep_alive = False
            self._complete(answer, body)
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

    # The pool's side. -----------------------------------------------------------------

    def send(self, request: bytes, waiter: asyncio.Future[tuple[int, RawHeaders, bytes]]) -> None:
        assert self.transport is not None
        self._waiter = waiter
        self._answer = None
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

    # Reading the answer. --------------------------------------------------------------

    def _parse(self) -> None:
        answer = self._answer
        buf = self._buf
        while answer is None:  # the head (1xx heads are skipped)
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise _ProtocolError("the response head is too large")
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            answer = _read_head(head)
            if 100 <= answer.status < 200:
                answer = None
        self._answer = answer
        length = answer.length
        if length >= 0:
            if len(buf) < length:
                return
            if len(buf) > length:
                answer.keep_alive = False  # bytes nobody asked for: do not reuse
            body = bytes(buf[:length])
            buf.clear()
            self._complete(answer, body)
        elif length == -1:
            self._read_chunks(answer)
        # (-2: the body is whatever comes before the connection closes: eof_received)

    def _read_chunks(self, answer: _Answer) -> None:
        buf = self._buf
        while True:
            left = answer.chunk_left
            if left > 0:
                take = min(left, len(buf))
                if take == 0:
                    return
                answer.chunks.append(bytes(buf[:take]))
                del buf[:take]
                answer.chunk_left = left - take
                if answer.chunk_left > 0:
                    return
                answer.chunk_left = -3  # the CRLF after a chunk's data
            if answer.chunk_left == -3:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise _ProtocolError("a chunk is not followed by CRLF")
                del buf[:2]
                answer.chunk_left = -1
            if answer.chunk_left == -1:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise _ProtocolError("a chunk size line is too long")
                    return
                line = bytes(buf[:end]).split(b";", 1)[0].strip()
                try:
                    size = int(line, 16)
                except ValueError:
                    raise _ProtocolError(f"a chunk size that is not hex: {line[:40]!r}") from None
                if size < 0:
                    raise _ProtocolError("a negative chunk size")
                if size == 0:  # the last chunk: then trailers (ignored) and an empty line
                    rest = buf.find(b"\r\n\r\n", end)
                    if rest < 0:
                        if len(buf) > _MAX_HEAD:
                            raise _ProtocolError("the trailers are too large")
                        return
                    if len(buf) > rest + 4:
                        answer.keep_alive = False  # bytes nobody asked for: do not reuse
                    buf.clear()
                    self._complete(answer, b"".join(answer.chunks))
                    return
                del buf[: end + 2]
                answer.chunk_left = size

    def _complete(self, answer: _Answer, body: bytes) -> None:
        waiter = self._waiter
        self._waiter = None
        self._answer = None
        if answer.encoding:
            try:
                body = _decoded(body, answer.encoding)
            except zlib.error as exc:
                if waiter is not None and not waiter.done():
                    problem = f"cannot decode the {answer.encoding} body: {exc}"
                    waiter.set_exception(aiohttp.ClientPayloadError(problem))
                self.close()
                return
        if answer.cookies:
            self._pool.keep_cookies(answer.cookies)
        if answer.keep_alive and not self.closed:
            self._pool.release(self)
        else:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((answer.status, answer.headers, body))

    def _fail(self, error: BaseException) -> None:
        waiter = self._waiter
        self._waiter = None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class _ProtocolError(Exception):
    """An answer that is not HTTP/1.1 as this reader takes it."""


def _read_head(head: bytes) -> _Answer:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise _ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise _ProtocolError(f"not a status code: {parts[1][:20]!r}") from None
    headers: RawHeaders = []
    answer = _Answer(status, headers)
    answer.keep_alive = parts[0] != "HTTP/1.0"
    chunked = False
    close_delimited = False
    length: int | None = None
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name[0] in " \t" or name[-1] in " \t":
            raise _ProtocolError(f"not a header line: {line[:80]!r}")
        value = value.strip(" \t")
        headers.append((name, value))
        key = name.lower()
        if key == "content-length":
            try:
                found = int(value)
            except ValueError:
                raise _ProtocolError(f"a Content-Length that is not a number: {value!r}") from None
            if found < 0 or (length is not None and found != length):
                raise _ProtocolError("a negative or conflicting Content-Length")
            length = found
        elif key == "transfer-encoding":
            codings = [c.strip().lower() for c in value.split(",")]
            chunked = codings[-1] == "chunked"
            close_delimited = not chunked
        elif key == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            if "close" in tokens:
                answer.keep_alive = False
            elif "keep-alive" in tokens:
                answer.keep_alive = True
        elif key == "content-encoding":
            answer.encoding = value.lower()
        elif key == "set-cookie":
            if answer.cookies is None:
                answer.cookies = []
            answer.cookies.append(value)
    if status in (204, 304) or 100 <= status < 200:
        answer.length = 0
    elif chunked:
        answer.length = -1
    elif close_delimited or length is None:
        answer.length = -2
        answer.keep_alive = False
    else:
        answer.length = length
    return answer


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
