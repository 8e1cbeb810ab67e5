"""Benchmark of the reflective optimizers (issue 18): GEPA and SIMBA, ours against DSPy
3.4.1's, on the same task and the same simulated LM server, in the same run.

    bash bench/setup_dspy_venv.sh          # once: bench/.venv-dspy with dspy==3.4.1 (+ numpy)
    .venv/bin/python bench/bench_reflective.py [--latency 0.05] [--rounds 3] [--no-dspy] [--all]

``--all`` also runs our other optimizers (bootstrap, random search, COPRO, MIPROv2) on the
task, ours only, for the cost table in docs/optimizers.md.

The task (dspy_actors/testing/reflective_task.py): answer a word by its hidden family's rule
(reverse / capitals / dashes). The simulated LM follows a rule only when the instructions
carry it or a demo of that family is in the prompt; the metric's feedback names the rule a
wrong answer broke. GEPA's reflection prompt and SIMBA's advice request get answers built
from what they show (the feedback, the better trajectory), so a score rises only as far as
the optimizer carries that into the program.

The server (SimLM, ``--serve``) runs in its own process; each (party, optimizer) pair runs
in a fresh subprocess (ours in .venv, DSPy in bench/.venv-dspy), both with uncached LMs and
16 threads. The data and the metric (score + feedback) are the same JSON for both parties.
"LM calls" are the server's request count over the compile only (``cpu_s``: the party
process's CPU time over the compile); the score is measured
after, by each party, on a held-out test set. Each pair runs ``--rounds`` times (who goes
first alternates); medians are reported.

Writes bench/results/reflective.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OURS_PY = Path(sys.executable)
DSPY_PY = BENCH / ".venv-dspy" / "bin" / "python"

OPTIMIZERS = ("gepa", "simba")
# Ours only (--all): the other optimizers on the same task, for docs/optimizers.md's costs.
OTHERS = ("bootstrap", "random_search", "copro", "mipro")
THREADS = 16
SEED = 0
CONFIG: dict[str, dict[str, Any]] = {
    "gepa": {"max_metric_calls": 150, "reflection_minibatch_size": 3},
    "simba": {"bsize": 8, "num_candidates": 4, "max_steps": 8},
    "bootstrap": {"max_bootstrapped_demos": 4, "max_labeled_demos": 0},
    "random_search": {
        "max_bootstrapped_demos": 4,
        "max_labeled_demos": 0,
        "num_candidate_programs": 6,
    },
    "copro": {"breadth": 4, "depth": 2},
    "mipro": {
        "num_candidates": 4,
        "max_bootstrapped_demos": 3,
        "max_labeled_demos": 0,
        "num_trials": 8,
        "minibatch_size": 6,
    },
}


def splits() -> dict[str, list[dict[str, str]]]:
    """Train / val / test as JSON rows (word, answer, rule): computed in our venv, passed to
    both parties so they see identical data."""
    from dspy_actors.testing.reflective_task import RULES, WORDS, answer_for, family

    rows = [{"word": w, "answer": answer_for(w), "rule": RULES[family(w)]} for w in WORDS]
    return {"train": rows[:12], "val": rows[12:24], "test": rows[24:36], "simba_train": rows[:24]}


def serve(latency: float) -> None:
    """Run the SimLM; print its port; answer "count" lines with the request count."""
    from dspy_actors.testing.reflective_task import responder
    from dspy_actors.testing.sim_lm import SimLM

    with SimLM(responder, latency=latency, record_requests=False) as sim:
        print(sim.port, flush=True)
        for line in sys.stdin:
            if line.strip() == "count":
                print(sim.request_count, flush=True)


# -- the parties (each in its own process) ----------------------------------------------------
def _feedback(example: Any, prediction: Any) -> tuple[float, str]:
    got = str(getattr(prediction, "answer", "") or "").strip()
    want = str(example.answer)
    if got == want:
        return 1.0, f"Correct: {want!r}."
    return 0.0, f"Expected {want!r} but got {got!r}. {example.rule}"


def _handshake() -> None:
    print("COMPILED", flush=True)
    sys.stdin.readline()


def party_ours(name: str, url: str, data_file: str) -> dict[str, Any]:
    import dspy_actors as dsa
    from dspy_actors.evaluate import Evaluate
    from dspy_actors.optimizers import GEPA, SIMBA

    raw = json.loads(Path(data_file).read_text())
    data = {k: [dsa.Example(**r).with_inputs("word") for r in v] for k, v in raw.items()}

    def metric(
        example: Any, prediction: Any, trace: Any = None, pred_name: Any = None, pt: Any = None
    ) -> Any:
        score, feedback = _feedback(example, prediction)
        return dsa.Prediction(score=score, feedback=feedback)

    def plain(example: Any, prediction: Any, trace: Any = None) -> float:
        return _feedback(example, prediction)[0]

    lm = dsa.LM("openai/sim-reflective", api_base=url, api_key="k", cache=False)
    dsa.configure(lm=lm)
    student = dsa.Predict("word -> answer")
    student.signature = student.signature.with_instructions("Given the word, produce the answer.")
    start, cpu = time.perf_counter(), time.process_time()
    if name == "gepa":
        gepa = GEPA(metric, reflection_lm=lm, num_threads=THREADS, seed=SEED, **CONFIG["gepa"])
        compiled = gepa.compile(student, trainset=data["train"], valset=data["val"])
    elif name == "simba":
        simba = SIMBA(metric=metric, prompt_model=lm, num_threads=THREADS, seed=SEED,
                      **CONFIG["simba"])  # fmt: skip
        compiled = simba.compile(student, trainset=data["simba_train"])
    else:
        compiled = _other(name, plain, lm).compile(
            student, trainset=data["train"], valset=data["val"]
        )
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    _handshake()
    result = Evaluate(devset=data["test"], metric=plain, concurrency=THREADS, progress=False)(
        compiled
    )
    lm.close()
    return {"wall_s": wall, "cpu_s": cpu, "score": result.score}


def _other(name: str, metric: Any, lm: Any) -> Any:
    from dspy_actors.optimizers import (
        COPRO,
        BootstrapFewShot,
        BootstrapFewShotWithRandomSearch,
        MIPROv2,
    )

    cfg = dict(CONFIG[name])
    if name == "bootstrap":
        return BootstrapFewShot(metric, num_threads=THREADS, **cfg)
    if name == "random_search":
        return BootstrapFewShotWithRandomSearch(metric, num_threads=THREADS, **cfg)
    if name == "copro":
        return COPRO(metric, prompt_model=lm, num_threads=THREADS, **cfg)
    return MIPROv2(metric, prompt_model=lm, num_threads=THREADS, **cfg)


def party_dspy(name: str, url: str, data_file: str) -> dict[str, Any]:
    import dspy  # type: ignore[import-not-found]  # lives in bench/.venv-dspy

    raw = json.loads(Path(data_file).read_text())
    data = {k: [dspy.Example(**r).with_inputs("word") for r in v] for k, v in raw.items()}

    def metric(
        example: Any, prediction: Any, trace: Any = None, pred_name: Any = None, pt: Any = None
    ) -> Any:
        score, feedback = _feedback(example, prediction)
        return dspy.Prediction(score=score, feedback=feedback)

    def plain(example: Any, prediction: Any, trace: Any = None) -> float:
        return _feedback(example, prediction)[0]

    lm = dspy.LM("openai/sim-reflective", api_base=url, api_key="k", cache=False, num_retries=3)
    dspy.configure(lm=lm)
    student = dspy.Predict("word -> answer")
    student.signature = student.signature.with_instructions("Given the word, produce the answer.")
    start, cpu = time.perf_counter(), time.process_time()
    if name == "gepa":
        gepa = dspy.GEPA(
            metric=metric, reflection_lm=lm, num_threads=THREADS, seed=SEED, **CONFIG["gepa"]
        )
        compiled = gepa.compile(student, trainset=data["train"], valset=data["val"])
    else:
        simba = dspy.SIMBA(metric=metric, prompt_model=lm, num_threads=THREADS, **CONFIG["simba"])
        compiled = simba.compile(student, trainset=data["simba_train"], seed=SEED)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    _handshake()
    evaluate = dspy.Evaluate(
        devset=data["test"], metric=plain, num_threads=THREADS, display_progress=False
    )
    result = evaluate(compiled)
    return {"wall_s": wall, "cpu_s": cpu, "score": float(result.score)}


# -- the driver ---------------------------------------------------------------------------------
def _run_party(
    python: Path, party: str, name: str, url: str, data_file: Path, server: Any
) -> dict[str, Any]:
    def count() -> int:
        server.stdin.write("count\n")
        server.stdin.flush()
        return int(server.stdout.readline())

    before = count()
    proc = subprocess.Popen(
        [str(python), __file__, "--party", party, "--optimizer", name, "--url", url,
         "--data", str(data_file)],
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
    proc.wait(timeout=900)
    if proc.returncode != 0 or calls is None:
        return {"error": f"exit {proc.returncode}"}
    return {**result, "lm_calls": calls}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--party", choices=("ours", "dspy"))
    parser.add_argument("--optimizer", choices=OPTIMIZERS + OTHERS)
    parser.add_argument("--only", choices=OPTIMIZERS + OTHERS, action="append")
    parser.add_argument("--all", action="store_true", help="also ours: " + ", ".join(OTHERS))
    parser.add_argument("--url")
    parser.add_argument("--data")
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--no-dspy", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.serve:
        serve(args.latency)
        return
    if args.party:
        fn = party_ours if args.party == "ours" else party_dspy
        print("RESULT " + json.dumps(fn(args.optimizer, args.url, args.data)), flush=True)
        return

    sys.path.insert(0, str(BENCH))
    from _common import machine_info, median, write_results

    data_file = BENCH / "results" / "reflective_data.json"
    data_file.parent.mkdir(exist_ok=True)
    data_file.write_text(json.dumps(splits()))
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
        names = args.only or (OPTIMIZERS + OTHERS if args.all else OPTIMIZERS)
        for name in names:
            who = parties if name in OPTIMIZERS else parties[:1]
            runs: dict[str, list[dict[str, Any]]] = {p: [] for p, _ in who}
            for r in range(args.rounds):
                # Alternate who goes first, so drift on a shared machine hits both alike.
                order = who if r % 2 == 0 else who[::-1]
                for party, python in order:
                    runs[party].append(_run_party(python, party, name, url, data_file, server))
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
                    "cpu_s": median(g["cpu_s"] for g in ok),
                    "lm_calls": median(g["lm_calls"] for g in ok),
                    "score": median(g["score"] for g in ok),
                    "score_all": [g["score"] for g in ok],
                }
            if "wall_s" in row.get("dspy", {}) and "wall_s" in row["ours"]:
                row["wall_ratio_ours_over_dspy"] = row["ours"]["wall_s"] / row["dspy"]["wall_s"]
            results[name] = row
    finally:
        server.stdin.close()
        server.wait(timeout=30)
        data_file.unlink(missing_ok=True)
    payload = {
        "machine": machine_info(),
        "latency_s": args.latency,
        "threads": THREADS,
        "rounds": args.rounds,
        "results": results,
    }
    path = write_results("reflective", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
