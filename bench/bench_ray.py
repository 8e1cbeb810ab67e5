"""Benchmark: an evaluation on a three-node local Ray cluster vs one process (issue 17).

    .venv/bin/python bench/bench_ray.py [--examples 5000] [--latency 0.05] [--in-flight 24]

The simulated LM (SimLM, ``--latency`` seconds per request) runs in its own process. In the
same run, on the same devset and program (a Predict; the metric compares answers):

(1) one process: ``Evaluate(concurrency=in_flight)`` on local threads;
(2) a Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and two worker
    nodes, one CPU each, so three tasks at once) and ``RayExecutor`` with
    ``threads_per_task = in_flight / 3``: the same number of LM calls in flight;
(3) the same as (2) through the cluster-wide rate limit (a limit far above the rate
    reached, so it measures the limiter's cost, not its throttling);
(4) overhead: a 30-example evaluation with no LM latency, both ways (fixed costs: shipping
    the program and function, scheduling tasks, rebuilding the LM on each worker), and
    one reservation round trip to the limiter actor (microseconds, mean of 500).

Reported: seconds, examples/s, and the ratios of (2)/(1), (3)/(2) from this run. Numbers
from one run of a busy shared 2-core machine: compare within a run, not across runs. With
one machine's cores shared by the three "nodes", the cluster cannot be faster than one
process here: this measures what the fan-out costs; the gain comes with real machines.
Writes bench/results/ray.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
NODE: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 100 * 1024 * 1024}


def _metric(example: Any, prediction: Any, trace: Any = None) -> bool:
    return str(getattr(prediction, "answer", "")) != ""


def _devset(n: int) -> list[Any]:
    from dspy_actors.primitives.example import Example

    return [Example(question=f"What is {i} + 1?", answer=str(i + 1)).with_inputs("question")
            for i in range(n)]  # fmt: skip


def _timed(evaluate: Any, program: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = evaluate(program)
    return time.perf_counter() - started, result


def _start_sim(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dspy_actors.testing", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url:
        proc.kill()
        raise RuntimeError("the SimLM process did not start")
    return proc, url


def run(args: argparse.Namespace) -> dict[str, Any]:
    import dspy_actors as dsa
    from dspy_actors.distributed import RayExecutor
    from dspy_actors.lm import LM

    tmp = tempfile.mkdtemp(prefix="dsaray-", dir="/tmp")  # short: Ray's sockets live here
    os.makedirs(os.path.join(tmp, "ray"))
    os.environ.update(RAY_TMPDIR=tmp, RAY_USAGE_STATS_ENABLED="0", OPENAI_API_KEY="k")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")) if p
    )
    import ray
    from ray.cluster_utils import Cluster

    sims = [_start_sim(args.latency), _start_sim(0.0)]
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    out: dict[str, Any] = {"examples": args.examples, "latency_s": args.latency,
                           "in_flight": args.in_flight}  # fmt: skip
    try:
        cluster.add_node(**NODE)
        cluster.add_node(**NODE)
        cluster.wait_for_nodes(timeout=120)
        ray.init(address=cluster.address, namespace="dspy-actors", log_to_driver=False)
        devset = _devset(args.examples)
        program = dsa.Predict("question -> answer")
        per_task = max(1, args.in_flight // 3)
        for label, url in (("slow", sims[0][1]), ("fast", sims[1][1])):
            lm = LM("openai/sim", api_base=url + "/v1", api_key="k", cache=False)
            examples = devset if label == "slow" else devset[:30]
            with dsa.context(lm=lm):
                local = dsa.Evaluate(devset=examples, metric=_metric, progress=False,
                                     concurrency=args.in_flight)  # fmt: skip
                spread = dsa.Evaluate(devset=examples, metric=_metric, progress=False,
                                      executor=RayExecutor(threads_per_task=per_task))  # fmt: skip
                limited = RayExecutor(threads_per_task=per_task, rate_limit_name="bench",
                                      rate_limit={"requests_per_second": 100_000.0})  # fmt: skip
                throttled = dsa.Evaluate(devset=examples, metric=_metric, progress=False,
                                         executor=limited)  # fmt: skip
                spread(program.deepcopy())  # warm: workers started, modules imported
                rows = {}
                for name, evaluate in (("one_process", local), ("ray_3_nodes", spread),
                                       ("ray_3_nodes_rate_limited", throttled)):  # fmt: skip
                    seconds, result = _timed(evaluate, program)
                    assert result.errors == 0, f"{name}: {result.errors} errors"
                    rows[name] = {"seconds": round(seconds, 3),
                                  "examples_per_s": round(len(examples) / seconds, 1)}  # fmt: skip
                out[label] = rows
                out[label]["ray_vs_one_process_time"] = round(
                    rows["ray_3_nodes"]["seconds"] / rows["one_process"]["seconds"], 3
                )
                out[label]["rate_limited_vs_ray_time"] = round(
                    rows["ray_3_nodes_rate_limited"]["seconds"] / rows["ray_3_nodes"]["seconds"], 3
                )
                if label == "fast":
                    actor = limited.limiter()
                    ray.get(actor.reserve.remote(10.0), timeout=60)
                    started = time.perf_counter()
                    for _ in range(500):
                        ray.get(actor.reserve.remote(10.0), timeout=60)
                    out["limiter_reservation_us"] = round(
                        (time.perf_counter() - started) / 500 * 1e6, 1
                    )
            lm.close()
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
        for proc, _ in sims:
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--in-flight", type=int, default=24)
    args = parser.parse_args()
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
