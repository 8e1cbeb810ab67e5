"""The wire formats the simulated LM server speaks: OpenAI chat completions (also as Azure
OpenAI serves them), Anthropic messages and Gemini's generateContent, as JSON bodies, SSE
frames and error bodies (server side of the protocol).

Over 400 lines: three providers' wire formats (bodies, SSE frames, errors), each a few short
functions; kept together so the server speaks them the same way.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dspy_actors.testing._faults import ErrorCode

_IDS = itertools.count(1)


def _new_id(prefix: str) -> str:
    # A counter, not uuid4: ids only need to be unique per process, and this is hot.
    return f"{prefix}{next(_IDS):024x}"


_PIECES = re.compile(r"\s*\S+\s*|\s+")


def count_tokens(text: str) -> int:
    """The simulator's deterministic token count: whitespace-separated words (at least 1)."""
    return max(1, len(text.split()))


def message_text(message: Mapping[str, Any]) -> str:
    """The text of an OpenAI-format message (string content or its text parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return max(1, sum(len(message_text(m).split()) for m in messages))


def split_pieces(text: str) -> list[str]:
    """Split ``text`` into stream deltas (word by word) whose concatenation is ``text``."""
    return _PIECES.findall(text) or [""]


def anthropic_to_openai_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Normalise an Anthropic request's ``system`` and content blocks to OpenAI messages."""
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        out.append({"role": "system", "content": system})
    elif isinstance(system, list):
        text = "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
        out.append({"role": "system", "content": text})
    for msg in body.get("messages") or []:
        content = msg.get("content")
        if isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for block in content:
                btype = block.get("type")
                if btype == "text":
                    parts.append({"type": "text", "text": block.get("text", "")})
                elif btype == "image":
                    src = block.get("source") or {}
                    if src.get("type") == "url":
                        url = src.get("url", "")
                    else:
                        url = f"data:{src.get('media_type', '')};base64,{src.get('data', '')}"
                    parts.append({"type": "image_url", "image_url": {"url": url}})
                else:
                    parts.append(dict(block))
            content = parts
        out.append({"role": msg.get("role", "user"), "content": content})
    return out


# ---------------------------------------------------------------- OpenAI chat completions


def _call_ids(calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls to send (``name``, ``args``) with an id each (one made up if none)."""
    return [
        {"id": c.get("id") or _new_id("call_"), "name": c["name"], "args": c.get("args") or {}}
        for c in calls
    ]


def openai_tool_calls(calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["args"])},
        }
        for c in _call_ids(calls)
    ]


def openai_completion(
    model: str,
    texts: list[str],
    prompt_toks: int,
    finish_reason: str = "stop",
    tool_calls: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    completion = sum(count_tokens(t) for t in texts)
    body: dict[str, Any] = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            for i, text in enumerate(texts)
        ],
        "usage": {
            "prompt_tokens": prompt_toks,
            "completion_tokens": completion,
            "total_tokens": prompt_toks + completion,
        },
    }
    if tool_calls:  # every choice calls the tools: the message's tool_calls, no content
        for choice in body["choices"]:
            choice["message"]["tool_calls"] = openai_tool_calls(tool_calls)
            choice["message"]["content"] = choice["message"]["content"] or None
            choice["finish_reason"] = "tool_calls"
    return body


def sse(data: Mapping[str, Any] | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def openai_stream(
    model: str,
    texts: list[str],
    prompt_toks: int,
    include_usage: bool,
    finish_reason: str = "stop",
    tool_calls: Sequence[Mapping[str, Any]] | None = None,
) -> Iterator[bytes]:
    """SSE frames of a streamed chat completion: role, content deltas per choice, finish
    reasons, the usage chunk (when asked for), then ``[DONE]``."""
    cid = _new_id("chatcmpl-")
    created = int(time.time())

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage
        return sse(body)

    for i in range(len(texts)):
        delta = {"role": "assistant", "content": ""}
        yield chunk([{"index": i, "delta": delta, "finish_reason": None}])
    for i, text in enumerate(texts):
        for piece in split_pieces(text):
            yield chunk([{"index": i, "delta": {"content": piece}, "finish_reason": None}])
    for i in range(len(texts)):
        # Tool calls as OpenAI streams them: id and name first, then the arguments in pieces.
        for k, call in enumerate(openai_tool_calls(tool_calls or ())):
            head = {"index": k, "id": call["id"], "type": "function"}
            head["function"] = {"name": call["function"]["name"], "arguments": ""}
            yield chunk([{"index": i, "delta": {"tool_calls": [head]}, "finish_reason": None}])
            for piece in split_pieces(call["function"]["arguments"]):
                part = {"index": k, "function": {"arguments": piece}}
                yield chunk([{"index": i, "delta": {"tool_calls": [part]}, "finish_reason": None}])
        finish = "tool_calls" if tool_calls else finish_reason
        yield chunk([{"index": i, "delta": {}, "finish_reason": finish}])
    if include_usage:
        completion = sum(count_tokens(t) for t in texts)
        yield chunk(
            [],
            {
                "prompt_tokens": prompt_toks,
                "completion_tokens": completion,
                "total_tokens": prompt_toks + completion,
            },
        )
    yield sse("[DONE]")


# ---------------------------------------------------------------- Anthropic messages


def anthropic_message(
    model: str,
    text: str,
    prompt_toks: int,
    stop_reason: str = "end_turn",
    tool_calls: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt_toks, "output_tokens": count_tokens(text)},
    }
    if tool_calls:
        message["content"] = [b for b in message["content"] if b["text"]] + [
            {"type": "tool_use", "id": c["id"], "name": c["name"], "input": c["args"]}
            for c in _call_ids(tool_calls)
        ]
        message["stop_reason"] = "tool_use"
    return message


def anthropic_stream(
    model: str,
    text: str,
    prompt_toks: int,
    stop_reason: str = "end_turn",
    tool_calls: Sequence[Mapping[str, Any]] | None = None,
) -> Iterator[bytes]:
    """SSE events of a streamed Anthropic message, in the documented order."""
    start = anthropic_message(model, "", prompt_toks, stop_reason)
    start["content"] = []
    start["stop_reason"] = None
    start["usage"] = {"input_tokens": prompt_toks, "output_tokens": 1}
    yield sse({"type": "message_start", "message": start}, "message_start")
    yield sse(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        "content_block_start",
    )
    yield sse({"type": "ping"}, "ping")
    for piece in split_pieces(text):
        delta = {"type": "text_delta", "text": piece}
        yield sse(
            {"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta"
        )
    yield sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    for k, call in enumerate(_call_ids(tool_calls or ()), start=1):
        block = {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}
        yield sse(
            {"type": "content_block_start", "index": k, "content_block": block},
            "content_block_start",
        )
        for piece in split_pieces(json.dumps(call["args"])):
            delta = {"type": "input_json_delta", "partial_json": piece}
            yield sse(
                {"type": "content_block_delta", "index": k, "delta": delta}, "content_block_delta"
            )
        yield sse({"type": "content_block_stop", "index": k}, "content_block_stop")
    if tool_calls:
        stop_reason = "tool_use"
    yield sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": count_tokens(text)},
        },
        "message_delta",
    )
    yield sse({"type": "message_stop"}, "message_stop")


# ---------------------------------------------------------------- routes

# Azure OpenAI: /openai/deployments/<deployment>/chat/completions?api-version=...
_AZURE_PATH = re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/chat/completions$")
# Gemini: /v1beta/models/<model>:generateContent or :streamGenerateContent?alt=sse
_GEMINI_PATH = re.compile(
    r"/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$"
)


@dataclass(frozen=True, slots=True)
class Route:
    """Which wire format a request path speaks: ``provider`` is "openai", "azure",
    "anthropic" or "gemini"; ``model`` comes from the path for Azure (the deployment) and
    Gemini; ``stream`` is set by the path for Gemini."""

    provider: str
    model: str | None = None
    stream: bool | None = None


def route(path: str) -> Route | None:
    """The route of a request path (query string removed), or None for an unknown one."""
    azure = _AZURE_PATH.search(path)
    if azure:
        return Route("azure", azure.group("deployment"))
    if path.endswith("/chat/completions"):
        return Route("openai")
    if path.endswith("/messages"):
        return Route("anthropic")
    gemini = _GEMINI_PATH.search(path)
    if gemini:
        return Route("gemini", gemini.group("model"), gemini.group("method").startswith("stream"))
    return None


# ---------------------------------------------------------------- Gemini generateContent


def gemini_to_openai_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Normalise a Gemini request's ``systemInstruction`` and ``contents`` to OpenAI
    messages (role "model" is the assistant; inline images become image_url parts)."""
    out: list[dict[str, Any]] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(system, dict):
        text = "\n".join(str(p.get("text", "")) for p in system.get("parts") or () if "text" in p)
        if text:
            out.append({"role": "system", "content": text})
    for turn in body.get("contents") or ():
        if not isinstance(turn, dict):
            continue
        role = "assistant" if turn.get("role") == "model" else "user"
        parts: list[dict[str, Any]] = []
        for part in turn.get("parts") or ():
            if "text" in part:
                parts.append({"type": "text", "text": str(part["text"])})
            inline = part.get("inlineData") or part.get("inline_data")
            if isinstance(inline, dict):
                mime = inline.get("mimeType") or inline.get("mime_type")
                url = f"data:{mime};base64,{inline.get('data', '')}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
        if len(parts) == 1 and parts[0]["type"] == "text":
            out.append({"role": role, "content": parts[0]["text"]})
        else:
            out.append({"role": role, "content": parts})
    return out


def gemini_candidate_count(body: Mapping[str, Any]) -> int:
    config = body.get("generationConfig") or {}
    count = config.get("candidateCount", 1) if isinstance(config, dict) else 1
    return count if isinstance(count, int) and count > 0 else 1


def _gemini_usage(prompt_toks: int, texts: list[str]) -> dict[str, int]:
    completion = sum(count_tokens(t) for t in texts)
    return {
        "promptTokenCount": prompt_toks,
        "candidatesTokenCount": completion,
        "totalTokenCount": prompt_toks + completion,
    }


def gemini_response(
    model: str, texts: list[str], prompt_toks: int, finish_reason: str = "STOP"
) -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": finish_reason,
                "index": i,
            }
            for i, text in enumerate(texts)
        ],
        "usageMetadata": _gemini_usage(prompt_toks, texts),
        "modelVersion": model,
        "responseId": _new_id("resp-"),
    }


def gemini_stream(
    model: str, texts: list[str], prompt_toks: int, finish_reason: str = "STOP"
) -> Iterator[bytes]:
    """SSE frames of ``streamGenerateContent?alt=sse``: each a partial response (a text
    piece per candidate); the last carries the finish reasons and the usage. Gemini sends
    no end marker: the stream ends when the response does."""
    rid = _new_id("resp-")
    for i, text in enumerate(texts):
        for piece in split_pieces(text):
            candidate = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": i}
            yield sse({"candidates": [candidate], "modelVersion": model, "responseId": rid})
    final = [
        {
            "content": {"parts": [{"text": ""}], "role": "model"},
            "finishReason": finish_reason,
            "index": i,
        }
        for i in range(len(texts))
    ]
    yield sse(
        {
            "candidates": final,
            "usageMetadata": _gemini_usage(prompt_toks, texts),
            "modelVersion": model,
            "responseId": rid,
        }
    )


# ---------------------------------------------------------------- errors

_OPENAI_ERRORS: dict[ErrorCode, tuple[str, str | None, str]] = {
    "rate_limit": ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    "server": ("server_error", None, "The server had an error while processing your request."),
    "overloaded": ("server_error", None, "The engine is currently overloaded."),
    "bad_request": ("invalid_request_error", None, "Invalid request."),
    "auth": ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    "not_found": ("invalid_request_error", "model_not_found", "The model does not exist."),
    "context_window": (
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is 8192 tokens. However, your messages resulted "
        "in 9000 tokens. Please reduce the length of the messages.",
    ),
}

_ANTHROPIC_ERRORS: dict[ErrorCode, tuple[str, str]] = {
    "rate_limit": ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    "server": ("api_error", "Internal server error."),
    "overloaded": ("overloaded_error", "Overloaded"),
    "bad_request": ("invalid_request_error", "Invalid request."),
    "auth": ("authentication_error", "invalid x-api-key"),
    "not_found": ("not_found_error", "model not found"),
    "context_window": (
        "invalid_request_error",
        "prompt is too long: 210000 tokens > 200000 maximum",
    ),
}


_GEMINI_ERRORS: dict[ErrorCode, tuple[int, str, str]] = {
    "rate_limit": (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    "server": (500, "INTERNAL", "An internal error has occurred."),
    "overloaded": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    "bad_request": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    "auth": (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
    "not_found": (404, "NOT_FOUND", "models/unknown is not found for API version v1beta."),
    "context_window": (
        400,
        "INVALID_ARGUMENT",
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
    ),
}


def error_body(provider: str, code: ErrorCode, message: str | None = None) -> dict[str, Any]:
    """The JSON error body ``provider`` sends for an error of kind ``code``."""
    if provider == "gemini":
        status, gstatus, default = _GEMINI_ERRORS[code]
        details: list[dict[str, Any]] = []
        if code == "auth":
            details.append(
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
            )
        return {
            "error": {
                "code": status,
                "message": message or default,
                "status": gstatus,
                "details": details,
            }
        }
    if provider == "anthropic":
        etype, default = _ANTHROPIC_ERRORS[code]
        return {"type": "error", "error": {"type": etype, "message": message or default}}
    otype, ocode, default = _OPENAI_ERRORS[code]
    return {"error": {"message": message or default, "type": otype, "param": None, "code": ocode}}
