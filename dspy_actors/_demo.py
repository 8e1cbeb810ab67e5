"""The ``dspy-actors demo``: a served multi-step program answering a batch of questions at
concurrency while actors are killed and the LM misbehaves, then the live tree and a summary.

By default everything runs in this process on loopback: an embedded :class:`SimLM` with a
fault plan (500s, 429s with ``Retry-After``, malformed bodies) and a :class:`ChaosMonkey`
killing the program's actors. With ``--lm openai/<model>`` it calls a real provider (the
API key from ``OPENAI_API_KEY``); only the chaos is injected then.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import dspy_actors as dsa
import supervisors
from dspy_actors.testing.chaos import ChaosMonkey
from dspy_actors.testing.faults import Fault, FaultPlan, FaultRule
from dspy_actors.testing.invariants import CallLedger
from dspy_actors.testing.sim_lm import SimLM

TOPICS = ("the moon", "volcanoes", "honey bees", "the Roman empire", "prime numbers", "tides")


class Retrieve(dsa.Module):
    """Step 1, plain Python: a few 'passages' about the question."""

    def forward(self, question: str) -> dsa.Prediction:
        return dsa.Prediction(context=[f"passage {i} about {question}" for i in range(3)])


def demo_steps() -> list[tuple[str, Any, dict[str, Any]]]:
    """The served program: retrieve -> answer (chain of thought) -> check (a verdict)."""
    return [
        ("retrieve", Retrieve, {}),
        ("answer", dsa.ChainOfThought, {"signature": "context: list[str], question -> answer"}),
        ("check", dsa.Predict, {"signature": "question, answer -> confident: bool"}),
    ]


def demo_faults(seed: int) -> FaultPlan:
    """LM faults the embedded server injects: each is absorbed by the LM's retries."""
    return FaultPlan(
        [
            FaultRule(Fault.server_error(500), rate=0.08),
            FaultRule(Fault.rate_limited(retry_after=0.05), rate=0.05),
            FaultRule(Fault.malformed_json(), rate=0.03),
        ],
        seed=seed,
    )


@dataclass
class DemoOptions:
    questions: int = 200
    concurrency: int = 16
    lm: str | None = None
    api_base: str | None = None
    kill_every_s: float = 0.25
    seed: int = 7
    latency: float = 0.02
    show_progress: bool = True
    show_tree: bool = True
    show_summary: bool = True


@dataclass
class DemoResult:
    answered: int
    failed: int
    errors: dict[str, int]
    restarts: int
    kills: int
    retries: int
    faults_injected: int | None  # None: a real provider, nothing injected
    p50: float | None
    p99: float | None
    elapsed: float
    tree: str
    counts: Counter[str] = field(default_factory=Counter)


@contextlib.contextmanager
def _lm_for(options: DemoOptions) -> Iterator[tuple[dsa.LM, SimLM | None]]:
    if options.lm is not None:
        lm = dsa.LM(options.lm, api_base=options.api_base, cache=False)
        try:
            yield lm, None
        finally:
            lm.close()
        return
    sim = SimLM(latency=options.latency, faults=demo_faults(options.seed), record_requests=False)
    with sim:
        lm = dsa.LM(
            "openai/sim-model",
            api_base=sim.openai_base,
            api_key="sim",
            cache=False,
            timeout=10.0,
            retry_policy=dsa.RetryPolicy(max_retries=6, base_delay=0.01, max_delay=0.1),
        )
        try:
            yield lm, sim
        finally:
            lm.close()


class _Progress:
    """A plain-text progress bar, redrawn in place with ``\\r``."""

    def __init__(self, total: int, out: TextIO, enabled: bool) -> None:
        self.total = total
        self.out = out
        self.enabled = enabled
        self._last = 0.0

    def draw(self, ledger: CallLedger, kills: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        done = ledger.answered + ledger.failed + ledger.hung
        width = 30
        filled = int(width * done / max(1, self.total))
        bar = "#" * filled + "-" * (width - filled)
        self.out.write(
            f"\r[{bar}] {done}/{self.total}  answered {ledger.answered}  "
            f"failed {ledger.failed}  actors killed {kills}"
        )
        self.out.flush()


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> DemoResult:
    """Run the demo; prints progress, the tree and the summary to ``out`` as enabled."""
    supervisors.set_log_level("error")  # the demo shows its own summary of the chaos
    started = time.monotonic()
    restarts = Counter[str]()
    lock = threading.Lock()

    def on_restart(event: Any) -> None:
        with lock:
            restarts[str(event.child_id)] += 1

    with (
        _lm_for(options) as (lm, sim),
        tempfile.TemporaryDirectory(prefix="dspy-actors-demo-") as data_dir,
        dsa.start(
            lm=lm, data_dir=data_dir, name="demo", lm_max_in_flight=32, submit_threads=64
        ) as app,
    ):
        app.subscribe("runtime.restart", on_restart)
        qa = app.program("qa", demo_steps(), idempotent=True, timeout=30.0)
        ledger = CallLedger(qa, hang_after_s=60.0)
        progress = _Progress(options.questions, out, options.show_progress)
        questions = [
            {"question": f"What is {i % 10} + {i % 7}, and what about {TOPICS[i % len(TOPICS)]}?"}
            for i in range(options.questions)
        ]
        with ChaosMonkey(app, seed=options.seed) as monkey:
            if options.kill_every_s > 0:
                monkey.kill_every("demo/qa@v1/?*", every_s=options.kill_every_s, duration_s=None)
            runner = threading.Thread(
                target=ledger.run,
                args=(questions,),
                kwargs={"concurrency": options.concurrency},
                name="demo-batch",
                daemon=True,
            )
            runner.start()
            while runner.is_alive():
                runner.join(0.1)
                progress.draw(ledger, monkey.kills)
            monkey.stop()
            progress.draw(ledger, monkey.kills, force=True)
        if options.show_progress:
            out.write("\n")
        app.events.flush(5.0)
        tree = app.tree().render()
        result = DemoResult(
            answered=ledger.answered,
            failed=ledger.failed + ledger.hung,
            errors=dict(ledger.errors()),
            restarts=sum(restarts.values()),
            kills=monkey.kills,
            retries=lm.stats.retries,
            faults_injected=None if sim is None else sim.stats.injected_total,
            p50=ledger.percentile(0.5),
            p99=ledger.percentile(0.99),
            elapsed=time.monotonic() - started,
            tree=tree,
            counts=restarts,
        )
    supervisors.set_log_level("warning")
    if options.show_tree:
        out.write("\nThe live supervision tree after the run:\n\n" + tree + "\n")
    if options.show_summary:
        out.write("\n" + summary_text(result) + "\n")
    out.flush()
    return result


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def summary_text(result: DemoResult) -> str:
    """The summary block the demo prints."""
    errors = ", ".join(f"{k} {v}" for k, v in sorted(result.errors.items())) or "none"
    return "\n".join(
        [
            "Summary",
            f"  answered        {result.answered}",
            f"  failed          {result.failed} ({errors})",
            f"  actors killed   {result.kills} (by the chaos monkey)",
            f"  restarts        {result.restarts} (by their supervisors)",
            "  LM faults       "
            + (
                "none injected (a real provider)"
                if result.faults_injected is None
                else f"{result.faults_injected} injected by the simulated server"
            ),
            f"  LM retries      {result.retries}",
            f"  latency         p50 {_ms(result.p50)}, p99 {_ms(result.p99)}",
            f"  wall time       {result.elapsed:.1f} s",
        ]
    )
