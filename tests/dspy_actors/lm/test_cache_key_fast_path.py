"""cache_key skips the canonical copy for plain JSON requests: keys must not change (cache
files written before must still hit), whichever path a request takes."""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from dspy_actors.lm.cache import _is_plain, cache_key


def _old_canonical(value: Any) -> Any:
    # The canonical form as cache_key computed it before the fast path (kept here verbatim
    # in behaviour, as the reference every key must still match).
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"cache_key: mapping keys must be str, got {key!r}")
            out[key] = _old_canonical(item)
        return out
    if isinstance(value, list | tuple):
        return [_old_canonical(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _old_key(request: Mapping[str, Any]) -> str:
    canonical = json.dumps(
        _old_canonical(request),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(b"dspy_actors.lm.cache/v1\n" + canonical.encode()).hexdigest()


def _request(params: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "provider": "openai",
        "api_base": "http://127.0.0.1:8000/v1",
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be terse. ünïcode ✓"},
            {"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"}]},
        ],
        "response_format": None,
        "params": {"temperature": 0.0, "max_tokens": 1000} if params is None else params,
    }
    request.update(changes)
    return request


class _Color(enum.IntEnum):
    RED = 1


class _Str(str):
    pass


def test_keys_written_before_the_fast_path_still_match() -> None:
    # Digests computed by the previous implementation: a cache file written by it hits.
    assert cache_key(_request()) == (
        "5e1a11de78db50f4c5c18f11082372b72889c07fb8f65d298a97a742c23c4d6c"
    )
    params = {"temperature": 0.5, "max_tokens": 1000, "stop": ["\n"], "logprobs": True}
    assert cache_key(_request({**params, "seed": None})) == (
        "39c809340640d8ec424ebb63986c5bdf2b45043fb39fe5e0606f357be865f20c"
    )


@pytest.mark.parametrize(
    "request_",
    [
        _request(),
        _request({}),
        _request({"temperature": 0.7, "top_p": 0.95}),
        _request({"temperature": 1.0, "n": 3}),  # integral float: the canonical path
        _request({"stop": ("a", "b")}),  # a tuple equals a list
        _request({"logit_bias": {"50256": -100}}),
        _request({"big": 1e20, "neg": -0.0, "tiny": 1e-300}),
        _request(response_format={"type": "json_schema", "json_schema": {"minimum": 0.0}}),
        _request(response_format=OrderedDict(type="json_object")),
        _request(response_format=MappingProxyType({"type": "json_object"})),
        _request({"seed": _Color.RED, "user": _Str("someone")}),
        _request(messages=[{"role": "user", "content": "x" * 10_000}]),
        _request(messages=[]),
        _request(messages=[{"role": "user", "content": [[], {}, [[["deep"]]]]}]),
    ],
)
def test_every_request_gets_the_key_the_old_algorithm_gave(request_: dict[str, Any]) -> None:
    assert cache_key(request_) == _old_key(request_)


def test_integral_floats_still_equal_ints_and_tuples_lists() -> None:
    assert cache_key(_request({"temperature": 0.0})) == cache_key(_request({"temperature": 0}))
    assert cache_key(_request({"stop": ("a",)})) == cache_key(_request({"stop": ["a"]}))
    assert cache_key(_request({"temperature": 0.5})) != cache_key(_request({"temperature": 0}))


def test_the_fast_path_is_taken_only_for_plain_json() -> None:
    assert _is_plain(_request({"temperature": 0.5, "stop": ("a",)}))
    assert _is_plain(_request({}))
    assert not _is_plain(_request({"temperature": 0.0}))  # integral float: canonicalised
    assert not _is_plain(_request(response_format=OrderedDict(type="json_object")))
    assert not _is_plain(_request({"seed": _Color.RED}))
    assert not _is_plain({1: "non-str key"})
    assert not _is_plain({"x": object()})


def test_bad_requests_still_fail_the_same_way() -> None:
    with pytest.raises(TypeError, match="mapping keys must be str"):
        cache_key(_request({"logit_bias": {50256: -100}}))
    with pytest.raises(ValueError, match="not JSON compliant"):
        cache_key(_request({"temperature": math.nan}))
    with pytest.raises(ValueError, match="not JSON compliant"):
        cache_key(_request({"temperature": math.inf}))
    with pytest.raises(TypeError):
        cache_key(_request({"callback": object()}))
