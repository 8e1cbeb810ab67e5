"""The console's reads of (and few actions on) a running app, in one place.

Everything the console needs from the app beyond its events: the served programs with
their versions, usage and calls in flight; the LM deployments' breakers, queue, rate limits
and retries; dead letters, discarding one, and the operators' action log (kept in the
dead-letter store, so it survives a restart). Kept together so a change in the app's
structure is ported here once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dspy_actors.redaction import exception_text, redact_value
from dspy_actors.runtime._lm_pool import deployment_key
from dspy_actors.runtime._poison import fingerprint
from dspy_actors.runtime._served import PipelineProgram

if TYPE_CHECKING:
    from dspy_actors.runtime._served import ServedProgram
    from dspy_actors.runtime.app import App

__all__ = [
    "action_log",
    "call_end_path",
    "dead_letter_detail",
    "dead_letter_summaries",
    "deployments",
    "discard_dead_letter",
    "record_action",
    "served_programs",
]


def _programs(app: App) -> list[ServedProgram]:
    return app.programs.served()


def served_programs(app: App) -> list[dict[str, Any]]:
    """Each served program: name, kind, version, calls in flight, usage and cost."""
    out = []
    for program in _programs(app):
        usage = program.usage()
        entry_path = program.name
        if isinstance(program, PipelineProgram) and program.template:
            entry_path = f"{program.name}.{program.template[0][0]}"
        out.append(
            {
                "name": program.name,
                "kind": "pipeline" if isinstance(program, PipelineProgram) else "module",
                "version": program.version,
                "entry_path": entry_path,
                "in_flight": program.gate.in_flight(program.version),
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "lm_calls": usage.calls,
                "cost_usd": usage.cost,
            }
        )
    return out


def call_end_path(app: App, name: str) -> str:
    """The module path whose end ends a call of program ``name``: its root module, or a
    pipeline's last step."""
    program = app.programs.find(name)
    if isinstance(program, PipelineProgram) and program.template:
        return f"{name}.{program.template[-1][0]}"
    return name


def _lms(app: App) -> list[Any]:
    return [lm for lm in (app.lm, *app.config.fallbacks) if lm is not None]


def deployments(app: App, transitions: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each LM deployment (the app's LM, its fallbacks, any other that had requests or
    breaker transitions) with its breaker, rate limit, retries, whether it is a fallback,
    and its requests (ended, errors by type, cache hits: the app's ``lm_counts``) and
    requests in flight (the dispatcher's); ``transitions``: its breaker's recent state
    changes, as events told them, per deployment key."""
    dispatcher = app.dispatcher
    pool = dispatcher.stats()
    busy: dict[str, int] = pool["busy_by_deployment"]
    counted = app.lm_counts.totals()
    lms = {deployment_key(lm): lm for lm in _lms(app)}
    fallback_keys = {deployment_key(lm) for lm in app.config.fallbacks}
    out = []
    for key in sorted({*lms, *counted, *transitions}):
        breaker = dispatcher.breaker(key).snapshot()
        limiter = dispatcher.config.rate_limits.get(key)
        lm = lms.get(key)
        stats = lm.stats if lm is not None else None
        requests = counted.get(key)
        out.append(
            {
                "deployment": key,
                "model": None if lm is None else lm.model,
                "fallback": key in fallback_keys,
                "breaker": {
                    "state": breaker.state,
                    "failure_rate": breaker.failure_rate,
                    "slow_rate": breaker.slow_rate,
                    "retry_after": breaker.retry_after,
                    "transitions": breaker.transitions,
                },
                "rate_limit": None
                if limiter is None
                else {
                    "requests_per_second": limiter.requests_per_second,
                    "tokens_per_minute": limiter.tokens_per_minute,
                    "wait_s": round(limiter.time_until_available(), 3),
                },
                "retries": None if stats is None else stats.retries,
                "http_requests": None if stats is None else stats.requests,
                "requests": 0 if requests is None else requests.requests,
                "in_flight": busy.get(key, 0),
                "cache_hits": 0 if requests is None else requests.cache_hits,
                "errors": {} if requests is None else requests.errors,
                "transitions": transitions.get(key, []),
                "pool_queue": pool["queued"],
                "pool_in_flight": pool["busy"],
            }
        )
    return out


def _letter_dict(letter: Any, *, detail: bool) -> dict[str, Any]:
    data = {
        "id": letter.id,
        "program": letter.program,
        "module_path": letter.module_path,
        "exception_type": letter.exception_type,
        "message": letter.message,
        "attempts": letter.attempts,
        "created_at": letter.created_at,
        "replayable": letter.replayable,
    }
    if detail:
        data["inputs"] = letter.inputs
        data["traceback"] = letter.traceback
    clean: dict[str, Any] = redact_value(data)
    return clean


def dead_letter_summaries(app: App) -> list[dict[str, Any]]:
    """The dead letters not yet replayed, newest first, without inputs and tracebacks."""
    letters = app.dead_letters()
    return [_letter_dict(letter, detail=False) for letter in reversed(letters)]


def dead_letter_detail(app: App, letter_id: str) -> dict[str, Any] | None:
    """One dead letter with its inputs and traceback (redacted), or None."""
    store = app.stores.dead_letters
    letter = None if store is None else store.get(letter_id)
    return None if letter is None else _letter_dict(letter, detail=True)


def discard_dead_letter(app: App, letter_id: str) -> bool:
    """Drop a dead letter without replaying it, and lift its quarantine (the input may
    be called again: if it still crashes, it is quarantined again). False if unknown."""
    store = app.stores.dead_letters
    letter = None if store is None else store.get(letter_id)
    if letter is None or store is None:
        return False
    app.poison.release(fingerprint(letter.program, letter.inputs))
    return store.remove(letter_id)


def record_action(
    app: App,
    *,
    action: str,
    target: str,
    who: str,
    via: str,
    client: str,
    when: float,
    ok: bool,
    outcome: str,
) -> bool:
    """Keep an operator's action in the app's store; False if the app has no store."""
    store = app.stores.dead_letters
    if store is None:
        return False
    store.record_action(
        action=action, target=target, who=who, via=via, client=client, at=when, ok=ok,
        outcome=outcome,
    )  # fmt: skip
    return True


def action_log(app: App, limit: int = 100) -> list[dict[str, Any]]:
    """The last ``limit`` operator actions kept in the app's store, oldest first, as the
    console's activity entries (kind "action")."""
    store = app.stores.dead_letters
    if store is None:
        return []
    return [
        {
            "kind": "action",
            "at": a.at,
            "when": a.at,
            "text": f"{a.who} ({a.via} from {a.client}): {a.action} {a.target}: "
            + ("ok" if a.ok else "failed")
            + f": {a.outcome}",
            "action": a.action,
            "target": a.target,
            "who": a.who,
            "via": a.via,
            "client": a.client,
            "ok": a.ok,
            "outcome": a.outcome,
        }
        for a in store.actions(limit)
    ]


def outcome_text(result: Any) -> str:
    """A replay's answer as one short line for the action log (redacted)."""
    text = repr(result)
    return str(redact_value(text if len(text) <= 300 else text[:297] + "..."))


def error_text(error: BaseException) -> str:
    return str(redact_value(exception_text(error, with_traceback=False)))
