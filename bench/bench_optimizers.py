"""Benchmark of optimizers (issue 6): BootstrapFewShot, random search and MIPROv2, ours
against DSPy 3.4.1, on the same task and the same simulated LM server.

    bash bench/setup_dspy_venv.sh          # once: bench/.venv-dspy with dspy==3.4.1
    .venv/bin/python bench/bench_optimizers.py [--latency 0.05] [--rounds 3] [--no-dspy]

The task: reverse a made-up word. The simulated LM answers correctly only when the prompt
holds demos or an instruction containing "carefully"; it proposes instructions (for MIPROv2)
as a fixed function of the prompt. So zero-shot scores 0 and an optimizer that finds demos
or the right instruction scores up to 100.

The server (SimLM, ``--serve``) runs in its own process; each (party, optimizer) pair runs in
a fresh subprocess (ours in .venv, DSPy in bench/.venv-dspy), so neither warms the other's
caches. Both use uncached LMs. The main process reads the server's request counter when the
party says its compile is done, so "LM calls" are the compile's calls only; the final score
is then measured by each party on a held-out test set with its own evaluator. Each pair
runs ``--rounds`` times (who goes first alternates); medians are reported.

Writes bench/results/optimizers.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OURS_PY = Path(sys.executable)
DSPY_PY = BENCH / ".venv-dspy" / "bin" / "python"

MAGIC = "carefully"
PROPOSALS = [
    "Answer the question.",
    f"Reverse the word {MAGIC}, letter by letter.",
    "Be concise.",
    f"Read the word {MAGIC} and write it backwards.",
    "Respond quickly.",
]
_WORD = re.compile(r"Reverse the word: (\w+)")
_MARKER = re.compile(r"\[\[ ## (\w+) ## \]\]")

OPTIMIZERS = ("bootstrap", "random_search", "mipro")
THREADS = 16
CONFIG: dict[str, dict[str, Any]] = {
    "bootstrap": {"max_bootstrapped_demos": 4, "max_labeled_demos": 4},
    "random_search": {
        "max_bootstrapped_demos": 4,
        "max_labeled_demos": 4,
        "num_candidate_programs": 6,
    },
    "mipro": {
        "num_candidates": 5,
        "max_bootstrapped_demos": 3,
        "max_labeled_demos": 3,
        "num_trials": 10,
        "minibatch_size": 20,
    },
}


def words(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(count)
    ]


def splits() -> dict[str, list[tuple[str, str]]]:
    all_words = words(120, 0)
    pairs = [(f"Reverse the word: {w}", w[::-1]) for w in all_words]
    return {"train": pairs[:30], "val": pairs[30:70], "test": pairs[70:120]}


# -- the simulated LM (runs in our venv) ------------------------------------------------------
def _requested(text: str) -> list[str]:
    idx = text.rfind("Respond with")
    names = _MARKER.findall(text[idx:]) if idx >= 0 else []
    return [n for n in names if n != "completed"] or ["answer"]


def responder(request: Any) -> Any:
    from dspy_actors.testing._sim_wire import message_text
    from dspy_actors.testing.sim_lm import SimReply
    from dspy_actors.testing.sim_responder import default_responder

    text = request.last_user_text
    names = _requested(text)
    if "proposed_instruction" in names:
        first = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        texts = []
        for i in range(request.n):
            values = {n: PROPOSALS[(first + i) % len(PROPOSALS)] for n in names}
            texts.append(_chat(values))
        return SimReply(texts)
    if "answer" not in names:
        return default_responder(request)  # DSPy's proposer helpers: summaries etc.
    system = "".join(message_text(m) for m in request.messages if m.get("role") == "system")
    has_demos = any(m.get("role") == "assistant" for m in request.messages)
    match = _WORD.search(text)
    word = match.group(1) if match else ""
    answer = word[::-1] if (has_demos or MAGIC in system) and word else "unknown"
    return _chat({n: ("I reverse the letters." if n == "reasoning" else answer) for n in names})


def _chat(values: dict[str, str]) -> str:
    parts = [f"[[ ## {k} ## ]]\n{v}" for k, v in values.items()]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


def serve(latency: float) -> None:
    """Run the SimLM; print its port; answer "count" lines with the request count."""
    from dspy_actors.testing.sim_lm import SimLM

    with SimLM(responder, latency=latency, record_requests=False) as sim:
        print(sim.port, flush=True)
        for line in sys.stdin:
            if line.strip() == "count":
                print(sim.request_count, flush=True)


# -- the parties (each in its own process) ----------------------------------------------------
def _metric(example: Any, prediction: Any, trace: Any = None) -> bool:
    return str(example.answer).strip() == str(getattr(prediction, "answer", "")).strip()


def _handshake() -> None:
    print("COMPILED", flush=True)
    sys.stdin.readline()


def party_ours(name: str, url: str) -> dict[str, Any]:
    import dspy_actors as dsa
    from dspy_actors.evaluate import Evaluate
    from dspy_actors.optimizers import (
        BootstrapFewShot,
        BootstrapFewShotWithRandomSearch,
        MIPROv2,
    )

    data = {k: [dsa.Example(question=q, answer=a).with_inputs("question") for q, a in v]
            for k, v in splits().items()}  # fmt: skip
    lm = dsa.LM("openai/sim-task", api_base=url, api_key="k", cache=False)
    dsa.configure(lm=lm)
    student = dsa.ChainOfThought("question -> answer")
    cfg = dict(CONFIG[name])
    optimizer: Any
    if name == "bootstrap":
        optimizer = BootstrapFewShot(_metric, num_threads=THREADS, **cfg)
    elif name == "random_search":
        optimizer = BootstrapFewShotWithRandomSearch(_metric, num_threads=THREADS, **cfg)
    else:
        optimizer = MIPROv2(_metric, num_threads=THREADS, **cfg)
    start = time.perf_counter()
    compiled = optimizer.compile(student, trainset=data["train"], valset=data["val"])
    wall = time.perf_counter() - start
    _handshake()
    result = Evaluate(devset=data["test"], metric=_metric, concurrency=THREADS, progress=False)(
        compiled
    )
    lm.close()
    return {"wall_s": wall, "score": result.score}


def party_dspy(name: str, url: str) -> dict[str, Any]:
    import dspy  # type: ignore[import-not-found]  # lives in bench/.venv-dspy

    data = {k: [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in v]
            for k, v in splits().items()}  # fmt: skip
    lm = dspy.LM("openai/sim-task", api_base=url, api_key="k", cache=False, num_retries=3)
    dspy.configure(lm=lm)
    student = dspy.ChainOfThought("question -> answer")
    cfg = dict(CONFIG[name])
    start = time.perf_counter()
    if name == "bootstrap":
        optimizer = dspy.BootstrapFewShot(metric=_metric, **cfg)
        compiled = optimizer.compile(student, trainset=data["train"])
    elif name == "random_search":
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            metric=_metric, num_threads=THREADS, **cfg
        )
        compiled = optimizer.compile(student, trainset=data["train"], valset=data["val"])
    else:
        trials = cfg.pop("num_trials")
        batch = cfg.pop("minibatch_size")
        optimizer = dspy.MIPROv2(
            metric=_metric, auto=None, num_threads=THREADS, verbose=False, track_stats=False,
            **cfg,
        )  # fmt: skip
        compiled = optimizer.compile(
            student, trainset=data["train"], valset=data["val"], num_trials=trials,
            minibatch_size=batch,
        )  # fmt: skip
    wall = time.perf_counter() - start
    _handshake()
    evaluate = dspy.Evaluate(
        devset=data["test"], metric=_metric, num_threads=THREADS, display_progress=False
    )
    result = evaluate(compiled)
    return {"wall_s": wall, "score": float(result.score)}


# -- the driver ---------------------------------------------------------------------------------
def _run_party(python: Path, party: str, name: str, url: str, server: Any) -> dict[str, Any]:
    def count() -> int:
        server.stdin.write("count\n")
        server.stdin.flush()
        return int(server.stdout.readline())

    before = count()
    proc = subprocess.Popen(
        [str(python), __file__, "--party", party, "--optimizer", name, "--url", url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    calls = None
    result: dict[str, Any] = {}
    for line in proc.stdout:
        if line.strip() == "COMPILED":
            calls = count() - before
            proc.stdin.write("go\n")
            proc.stdin.flush()
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    proc.wait(timeout=600)
    if proc.returncode != 0 or calls is None:
        return {"error": f"exit {proc.returncode}"}
    return {**result, "lm_calls": calls}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--party", choices=("ours", "dspy"))
    parser.add_argument("--optimizer", choices=OPTIMIZERS)
    parser.add_argument("--url")
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--no-dspy", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.serve:
        serve(args.latency)
        return
    if args.party:
        fn = party_ours if args.party == "ours" else party_dspy
        print("RESULT " + json.dumps(fn(args.optimizer, args.url)), flush=True)
        return

    sys.path.insert(0, str(BENCH))
    from _common import machine_info, median, write_results

    server = subprocess.Popen(
        [str(OURS_PY), __file__, "--serve", "--latency", str(args.latency)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert server.stdout is not None
    assert server.stdin is not None
    url = f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
    results: dict[str, Any] = {}
    parties = [("ours", OURS_PY)]
    if not args.no_dspy and DSPY_PY.exists():
        parties.append(("dspy", DSPY_PY))
    try:
        for name in OPTIMIZERS:
            runs: dict[str, list[dict[str, Any]]] = {p: [] for p, _ in parties}
            for r in range(args.rounds):
                # Alternate who goes first, so drift on a shared machine hits both alike.
                order = parties if r % 2 == 0 else parties[::-1]
                for party, python in order:
                    runs[party].append(_run_party(python, party, name, url, server))
                    print(name, party, runs[party][-1], flush=True)
            row: dict[str, Any] = {"config": CONFIG[name]}
            for party, got in runs.items():
                ok = [g for g in got if "wall_s" in g]
                if not ok:
                    row[party] = got[-1]
                    continue
                row[party] = {
                    "wall_s": median(g["wall_s"] for g in ok),
                    "wall_s_all": [g["wall_s"] for g in ok],
                    "lm_calls": median(g["lm_calls"] for g in ok),
                    "score": median(g["score"] for g in ok),
                }
            if "wall_s" in row.get("dspy", {}) and "wall_s" in row["ours"]:
                row["wall_ratio_ours_over_dspy"] = row["ours"]["wall_s"] / row["dspy"]["wall_s"]
            results[name] = row
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    payload = {
        "machine": machine_info(),
        "latency_s": args.latency,
        "threads": THREADS,
        "rounds": args.rounds,
        "results": results,
    }
    path = write_results("optimizers", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
