"""The live console: a web page served from a running app, updated over server-sent events.

    with dsa.start(lm=lm) as app, app.console(port=8765) as console:
        print(console.url)        # http://127.0.0.1:8765/?token=... (printed once at start)

It shows the supervision tree, the served programs, the LM deployments, runs and dead
letters, and serves ``/metrics`` (Prometheus). See docs/observability.md.
"""

from __future__ import annotations

import secrets
import sys
import threading
from typing import TYPE_CHECKING, Self, TextIO

from dspy_actors._stop_hooks import forget_stop_hook, on_stop
from dspy_actors.console._server import COOKIE, Hub, build_asgi_app, csrf_token_for
from dspy_actors.console._state import SECTIONS, ConsoleState

if TYPE_CHECKING:
    from dspy_actors.metrics import AppMetrics
    from dspy_actors.runtime.app import App

__all__ = ["COOKIE", "SECTIONS", "Console", "start_console"]

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


class Console:
    """A running console; stop it with :meth:`stop` (or leave its ``with`` block). The app
    stops its consoles when it stops."""

    def __init__(
        self,
        app: App,
        *,
        host: str,
        port: int,
        token: str | None,
        metrics: bool,
        announce: TextIO | None,
    ) -> None:
        import uvicorn

        self.app = app
        self.host = host
        self.token = token or secrets.token_urlsafe(24)
        self.csrf_token = csrf_token_for(self.token)
        self.metrics: AppMetrics | None = None
        if metrics:
            from dspy_actors.metrics import app_metrics

            self.metrics = app_metrics(app)
        self._hub = Hub(lambda: self.state)
        self.state = ConsoleState(app, on_change=self._hub.mark)
        metrics_text = None if self.metrics is None else self.metrics.exposition
        asgi = build_asgi_app(app, self.state, self._hub, self.token, metrics_text)
        hub = self._hub
        config = uvicorn.Config(
            asgi,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._serve, args=(hub,), name=f"{app.name}-console", daemon=True
        )
        self._error: BaseException | None = None
        self._thread.start()
        if not self._wait_started(_START_TIMEOUT_S):
            self.stop()
            raise RuntimeError(
                f"the console of app {app.name!r} did not start on {host}:{port} within "
                f"{_START_TIMEOUT_S:.0f} s" + (f": {self._error}" if self._error else "")
            )
        sockets = self._server.servers[0].sockets
        self.port = int(sockets[0].getsockname()[1])
        if announce is not None:
            print(f"dspy-actors console: {self.url}", file=announce, flush=True)

    def _serve(self, hub: Hub) -> None:
        import asyncio

        async def main() -> None:
            broadcaster = asyncio.create_task(hub.run())
            try:
                await self._server.serve()
            finally:
                hub.stop()
                await asyncio.wait_for(broadcaster, timeout=_STOP_TIMEOUT_S)

        try:
            asyncio.run(main())
        except BaseException as error:  # reported by __init__ (start) or ignored (stop)
            self._error = error

    def _wait_started(self, timeout: float) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server.started:
                return True
            if not self._thread.is_alive():
                return False
            self._thread.join(0.02)
        return False

    @property
    def url(self) -> str:
        """The page's address with the token (it sets a cookie and drops the token)."""
        return f"{self.base_url}/?token={self.token}"

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop serving, end the event streams, unsubscribe; idempotent."""
        self._hub.stop()
        self._server.should_exit = True
        self._thread.join(_STOP_TIMEOUT_S)
        self.state.close()
        forget_stop_hook(self.app, self.stop)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Console({self.base_url!r}, app={self.app.name!r})"


def start_console(
    app: App,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
    metrics: bool = True,
    announce: TextIO | None = sys.stderr,
) -> Console:
    """Serve ``app``'s console on ``host:port`` (0: any free port); see :class:`Console`.

    ``token``: the secret every page and API call needs (default: generated). ``announce``:
    where the URL with the token is printed, once (None: not printed; read ``.url``).
    """
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"console port must be an int in 0..65535, got {port!r}")
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        raise ValueError("a console token is a string of at least 16 characters")
    console = Console(app, host=host, port=port, token=token, metrics=metrics, announce=announce)
    on_stop(app, console.stop)
    return console
