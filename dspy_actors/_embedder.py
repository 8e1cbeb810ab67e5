"""``Embedder``: texts to vectors, from a hosted embeddings model or any function.

    embedder = Embedder("openai/text-embedding-3-small", api_key=...)   # POST /embeddings
    embedder = Embedder(my_function)                  # my_function(list[str]) -> vectors
    vectors = embedder(["first text", "second text"])  # one list[float] per text

As DSPy's ``dspy.Embedder``: ``batch_size`` texts per request, results cached in memory
(``caching=False`` turns that off), extra keyword arguments go into each request. A hosted
model is reached over an OpenAI-compatible ``/embeddings`` endpoint (``api_base``); the key
is sent in the request header only, never shown in ``repr``, errors or the cache.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, overload

import httpx

__all__ = ["Embedder", "EmbeddingError"]

_DEFAULT_BASE = "https://api.openai.com/v1"
_CACHE_MAX = 100_000


class EmbeddingError(RuntimeError):
    """An embeddings request failed or answered something that is not embeddings."""


class Embedder:
    """Embed texts with ``model``: a hosted model name (``"openai/<name>"``) or a callable
    taking a list of texts and returning one vector per text. Call it with one text (one
    vector back) or a list (a list of vectors)."""

    def __init__(
        self,
        model: str | Callable[[list[str]], Sequence[Sequence[float]]],
        batch_size: int = 200,
        caching: bool = True,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        if not (isinstance(model, str) or callable(model)):
            raise TypeError(
                f"Embedder needs a model name or a callable, not {type(model).__name__}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.caching = caching
        self.kwargs = kwargs
        self._cache: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        if isinstance(model, str):
            self._url = (api_base or os.environ.get("OPENAI_API_BASE") or _DEFAULT_BASE).rstrip(
                "/"
            ) + "/embeddings"
            key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._client = httpx.Client(headers=headers, timeout=timeout)

    def __repr__(self) -> str:
        name = self.model if isinstance(self.model, str) else getattr(self.model, "__name__", "fn")
        return f"Embedder({name!r}, batch_size={self.batch_size})"

    @overload
    def __call__(self, inputs: str) -> list[float]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, inputs: Sequence[str]) -> list[list[float]]: ...
    def __call__(self, inputs: str | Sequence[str]) -> list[float] | list[list[float]]:
        single = isinstance(inputs, str)
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("Embedder embeds strings: pass a str or a list of str")
        vectors = self._embed(texts)
        return vectors[0] if single else vectors

    def close(self) -> None:
        """Close the HTTP connections of a hosted model."""
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work -----------------------------------------------------------------------------
    def _cache_key(self, text: str) -> tuple[str, str]:
        return (repr(sorted(self.kwargs.items())), text)

    def _embed(self, texts: list[str]) -> list[list[float]]:
        found: dict[int, list[float]] = {}
        if self.caching:
            with self._lock:
                for i, text in enumerate(texts):
                    hit = self._cache.get(self._cache_key(text))
                    if hit is not None:
                        found[i] = hit
        todo = [i for i in range(len(texts)) if i not in found]
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            vectors = self._embed_batch([texts[i] for i in batch])
            if len(vectors) != len(batch):
                raise EmbeddingError(
                    f"the embedder returned {len(vectors)} vectors for {len(batch)} texts"
                )
            for i, vector in zip(batch, vectors, strict=True):
                found[i] = vector
            if self.caching:
                with self._lock:
                    for i, vector in zip(batch, vectors, strict=True):
                        self._cache[self._cache_key(texts[i])] = vector
                    while len(self._cache) > _CACHE_MAX:
                        self._cache.popitem(last=False)
        return [list(found[i]) for i in range(len(texts))]

    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        if not isinstance(self.model, str):
            return [[float(x) for x in v] for v in self.model(texts, **self.kwargs)]
        assert self._client is not None
        name = self.model.split("/", 1)[1] if "/" in self.model else self.model
        try:
            response = self._client.post(
                self._url, json={"model": name, "input": texts, **self.kwargs}
            )
        except httpx.HTTPError as exc:
            raise EmbeddingError(
                f"embeddings request to {self._url} failed: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code != 200:
            raise EmbeddingError(
                f"embeddings request to {self._url} answered HTTP {response.status_code}: "
                f"{response.text[:300]}"
            )
        try:
            data = sorted(response.json()["data"], key=lambda d: d["index"])
            return [[float(x) for x in d["embedding"]] for d in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError(
                f"embeddings response from {self._url} is not an embeddings list: {exc!r}"
            ) from None
