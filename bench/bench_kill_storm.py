"""Calls lost in flight under a kill storm (issue 20 item 6).

A chaos monkey kills one random actor of a served program every ``--every`` seconds while
``--calls`` calls run at ``--in-flight`` concurrency (threads of the ledger's own) against
SimLM (a real HTTP server on loopback, ``--latency`` per request, no cache). Cases:

- ``pipeline``: ``app.program`` of two Predict steps (draft, then answer); every step
  actor is a target;
- ``composite``: ``app.serve`` of a module whose ``forward`` calls two Predicts; only its
  sub-modules' actors are targets (a predictor's call is safe to repeat);
- ``composite-all``: the same, its own forward actor a target too, served with
  ``idempotent=True`` (a user ``forward`` is re-run after a crash only on that opt-in).

All with the app's defaults (restart intensity, crash retries). Each case reports calls
answered / failed (by error) / hung, kills made, and p50/p99 latency.

    .venv/bin/python bench/bench_kill_storm.py                      # 5,000 calls, 200 ms
    .venv/bin/python bench/bench_kill_storm.py --calls 1000 --every 0.05
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import configure_logging, machine_info, machine_load, write_results

import dspy_actors as dsa
from dspy_actors.testing import CallLedger, ChaosMonkey, SimLM

PIPELINE: list[tuple[str, Any, dict[str, Any]]] = [
    ("draft", dsa.Predict, {"signature": "question -> draft"}),
    ("answer", dsa.Predict, {"signature": "question, draft -> answer"}),
]


class DraftThenAnswer(dsa.Module):
    """A composite: a user-written forward over two predictors."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dsa.Predict("question -> draft")
        self.answer = dsa.Predict("question, draft -> answer")

    def forward(self, question: str) -> Any:
        draft = self.draft(question=question).draft
        return self.answer(question=question, draft=draft)


def run_case(case: str, sim: SimLM, args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    lm = dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key="sim", cache=False)
    app = dsa.start(lm=lm, data_dir=data_dir / case, name=f"storm-{case}")
    try:
        if case == "pipeline":
            handle = app.program("qa", PIPELINE, timeout=60.0)
            pattern = f"{app.name}/qa@v1/*"
        elif case == "composite":
            handle = app.serve("qa", DraftThenAnswer(), timeout=60.0)
            pattern = f"{app.name}/qa@v1/?*"  # its sub-modules, not its own actor
        else:
            handle = app.serve("qa", DraftThenAnswer(), timeout=60.0, idempotent=True)
            pattern = f"{app.name}/qa@v1/*"
        handle.call(question="warm up")
        ledger = CallLedger(handle, hang_after_s=90.0)
        started = time.perf_counter()
        with ChaosMonkey(app, seed=args.seed) as monkey:
            run = monkey.kill_every(pattern, every_s=args.every, duration_s=None)
            ledger.run(
                ({"question": f"question {i}"} for i in range(args.calls)),
                concurrency=args.in_flight,
            )
            monkey.stop()
        elapsed = time.perf_counter() - started
        ledger.settle()
        p50, p99 = ledger.percentile(0.5), ledger.percentile(0.99)
        return {
            "case": case,
            "sent": ledger.sent,
            "answered": ledger.answered,
            "answered_pct": 100.0 * ledger.answered / max(1, ledger.sent),
            "failed": ledger.failed,
            "errors": dict(ledger.errors()),
            "error_messages": dict(
                Counter(
                    str(o.error)[:160] for o in ledger.outcomes if o.error is not None
                ).most_common(5)
            ),
            "hung": ledger.hung,
            "kills": run.kills,
            "seconds": elapsed,
            "p50_s": p50,
            "p99_s": p99,
        }
    finally:
        app.stop()
        lm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--every", type=float, default=0.2, help="seconds between kills")
    parser.add_argument("--latency", type=float, default=0.02, help="SimLM seconds/request")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=["pipeline", "composite", "composite-all"])
    args = parser.parse_args()
    configure_logging(False)
    results = []
    with (
        SimLM(latency=args.latency, record_requests=False) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for case in args.cases:
            result = run_case(case, sim, args, Path(tmp))
            results.append(result)
            p50 = "-" if result["p50_s"] is None else f"{result['p50_s']:.3f}"
            p99 = "-" if result["p99_s"] is None else f"{result['p99_s']:.3f}"
            print(
                f"{case:14s} answered {result['answered']}/{result['sent']} "
                f"({result['answered_pct']:.2f}%), failed {result['failed']} "
                f"{result['errors']}, hung {result['hung']}, kills {result['kills']}, "
                f"{result['seconds']:.1f} s, p50 {p50} s, p99 {p99} s",
                flush=True,
            )
            for message, count in result["error_messages"].items():
                print(f"    {count} x {message}")
    write_results(
        "kill_storm",
        {"machine": machine_info(), "load": machine_load(), "args": vars(args), "results": results},
    )


if __name__ == "__main__":
    main()
