"""Benchmarks of the LM-programming core (issue 3): our LM layer against DSPy 3.4.1.

    bash bench/setup_dspy_venv.sh                 # once: bench/.venv-dspy with dspy==3.4.1
    .venv/bin/python bench/bench_core.py [--quick] [--rounds N] [--profile] [--no-dspy]
                                         [--dspy-engines auto,litellm]

Every party talks to the same simulated LM server (``dspy_actors.testing.SimLM``), which runs
in its own process so that its threads never share a GIL with a client: one server with no
latency, one with 100 ms. Each peer (ours in .venv, DSPy in bench/.venv-dspy) is a
long-lived subprocess driven over a line protocol (see ``peers/ours_peer.py``); rounds are
interleaved (ours, dspy, then dspy, ours, ...) so that drift on this shared machine hits
both sides alike, and the numbers reported are medians over rounds.

(1) cached ``Predict`` call, us per call (both sides use a memory-only cache; the server's
    request counter proves the timed loops never reach it);
(2) uncached ``Predict`` over loopback at zero latency, us per call, against a raw
    ``httpx.Client`` post of a prebuilt body (the body our Predict sent) to the same
    endpoint; reported as ratios to raw;
(3) throughput at 100 ms latency with 16, 64 and 256 calls in flight from threads,
    examples/s against the ideal ``in_flight / 0.1 s``; a raw-httpx run at the same
    concurrency measures the ceiling of the server (plus a minimal client) on this machine.
    Two throughputs per run: *steady*, the number in flight over the mean latency of the
    calls made while every thread was still calling (Little's law: the throughput at that
    many in flight; the targets use it), and *end to end*, every call over the time until
    the slowest thread was done (its last stretch runs with fewer calls in flight).

If one of our targets is missed (or with ``--profile``), our peer is run under cProfile on
the cached and uncached loops and the top functions (us per call) are reported.

Writes bench/results/core.json. ``--serve`` is internal: it runs one SimLM process.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, median, write_results

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OURS_PY = Path(sys.executable)
DSPY_PY = BENCH / ".venv-dspy" / "bin" / "python"

TARGET_CACHED_US = 60.0
TARGET_UNCACHED_RATIO = 1.15
TARGET_FRACTION_AT_64 = 0.90
SLOW_LATENCY_S = 0.1
IN_FLIGHT = (16, 64, 256)
CACHED_QUESTION = "What is 2 + 3?"


# ------------------------------------------------------------------ the server process


def serve(latency: float) -> None:
    """Run one SimLM until stdin closes or says ``quit``. First stdout line: its URL. Each
    ``stats`` line on stdin is answered by one JSON line: counters, the server process's
    CPU seconds, and the body of the last request (the raw baseline posts it)."""
    from dspy_actors.testing import SimLM, SimRequest
    from dspy_actors.testing.sim_responder import default_responder

    last: dict[str, Any] = {}

    def responder(req: SimRequest) -> Any:
        last["body"] = req.body
        return default_responder(req)

    sim = SimLM(responder, latency=latency, record_requests=False, thread_name_prefix="bench-sim")
    with sim:
        print(sim.url, flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "quit":
                break
            if cmd == "stats":
                s = sim.stats
                usage = resource.getrusage(resource.RUSAGE_SELF)
                print(
                    json.dumps(
                        {
                            "requests": s.requests,
                            "served": s.served,
                            "errors": dict(s.errors),
                            "injected": dict(s.injected),
                            "cpu_s": usage.ru_utime + usage.ru_stime,
                            "threads": threading.active_count(),
                            "last_body": last.get("body"),
                        }
                    ),
                    flush=True,
                )


# ------------------------------------------------------------------ subprocess plumbing


class Child:
    """A subprocess spoken to by lines: every request gets one stdout line back."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.stderr.log"
        self._log: IO[str] = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            cwd=str(BENCH / "peers"),
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def readline(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no answer within {timeout:g}s") from None
        if line is None:
            raise RuntimeError(f"{self.name} exited; stderr:\n{self.stderr_tail()}")
        return line

    def send(self, line: str, timeout: float) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.readline(timeout)

    def stderr_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def close(self, goodbye: str, timeout: float = 15.0) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(goodbye + "\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
            self.proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        self._log.close()


class Server(Child):
    def __init__(self, name: str, latency: float, env: dict[str, str], logdir: Path) -> None:
        argv = [str(OURS_PY), str(Path(__file__).resolve()), "--serve", "--latency", str(latency)]
        super().__init__(name, argv, env, logdir)
        self.url = self.readline(timeout=60).strip()
        self.endpoint = self.url + "/v1/chat/completions"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.send("stats", timeout=30))
        return result

    def stop(self) -> None:
        self.close("quit")


class Peer(Child):
    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], logdir: Path) -> None:
        super().__init__(name, argv, env, logdir)
        self.hello: dict[str, Any] = json.loads(self.readline(timeout=300))

    def call(self, timeout: float = 900, **cmd: Any) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.send(json.dumps(cmd), timeout))
        if "error" in result:
            raise RuntimeError(f"{self.name} {cmd.get('op')}: {result['error']}\n{result}")
        return result

    def stop(self) -> None:
        self.close(json.dumps({"op": "quit"}))


def measured(server: Server, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one op and add what the server saw meanwhile: requests and its CPU per request."""
    before = server.stats()
    result = run()
    after = server.stats()
    requests = after["requests"] - before["requests"]
    result["server_requests"] = requests
    result["server_errors"] = sum(after["errors"].values()) - sum(before["errors"].values())
    cpu = after["cpu_s"] - before["cpu_s"]
    result["server_cpu_us_per_request"] = cpu / requests * 1e6 if requests else None
    return result


# ------------------------------------------------------------------ the benchmark


def config(quick: bool, rounds: int | None) -> dict[str, Any]:
    if quick:
        return {
            "rounds": rounds or 2,
            "cached_n": 1000,
            "uncached_n": 150,
            "per_thread": {16: 6, 64: 4, 256: 3},
            "profile_n": {"cached": 1000, "uncached": 200},
        }
    return {
        "rounds": rounds or 5,
        "cached_n": 5000,
        "uncached_n": 500,
        "per_thread": {16: 20, 64: 10, 256: 6},
        "profile_n": {"cached": 5000, "uncached": 600},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = config(args.quick, args.rounds)
    logdir = Path(tempfile.mkdtemp(prefix="bench-core-"))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # offline: no fetch of LiteLLM's cost map
    env["DSPY_CACHEDIR"] = str(logdir / "dspy-cache")  # never touch the user's DSPy cache
    env["DSPY_ACTORS_CACHE_DIR"] = str(logdir / "ours-cache")

    engines = [] if args.no_dspy else [e for e in args.dspy_engines.split(",") if e]
    if engines and not DSPY_PY.exists():
        print(f"{DSPY_PY} missing: run bash bench/setup_dspy_venv.sh (skipping DSPy)")
        engines = []

    fast = Server("sim-fast", 0.0, env, logdir)
    slow = Server("sim-slow", SLOW_LATENCY_S, env, logdir)
    urls = ["--url", fast.url, "--slow-url", slow.url]
    peers: list[Peer] = []
    try:
        peers.append(Peer("ours", [str(OURS_PY), "ours_peer.py", *urls], env, logdir))
        for engine in engines:
            argv = [str(DSPY_PY), "dspy_peer.py", *urls, "--engine", engine]
            peers.append(Peer(f"dspy[{engine}]", argv, env, logdir))
        return _run_rounds(cfg, fast, slow, peers, args.profile)
    finally:
        for p in peers:
            p.stop()
        fast.stop()
        slow.stop()


def _run_rounds(
    cfg: dict[str, Any], fast: Server, slow: Server, peers: list[Peer], force_profile: bool
) -> dict[str, Any]:
    ours = peers[0]
    # The raw baseline posts exactly the body our Predict sends.
    ours.call(op="uncached", prefix="body", n=1, warm=0)
    body = json.dumps(fast.stats()["last_body"])
    names = [p.name for p in peers]
    cached: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    uncached: dict[str, list[dict[str, Any]]] = {n: [] for n in [*names, "raw"]}
    tput: dict[int, dict[str, list[dict[str, Any]]]] = {
        k: {n: [] for n in [*names, "raw", "server"]} for k in IN_FLIGHT
    }

    n_cached, n_uncached = cfg["cached_n"], cfg["uncached_n"]
    for r in range(cfg["rounds"]):
        order = peers if r % 2 == 0 else list(reversed(peers))
        t0 = time.perf_counter()
        for p in order:
            cached_op = partial(p.call, op="cached", question=CACHED_QUESTION, n=n_cached)
            cached[p.name].append(measured(fast, cached_op))
        slots: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            (p.name, partial(p.call, op="uncached", prefix=f"r{r}", n=n_uncached)) for p in order
        ]
        # Raw takes a different slot each round.
        raw = partial(ours.call, op="raw", endpoint=fast.endpoint, body=body, n=n_uncached)
        slots.insert(r % (len(slots) + 1), ("raw", raw))
        for name, fn in slots:
            uncached[name].append(measured(fast, fn))
        for k in IN_FLIGHT:
            shape = {"in_flight": k, "per_thread": cfg["per_thread"][k]}
            slots = [
                (p.name, partial(p.call, op="throughput", prefix=f"r{r}k{k}", **shape))
                for p in order
            ]
            raw = partial(
                ours.call, op="raw_throughput", endpoint=slow.endpoint, body=body, **shape
            )
            slots.insert(r % (len(slots) + 1), ("raw", raw))
            ceiling = partial(
                ours.call, op="socket_throughput", endpoint=slow.endpoint, body=body, **shape
            )
            slots.append(("server", ceiling))
            for name, fn in slots:
                tput[k][name].append(measured(slow, fn))
        print(f"round {r + 1}/{cfg['rounds']} done in {time.perf_counter() - t0:.1f}s", flush=True)

    summary = _summarize(cached, uncached, tput, names)
    targets = _targets(summary)
    result: dict[str, Any] = {
        "config": {**cfg, "slow_latency_s": SLOW_LATENCY_S, "in_flight": list(IN_FLIGHT)},
        "peers": {p.name: p.hello for p in peers},
        "summary": summary,
        "targets": targets,
        "rounds": {"cached": cached, "uncached": uncached, "throughput": tput},
        "raw_body_bytes": len(body),
    }
    if force_profile or not all(t["met"] for t in targets.values()):
        result["profile"] = _profile(ours, fast, slow, body, cfg)
    return result


def _summarize(
    cached: dict[str, list[dict[str, Any]]],
    uncached: dict[str, list[dict[str, Any]]],
    tput: dict[int, dict[str, list[dict[str, Any]]]],
    names: list[str],
) -> dict[str, Any]:
    raw_rounds = [x["us_per_call"] for x in uncached["raw"]]
    # Medians are the headline; "best" (the quietest round) shows the intrinsic cost when
    # other load on the machine inflates the medians.
    out: dict[str, Any] = {
        "cached_us": {},
        "cached_us_best": {},
        "uncached_us": {},
        "uncached_us_best": {},
        "uncached_ratio_to_raw": {},
    }
    for n in names:
        out["cached_us"][n] = median(x["us_per_call"] for x in cached[n])
        out["cached_us_best"][n] = min(x["us_per_call"] for x in cached[n])
        out.setdefault("cached_server_requests", {})[n] = sum(
            x["server_requests"] for x in cached[n]
        )
        us = [x["us_per_call"] for x in uncached[n]]
        out["uncached_us"][n] = median(us)
        out["uncached_us_best"][n] = min(us)
        # Paired per round (same minute of machine noise), then the median.
        out["uncached_ratio_to_raw"][n] = median(a / b for a, b in zip(us, raw_rounds, strict=True))
        out.setdefault("uncached_server_requests_ok", {})[n] = all(
            x["server_requests"] == x["calls"] for x in uncached[n]
        )
    out["uncached_us"]["raw"] = median(raw_rounds)
    out["uncached_us_best"]["raw"] = min(raw_rounds)
    out["client_cpu_us_per_call"] = {
        "cached": {n: median(x["client_cpu_us_per_call"] for x in cached[n]) for n in names},
        "uncached": {
            n: median(x["client_cpu_us_per_call"] for x in uncached[n]) for n in [*names, "raw"]
        },
    }
    tp: dict[str, Any] = {}
    for k, by_name in tput.items():
        ideal = k / SLOW_LATENCY_S
        row: dict[str, Any] = {"ideal": ideal}
        for n, runs in by_name.items():
            row[n] = throughput_row(runs, ideal)
        tp[str(k)] = row
    out["throughput"] = tp
    return out


def throughput_row(runs: list[dict[str, Any]], ideal: float) -> dict[str, Any]:
    """One party's throughput at one concurrency, as medians over its rounds."""
    eps = median(x["examples_per_s"] for x in runs)
    steady = median(x.get("steady_examples_per_s", 0.0) for x in runs)
    return {
        "examples_per_s": eps,
        "examples_per_s_best": max(x["examples_per_s"] for x in runs),
        "fraction_of_ideal": eps / ideal,
        # While every caller is still calling: the throughput at that many in flight (see
        # run_threads in peers/ours_peer.py). The targets are judged on it.
        "steady_examples_per_s": steady,
        "steady_fraction_of_ideal": steady / ideal,
        "errors": sum(x["errors"] for x in runs),
        "client_cpu_us_per_call": median(x["client_cpu_us_per_call"] for x in runs),
        "server_cpu_us_per_request": median(x["server_cpu_us_per_request"] or 0.0 for x in runs),
    }


def _targets(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cached = summary["cached_us"]["ours"]
    ratio = summary["uncached_ratio_to_raw"]["ours"]
    frac = summary["throughput"]["64"]["ours"]["steady_fraction_of_ideal"]
    return {
        "cached_us": {"value": cached, "target": f"<= {TARGET_CACHED_US}", "met": cached <= 60},
        "uncached_ratio_to_raw": {
            "value": ratio,
            "target": f"<= {TARGET_UNCACHED_RATIO}",
            "met": ratio <= TARGET_UNCACHED_RATIO,
        },
        "throughput_64_fraction_of_ideal": {
            "value": frac,
            "target": f">= {TARGET_FRACTION_AT_64}",
            "met": frac >= TARGET_FRACTION_AT_64,
        },
    }


def _profile(
    ours: Peer, fast: Server, slow: Server, body: str, cfg: dict[str, Any]
) -> dict[str, Any]:
    """cProfile our peer: the cached and uncached loops (one thread) next to raw httpx, and
    64 threads at 100 ms latency (one profiler per thread, merged), ours and raw httpx."""
    n = cfg["profile_n"]
    return {
        "cached": ours.call(
            op="profile", scenario="cached", question=CACHED_QUESTION, n=n["cached"]
        ),
        "uncached": ours.call(op="profile", scenario="uncached", prefix="prof", n=n["uncached"]),
        "raw": ours.call(
            op="profile", scenario="raw", endpoint=fast.endpoint, body=body, n=n["uncached"]
        ),
        "throughput_64": ours.call(
            op="profile", scenario="throughput", in_flight=64, per_thread=cfg["per_thread"][64]
        ),
        "raw_throughput_64": ours.call(
            op="profile",
            scenario="raw_throughput",
            endpoint=slow.endpoint,
            body=body,
            in_flight=64,
            per_thread=cfg["per_thread"][64],
        ),
    }


# ------------------------------------------------------------------ report


def report(result: dict[str, Any]) -> str:
    s = result["summary"]
    names = sorted(s["cached_us"], key=lambda n: (n != "ours", n))
    header = " | ".join(names)
    lines = [
        f"| scenario | {header} | raw httpx | server ceiling |",
        "|---" * (len(names) + 3) + "|",
    ]
    lines.append(
        "| cached Predict, us/call: median (best round) | "
        + " | ".join(f"{s['cached_us'][n]:.0f} ({s['cached_us_best'][n]:.0f})" for n in names)
        + " | | |"
    )
    lines.append(
        "| uncached Predict, 0 ms latency, us/call: median (best) | "
        + " | ".join(f"{s['uncached_us'][n]:.0f} ({s['uncached_us_best'][n]:.0f})" for n in names)
        + f" | {s['uncached_us']['raw']:.0f} ({s['uncached_us_best']['raw']:.0f}) | |"
    )
    lines.append(
        "| uncached, ratio to raw httpx | "
        + " | ".join(f"{s['uncached_ratio_to_raw'][n]:.2f}x" for n in names)
        + " | 1.00x | |"
    )
    for k, row in sorted(s["throughput"].items(), key=lambda kv: int(kv[0])):
        cells = [
            f"{row[n]['steady_examples_per_s']:.0f} ({row[n]['steady_fraction_of_ideal']:.0%}); "
            f"end to end {row[n]['examples_per_s']:.0f} ({row[n]['fraction_of_ideal']:.0%})"
            + (f", {row[n]['errors']} errors" if row[n]["errors"] else "")
            for n in [*names, "raw", "server"]
        ]
        lines.append(
            f"| {k} in flight @100 ms, examples/s (of ideal {row['ideal']:.0f}) | "
            + " | ".join(cells)
            + " |"
        )
    cpu = s["client_cpu_us_per_call"]
    lines.append(
        "| client CPU us/call: cached; uncached | "
        + " | ".join(f"{cpu['cached'][n]:.0f}; {cpu['uncached'][n]:.0f}" for n in names)
        + f" | {cpu['uncached']['raw']:.0f} | |"
    )
    lines.append("")
    for name, t in result["targets"].items():
        lines.append(
            f"- {name}: {t['value']:.3g} (target {t['target']}): {'MET' if t['met'] else 'MISSED'}"
        )
    req = s["cached_server_requests"]
    lines.append(f"- server requests during the cached ops (warm-up misses included): {req}")
    lines.append(
        f"- uncached ops reached the server once per call: {s['uncached_server_requests_ok']}"
    )
    return "\n".join(lines)


def report_profile(prof: dict[str, Any], top: int = 12) -> str:
    lines: list[str] = []
    for scenario, p in prof.items():
        if "run_under_profiler" in p:
            speed = f"{p['run_under_profiler']['examples_per_s']:.0f} examples/s"
        else:
            speed = f"{p['us_per_call_under_profiler']:.0f} us/call"
        lines.append(f"\n[profile: ours, {scenario}] {speed} under cProfile; own us/call by group:")
        groups = ", ".join(
            f"{g} {v:.1f}" for g, v in list(p["own_us_per_call_by_group"].items())[:10]
        )
        lines.append("  " + groups)
        lines.append("  top own time (us/call, calls/call):")
        for row in p["top_own"][:top]:
            own, calls = row["own_us_per_call"], row["calls_per_call"]
            lines.append(f"    {own:7.1f}  {calls:6.1f}  {row['function']}")
        lines.append("  top cumulative (us/call):")
        for row in p["top_cumulative"][:top]:
            lines.append(f"    {row['cum_us_per_call']:7.1f}  {row['function']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short run (2 rounds, small counts)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--profile", action="store_true", help="profile ours even if targets are met"
    )
    parser.add_argument("--no-dspy", action="store_true", help="measure ours and raw httpx only")
    parser.add_argument(
        "--dspy-engines",
        default="auto",
        help="DSPy LM engines to measure: auto (its default), litellm",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--latency", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.latency)
        return
    started = time.perf_counter()
    info = machine_info(packages=("dspy-actors", "httpx", "httpcore", "h11", "pydantic"))
    result = run(args)
    result["machine"] = info
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    result["machine"]["note"] = (
        "2-core machine shared with other agents while measured: treat as noisy; "
        "medians over interleaved rounds"
    )
    result["quick"] = bool(args.quick)
    result["elapsed_s"] = time.perf_counter() - started
    path = write_results("core", result)
    print(report(result))
    if "profile" in result:
        print(report_profile(result["profile"]))
    print(f"\nwrote {path.relative_to(ROOT)} in {result['elapsed_s']:.0f}s")


if __name__ == "__main__":
    main()
