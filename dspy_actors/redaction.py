"""Secrets never reach a log line, event, error message, traceback or stored file.

Two nets, used together by the logs, the event bus, dead letters and errors:

- **Known values.** Every API key an LM is given is registered (:func:`register_secret`);
  :func:`redact` replaces it in any text, in every form text can hold it: as is, without its
  surrounding whitespace, and escaped as ``repr``, JSON or a bytes ``repr`` print it (a key
  read with its trailing newline shows up as ``sk-...\\n``; a non-ASCII key as ``\\u2603`` or
  ``\\xe2\\x98\\x83``). A fragment of a long key (a message cut short) is replaced too.
- **Shapes.** Credentials nobody registered (a token a server echoes back, a header in an
  HTTP library's error): ``Bearer <token>``, ``Authorization: ...``, ``api_key=...`` and
  ``sk-...``-like tokens.

Tracebacks written to logs are plain (file, line, code) and redacted: never the frames'
local variables, which is where an ``Authorization`` header or a key would sit.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog

__all__ = [
    "MASK",
    "REDACTED",
    "clean_api_key",
    "exception_text",
    "get_logger",
    "install",
    "looks_like_secret_name",
    "redact",
    "redact_event_dict",
    "redact_value",
    "register_secret",
    "scrub_exception",
]

MASK = "***"
"""What a secret inside a text becomes."""
REDACTED = "<redacted>"
"""What the value under a secret-looking name (``api_key``, ``authorization``) becomes."""

# Keys shorter than this are placeholders ("sim", "k"), not credentials: replacing such
# short strings everywhere would mangle ordinary text.
_MIN_SECRET_CHARS = 8
# A key at least this long is also caught by its first or last _FRAGMENT_CHARS characters
# (a message or log line cut in the middle of the key).
_FRAGMENT_FROM_CHARS = 24
_FRAGMENT_CHARS = 16

_lock = threading.Lock()
_secrets: set[str] = set()
_known: re.Pattern[str] | None = None

_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Bearer <token>", as in an Authorization header (quoted, repr'd or plain).
    (re.compile(r"(?i)\b(bearer\s+)[^\s'\"\\,;)}\]]+"), r"\1" + MASK),
    # "Authorization: ...", "x-api-key=...", "api_key': '...'" and the like.
    (
        re.compile(
            r"(?i)\b((?:proxy-)?authorization|x-api-key|api[_-]?key|access[_-]?token|"
            r"secret[_-]?key|password)(['\"]?\s*[:=]\s*(?!bearer\s)b?['\"]?)[^\s'\"\\,;)}\]]+"
        ),
        r"\1\2" + MASK,
    ),
    # OpenAI/Anthropic-style keys: "sk-", "sk-proj-", "sk-ant-" and a long token.
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), "sk-" + MASK),
)

_SECRET_NAME = re.compile(
    r"(?:^|_|-)(?:api_?key|apikey|api_?token|authorization|auth_?token|access_?token|"
    r"secret(?:_?key)?|password|passwd|credentials?|cookie|set_?cookie|private_?key)$"
)


def register_secret(value: str | None) -> None:
    """Make ``value`` (an API key) unprintable: every later :func:`redact` replaces it.

    Safe to call many times with the same value; values shorter than 8 characters are
    ignored (they are placeholders, and masking them would mangle ordinary text)."""
    global _known
    if not value or len(value.strip()) < _MIN_SECRET_CHARS:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        variants: set[str] = set()
        for secret in _secrets:
            variants.update(_forms(secret))
        ordered = sorted((v for v in variants if v), key=len, reverse=True)
        _known = re.compile("|".join(re.escape(v) for v in ordered))


def _forms(secret: str) -> Iterable[str]:
    """The ways ``secret`` can appear inside text."""
    for value in {secret, secret.strip()}:
        yield value
        yield repr(value)[1:-1]
        yield json.dumps(value)[1:-1]
        yield json.dumps(value, ensure_ascii=False)[1:-1]
        yield repr(value.encode("utf-8", "surrogatepass"))[2:-1]
        yield value.encode("unicode_escape").decode("ascii")
    core = secret.strip()
    if len(core) >= _FRAGMENT_FROM_CHARS:
        yield core[:_FRAGMENT_CHARS]
        yield core[-_FRAGMENT_CHARS:]


def redact(text: str) -> str:
    """``text`` with every registered secret and every credential-shaped token masked."""
    if not text:
        return text
    known = _known
    if known is not None:
        text = known.sub(MASK, text)
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return text


def looks_like_secret_name(name: str) -> bool:
    """True if a field or mapping key with this name holds a credential (``api_key``,
    ``Authorization``, ``OPENAI_API_KEY``, ``db_password``, ...)."""
    return bool(_SECRET_NAME.search(name.lower().replace("-", "_")))


def redact_value(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with strings redacted and the values under secret-looking names
    replaced by ``"<redacted>"`` (mappings, lists and tuples, down to 50 levels; deeper
    containers are replaced by a marker rather than walked)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping | list | tuple) and _depth >= 50:
        return "<nested too deep to show>"
    if isinstance(value, Mapping):
        return {
            key: REDACTED
            if isinstance(key, str) and looks_like_secret_name(key)
            else redact_value(item, _depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        items = [redact_value(item, _depth + 1) for item in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "backslashreplace"))
    return value


def exception_text(error: BaseException, *, with_traceback: bool = True) -> str:
    """``error`` as text for a log or a record: type, message and (optionally) the plain
    traceback, redacted. Never the frames' local variables."""
    if with_traceback:
        text = "".join(traceback.format_exception(error))
    else:
        text = "".join(traceback.format_exception_only(error)).rstrip("\n")
    return redact(text)


def scrub_exception(error: BaseException) -> BaseException:
    """Redact, in place, the text arguments of ``error`` and of the exceptions chained to it
    (its cause and context): before an exception crosses to a caller who may print it.
    Returns ``error``. Best effort: an exception whose message is not made from its
    arguments keeps it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 20:
        seen.add(id(current))
        if any(isinstance(arg, str) for arg in current.args):
            try:
                current.args = tuple(
                    redact(arg) if isinstance(arg, str) else arg for arg in current.args
                )
            except (AttributeError, TypeError):
                pass
        current = current.__cause__ or current.__context__
    return error


def clean_api_key(key: str | None) -> str | None:
    """The key as an HTTP header can carry it: surrounding whitespace removed (a key read
    from a file keeps its newline). Raises ValueError, without showing the key, if what is
    left holds a character no header can carry (a key is printable ASCII)."""
    if key is None:
        return None
    register_secret(key)
    cleaned = key.strip()
    register_secret(cleaned)
    for index, char in enumerate(cleaned):
        if not "\x21" <= char <= "\x7e":
            raise ValueError(
                f"api_key has a character an HTTP header cannot carry at index {index} "
                f"(U+{ord(char):04X}); an API key is printable ASCII: check where it was read "
                "from (the key itself is not shown)"
            )
    return cleaned or None


# ------------------------------------------------------------------------------------ logs


def redact_event_dict(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> dict[str, Any]:
    """A structlog processor: every value redacted, and ``exc_info`` turned into a plain,
    redacted ``exception`` text (so no renderer can print the frames' locals)."""
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        error: BaseException | None = None
        if isinstance(exc_info, BaseException):
            error = exc_info
        elif isinstance(exc_info, tuple) and len(exc_info) == 3:
            error = exc_info[1]
        else:
            error = sys.exc_info()[1]
        if error is not None:
            event_dict["exception"] = exception_text(error)
    return {key: redact_value(value) for key, value in event_dict.items()}


def _redacting_chain(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Redact, then run the processors structlog is configured with now (its renderer
    included): the host's log format is kept, only the secrets and locals are gone."""
    result: Any = redact_event_dict(logger, method, event_dict)
    for processor in structlog.get_config()["processors"]:
        result = processor(logger, method, result)
    return result


def get_logger(name: str) -> Any:
    """A structlog logger like ``structlog.get_logger(name)`` whose lines are redacted and
    whose tracebacks carry no locals. The library's own loggers are made with it."""
    return structlog.wrap_logger(None, processors=[_redacting_chain], logger_factory_args=(name,))


# Loggers of the stdlib ``logging`` kind that the runtime's threads write to: Pykka's (an
# actor's unhandled exception, with its traceback) and the LM client's (retries).
_STDLIB_LOGGERS = ("pykka", "dspy_actors", "dspy_actors.lm", "supervisors")
_installed = False


class RedactingFilter(logging.Filter):
    """A ``logging`` filter: the record's message redacted, its traceback made plain (no
    locals: a handler such as rich's could print them) and redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error path
            return True
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = exception_text(record.exc_info[1]).rstrip("\n")
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install() -> None:
    """Redact what the runtime's dependencies log: supervision exit reasons (the
    ``supervisors`` package) and the stdlib loggers of Pykka and the LM client. Idempotent;
    called when the runtime is imported."""
    global _installed
    if _installed:
        return
    _installed = True
    import supervisors

    supervisors.set_reason_filter(redact)
    for name in _STDLIB_LOGGERS:
        logging.getLogger(name).addFilter(RedactingFilter())
