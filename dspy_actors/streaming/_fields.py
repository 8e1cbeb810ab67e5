"""Which output field an LM's streamed text belongs to, as the text arrives.

An adapter's answer is one text: ``[[ ## reasoning ## ]] ... [[ ## answer ## ]] ...
[[ ## completed ## ]]`` (ChatAdapter) or ``{"reasoning": "...", "answer": "..."}``
(JSONAdapter). :class:`FieldSplitter` is fed the text's deltas in order and returns
``(field, text, is_last)`` pieces: the text of each output field without its markers,
quotes or escapes, and once per field an ``is_last`` piece when the field has ended (the
next field began, or the answer ended). Text that might still turn out to be part of a
marker (``[[ ##`` split over two deltas, a ``\\u`` escape cut in half) is held back until
the next delta says what it is, so a consumer never sees marker fragments.

The format is recognised from the answer itself: a ``{`` first is JSON, anything else the
marker convention. Fields not asked for (``completed``) are dropped; with ``fields=None``
every field but ``completed`` is kept (a served predictor's signature may change per
call: ChainOfThought adds ``reasoning``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

__all__ = ["FieldPiece", "FieldSplitter"]

FieldPiece = tuple[str, str, bool]

_MARKER = re.compile(r"\[\[ ## (\w+) ## \]\]")
_MARKER_HEAD = "[[ ## "


def _held_back_from(text: str) -> int:
    """Where the tail of ``text`` that could still become a marker or trailing
    whitespace begins (``len(text)`` if nothing needs holding back)."""
    cut = len(text)
    start = text.rfind("[")
    if start != -1:
        tail = text[start - 1 :] if start > 0 and text[start - 1] == "[" else text[start:]
        tail_start = len(text) - len(tail)
        if _could_be_marker(tail):
            cut = tail_start
    stripped = len(text[:cut].rstrip())
    return min(cut, stripped)


def _could_be_marker(tail: str) -> bool:
    if len(tail) <= len(_MARKER_HEAD):
        return _MARKER_HEAD.startswith(tail)
    if not tail.startswith(_MARKER_HEAD):
        return False
    rest = tail[len(_MARKER_HEAD) :]
    return re.fullmatch(r"\w*( (#(# ?(\]\]?)?)?)?)?", rest) is not None


class _Accepts:
    """The output fields to keep: those named, or (None) every field but ``completed``."""

    def __init__(self, fields: Iterable[str] | None) -> None:
        self._fields = None if fields is None else set(fields)

    def __contains__(self, name: object) -> bool:
        return name != "completed" if self._fields is None else name in self._fields


class _MarkerSplitter:
    def __init__(self, fields: Iterable[str] | None) -> None:
        self._fields = _Accepts(fields)
        self._buffer = ""
        self._field: str | None = None
        self._started = False  # the current field has emitted non-space text

    def feed(self, text: str) -> list[FieldPiece]:
        self._buffer += text
        pieces: list[FieldPiece] = []
        while True:
            match = _MARKER.search(self._buffer)
            if match is None:
                break
            self._emit(self._buffer[: match.start()].rstrip(), pieces)
            self._end_field(pieces)
            name = match.group(1)
            self._field = name if name in self._fields else None
            self._started = False
            self._buffer = self._buffer[match.end() :]
        cut = _held_back_from(self._buffer)
        self._emit(self._buffer[:cut], pieces)
        self._buffer = self._buffer[cut:]
        return pieces

    def _emit(self, text: str, pieces: list[FieldPiece]) -> None:
        if self._field is None:
            return
        if not self._started:
            text = text.lstrip()
            if not text:
                return
            self._started = True
        if text:
            pieces.append((self._field, text, False))

    def _end_field(self, pieces: list[FieldPiece]) -> None:
        if self._field is not None:
            pieces.append((self._field, "", True))

    def close(self) -> list[FieldPiece]:
        pieces: list[FieldPiece] = []
        self._emit(self._buffer.rstrip(), pieces)
        self._buffer = ""
        self._end_field(pieces)
        self._field = None
        return pieces


class _JSONSplitter:
    """Top-level keys of one JSON object; a string value is decoded as it streams, any
    other value (number, list, object) is passed on as its JSON text."""

    def __init__(self, fields: Iterable[str] | None) -> None:
        self._fields = _Accepts(fields)
        self._state = "object"  # object, key, colon, value, string, raw, after
        self._key = ""
        self._field: str | None = None
        self._pending = ""  # an escape sequence cut between deltas
        self._depth = 0
        self._raw_in_string = False
        self._raw_escape = False
        self._raw_started = False
        self._raw_held = ""

    def feed(self, text: str) -> list[FieldPiece]:
        pieces: list[FieldPiece] = []
        out: list[str] = list(self._raw_held)  # whitespace that may end a raw value
        self._raw_held = ""
        i = 0
        text = self._pending + text
        self._pending = ""
        while i < len(text):
            ch = text[i]
            state = self._state
            if state == "object":
                if ch == '"':
                    self._state, self._key = "key", ""
                i += 1
            elif state == "key":
                if ch == "\\" and i + 1 < len(text):
                    self._key += text[i : i + 2]
                    i += 2
                    continue
                if ch == "\\":
                    self._pending = text[i:]
                    break
                if ch == '"':
                    self._state = "colon"
                    key = json.loads(f'"{self._key}"')
                    self._field = key if key in self._fields else None
                else:
                    self._key += ch
                i += 1
            elif state == "colon":
                if ch == ":":
                    self._state = "value"
                i += 1
            elif state == "value":
                if ch.isspace():
                    i += 1
                elif ch == '"':
                    self._state = "string"
                    i += 1
                else:
                    self._state, self._depth = "raw", 0
                    self._raw_in_string = self._raw_escape = self._raw_started = False
            elif state == "string":
                if ch == "\\":
                    decoded, used = _escape(text, i)
                    if used == 0:
                        self._pending = text[i:]
                        break
                    out.append(decoded)
                    i += used
                elif ch == '"':
                    self._flush(out, pieces)
                    self._close_field(pieces)
                    self._state = "after"
                    i += 1
                else:
                    out.append(ch)
                    i += 1
            elif state == "raw":
                if self._raw_in_string:
                    if self._raw_escape:
                        self._raw_escape = False
                    elif ch == "\\":
                        self._raw_escape = True
                    elif ch == '"':
                        self._raw_in_string = False
                elif ch == '"':
                    self._raw_in_string = True
                elif ch in "[{":
                    self._depth += 1
                elif ch in "]}":
                    if self._depth == 0:
                        self._end_raw(out, pieces)
                        self._state = "object"
                        i += 1
                        continue
                    self._depth -= 1
                elif ch == "," and self._depth == 0:
                    self._end_raw(out, pieces)
                    self._state = "object"
                    i += 1
                    continue
                out.append(ch)
                i += 1
            else:  # after a string value: a comma, or the end of the object
                if ch in ",}":
                    self._state = "object"
                i += 1
        if self._state == "raw":
            held = []
            while out and out[-1].isspace():
                held.append(out.pop())
            self._raw_held = "".join(reversed(held))
        self._flush(out, pieces)
        return pieces

    def _flush(self, out: list[str], pieces: list[FieldPiece]) -> None:
        if out and self._field is not None:
            text = "".join(out)
            if self._state == "raw" and not self._raw_started:
                text = text.lstrip()
                self._raw_started = bool(text)
            if text:
                pieces.append((self._field, text, False))
        out.clear()

    def _end_raw(self, out: list[str], pieces: list[FieldPiece]) -> None:
        # Trailing whitespace before the comma is not part of the value.
        while out and out[-1].isspace():
            out.pop()
        self._flush(out, pieces)
        self._close_field(pieces)

    def _close_field(self, pieces: list[FieldPiece]) -> None:
        if self._field is not None:
            pieces.append((self._field, "", True))
        self._field = None

    def close(self) -> list[FieldPiece]:
        pieces: list[FieldPiece] = []
        if self._state in ("string", "raw"):
            self._close_field(pieces)
        return pieces


def _escape(text: str, i: int) -> tuple[str, int]:
    """The decoded escape at ``text[i]`` and its length, or ("", 0) if it is cut off."""
    if i + 1 >= len(text):
        return "", 0
    if text[i + 1] == "u":
        if i + 6 > len(text):
            return "", 0
        code = int(text[i + 2 : i + 6], 16)
        if 0xD800 <= code < 0xDC00:  # a surrogate pair: both halves or nothing yet
            if i + 12 > len(text):
                return "", 0
            return json.loads(f'"{text[i : i + 12]}"'), 12
        return chr(code), 6
    simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/"}
    char = text[i + 1]
    return simple.get(char, char), 2


class FieldSplitter:
    """Split one LM answer's streamed text into its output fields' text (see above)."""

    def __init__(self, fields: Iterable[str] | None = None) -> None:
        self._fields = None if fields is None else list(fields)
        self._inner: _MarkerSplitter | _JSONSplitter | None = None
        self._lead = ""

    def feed(self, text: str) -> list[FieldPiece]:
        if self._inner is None:
            self._lead += text
            stripped = self._lead.lstrip()
            if not stripped:
                return []
            if len(stripped) < 3 and "```".startswith(stripped):
                return []  # maybe the start of a fence: wait for more
            if stripped.startswith("```"):  # a fenced JSON answer: wait for the fence
                if "\n" not in stripped:
                    return []
                stripped = stripped.split("\n", 1)[1]
                if not stripped.lstrip():
                    return []
            is_json = stripped.lstrip().startswith("{")
            self._inner = (_JSONSplitter if is_json else _MarkerSplitter)(self._fields)
            text, self._lead = stripped, ""
        return self._inner.feed(text)

    def close(self) -> list[FieldPiece]:
        if self._inner is None:
            return []
        return self._inner.close()
