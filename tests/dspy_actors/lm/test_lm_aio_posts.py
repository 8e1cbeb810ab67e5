"""An LM's whole-answer POSTs on asyncio (``lm/_aio_posts.py``, the LM loop's hot path)
read HTTP/1.1 as aiohttp did: the same request bytes, kept-alive connections, chunked,
close-delimited and compressed answers, cookies, and connections closed when a request
ends unanswered (a timeout, a cancel, a malformed answer) or the server closes them."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import socket
import socketserver
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest

from dspy_actors.lm import LM, LMConnectionError, LMTimeout, RetryPolicy, _aio_posts
from dspy_actors.lm._aio_transport import close_loop_sessions
from dspy_actors.testing._polling import wait_until
from tests.dspy_actors.lm.test_lm_async import MESSAGES, run
from tests.dspy_actors.lm.test_lm_proxy import no_proxy_environment  # noqa: F401 (autouse)

MakeLM = Callable[..., LM]
# What an answer is: the bytes to send (or pieces of them, each sent on its own), and
# whether the server closes the connection after.
Answer = tuple[bytes | list[bytes], bool]


def _completion(text: str) -> bytes:
    return json.dumps(
        {
            "model": "raw",
            "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        }
    ).encode()


def _ok(body: bytes, *headers: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", *headers]
    if not any(h.lower().startswith(("transfer-encoding", "content-length")) for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _chunked(body: bytes, sizes: tuple[int, ...], trailers: str = "") -> bytes:
    out, at = b"", 0
    for size in sizes:
        out += b"%x;ext=1\r\n%s\r\n" % (size, body[at : at + size])
        at += size
    return out + b"0\r\n" + trailers.encode() + b"\r\n"


class _RawServer(socketserver.ThreadingTCPServer):
    """A real HTTP/1.1 server on loopback whose ``answer(n)`` gives the raw bytes of the
    n-th request's answer (1-based): each request and connection is recorded."""

    daemon_threads = True

    def __init__(self, answer: Callable[[int], Answer]) -> None:
        super().__init__(("127.0.0.1", 0), _RawHandler)
        self.answer = answer
        self.lock = threading.Lock()
        self.requests: list[tuple[int, bytes]] = []  # (connection number, head and body)
        self.connections = 0
        self.closed = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _RawHandler(socketserver.BaseRequestHandler):
    server: _RawServer

    def handle(self) -> None:
        server = self.server
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # (pieces apart)
        with server.lock:
            server.connections += 1
            number = server.connections
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                found = re.search(rb"(?im)^content-length: *(\d+)", head)
                length = int(found.group(1)) if found else 0
                while len(buf) < length:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:length], buf[length:]
                with server.lock:
                    server.requests.append((number, head + b"\r\n\r\n" + body))
                    n = len(server.requests)
                reply, close = server.answer(n)
                for piece in reply if isinstance(reply, list) else [reply]:
                    self.request.sendall(piece)
                if close:
                    return
        except OSError:
            return
        finally:
            with server.lock:
                server.closed += 1


@contextlib.contextmanager
def _serving(answer: Callable[[int], Answer]) -> Iterator[_RawServer]:
    server = _RawServer(answer)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="raw-http-server")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _lm(make_lm: MakeLM, server: _RawServer, retries: int = 0, host: str = "127.0.0.1") -> LM:
    return make_lm(
        api_base=f"http://{host}:{server.port}/v1",
        retry_policy=RetryPolicy(max_retries=retries, base_delay=0.0),
    )


def _calls(lm: LM, n: int) -> Callable[[], Awaitable[list[list[str]]]]:
    async def calls() -> list[list[str]]:
        return [(await lm.acomplete(MESSAGES)).outputs for _ in range(n)]

    return calls


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait on the loop (its callbacks must run for the condition to come true)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


def _pool(lm: LM) -> _aio_posts.PostPool:
    (pools,) = lm._aio._posts.values()
    (pool,) = pools.values()
    return pool


def test_a_request_is_the_bytes_aiohttp_sends(make_lm: MakeLM) -> None:
    with _serving(lambda n: (_ok(_completion("x")), False)) as server:
        lm = make_lm(api_base=f"http://us:pw@127.0.0.1:{server.port}/v1", api_key="sk-1")
        target = lm._aio.target(lm.endpoint)

        async def both() -> None:
            await lm._aio.post(lm.endpoint, b'{"a": 1}', 5.0)
            async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as session:
                response = await session.post(target.url, data=b'{"a": 1}', headers=target.headers)
                await response.read()

        run(both, lm)
    (_, ours), (_, aiohttps) = server.requests
    assert ours == aiohttps
    assert b"\r\nauthorization: basic " in ours.lower()


def test_calls_in_a_row_share_one_kept_alive_connection(make_lm: MakeLM) -> None:
    with _serving(lambda n: (_ok(_completion(f"a{n}")), False)) as server:
        lm = _lm(make_lm, server)
        outputs = run(_calls(lm, 3), lm)
    assert outputs == [["a1"], ["a2"], ["a3"]]
    assert [number for number, _ in server.requests] == [1, 1, 1]


def test_chunked_answers_are_read_whole_with_1xx_heads_and_trailers_skipped(
    make_lm: MakeLM,
) -> None:
    body = _completion("chunked")
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + _chunked(body, (1, 30, len(body) - 31)),
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
        + b"Content-Encoding: identity\r\n\r\n"
        + _chunked(body, (len(body),), trailers="X-Checksum: 1\r\n"),
    ]
    with _serving(lambda n: (answers[n - 1], False)) as server:
        lm = _lm(make_lm, server)
        outputs = run(_calls(lm, 2), lm)
    assert outputs == [["chunked"], ["chunked"]]
    assert [number for number, _ in server.requests] == [1, 1]


def test_a_close_delimited_answer_is_read_and_its_connection_not_reused(make_lm: MakeLM) -> None:
    answers = [
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + _completion("a1"), True),
        (_ok(_completion("a2"), "Connection: close"), True),
        (b"HTTP/1.0 200 OK\r\n" + _ok(_completion("a3")).split(b"\r\n", 1)[1], True),
        (_ok(_completion("a4")), False),
    ]
    with _serving(lambda n: answers[n - 1]) as server:
        lm = _lm(make_lm, server)
        outputs = run(_calls(lm, 4), lm)
    assert outputs == [["a1"], ["a2"], ["a3"], ["a4"]]
    assert [number for number, _ in server.requests] == [1, 2, 3, 4]


def test_gzip_and_deflate_answers_are_decoded(make_lm: MakeLM) -> None:
    body = _completion("packed")
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    answers = [
        _ok(gzip.compress(body), "Content-Encoding: gzip"),
        _ok(zlib.compress(body), "Content-Encoding: deflate"),
        _ok(raw_deflate.compress(body) + raw_deflate.flush(), "Content-Encoding: deflate"),
    ]
    with _serving(lambda n: (answers[n - 1], False)) as server:
        lm = _lm(make_lm, server)
        assert run(_calls(lm, 3), lm) == [["packed"]] * 3
    assert b"Accept-Encoding: gzip, deflate" in server.requests[0][1]


def test_cookies_the_server_sets_are_sent_back(make_lm: MakeLM) -> None:
    answers = [_ok(_completion("a"), "Set-Cookie: session=abc; Path=/"), _ok(_completion("b"))]
    with _serving(lambda n: (answers[min(n, 2) - 1], False)) as server:
        lm = _lm(make_lm, server)
        run(_calls(lm, 3), lm)
    cookies = [re.findall(rb"(?m)^Cookie: (.*)\r$", request) for _, request in server.requests]
    assert cookies == [[], [b"session=abc"], [b"session=abc"]]


def test_a_connection_the_server_closed_while_idle_is_not_reused(make_lm: MakeLM) -> None:
    # An answer, then the server closes the connection (its keep-alive ran out).
    with _serving(lambda n: (_ok(_completion(f"a{n}")), True)) as server:
        lm = _lm(make_lm, server)

        async def calls() -> list[list[str]]:
            first = (await lm.acomplete(MESSAGES)).outputs
            await _until(lambda: _pool(lm).idle_connections == 0, "the close was seen")
            return [first, (await lm.acomplete(MESSAGES)).outputs]

        assert run(calls, lm) == [["a1"], ["a2"]]
    assert lm.stats.retries == 0
    assert [number for number, _ in server.requests] == [1, 2]


def test_a_timeout_mid_answer_closes_the_connection(make_lm: MakeLM) -> None:
    answers = [(_ok(_completion("late"))[:-5], False), (_ok(_completion("fresh")), False)]
    with _serving(lambda n: answers[n - 1]) as server:
        lm = _lm(make_lm, server)

        async def calls() -> list[str]:
            with pytest.raises(LMTimeout):
                await lm.acomplete(MESSAGES, timeout=0.3)
            return (await lm.acomplete(MESSAGES)).outputs

        assert run(calls, lm) == ["fresh"]
        wait_until(lambda: server.closed >= 1, 10.0, "the timed-out connection closed")
    assert [number for number, _ in server.requests] == [1, 2]


def test_a_cancelled_call_closes_its_connection(make_lm: MakeLM) -> None:
    release = threading.Event()

    def answer(n: int) -> Answer:
        release.wait(10.0)  # (the server's thread: held until the test ends)
        return _ok(_completion("never read")), False  # then it reads on: until the client closes

    with _serving(answer) as server:
        lm = _lm(make_lm, server)

        async def cancel() -> None:
            call = asyncio.ensure_future(lm.acomplete(MESSAGES))
            await _until(lambda: len(server.requests) == 1, "the request arrived")
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            assert _pool(lm).idle_connections == 0

        try:
            run(cancel, lm)
        finally:
            release.set()
        # A connection left open would keep the server's thread reading: it ends only on
        # the client's close.
        wait_until(lambda: server.closed == 1, 10.0, "the cancelled call's connection closed")


def test_a_malformed_answer_is_a_connection_error_and_retried(make_lm: MakeLM) -> None:
    answers = [(b"HTTP/1.1 abc\r\n\r\n", False), (_ok(_completion("ok")), False)]
    with _serving(lambda n: answers[n - 1]) as server:
        lm = _lm(make_lm, server, retries=1)
        assert run(_calls(lm, 1), lm) == [["ok"]]
        lm_once = _lm(make_lm, server)
        server.requests.clear()
        with pytest.raises(LMConnectionError, match="connection failed"):
            run(_calls(lm_once, 1), lm_once)
    assert lm.stats.retries == 1


def test_idle_connections_close_after_the_keepalive(
    make_lm: MakeLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_aio_posts, "KEEPALIVE_SECONDS", 0.2)
    with _serving(lambda n: (_ok(_completion("a")), False)) as server:
        lm = _lm(make_lm, server)

        async def call_then_idle() -> None:
            await lm.acomplete(MESSAGES)
            await _until(lambda: server.closed == 1, "the idle connection closed")
            await lm.acomplete(MESSAGES)

        run(call_then_idle, lm)
    assert [number for number, _ in server.requests] == [1, 2]


def test_a_host_name_is_resolved_and_its_addresses_tried_in_turn(make_lm: MakeLM) -> None:
    # "localhost" may resolve to ::1 first, where nothing listens: the next address answers.
    with _serving(lambda n: (_ok(_completion("by name")), False)) as server:
        lm = _lm(make_lm, server, host="localhost")
        assert run(_calls(lm, 2), lm) == [["by name"]] * 2
    assert f"Host: localhost:{server.port}".encode() in server.requests[0][1]


def test_aclose_closes_the_kept_connections(make_lm: MakeLM) -> None:
    with _serving(lambda n: (_ok(_completion("a")), False)) as server:
        lm = _lm(make_lm, server)
        run(_calls(lm, 1), lm)  # (run closes the LM's connections of its loop)
        wait_until(lambda: server.closed == 1, 10.0, "the kept connection closed")


def test_after_the_loops_connections_are_closed_new_ones_are_kept_alive(
    make_lm: MakeLM,
) -> None:
    with _serving(lambda n: (_ok(_completion(f"a{n}")), False)) as server:
        lm = _lm(make_lm, server)

        async def calls() -> None:
            await lm.acomplete(MESSAGES)
            await close_loop_sessions()  # what an LM loop's owner does before it stops
            await lm.acomplete(MESSAGES)
            await lm.acomplete(MESSAGES)

        run(calls, lm)
    assert [number for number, _ in server.requests] == [1, 2, 2]


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


def test_an_answer_sent_in_many_small_pieces_is_read_whole(make_lm: MakeLM) -> None:
    # The parser keeps its place between reads: in a status line, a header, a chunk size,
    # a chunk's data, its CRLF, the trailers.
    body = _completion("pieces")
    answers: list[Answer] = [
        (_pieces(_ok(body), 3), False),
        (
            _pieces(
                b"HTTP/1.1 100 Continue\r\n\r\n"
                + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                + _chunked(body, (5, len(body) - 5), trailers="X-Checksum: 1\r\n"),
                1,
            ),
            False,
        ),
    ]
    with _serving(lambda n: answers[n - 1]) as server:
        lm = _lm(make_lm, server)
        assert run(_calls(lm, 2), lm) == [["pieces"]] * 2
    assert [number for number, _ in server.requests] == [1, 1]


def test_the_answers_headers_are_its_final_heads_without_1xx_heads_or_trailers(
    make_lm: MakeLM,
) -> None:
    body = _completion("x")
    answer = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
        + b"HTTP/1.1 200 OK\r\nX-Final:  yes \t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + _chunked(body, (len(body),), trailers="X-Trailer: t\r\n")
    )
    with _serving(lambda n: (answer, False)) as server:
        lm = _lm(make_lm, server)

        async def post() -> tuple[int, list[tuple[str, str]], bytes]:
            status, headers, got = await lm._aio.post(lm.endpoint, b"{}", 5.0)
            return status, list(headers.items()), got

        status, headers, got = run(post, lm)
    assert (status, got) == (200, body)
    assert headers == [("X-Final", "yes"), ("Transfer-Encoding", "chunked")]


@pytest.mark.parametrize(
    "answer",
    [
        _ok(_completion("cut"))[:-5],  # a Content-Length body cut short
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",  # in a chunk
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",  # before the first chunk
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n",  # in the head
    ],
    ids=["length", "chunk", "no-chunk", "head"],
)
def test_an_answer_cut_short_by_the_servers_close_is_a_connection_error(
    make_lm: MakeLM, answer: bytes
) -> None:
    # Not a short body taken whole: only an answer framed by neither a length nor chunks
    # ends at the close.
    with _serving(lambda n: (answer, True)) as server:
        lm = _lm(make_lm, server)
        with pytest.raises(LMConnectionError, match="connection failed: ServerDisconnectedError"):
            run(_calls(lm, 1), lm)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\nContent-Length: 0\r\n\r\n",
        b"SMTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=[
        "chunk-size",
        "chunk-crlf",
        "length",
        "two-lengths",
        "head-too-large",
        "not-http",
    ],
)
def test_a_malformed_answer_is_a_payload_error_and_its_connection_closed(
    make_lm: MakeLM, answer: bytes
) -> None:
    with _serving(lambda n: (answer, False)) as server:
        lm = _lm(make_lm, server)
        with pytest.raises(LMConnectionError, match="connection failed: ClientPayloadError"):
            run(_calls(lm, 1), lm)
        # The server's thread reads on until the client closes the connection.
        wait_until(lambda: server.closed == 1, 10.0, "the malformed answer's connection closed")


@pytest.mark.parametrize(
    "after", [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"junk"], ids=["answer", "junk"]
)
def test_bytes_after_the_answer_close_its_connection(make_lm: MakeLM, after: bytes) -> None:
    answers = [(_ok(_completion("a1")) + after, False), (_ok(_completion("a2")), False)]
    with _serving(lambda n: answers[n - 1]) as server:
        lm = _lm(make_lm, server)
        assert run(_calls(lm, 2), lm) == [["a1"], ["a2"]]
    assert [number for number, _ in server.requests] == [1, 2]
