"""The process-wide LM history: the last calls of every LM, for ``inspect_history``.

Each LM keeps its own history too (``lm.history``, ``lm.inspect_history(n)``); this one
holds the calls of all of them in the order they finished, as DSPy's global history does.
Entries hold the messages and outputs (never an API key: it is only in request headers).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

__all__ = ["clear_history", "format_history", "global_history", "inspect_history", "record_history"]

MAX_GLOBAL_HISTORY = 10_000  # DSPy's bound on its global history

_lock = threading.Lock()
_history: deque[dict[str, Any]] = deque(maxlen=MAX_GLOBAL_HISTORY)


def record_history(entry: dict[str, Any]) -> None:
    """Keep one finished call (LMs call this)."""
    with _lock:
        _history.append(entry)


def global_history() -> list[dict[str, Any]]:
    """Every kept call, oldest first."""
    with _lock:
        return list(_history)


def clear_history() -> None:
    with _lock:
        _history.clear()


def inspect_history(n: int = 1) -> str:
    """Print the last ``n`` LM calls of any LM in this process (messages by role, then
    outputs), and return the same text."""
    entries = global_history()
    text = format_history(entries[-n:] if n > 0 else [])
    print(text)
    return text


def format_history(entries: Sequence[dict[str, Any]]) -> str:
    """History entries formatted for reading."""
    blocks: list[str] = []
    for entry in entries:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(entry["timestamp"]))
        hit = " (cache hit)" if entry["cache_hit"] else ""
        lines = [f"[{when}] {entry['model']}{hit}"]
        for msg in entry["messages"]:
            lines.append(f"\n{str(msg.get('role', '?')).capitalize()} message:\n")
            lines.append(_content_text(msg.get("content")))
        for i, out in enumerate(entry["outputs"]):
            label = "Response" if len(entry["outputs"]) == 1 else f"Response {i + 1}"
            lines.append(f"\n{label}:\n\n{out}")
        blocks.append("\n".join(lines))
    return "\n\n\n".join(blocks)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    out: list[str] = []
    for part in content or ():
        ptype = part.get("type")
        if ptype == "text":
            out.append(str(part.get("text", "")))
        elif ptype == "image_url":
            out.append("<image_url>")
        else:
            out.append(f"<{ptype}>")
    return "\n".join(out)
