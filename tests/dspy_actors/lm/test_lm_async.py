"""LM.acomplete / LM.astream: the asyncio path (aiohttp) keeps what the sync path promises:
retries and Retry-After, timeouts, deadlines, cache, usage, streaming, proxies, TLS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import json
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from dspy_actors.lm import (
    LM,
    AuthenticationError,
    ContextWindowExceeded,
    LMConnectionError,
    LMResponse,
    LMTimeout,
    RateLimited,
    RetryPolicy,
)
from dspy_actors.lm._lm import PreparedCall
from dspy_actors.lm._usage import UsageMeter, metering
from dspy_actors.lm.cache import Cache
from dspy_actors.testing import Fault, SimLM
from tests.dspy_actors.lm.test_lm_proxy import (  # the proxy-free environment, autouse
    _ProxyServer,
    _Seen,
    no_proxy_environment,  # noqa: F401
)
from tests.dspy_actors.lm.test_lm_transport import _self_signed

MakeLM = Callable[..., LM]
MESSAGES = [{"role": "user", "content": "What is 1 + 1?"}]
T = TypeVar("T")


def run(make: Callable[[], Awaitable[T]], lm: LM | None = None) -> T:
    """Run a coroutine on a fresh loop, closing ``lm``'s session of that loop after."""

    async def main() -> T:
        try:
            return await make()
        finally:
            if lm is not None:
                await lm.aclose()

    return asyncio.run(main())


def test_acomplete_answers_and_counts_usage(sim_lm: SimLM, make_lm: MakeLM) -> None:
    lm = make_lm(api_base=sim_lm.openai_base)

    with metering(UsageMeter()) as meter:
        response = run(lambda: lm.acomplete(MESSAGES), lm)

    assert response.outputs == ["2"]
    assert response.usage.prompt_tokens > 0
    assert meter.total.prompt_tokens == response.usage.prompt_tokens
    assert lm.history[-1]["outputs"] == ["2"]
    assert sim_lm.requests[0].headers.get("authorization") == "Bearer test-key"


def test_thousands_in_flight_on_one_loop_all_answer(make_lm: MakeLM) -> None:
    with SimLM(latency=0.05, record_requests=False) as sim:
        lm = make_lm(api_base=sim.openai_base)

        async def many() -> list[Any]:
            calls = [lm.acomplete([{"role": "user", "content": f"q{i}"}]) for i in range(300)]
            return await asyncio.gather(*calls)

        answers = run(many, lm)
    assert len(answers) == 300
    assert all(a.outputs for a in answers)


def test_429_with_retry_after_waits_then_succeeds(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.rate_limited(retry_after=0.4))
    lm = make_lm(api_base=sim_lm.openai_base)

    start = time.monotonic()
    response = run(lambda: lm.acomplete(MESSAGES), lm)

    assert response.outputs == ["2"]
    assert time.monotonic() - start >= 0.38  # the header's delay, not the 20 ms backoff
    assert lm.stats.retries == 1


def test_server_errors_resets_and_garbage_are_retried(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.server_error())
    sim_lm.inject(Fault.reset())
    sim_lm.inject(Fault.malformed_json())
    lm = make_lm(api_base=sim_lm.openai_base)

    assert run(lambda: lm.acomplete(MESSAGES), lm).outputs == ["2"]
    assert sim_lm.request_count == 4
    assert lm.stats.retries == 3


def test_client_errors_are_not_retried(make_lm: MakeLM) -> None:
    with SimLM(api_key="right") as sim:
        lm = make_lm(api_base=sim.openai_base, api_key="wrong")
        with pytest.raises(AuthenticationError) as caught:
            run(lambda: lm.acomplete(MESSAGES), lm)
        assert sim.request_count == 1
    assert "wrong" not in str(caught.value)
    assert lm.stats.failures == 1


def test_a_hang_past_the_timeout_raises_lm_timeout(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.hang(30.0), times=10)
    lm = make_lm(
        api_base=sim_lm.openai_base, retry_policy=RetryPolicy(max_retries=1, base_delay=0.0)
    )
    start = time.monotonic()
    with pytest.raises(LMTimeout, match=r"no answer within 0\.2s"):
        run(lambda: lm.acomplete(MESSAGES, timeout=0.2), lm)
    assert time.monotonic() - start < 15.0  # two 0.2 s attempts, not the 30 s hang
    assert sim_lm.request_count == 2


def test_the_lms_own_timeout_applies_without_a_per_call_one(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.hang(30.0), times=10)
    lm = make_lm(api_base=sim_lm.openai_base, timeout=0.2, retry_policy=RetryPolicy(max_retries=0))
    with pytest.raises(LMTimeout):
        run(lambda: lm.acomplete(MESSAGES), lm)


async def _acomplete_by(lm: LM, deadline: float) -> LMResponse:
    """The runtime's way of making a call with a deadline: prepare, arun, settle."""
    prepared = lm.prepare(MESSAGES, deadline=deadline)
    assert isinstance(prepared, PreparedCall)
    return lm.settle(prepared, await lm.arun(prepared))


def test_each_attempt_is_cut_to_the_deadline(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.hang(60.0))
    lm = make_lm(api_base=sim_lm.openai_base, timeout=90.0)
    start = time.monotonic()
    with pytest.raises(LMTimeout):
        run(lambda: _acomplete_by(lm, time.monotonic() + 0.4), lm)
    took = time.monotonic() - start
    assert 0.35 <= took < 20.0  # the deadline: not the 90 s timeout, not the 60 s hang


def test_a_retry_past_the_deadline_is_not_made(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.rate_limited(retry_after=60.0))
    lm = make_lm(api_base=sim_lm.openai_base)
    start = time.monotonic()
    with pytest.raises(RateLimited):
        run(lambda: _acomplete_by(lm, time.monotonic() + 30.0), lm)
    assert time.monotonic() - start < 15.0  # failed at once: no 60 s wait, no 30 s deadline
    assert sim_lm.request_count == 1


def test_a_cached_answer_makes_no_request(sim_lm: SimLM, make_lm: MakeLM) -> None:
    lm = make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=Cache(disk_path=None))

    async def twice() -> tuple[Any, Any]:
        return await lm.acomplete(MESSAGES), await lm.acomplete(MESSAGES)

    first, second = run(twice, lm)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.outputs == first.outputs
    assert sim_lm.request_count == 1


def test_n_is_emulated_for_a_provider_without_it(sim_lm: SimLM, make_lm: MakeLM) -> None:
    lm = make_lm("anthropic/claude-sim", api_base=sim_lm.anthropic_base)
    response = run(lambda: lm.acomplete(MESSAGES, n=3), lm)
    assert len(response.outputs) == 3
    assert sim_lm.request_count == 3


def test_a_refused_connection_is_a_connection_error(make_lm: MakeLM) -> None:
    with SimLM() as sim:
        base = sim.openai_base
    lm = make_lm(api_base=base, retry_policy=RetryPolicy(max_retries=1, base_delay=0.0))
    with pytest.raises(LMConnectionError, match="connection failed"):
        run(lambda: lm.acomplete(MESSAGES), lm)
    assert lm.stats.requests == 2


# Streaming.


async def _collect(lm: LM, **kw: Any) -> list[Any]:
    return [event async for event in lm.astream(MESSAGES, **kw)]


@pytest.mark.parametrize(
    ("model", "base_attr"),
    [("openai/sim-model", "openai_base"), ("anthropic/claude-sim", "anthropic_base")],
)
def test_astream_retries_before_the_first_delta(
    sim_lm: SimLM, make_lm: MakeLM, model: str, base_attr: str
) -> None:
    sim_lm.inject(Fault.server_error())
    sim_lm.inject(Fault.truncated(after_chunks=1))
    lm = make_lm(model, api_base=getattr(sim_lm, base_attr))

    events = run(lambda: _collect(lm), lm)

    assert "".join(e.text for e in events) == "2"
    assert events[-1].response is not None
    assert events[-1].response.outputs == ["2"]
    assert sim_lm.request_count == 3


def test_astream_cut_after_text_raises_and_is_not_retried(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(lambda req: "several words of text arrive here")
    sim_lm.inject(Fault.truncated(after_chunks=3))
    lm = make_lm(api_base=sim_lm.openai_base)
    received: list[str] = []

    async def consume() -> None:
        async for event in lm.astream(MESSAGES):
            received.append(event.text)

    with pytest.raises(LMConnectionError):
        run(consume, lm)
    assert received == ["several ", "words "]
    assert sim_lm.request_count == 1


def test_astream_client_error_is_raised(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.inject(Fault.context_window(), times=5)
    lm = make_lm("anthropic/claude-sim", api_base=sim_lm.anthropic_base)
    with pytest.raises(ContextWindowExceeded, match="prompt is too long"):
        run(lambda: _collect(lm), lm)
    assert sim_lm.request_count == 1


def test_astream_answers_a_cached_call_from_the_cache(sim_lm: SimLM, make_lm: MakeLM) -> None:
    lm = make_lm(api_base=sim_lm.openai_base, cache=True, cache_store=Cache(disk_path=None))
    run(lambda: _collect(lm), lm)
    events = run(lambda: _collect(lm), lm)
    assert events[-1].response is not None
    assert events[-1].response.cache_hit
    assert sim_lm.request_count == 1


# TLS and proxies: the same options as the sync transport.


class _CompletionHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(
            {
                "model": "tls",
                "choices": [{"message": {"content": "over TLS"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@contextlib.contextmanager
def _tls_origin(tls: tuple[str, str]) -> Iterator[str]:
    """An HTTPS chat server on loopback (certificate for 127.0.0.1); its OpenAI base."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CompletionHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="test-tls-origin")
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def tls(tmp_path: Any) -> tuple[str, str]:
    return _self_signed(tmp_path)


def test_tls_verifies_against_the_given_ca_bundle(
    tls: tuple[str, str], make_lm: MakeLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _tls_origin(tls) as base:
        trusting = make_lm(api_base=base, verify=tls[0])
        assert run(lambda: trusting.acomplete(MESSAGES), trusting).outputs == ["over TLS"]
        default = make_lm(api_base=base, retry_policy=RetryPolicy(max_retries=0))
        with pytest.raises(LMConnectionError, match=r"(?i)certificate"):
            run(lambda: default.acomplete(MESSAGES), default)


def test_http_goes_through_the_environments_proxy_with_its_credentials(
    sim_lm: SimLM, make_lm: MakeLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _ProxyServer() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://us%20er:p%40ss@"))
        lm = make_lm(api_base=sim_lm.openai_base)
        assert run(lambda: lm.acomplete(MESSAGES), lm).outputs == ["2"]
        events = run(lambda: _collect(lm), lm)
    assert events[-1].response is not None
    expected = "Basic " + base64.b64encode(b"us er:p@ss").decode()
    endpoint = sim_lm.openai_base + "/chat/completions"
    assert proxy.seen == [_Seen("POST", endpoint, expected)] * 2
    assert "proxy-authorization" not in sim_lm.requests[-1].headers


def test_https_is_tunnelled_and_no_proxy_is_honoured(
    sim_lm: SimLM, tls: tuple[str, str], make_lm: MakeLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _ProxyServer() as proxy, _tls_origin(tls) as base:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", f"127.0.0.1:{sim_lm.port}")
        lm = make_lm(api_base=base, verify=tls[0])
        assert run(lambda: lm.acomplete(MESSAGES), lm).outputs == ["over TLS"]
        direct = make_lm(api_base=sim_lm.openai_base)
        assert run(lambda: direct.acomplete(MESSAGES), direct).outputs == ["2"]
        ignoring = make_lm(api_base=base, verify=tls[0], trust_env=False)
        assert run(lambda: ignoring.acomplete(MESSAGES), ignoring).outputs == ["over TLS"]
    assert proxy.seen == [_Seen("CONNECT", base.removeprefix("https://").removesuffix("/v1"), None)]
