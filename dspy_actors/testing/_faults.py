"""Faults the simulated LM server can inject, and the plan that decides when.

A :class:`Fault` says *what* goes wrong with one request (an HTTP error, a hang, a reset
connection, a garbage body, a truncated stream, an unparseable completion). A
:class:`FaultRule` says *when*: every request, the next ``times`` requests, a random
fraction (``rate``), only requests matching a predicate, or only inside a time window
measured from the server's start ("down from t=2 s to t=4 s"). A :class:`FaultPlan` is an
ordered, thread-safe list of rules; the first rule that fires decides the request's fault.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from datetime import datetime

    from dspy_actors.testing.sim_lm import SimRequest

FaultKind = Literal["status", "hang", "reset", "malformed_json", "truncated", "unparseable"]

# What an error status means, so each provider's own error body can be generated for it.
ErrorCode = Literal[
    "rate_limit", "server", "overloaded", "bad_request", "auth", "context_window", "not_found"
]

_DEFAULT_CODE_BY_STATUS: dict[int, ErrorCode] = {
    400: "bad_request",
    401: "auth",
    403: "auth",
    404: "not_found",
    429: "rate_limit",
    529: "overloaded",
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One way a request can go wrong. Build it with the class methods, e.g.
    ``Fault.rate_limited(retry_after=1)`` or ``Fault.hang(30)``."""

    kind: FaultKind
    status: int = 500
    error: ErrorCode = "server"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None  # an explicit JSON error body; None = the provider's usual body
    message: str | None = None
    seconds: float = 0.0  # hang duration
    after_chunks: int = 1  # truncated streams: frames sent before the connection drops
    text: str = "I am not sure what you mean."  # unparseable completion text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """A fault from data: ``{"type": <constructor>, **its arguments}``, e.g.
        ``{"type": "rate_limited", "retry_after": 1}`` or ``{"type": "hang", "seconds": 30}``.
        Types: status_error (or status), rate_limited, server_error, bad_request,
        unauthorized, context_window, hang, reset, malformed_json, truncated, unparseable."""
        args = dict(data)
        kind = str(args.pop("type", ""))
        kind = "status_error" if kind == "status" else kind
        if kind not in _CONSTRUCTORS:
            raise ValueError(f"unknown fault type {kind!r}; known: {sorted(_CONSTRUCTORS)}")
        if kind == "status_error" and "status" in args:
            return cls.status_error(int(args.pop("status")), **args)
        factory: Callable[..., Fault] = getattr(cls, kind)
        return factory(**args)

    @property
    def name(self) -> str:
        """A short label used by the server's counters, e.g. ``"status_429"``."""
        return f"status_{self.status}" if self.kind == "status" else self.kind

    @classmethod
    def status_error(
        cls,
        status: int,
        *,
        error: ErrorCode | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        message: str | None = None,
    ) -> Fault:
        """Answer with HTTP ``status`` and the provider's error body for it."""
        code = error or _DEFAULT_CODE_BY_STATUS.get(status, "server")
        return cls(
            "status",
            status=status,
            error=code,
            headers=dict(headers or {}),
            body=body,
            message=message,
        )

    @classmethod
    def rate_limited(
        cls,
        retry_after: float | None = None,
        *,
        retry_after_ms: float | None = None,
        retry_after_date: datetime | None = None,
    ) -> Fault:
        """429 with ``Retry-After`` (seconds or an HTTP date) and/or ``retry-after-ms``."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = _format_seconds(retry_after)
        if retry_after_date is not None:
            headers["Retry-After"] = format_datetime(retry_after_date, usegmt=True)
        if retry_after_ms is not None:
            headers["retry-after-ms"] = _format_seconds(retry_after_ms)
        return cls.status_error(429, error="rate_limit", headers=headers)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        return cls.status_error(status, error="overloaded" if status == 529 else "server")

    @classmethod
    def bad_request(cls, message: str = "Invalid request.") -> Fault:
        return cls.status_error(400, error="bad_request", message=message)

    @classmethod
    def unauthorized(cls) -> Fault:
        return cls.status_error(401, error="auth")

    @classmethod
    def context_window(cls) -> Fault:
        """400 with the provider's own "context length exceeded" error body."""
        return cls.status_error(400, error="context_window")

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Fault:
        """Say nothing for ``seconds`` (cut short by ``SimLM.stop()``), then drop the
        connection without an answer."""
        return cls("hang", seconds=seconds)

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection abruptly (TCP reset) without any response."""
        return cls("reset")

    @classmethod
    def malformed_json(cls) -> Fault:
        """200 OK whose JSON body is garbage."""
        return cls("malformed_json")

    @classmethod
    def truncated(cls, after_chunks: int = 1) -> Fault:
        """Send part of the response (``after_chunks`` SSE frames when streaming, half the
        body otherwise), then drop the connection."""
        return cls("truncated", after_chunks=after_chunks)

    @classmethod
    def unparseable(cls, text: str = "I am not sure what you mean.") -> Fault:
        """A well-formed response whose completion text follows no adapter format."""
        return cls("unparseable", text=text)


_CONSTRUCTORS = frozenset(
    {
        "status_error",
        "rate_limited",
        "server_error",
        "bad_request",
        "unauthorized",
        "context_window",
        "hang",
        "reset",
        "malformed_json",
        "truncated",
        "unparseable",
    }
)


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(slots=True)
class FaultRule:
    """When ``fault`` fires: with probability ``rate``, at most ``times`` times (None =
    unlimited), only for requests where ``match`` is true, and only between ``start_s``
    and ``end_s`` seconds after the server started (None = unbounded)."""

    fault: Fault
    rate: float = 1.0
    times: int | None = None
    match: Callable[[SimRequest], bool] | None = None
    start_s: float | None = None
    end_s: float | None = None
    fired: int = 0

    def eligible(self, request: SimRequest, elapsed_s: float) -> bool:
        """Whether the rule may fire for this request (uses left, time window, match)."""
        if self.times is not None and self.fired >= self.times:
            return False
        if self.start_s is not None and elapsed_s < self.start_s:
            return False
        if self.end_s is not None and elapsed_s >= self.end_s:
            return False
        return self.match is None or bool(self.match(request))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        """A rule from data, e.g. ``{"fault": {"type": "server_error"}, "rate": 0.2}``.

        Data cannot hold functions, so matching is by ``model``, ``provider`` and/or
        ``prompt_contains`` (a substring of the last user message)."""
        known = {
            "fault",
            "rate",
            "times",
            "start_s",
            "end_s",
            "model",
            "provider",
            "prompt_contains",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault rule key(s) {unknown}; known: {sorted(known)}")
        if "fault" not in data:
            raise ValueError(f"fault rule {dict(data)!r} has no 'fault'")
        model, provider = data.get("model"), data.get("provider")
        needle = data.get("prompt_contains")
        match: Callable[[SimRequest], bool] | None = None
        if model is not None or provider is not None or needle is not None:

            def match(request: SimRequest) -> bool:
                return (
                    (model is None or request.model == model)
                    and (provider is None or request.provider == provider)
                    and (needle is None or str(needle) in request.last_user_text)
                )

        return cls(
            fault=Fault.from_dict(data["fault"]),
            rate=float(data.get("rate", 1.0)),
            times=None if data.get("times") is None else int(data["times"]),
            match=match,
            start_s=None if data.get("start_s") is None else float(data["start_s"]),
            end_s=None if data.get("end_s") is None else float(data["end_s"]),
        )


class FaultPlan:
    """An ordered, thread-safe list of fault rules deciding each request's fault.

    Rules are tried in order. A rule with ``rate`` 1 fires whenever it is eligible. Rules
    with a lower rate share *one* random draw per request, each owning its own slice of
    it, so rates of different rules add up instead of shadowing each other: rules at 0.2
    (500s) and 0.1 (429s) fail 20% and 10% of the requests, 30% in all.
    """

    def __init__(self, rules: list[FaultRule] | None = None, *, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = list(rules or [])
        self._rng = random.Random(seed)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultPlan:
        """A plan from data: ``{"seed": 1, "rules": [{"fault": {...}, "rate": 0.2}, ...]}``."""
        rules = [FaultRule.from_dict(r) for r in data.get("rules") or []]
        seed = data.get("seed")
        return cls(rules, seed=None if seed is None else int(seed))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FaultPlan:
        """A plan from a JSON file, or a YAML file (``.yaml``/``.yml``, needs PyYAML)."""
        text = Path(path).read_text(encoding="utf-8")
        if str(path).endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError as exc:  # pragma: no cover - PyYAML ships with the dev extra
                raise RuntimeError(f"reading {path} needs PyYAML (pip install pyyaml)") from exc
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a fault plan is a mapping with 'rules', got {data!r}")
        return cls.from_dict(data)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def pending(self) -> int:
        """How many more times the count-limited rules will still fire."""
        with self._lock:
            return sum(max(0, r.times - r.fired) for r in self._rules if r.times is not None)

    def next_fault(self, request: SimRequest, elapsed_s: float) -> Fault | None:
        """The fault for this request, consuming one use of the rule that fires, or None."""
        with self._lock:
            if not self._rules:
                return None
            draw = self._rng.random()
            floor = 0.0
            for rule in self._rules:
                if not rule.eligible(request, elapsed_s):
                    continue
                if rule.rate >= 1.0 or floor <= draw < floor + rule.rate:
                    rule.fired += 1
                    return rule.fault
                floor += rule.rate
            return None
