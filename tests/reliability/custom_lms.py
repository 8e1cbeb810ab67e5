"""Custom LMs as DSPy users write them (``dsa.BaseLM`` subclasses), shared by the tests of
``BaseLM`` in-process and served: one posts to SimLM over HTTP from ``forward`` (urllib,
blocking), one from ``aforward`` (aiohttp, on the caller's loop), one computes its answer
in the ChatAdapter's format and crashes on request."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import aiohttp

import dspy_actors as dsa


def _body(lm: dsa.BaseLM, messages: Any, kwargs: dict[str, Any]) -> bytes:
    params = {k: v for k, v in {**lm.kwargs, **kwargs}.items() if v is not None}
    return json.dumps({"model": lm.model, "messages": messages, **params}).encode()


class HttpForwardLM(dsa.BaseLM):
    """``forward`` posts the chat completion to an OpenAI-compatible server (blocking)."""

    def __init__(self, api_base: str, model: str = "sim-custom", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.endpoint = f"{api_base}/chat/completions"
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        with self.lock:
            self.threads.add(threading.current_thread().name)
        request = urllib.request.Request(
            self.endpoint,
            data=_body(self, messages, kwargs),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())


class HttpAforwardLM(dsa.BaseLM):
    """``aforward`` posts with aiohttp on the running loop; ``forward`` must not be used."""

    def __init__(self, api_base: str, model: str = "sim-async", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.endpoint = f"{api_base}/chat/completions"
        self.threads: set[str] = set()

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        raise AssertionError("the async path must call aforward")

    async def aforward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        self.threads.add(threading.current_thread().name)
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.endpoint, data=_body(self, messages, kwargs)) as answer,
        ):
            return await answer.json(content_type=None)


class ComputingLM(dsa.BaseLM):
    """Answers in ChatAdapter's format without any server: the question upper-cased.
    A question containing "crash" makes ``forward`` raise (a bug in the user's LM)."""

    def __init__(self, model: str = "computing", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        text = str(messages[-1]["content"])
        question = text.split("[[ ## question ## ]]")[-1].split("\n\n")[0].strip()
        if "crash" in question:
            raise RuntimeError(f"cannot answer {question!r}")
        content = f"[[ ## answer ## ]]\n{question.upper()}\n\n[[ ## completed ## ]]"
        return {
            "model": "computing-v1",
            "choices": [
                {"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": len(text.split()), "completion_tokens": 2},
        }
