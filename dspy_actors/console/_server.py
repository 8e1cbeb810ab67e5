"""The console's HTTP side: a Starlette app serving the page, its JSON API, a server-sent
event stream of the sections that changed, and ``/metrics``.

Security, for every route: a token is required (``?token=`` once, which sets an HttpOnly
SameSite=Strict cookie and redirects to the bare URL; or the cookie; or ``Authorization:
Bearer <token>`` for scripts). A mutating request authenticated by the cookie must also
carry ``X-CSRF-Token`` (the page reads it from its own HTML, which another site cannot) and,
if the browser sends an ``Origin``, come from this console's own origin. Every JSON answer
passes through :func:`dspy_actors.redaction.redact_value`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from dspy_actors.console import _app_view as app_view
from dspy_actors.console._state import SECTIONS, ConsoleState
from dspy_actors.redaction import get_logger, redact_value

if TYPE_CHECKING:
    from dspy_actors.runtime.app import App

__all__ = ["COOKIE", "Hub", "build_asgi_app", "csrf_token_for"]

COOKIE = "dspy_actors_console"
_log = get_logger("dspy_actors.console")
_STATIC = {"console.js": "text/javascript", "console.css": "text/css"}
# How long an SSE stream may stay silent before a comment keeps it open through proxies.
_KEEPALIVE_S = 15.0
# Changes are gathered this long before one push: many calls a second make one message.
_COALESCE_S = 0.1
# How often the server looks whether module calls or LM requests ended (they are counted,
# not evented).
_CALLS_EVERY_S = 1.0


def csrf_token_for(token: str) -> str:
    """The CSRF token of a console token (derived, so it needs no storage)."""
    return hmac.new(token.encode(), b"dspy-actors-console-csrf", hashlib.sha256).hexdigest()


class Hub:
    """Fans the sections that changed out to every open event stream.

    ``mark(section)`` is called from any thread (the event bus's); it wakes the server's
    loop at most once per batch. Each stream has a bounded queue: a client too slow to take
    its messages is dropped (its browser reconnects and starts from a fresh snapshot).
    """

    def __init__(self, state_ref: Callable[[], ConsoleState]) -> None:
        self._state_ref = state_ref
        self._dirty: set[str] = set()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._clients: set[asyncio.Queue[str | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()

    @property
    def closing(self) -> bool:
        """True once :meth:`stop` was called (streams end, the broadcaster returns)."""
        return self._closing.is_set()

    def mark(self, section: str) -> None:
        with self._lock:
            self._dirty.add(section)
            if self._scheduled or self._loop is None or self._wake is None:
                return
            self._scheduled = True
            loop, wake = self._loop, self._wake
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:
            pass  # the server's loop is closed: the console is stopping

    async def run(self) -> None:
        """The broadcaster: started with the server, ends when it stops."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        looked = time.monotonic()
        while not self.closing:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=_CALLS_EVERY_S)
            except TimeoutError:
                pass
            if time.monotonic() - looked >= _CALLS_EVERY_S:
                # Module calls and LM requests send no event: look whether any ended, at
                # this rate (and only while someone watches).
                looked = time.monotonic()
                if self._clients:
                    state = self._state_ref()
                    if state.calls_changed():
                        self.mark("programs")
                    if state.requests_changed():
                        self.mark("deployments")
            if not self._wake.is_set():
                continue
            if self._closing.is_set():
                break
            await asyncio.sleep(_COALESCE_S)
            self._wake.clear()
            with self._lock:
                dirty, self._dirty = self._dirty, set()
                self._scheduled = False
            if not self._clients or not dirty:
                continue
            state = self._state_ref()
            names = [name for name in SECTIONS if name in dirty]
            rendered = await asyncio.to_thread(_render, state, names)
            for name, data in rendered:
                self.broadcast(_sse("section", {"name": name, "data": data}))

    def broadcast(self, message: str) -> None:
        for queue in list(self._clients):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # Too slow: end its stream (it reconnects and starts from a snapshot).
                self._clients.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)

    def open_stream(self) -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=256)
        self._clients.add(queue)
        return queue

    def close_stream(self, queue: asyncio.Queue[str | None]) -> None:
        self._clients.discard(queue)

    def stop(self) -> None:
        self._closing.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)  # the broadcaster ends now, not in 1 s
            except RuntimeError:
                pass  # its loop has ended already
        for queue in list(self._clients):
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                pass
        self._clients.clear()


def _render(state: ConsoleState, names: list[str]) -> list[tuple[str, Any]]:
    return [(name, state.section(name)) for name in names]


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=repr)}\n\n"


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(redact_value(data), status_code=status)


def build_asgi_app(
    app: App,
    state: ConsoleState,
    hub: Hub,
    token: str,
    metrics_text: Callable[[], tuple[bytes, str]] | None,
) -> Starlette:
    """The console's Starlette app for ``app`` (see the module docstring)."""
    csrf = csrf_token_for(token)

    def authenticated(request: Request) -> str | None:
        """How the request proved it holds the token ("cookie" or "bearer"), or None."""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and hmac.compare_digest(
            header[7:].strip().encode(), token.encode()
        ):
            return "bearer"
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), token.encode()):
            return "cookie"
        return None

    def refused() -> Response:
        return PlainTextResponse(
            "401: this console needs its token: open the URL printed when it started "
            "(…/?token=...), or send 'Authorization: Bearer <token>'",
            status_code=401,
        )

    def mutation_refused(request: Request, via: str) -> Response | None:
        if via == "bearer":
            return None  # a browser never adds this header by itself: no cross-site risk
        if not hmac.compare_digest(request.headers.get("x-csrf-token", "").encode(), csrf.encode()):
            return PlainTextResponse(
                "403: missing or wrong X-CSRF-Token header (take it from the page's "
                "<meta name='csrf-token'>)",
                status_code=403,
            )
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return PlainTextResponse(
                f"403: cross-origin request from {origin!r} refused", status_code=403
            )
        return None

    async def index(request: Request) -> Response:
        given = request.query_params.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), token.encode()):
                return refused()
            # Trade the token in the URL for a cookie, and drop it from the address bar.
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            return response
        if authenticated(request) is None:
            return refused()
        page = resources.files("dspy_actors.console").joinpath("static/index.html").read_text()
        page = page.replace("{{csrf}}", csrf).replace("{{app}}", _html(app.name))
        return Response(page, media_type="text/html", headers=_NO_STORE)

    async def static(request: Request) -> Response:
        if authenticated(request) is None:
            return refused()
        name = request.path_params["name"]
        if name not in _STATIC:
            return PlainTextResponse(f"404: no static file {name!r}", status_code=404)
        body = resources.files("dspy_actors.console").joinpath(f"static/{name}").read_bytes()
        return Response(body, media_type=_STATIC[name], headers=_NO_STORE)

    async def api_state(request: Request) -> Response:
        if authenticated(request) is None:
            return refused()
        return _json(await asyncio.to_thread(state.snapshot))

    async def api_events(request: Request) -> Response:
        if authenticated(request) is None:
            return refused()
        if hub.closing:  # (no snapshot to render for a stream that would end at once)
            return PlainTextResponse("503: the console is stopping", status_code=503)
        queue = hub.open_stream()
        first = await asyncio.to_thread(state.snapshot)

        async def stream() -> AsyncIterator[str]:
            try:
                yield _sse("snapshot", redact_value(first))
                while not hub.closing:
                    try:
                        message = await asyncio.wait_for(queue.get(), timeout=_KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if message is None:
                        return
                    yield message
            finally:
                hub.close_stream(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={**_NO_STORE, "X-Accel-Buffering": "no"},
        )

    async def api_dead_letter(request: Request) -> Response:
        if authenticated(request) is None:
            return refused()
        letter_id = request.path_params["letter_id"]
        detail = await asyncio.to_thread(app_view.dead_letter_detail, app, letter_id)
        if detail is None:
            return _json({"error": f"no dead letter {letter_id!r}"}, 404)
        return _json(detail)

    async def act(request: Request, action: str, target: str, run: Callable[[], Any]) -> Response:
        via = authenticated(request)
        if via is None:
            return refused()
        refusal = mutation_refused(request, via)
        if refusal is not None:
            return refusal
        who = request.headers.get("x-console-user", "").strip()[:80] or "operator"
        client = request.client.host if request.client else "?"
        started = time.time()
        try:
            outcome = await asyncio.to_thread(run)
            ok = True
        except KeyError as error:
            return _json({"error": str(error.args[0] if error.args else error)}, 404)
        except Exception as error:
            outcome, ok = app_view.error_text(error), False
        try:  # kept in the app's store too: the log survives a restart
            await asyncio.to_thread(
                app_view.record_action, app, action=action, target=target, who=who, via=via,
                client=client, when=started, ok=ok, outcome=outcome,
            )  # fmt: skip
        except Exception as error:
            _log.warning("console.action_not_kept", action=action, error=type(error).__name__)
        entry = state.record(
            "action",
            f"{who} ({via} from {client}): {action} {target}: "
            + ("ok" if ok else "failed")
            + f": {outcome}",
            action=action,
            target=target,
            who=who,
            via=via,
            client=client,
            when=started,
            ok=ok,
            outcome=outcome,
        )
        return _json(entry, 200 if ok else 500)

    async def replay(request: Request) -> Response:
        letter_id = request.path_params["letter_id"]

        def run() -> str:
            # The replayed call is bounded by the program's call timeout.
            answer = app.replay_dead_letter(letter_id)
            hub.mark("dead_letters")
            return app_view.outcome_text(answer)

        return await act(request, "replay", letter_id, run)

    async def discard(request: Request) -> Response:
        letter_id = request.path_params["letter_id"]

        def run() -> str:
            if not app_view.discard_dead_letter(app, letter_id):
                raise KeyError(f"no dead letter {letter_id!r}")
            hub.mark("dead_letters")
            return "discarded"

        return await act(request, "discard", letter_id, run)

    async def cancel_run(request: Request) -> Response:
        from dspy_actors.runtime.runs import cancel_run as cancel

        run_id = request.path_params["run_id"]

        def run() -> str:
            if not cancel(app, run_id):
                raise KeyError(f"no running run {run_id!r}")
            hub.mark("runs")
            return "cancel requested"

        return await act(request, "cancel", run_id, run)

    async def actions(request: Request) -> Response:
        if authenticated(request) is None:
            return refused()
        return _json(await asyncio.to_thread(app_view.action_log, app))

    async def metrics(request: Request) -> Response:
        if authenticated(request) is None:
            return refused()
        if metrics_text is None:
            return PlainTextResponse("404: metrics are off for this console", status_code=404)
        body, content_type = await asyncio.to_thread(metrics_text)
        return Response(body, media_type=content_type)

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/api/state", api_state),
        Route("/api/events", api_events),
        Route("/api/actions", actions),
        Route("/api/dead_letters/{letter_id}", api_dead_letter),
        Route("/api/dead_letters/{letter_id}/replay", replay, methods=["POST"]),
        Route("/api/dead_letters/{letter_id}/discard", discard, methods=["POST"]),
        Route("/api/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes)


_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _html(text: str) -> str:
    import html

    return html.escape(text)
