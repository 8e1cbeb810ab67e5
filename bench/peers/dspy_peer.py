"""Benchmark peer for DSPy 3.4.1; runs inside bench/.venv-dspy (see setup_dspy_venv.sh).

    bench/.venv-dspy/bin/python bench/peers/dspy_peer.py --url ... --slow-url ... [--engine auto]

Same protocol and the same timing harness as ``ours_peer.py`` (imported from it: that
half of it is stdlib only). DSPy runs with its defaults except the cache, which is
configured memory-only (no disk tier) so that both sides measure their in-memory cache.
``--engine`` picks DSPy's LM engine: ``auto`` (its default, the native lm15 transport)
or ``litellm``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ours_peer import Call, Op, measure_common_args, question, run_threads, serve, time_loop


def main() -> None:
    parser = measure_common_args()
    parser.add_argument("--engine", default="auto", choices=["auto", "litellm", "lm15"])
    args = parser.parse_args()

    # Offline machine: LiteLLM must use its bundled model-cost map instead of fetching one.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import dspy  # type: ignore[import-not-found, unused-ignore]

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    model = f"openai/{args.model}"
    key = "bench-key"

    def make_lm(url: str, cache: bool) -> Any:
        return dspy.LM(model, api_base=url + "/v1", api_key=key, cache=cache, engine=args.engine)

    def predictor(lm: Any) -> Call:
        p = dspy.Predict("question -> answer")
        p.lm = lm

        def call(q: str) -> Any:
            return p(question=q).answer

        return call

    cached_call = predictor(make_lm(args.url, True))
    uncached_call = predictor(make_lm(args.url, False))

    def op_cached(cmd: dict[str, Any]) -> dict[str, Any]:
        q = cmd["question"]
        answer = cached_call(q)
        return {**time_loop(cached_call, [q] * int(cmd["n"])), "answer": answer}

    def op_uncached(cmd: dict[str, Any]) -> dict[str, Any]:
        prefix, n, warm = cmd["prefix"], int(cmd["n"]), int(cmd.get("warm", 10))
        for i in range(warm):
            uncached_call(question(prefix + " warm", i))
        qs = [question(prefix, i) for i in range(n)]
        return {**time_loop(uncached_call, qs), "calls": n + warm}

    def op_throughput(cmd: dict[str, Any]) -> dict[str, Any]:
        # A new LM (so a new engine and connection pool) per run, as on our side.
        call = predictor(make_lm(args.slow_url, False))
        return run_threads(call, int(cmd["in_flight"]), int(cmd["per_thread"]), cmd["prefix"])

    ops: dict[str, Op] = {
        "cached": op_cached,
        "uncached": op_uncached,
        "throughput": op_throughput,
    }
    import httpx

    ready = {
        "peer": f"dspy[{args.engine}]",
        "python": sys.version.split()[0],
        "versions": {"dspy": dspy.__version__, "httpx": httpx.__version__},
    }
    serve(ops, ready)


if __name__ == "__main__":
    main()
