"""The ``dspy-actors demo``: a served multi-step program answering a batch of questions at
concurrency while actors are killed and the LM misbehaves, then the live tree and a summary.

It first says what it runs and what to watch, then shows progress, a few of the questions
with their answers, the tree and a summary (rich on a terminal, plain lines in a log: see
``_demo_display``).

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import dspy_actors as dsa
import supervisors
from dspy_actors._demo_display import Display, display_for
from dspy_actors.testing._chaos import ChaosMonkey
from dspy_actors.testing._faults import Fault, FaultPlan, FaultRule
from dspy_actors.testing._invariants import CallLedger
from dspy_actors.testing.sim_lm import SimLM

TOPICS = ("the moon", "volcanoes", "honey bees", "the Roman empire", "prime numbers", "tides")


class Retrieve(dsa.Module):
    """Step 1, plain Python: a few 'passages' about the question."""

    def forward(self, question: str) -> dsa.Prediction:
        return dsa.Prediction(context=[f"passage {i} about {question}" for i in range(3)])


class Check(dsa.Module):
    """Step 3: an LM verdict on the answer, returned with the answer (a pipeline's result
    is its last step's Prediction)."""

    def __init__(self) -> None:
        super().__init__()
        self.verdict = dsa.Predict("question, answer -> confident: bool")

    def forward(self, question: str, answer: str) -> dsa.Prediction:
        confident = self.verdict(question=question, answer=answer).confident
        return dsa.Prediction(answer=answer, confident=confident)


def demo_steps() -> list[tuple[str, Any, dict[str, Any]]]:
    """The served program: retrieve -> answer (chain of thought) -> check (a verdict)."""
    return [
        ("retrieve", Retrieve, {}),
        ("answer", dsa.ChainOfThought, {"signature": "context: list[str], question -> answer"}),
        ("check", Check, {}),
    ]


# LM faults the embedded server injects (fault, rate, what the intro calls it); each is
# absorbed by the LM's retries.
DEMO_FAULTS = (
    (Fault.server_error(500), 0.08, "HTTP 500"),
    (Fault.rate_limited(retry_after=0.05), 0.05, "HTTP 429 with Retry-After"),
    (Fault.malformed_json(), 0.03, "malformed bodies"),
)


def demo_faults(seed: int) -> FaultPlan:
    """The embedded server's fault plan: ``DEMO_FAULTS``, seeded."""
    return FaultPlan([FaultRule(fault, rate=rate) for fault, rate, _ in DEMO_FAULTS], seed=seed)


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
    show_intro: bool = True
    # The live console (``--console``): served on this port (0: any free one) while the
    # demo runs; ``hold(console)`` is called after the batch, before the app stops (the
    # command waits there for Ctrl-C so the page stays up).
    console_port: int | None = None
    hold: Callable[[Any], None] | None = None


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
    questions: int = 0


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


def intro_rows(options: DemoOptions) -> list[tuple[str, str]]:
    """What the demo runs, as (label, text) rows."""
    if options.lm is None:
        faults = ", ".join(f"{rate:.0%} {what}" for _, rate, what in DEMO_FAULTS)
        lm = (
            "an embedded simulated LM (OpenAI-compatible HTTP server on loopback) that "
            f"fails on purpose: {faults}"
        )
    else:
        lm = f"{options.lm} (a real provider: no LM faults injected, only the actor kills)"
    chaos = (
        f"a chaos monkey kills one of the program's actors every {options.kill_every_s:g} s"
        if options.kill_every_s > 0
        else "none (--kill-every 0)"
    )
    return [
        (
            "Program",
            "qa = retrieve (plain Python) -> answer (ChainOfThought: context, question -> "
            "answer) -> check (Predict: question, answer -> confident: bool, with the answer)",
        ),
        ("Served as", "app.program('qa', ...): one supervised actor per step; idempotent calls"),
        ("LM", lm),
        ("Load", f"{options.questions} questions, {options.concurrency} in flight at once"),
        ("Chaos", chaos),
    ]


WATCH = [
    "'answered' keeps climbing while actors are killed: supervisors restart them and "
    "crashed calls are retried",
    "a call that cannot be answered fails with a named error, never hangs",
    "the tree after the run: restarts=N on the steps that were killed",
    "the summary: faults injected, retries that absorbed them, latency",
]


def _clip(text: Any, width: int = 60) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def sample_rows(ledger: CallLedger, count: int = 4) -> list[list[str]]:
    """A few of the run's questions with their answers (and a failure, if any)."""
    outcomes = ledger.outcomes
    picked = [o for o in outcomes if o.status == "answered"][:count]
    picked += [o for o in outcomes if o.status != "answered"][:1]
    rows = []
    for outcome in picked:
        question = _clip(outcome.inputs.get("question", ""))
        if outcome.status == "answered":
            answer = _clip(getattr(outcome.result, "answer", outcome.result))
            confident = str(getattr(outcome.result, "confident", "-"))
        else:
            answer = f"{outcome.status}: {type(outcome.error).__name__}: {_clip(outcome.error)}"
            confident = "-"
        rows.append([question, answer, confident])
    return rows


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> DemoResult:
    """Run the demo; prints what it runs, progress, sample answers, the tree and the
    summary to ``out`` as enabled (rich on a terminal, plain lines otherwise)."""
    display = display_for(out, options.show_progress)
    supervisors.set_log_level("error")  # the demo shows its own summary of the chaos
    started = time.monotonic()
    restarts = Counter[str]()
    lock = threading.Lock()

    def on_restart(event: Any) -> None:
        with lock:
            restarts[str(event.child_id)] += 1

    with _lm_for(options) as (lm, sim), contextlib.ExitStack() as stack:
        if options.show_intro:  # once the LM is made: a missing key fails before the intro
            display.intro("dspy-actors demo", intro_rows(options), WATCH)
        data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="dspy-actors-demo-"))
        app = stack.enter_context(
            dsa.start(lm=lm, data_dir=data_dir, name="demo", lm_max_in_flight=32, submit_threads=64)
        )
        app.subscribe("runtime.restart", on_restart)
        console = None
        if options.console_port is not None:  # printed first: open it and watch the chaos
            console = stack.enter_context(app.console(options.console_port, announce=out))
        qa = app.program("qa", demo_steps(), idempotent=True, timeout=30.0)
        ledger = CallLedger(qa, hang_after_s=60.0)
        questions = [
            {"question": f"What is {i % 10} + {i % 7}, and what about {TOPICS[i % len(TOPICS)]}?"}
            for i in range(options.questions)
        ]
        with ChaosMonkey(app, seed=options.seed) as monkey:
            _run_batch(ledger, questions, options, monkey, display)
        app.events.flush(5.0)
        if options.hold is not None and console is not None:
            options.hold(console)
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
            questions=len(questions),
        )
        samples = sample_rows(ledger)
    supervisors.set_log_level("warning")
    if options.show_summary and samples:
        display.samples("A few of the questions, answered under chaos", SAMPLE_HEADER, samples)
    if options.show_tree:
        display.tree("The live supervision tree after the run", tree)
    if options.show_summary:
        display.summary(verdict(result), summary_rows(result))
    out.flush()
    return result


SAMPLE_HEADER = ("question", "answer", "confident")


def _run_batch(
    ledger: CallLedger,
    questions: list[dict[str, str]],
    options: DemoOptions,
    monkey: ChaosMonkey,
    display: Display,
) -> None:
    if options.kill_every_s > 0:
        monkey.kill_every("demo/qa@v1/?*", every_s=options.kill_every_s, duration_s=None)
    runner = threading.Thread(
        target=ledger.run,
        args=(questions,),
        kwargs={"concurrency": options.concurrency},
        name="demo-batch",
        daemon=True,
    )
    display.progress_start(len(questions))

    def show() -> None:
        answered, failed = ledger.answered, ledger.failed + ledger.hung
        display.progress(answered + failed, answered, failed, monkey.kills)

    runner.start()
    try:
        while runner.is_alive():
            runner.join(0.1)
            show()
    finally:
        monkey.stop()
        show()
        display.progress_end()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def summary_rows(result: DemoResult) -> list[tuple[str, str]]:
    """The summary, as (label, value) rows."""
    errors = ", ".join(f"{k} {v}" for k, v in sorted(result.errors.items())) or "none"
    faults = (
        "none injected (a real provider)"
        if result.faults_injected is None
        else f"{result.faults_injected} injected by the simulated server"
    )
    return [
        ("answered", f"{result.answered} of {result.questions}"),
        ("failed", f"{result.failed} ({errors})"),
        ("actors killed", f"{result.kills} (by the chaos monkey)"),
        ("restarts", f"{result.restarts} (by their supervisors)"),
        ("LM faults", faults),
        ("LM retries", f"{result.retries} (what absorbed the faults)"),
        ("latency", f"p50 {_ms(result.p50)}, p99 {_ms(result.p99)}"),
        ("wall time", f"{result.elapsed:.1f} s"),
    ]


def verdict(result: DemoResult) -> str:
    """One sentence a person can read at a glance."""
    if result.answered == result.questions:
        head = f"all {result.questions} questions answered"
    else:
        head = (
            f"{result.answered} of {result.questions} questions answered, "
            f"{result.failed} failed with a named error (none hung)"
        )
    parts = [head]
    if result.kills:
        parts.append(f"{result.kills} actors killed and restarted by their supervisors")
    if result.faults_injected:
        parts.append(f"{result.faults_injected} LM faults absorbed by {result.retries} retries")
    return "; ".join(parts) + "."


def summary_text(result: DemoResult) -> str:
    """The summary block as plain text (what a log gets)."""
    rows = summary_rows(result)
    width = max(len(k) for k, _ in rows)
    lines = ["Summary", *(f"  {k.ljust(width)}  {v}" for k, v in rows)]
    return "\n".join([*lines, f"In short: {verdict(result)}"])
