"""Benchmarks of the ``supervisors`` package (issue 2).

    .venv/bin/python bench/bench_supervisors.py [--quick]

(a) restart latency: crash a named one_for_one child (a told message that raises) and time
    from the crash to the next successful ``registry.ask`` through its name; p50/p99;
    with logging off, and once with logging on (rendered to /dev/null);
(b) message round trip: raw Pykka ``ref.ask`` vs ``supervisors.registry.ask(name)`` vs
    ``supervisors.ask(ref)``, same actor, interleaved rounds;
(c) start time and memory (RSS delta) per actor for 1,000 and 10,000 children of one
    DynamicSupervisor, with plain Pykka starts of the same count for reference.

Prints a table and writes bench/results/supervisors.json. Numbers are medians over rounds:
the machine is small and shared, so single runs are noisy.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    configure_logging,
    machine_info,
    machine_load,
    median,
    percentile,
    rss_kib,
    summarize_ms,
    write_results,
)

import supervisors as sup

TARGET_RESTART_P99_MS = 5.0
TARGET_NAME_RATIO = 1.2
TARGET_START_10K_S = 5.0

STDLIB_LOGGERS = ("pykka",)

CRASH = "crash"
PING = "ping"


class Worker(sup.SupervisedActor):
    """Answers any message with itself; a told ``"crash"`` raises (crashes the actor)."""

    def on_receive(self, message: Any) -> Any:
        if message == CRASH:
            raise RuntimeError("crash requested by the benchmark")
        return message


class PlainWorker(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


class PlainDaemonWorker(PlainWorker):
    use_daemon_thread = True


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _baseline() -> tuple[int, int]:
    return len(pykka.ActorRegistry.get_all()), threading.active_count()


def _assert_clean(baseline: tuple[int, int], what: str) -> None:
    if not _wait_until(lambda: _baseline() == baseline, 30.0):
        raise RuntimeError(f"{what}: actors/threads left behind: {_baseline()} vs {baseline}")


# (a) Restart latency. ------------------------------------------------------------------


def bench_restart(crashes: int, retry_sleep: float) -> dict[str, Any]:
    """Crash the named child ``crashes`` times; latency from the crash to the next answer."""
    name = "bench-restart-worker"
    baseline = _baseline()
    root = sup.Supervisor.start(
        [sup.ChildSpec("worker", Worker, name=name, shutdown=5.0)],
        name="bench-restart",
        strategy="one_for_one",
        intensity=10**6,
        period=1.0,
    )
    latencies: list[float] = []
    retries: list[int] = []
    errors: dict[str, int] = {}
    # Where the time goes, from supervision events (delivered in the supervisor's thread):
    # crash -> supervisor handles the exit -> child restarted -> caller's call answered.
    marks: dict[str, float] = {}
    phases: dict[str, list[float]] = {"to_exit_seen": [], "restart": [], "to_answer": []}

    def on_event(event: sup.SupervisorEvent) -> None:
        if event.kind in ("child_exited", "child_restarted"):
            marks[event.kind] = time.perf_counter()

    unsubscribe = sup.subscribe(on_event)
    try:
        sup.registry.ask(name, PING, timeout=5.0)  # warm
        for _ in range(crashes):
            ref = sup.registry.lookup(name)
            marks.clear()
            t0 = time.perf_counter()
            ref.tell(CRASH)
            attempts = 0
            while True:
                attempts += 1
                try:
                    sup.registry.ask(name, PING, timeout=1.0)
                    break
                except (sup.NotRegistered, pykka.ActorDeadError) as error:
                    errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                    if retry_sleep > 0:
                        time.sleep(retry_sleep)
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            retries.append(attempts - 1)
            exited, restarted = marks.get("child_exited"), marks.get("child_restarted")
            if exited is not None and restarted is not None:
                phases["to_exit_seen"].append(exited - t0)
                phases["restart"].append(restarted - exited)
                phases["to_answer"].append(max(t1 - restarted, 0.0))
        (info,) = root.which_children()
        if info.restart_count != crashes:
            raise RuntimeError(f"expected {crashes} restarts, supervisor counted {info}")
    finally:
        unsubscribe()
        root.stop()
    _assert_clean(baseline, "restart bench")
    result = summarize_ms(latencies)
    result["retries_median"] = median(retries)
    result["retries_max"] = max(retries)
    result["errors_seen"] = errors
    result["phases_ms"] = {
        k: {"p50": percentile(v, 50) * 1e3, "p99": percentile(v, 99) * 1e3}
        for k, v in phases.items()
    }
    return result


def profile_restart(crashes: int, retry_sleep: float) -> str:
    """cProfile of the restart loop (all threads are not profiled: only the caller's)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    bench_restart(crashes, retry_sleep)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
    return out.getvalue()


# (b) Round trip. -----------------------------------------------------------------------


def bench_round_trip(rounds: int, calls: int) -> dict[str, Any]:
    """us per call of three ways to ask the same actor, interleaved per round."""
    name = "bench-rtt-worker"
    baseline = _baseline()
    root = sup.Supervisor.start(
        [sup.ChildSpec("worker", Worker, name=name)], name="bench-rtt", strategy="one_for_one"
    )
    try:
        ref = sup.registry.lookup(name)
        reg = sup.registry
        timeout = 5.0

        def raw() -> None:
            for _ in range(calls):
                ref.ask(PING, timeout=timeout)

        def by_name() -> None:
            for _ in range(calls):
                reg.ask(name, PING, timeout=timeout)

        def sup_ask() -> None:
            for _ in range(calls):
                sup.ask(ref, PING, timeout=timeout)

        ways: dict[str, Callable[[], None]] = {
            "raw_pykka_ask": raw,
            "registry_ask": by_name,
            "supervisors_ask": sup_ask,
        }
        per_round: dict[str, list[float]] = {k: [] for k in ways}
        order = list(ways)
        for way in order:  # warm up
            ways[way]()
        for r in range(rounds):
            # Rotate the order each round so no way always runs first or last.
            for way in order[r % 3 :] + order[: r % 3]:
                gc.collect()
                t0 = time.perf_counter()
                ways[way]()
                per_round[way].append((time.perf_counter() - t0) / calls * 1e6)
    finally:
        root.stop()
    _assert_clean(baseline, "round-trip bench")
    raw_us = per_round["raw_pykka_ask"]
    result: dict[str, Any] = {
        "rounds": rounds,
        "calls_per_round": calls,
        "us_per_call_median": {k: median(v) for k, v in per_round.items()},
        "us_per_call_min": {k: min(v) for k, v in per_round.items()},
        "ratio_median_of_rounds": {
            k: median(a / b for a, b in zip(v, raw_us, strict=True))
            for k, v in per_round.items()
            if k != "raw_pykka_ask"
        },
    }
    return result


# (c) Start time and memory. ------------------------------------------------------------


def bench_start(count: int, named: bool, batch: bool = False) -> dict[str, Any]:
    """Start ``count`` children under one DynamicSupervisor; time, RSS delta, stop, check.

    ``batch``: all in one ``start_children`` call instead of one ``start_child`` each.
    """
    baseline = _baseline()
    gc.collect()
    rss0 = rss_kib()
    dyn = sup.DynamicSupervisor.start(name=f"bench-dyn-{count}", intensity=10**6, period=1.0)
    specs = [
        sup.ChildSpec(f"w{i}", Worker, name=f"bench-w{i}" if named else None) for i in range(count)
    ]
    t0 = time.perf_counter()
    if batch:
        dyn.start_children(specs, timeout=600.0)
    else:
        for child_spec in specs:
            dyn.start_child(child_spec)
    start_s = time.perf_counter() - t0
    counts = dyn.count_children()
    if counts.active != count:
        raise RuntimeError(f"expected {count} active children, got {counts}")
    if named:
        probe = [0, count // 2, count - 1]
        for i in probe:
            sup.registry.ask(f"bench-w{i}", PING, timeout=5.0)
    gc.collect()
    rss1 = rss_kib()
    t1 = time.perf_counter()
    reason = dyn.stop(timeout=600.0)
    stop_s = time.perf_counter() - t1
    if reason != sup.SHUTDOWN:
        raise RuntimeError(f"supervisor exited with {reason}")
    _assert_clean(baseline, f"start bench ({count})")
    return {
        "count": count,
        "named": named,
        "batch": batch,
        "start_s": start_s,
        "start_us_per_actor": start_s / count * 1e6,
        "rss_delta_kib": rss1 - rss0,
        "rss_kib_per_actor": (rss1 - rss0) / count,
        "stop_s": stop_s,
        "left_after_stop": 0,
    }


def bench_plain_start(count: int, daemon: bool = False) -> dict[str, Any]:
    """Reference: plain ``pykka.ThreadingActor.start()`` of ``count`` actors."""
    baseline = _baseline()
    gc.collect()
    rss0 = rss_kib()
    t0 = time.perf_counter()
    actor_class: type[PlainWorker] = PlainDaemonWorker if daemon else PlainWorker
    refs = [actor_class.start() for _ in range(count)]
    start_s = time.perf_counter() - t0
    gc.collect()
    rss1 = rss_kib()
    t1 = time.perf_counter()
    for ref in refs:
        ref.stop(block=True, timeout=5.0)
    stop_s = time.perf_counter() - t1
    del refs
    _assert_clean(baseline, f"plain start ({count})")
    return {
        "count": count,
        "start_s": start_s,
        "start_us_per_actor": start_s / count * 1e6,
        "rss_delta_kib": rss1 - rss0,
        "rss_kib_per_actor": (rss1 - rss0) / count,
        "stop_s": stop_s,
    }


def bench_raw_threads(count: int) -> dict[str, Any]:
    """Floor: ``count`` bare ``threading.Thread``s, each blocked on one Event (no Pykka)."""
    baseline = _baseline()
    release = threading.Event()
    gc.collect()
    rss0 = rss_kib()
    t0 = time.perf_counter()
    threads = []
    for _ in range(count):
        thread = threading.Thread(target=release.wait, daemon=True)
        thread.start()
        threads.append(thread)
    start_s = time.perf_counter() - t0
    gc.collect()
    rss1 = rss_kib()
    t1 = time.perf_counter()
    release.set()
    for thread in threads:
        thread.join()
    stop_s = time.perf_counter() - t1
    del threads
    _assert_clean(baseline, f"raw threads ({count})")
    return {
        "count": count,
        "start_s": start_s,
        "start_us_per_actor": start_s / count * 1e6,
        "rss_delta_kib": rss1 - rss0,
        "rss_kib_per_actor": (rss1 - rss0) / count,
        "stop_s": stop_s,
    }


def profile_start(count: int) -> str:
    """cProfile of start_child as the supervisor's own thread runs it (plus the caller's).

    The package is not modified: the DynamicSupervisor actor's ``on_receive`` is wrapped,
    for this run only, with a profiler that runs in the supervisor's thread.
    """
    import cProfile
    import io
    import pstats

    from supervisors._dynamic import DynamicSupervisorActor
    from supervisors._supervisor import SupervisorActor

    in_actor = cProfile.Profile()
    original = DynamicSupervisorActor.on_receive

    def profiled(self: SupervisorActor, message: Any) -> Any:
        in_actor.enable()
        try:
            return original(self, message)
        finally:
            in_actor.disable()

    DynamicSupervisorActor.on_receive = profiled  # type: ignore[method-assign]
    caller = cProfile.Profile()
    try:
        caller.enable()
        bench_start(count, named=True)
        caller.disable()
    finally:
        DynamicSupervisorActor.on_receive = original  # type: ignore[method-assign]
    out = io.StringIO()
    out.write(f"--- start_child x {count}: caller thread (cumulative) ---\n")
    pstats.Stats(caller, stream=out).sort_stats("cumulative").print_stats(12)
    out.write(f"--- start_child x {count}: supervisor thread (cumulative) ---\n")
    pstats.Stats(in_actor, stream=out).sort_stats("cumulative").print_stats(25)
    return out.getvalue()


def _median_of(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, dict):
        return {k: _median_of([v[k] for v in values if k in v]) for k in first}
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first
    return statistics.median(values)


def _median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per numeric key (nested dicts too), the median over runs; every run under ``runs``."""
    out: dict[str, Any] = _median_of(list(runs))
    out["runs"] = runs
    return out


# Main. ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    parser.add_argument("--profile", action="store_true", help="cProfile the restart loop")
    parser.add_argument(
        "--retry-sleep",
        type=float,
        default=0.0001,
        help="seconds the caller sleeps between failed calls while a child restarts",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    restart_rounds = 1 if quick else 3
    crashes = 200 if quick else 500
    rtt_rounds, rtt_calls = (5, 500) if quick else (15, 2000)
    start_rounds = 1 if quick else 3
    counts = (1_000,) if quick else (1_000, 10_000)

    info = machine_info()
    print(
        f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}, "
        f"pykka {info['packages']['pykka']}, {info['date_utc']}, load {info['loadavg_at_start']}"
    )

    configure_logging(False, STDLIB_LOGGERS)
    print(
        "logging off (structlog drops below CRITICAL, stdlib 'pykka' logger disabled) "
        "unless a row says otherwise"
    )

    results: dict[str, Any] = {"machine": info, "quick": quick}

    # (a)
    load: dict[str, Any] = {"restart_latency": machine_load()}
    restart_off = [bench_restart(crashes, args.retry_sleep) for _ in range(restart_rounds)]
    configure_logging(True, STDLIB_LOGGERS)
    restart_on = [bench_restart(crashes, args.retry_sleep) for _ in range(restart_rounds)]
    configure_logging(False, STDLIB_LOGGERS)
    results["restart_latency"] = {
        "crashes_per_round": crashes,
        "rounds": restart_rounds,
        "retry_sleep_s": args.retry_sleep,
        "intensity": "10**6 per 1.0 s",
        "logging_off": _median_runs(restart_off),
        "logging_on_devnull": _median_runs(restart_on),
        "target_p99_ms": TARGET_RESTART_P99_MS,
    }
    if args.profile:
        print(profile_restart(crashes, args.retry_sleep))

    # (b)
    load["round_trip"] = machine_load()
    results["round_trip"] = bench_round_trip(rtt_rounds, rtt_calls)
    results["round_trip"]["target_ratio"] = TARGET_NAME_RATIO

    # (c) Rounds interleave the kinds, so load changes on the shared machine hit all alike.
    start: dict[str, Any] = {}
    for count in counts:
        runs: dict[str, list[dict[str, Any]]] = {
            "dynamic_supervisor_named": [],
            "dynamic_supervisor_unnamed": [],
            "dynamic_supervisor_named_batch": [],
            "plain_pykka": [],
            "plain_pykka_daemon": [],
            "raw_threads": [],
        }
        load[f"start_{count}"] = machine_load()
        for _ in range(start_rounds):
            runs["dynamic_supervisor_named"].append(bench_start(count, named=True))
            runs["dynamic_supervisor_unnamed"].append(bench_start(count, named=False))
            runs["dynamic_supervisor_named_batch"].append(
                bench_start(count, named=True, batch=True)
            )
            runs["plain_pykka"].append(bench_plain_start(count))
            runs["plain_pykka_daemon"].append(bench_plain_start(count, daemon=True))
            runs["raw_threads"].append(bench_raw_threads(count))
        start[str(count)] = {kind: _median_runs(r) for kind, r in runs.items()}
    if args.profile:
        print(profile_start(min(counts[-1], 2_000)))
    results["start"] = start
    load["end"] = machine_load()
    results["machine_load_per_section"] = load
    results["start_memory_method"] = "RSS delta (VmRSS from /proc/self/status), after gc"
    results["target_start_10k_s"] = TARGET_START_10K_S

    # Verdicts.
    r_off = results["restart_latency"]["logging_off"]
    ratio = results["round_trip"]["ratio_median_of_rounds"]["registry_ask"]
    verdicts: dict[str, Any] = {
        "restart_p99_ms<=5 (logging off)": r_off["p99_ms"] <= TARGET_RESTART_P99_MS,
        "restart_p99_ms<=5 (logging on)": results["restart_latency"]["logging_on_devnull"]["p99_ms"]
        <= TARGET_RESTART_P99_MS,
        "name_ratio<=1.2": ratio <= TARGET_NAME_RATIO,
    }
    if "10000" in start:
        verdicts["start_10k_s<=5 (named)"] = (
            start["10000"]["dynamic_supervisor_named"]["start_s"] <= TARGET_START_10K_S
        )
        verdicts["start_10k_s<=5 (unnamed)"] = (
            start["10000"]["dynamic_supervisor_unnamed"]["start_s"] <= TARGET_START_10K_S
        )
        verdicts["start_10k_s<=5 (named, one start_children batch)"] = (
            start["10000"]["dynamic_supervisor_named_batch"]["start_s"] <= TARGET_START_10K_S
        )
    results["targets_met"] = verdicts

    _print_table(results)
    path = write_results("supervisors", results)
    print(f"\nwrote {path}")
    return 0


def _print_table(results: dict[str, Any]) -> None:
    rl = results["restart_latency"]
    print(
        f"\n(a) restart latency, crash -> next successful registry.ask by name "
        f"({rl['crashes_per_round']} crashes x {rl['rounds']} rounds, median of rounds, "
        f"retry sleep {rl['retry_sleep_s'] * 1e6:g} us)"
    )
    print(f"  {'logging':<16}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}  target p99")
    for label, key in (("off", "logging_off"), ("on (/dev/null)", "logging_on_devnull")):
        r = rl[key]
        print(
            f"  {label:<16}{r['p50_ms']:>9.3f}{r['p90_ms']:>9.3f}{r['p99_ms']:>9.3f}"
            f"{r['max_ms']:>9.2f}  <= {rl['target_p99_ms']:g} ms"
        )
        ph = r["phases_ms"]
        print(
            "    phases p50/p99 ms: crash -> exit handled by supervisor "
            f"{ph['to_exit_seen']['p50']:.3f}/{ph['to_exit_seen']['p99']:.3f}, "
            f"restart {ph['restart']['p50']:.3f}/{ph['restart']['p99']:.3f}, "
            f"restarted -> answered {ph['to_answer']['p50']:.3f}/{ph['to_answer']['p99']:.3f}"
        )

    rt = results["round_trip"]
    print(
        f"\n(b) round trip, same actor ({rt['rounds']} rounds x {rt['calls_per_round']} calls, "
        "interleaved, median of rounds)"
    )
    print(f"  {'way':<20}{'us/call':>9}{'min us':>9}{'x raw':>8}")
    for way, us in rt["us_per_call_median"].items():
        ratio = rt["ratio_median_of_rounds"].get(way, 1.0)
        print(f"  {way:<20}{us:>9.1f}{rt['us_per_call_min'][way]:>9.1f}{ratio:>8.3f}")
    print(f"  target: registry_ask <= {rt['target_ratio']:g} x raw")

    print("\n(c) start time and memory per actor (RSS delta), median of rounds")
    print(
        f"  {'count':>6}  {'kind':<32}{'start s':>9}{'us/actor':>10}{'KiB/actor':>10}{'stop s':>8}"
    )
    for count, kinds in results["start"].items():
        for kind, r in kinds.items():
            print(
                f"  {int(count):>6}  {kind:<32}{r['start_s']:>9.3f}"
                f"{r['start_us_per_actor']:>10.1f}{r['rss_kib_per_actor']:>10.1f}"
                f"{r['stop_s']:>8.2f}"
            )
    print(
        f"  target: 10,000 started in <= {results['target_start_10k_s']:g} s; "
        "all stopped and none left after each run (checked)"
    )

    print("\nmachine load when each section started (loadavg 1/5/15 min, CPU pressure avg10 %):")
    for section, value in results["machine_load_per_section"].items():
        print(f"  {section:<16}{value['loadavg']}  psi {value['cpu_pressure_some_avg10']}")

    print("\ntargets:")
    for name, ok in results["targets_met"].items():
        print(f"  {'MET   ' if ok else 'MISSED'} {name}")


if __name__ == "__main__":
    raise SystemExit(main())
