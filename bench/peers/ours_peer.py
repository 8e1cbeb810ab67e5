"""Benchmark peer for our LM layer (``dspy_actors``); runs inside the project's .venv.

    .venv/bin/python bench/peers/ours_peer.py --url http://127.0.0.1:PORT --slow-url ...

Started by ``bench/bench_core.py``. It prints one JSON line ``{"ready": ...}``, then reads
one JSON command per line on stdin and answers each with exactly one JSON line on stdout
(``{"error": ...}`` if the command failed). Ops: ``cached``, ``uncached``, ``throughput``,
``raw`` and ``raw_throughput`` (a bare ``httpx.Client`` with a prebuilt body: the baseline
and the server ceiling), ``profile`` (cProfile of the cached or uncached loop), ``quit``.

The first half of this file is a stdlib-only harness (command loop, timed loops, thread
runner) that ``dspy_peer.py`` imports too, so both peers are timed by the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

Call = Callable[[str], Any]
Op = Callable[[dict[str, Any]], dict[str, Any]]

# The runtime benchmark's "program_procs" kind: app.program with dsa.start(lm_processes=2),
# one LM worker process per core of the 2-core benchmark machine.
LM_PROCESSES = 2

# ------------------------------------------------------------------ shared harness


def question(prefix: str, i: int) -> str:
    """The ``i``-th benchmark question; both peers build the same ones from the same prefix."""
    return f"{prefix} What is {i} + {i % 7}?"


def time_loop(call: Call, questions: list[str]) -> dict[str, float]:
    """``call(q)`` over ``questions`` (one thread, back to back): wall and process CPU
    microseconds per call (the CPU one excludes the server, which has its own process)."""
    cpu0, start = time.process_time(), time.perf_counter()
    for q in questions:
        call(q)
    n = len(questions)
    return {
        "us_per_call": (time.perf_counter() - start) / n * 1e6,
        "client_cpu_us_per_call": (time.process_time() - cpu0) / n * 1e6,
    }


def run_threads(call: Call, in_flight: int, per_thread: int, prefix: str) -> dict[str, Any]:
    """``in_flight`` threads each make one untimed warm-up call (opening its connection),
    meet at a barrier, then make ``per_thread`` timed calls. Returns the client process's
    CPU seconds per timed call and two throughputs:

    - ``examples_per_s``: all the timed calls over the time until the last one ended. Its
      last stretch runs below ``in_flight``: threads that are done wait for the slowest.
    - ``steady_examples_per_s``: ``in_flight`` over the mean latency of the calls made
      while every thread was still calling (started before the first thread was done):
      the throughput *at* ``in_flight`` calls in flight (Little's law for callers that
      call again at once), which the batch's tail does not dilute.
    """
    barrier = threading.Barrier(in_flight + 1)
    errors: list[str] = []
    lock = threading.Lock()
    # Each thread's timed calls: (start, end) of those that succeeded.
    spans: list[list[tuple[float, float]]] = [[] for _ in range(in_flight)]

    def worker(w: int) -> None:
        try:
            call(question(f"{prefix} warm w{w}", 0))
        except Exception as exc:
            with lock:
                errors.append(f"warm-up: {exc!r}")
        try:
            barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            return
        for i in range(per_thread):
            start = time.perf_counter()
            try:
                call(question(f"{prefix} w{w}", i))
            except Exception as exc:
                with lock:
                    errors.append(repr(exc))
            else:
                spans[w].append((start, time.perf_counter()))

    threads = [
        threading.Thread(target=worker, args=(w,), name=f"bench-{w}", daemon=True)
        for w in range(in_flight)
    ]
    for t in threads:
        t.start()
    barrier.wait(timeout=120)
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + 600
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    calls = in_flight * per_thread
    done = calls - len([e for e in errors if not e.startswith("warm-up")])
    last_ends = [calls[-1][1] for calls in spans if calls]
    steady_until = min(last_ends) if last_ends else t0
    steady = [end - start for calls in spans for start, end in calls if start < steady_until]
    steady_latency = sum(steady) / len(steady) if steady else float("inf")
    return {
        "in_flight": in_flight,
        "calls": calls,
        "ok": done,
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": wall,
        "examples_per_s": done / wall,
        "steady_examples_per_s": in_flight / steady_latency,
        "client_cpu_us_per_call": cpu / max(1, calls) * 1e6,
        "stuck_threads": sum(t.is_alive() for t in threads),
    }


def serve(ops: Mapping[str, Op], ready: dict[str, Any]) -> None:
    """The command loop: one JSON command per stdin line, one JSON answer per stdout line."""
    print(json.dumps({"ready": True, **ready}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd.get("op")
        if op == "quit":
            print(json.dumps({"bye": True}), flush=True)
            return
        try:
            handler = ops[op]
            result = handler(cmd)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        print(json.dumps({"op": op, **result}), flush=True)


def profile_loop(call: Call, questions: list[str], top: int) -> dict[str, Any]:
    """cProfile ``call`` over ``questions`` in this thread (see :func:`profile_summary`)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    start = time.perf_counter()
    for q in questions:
        call(q)
    elapsed = time.perf_counter() - start
    prof.disable()
    summary = profile_summary(pstats.Stats(prof), len(questions), top)
    summary["us_per_call_under_profiler"] = elapsed / len(questions) * 1e6
    return summary


def profile_threads(call: Call, in_flight: int, per_thread: int, top: int) -> dict[str, Any]:
    """:func:`run_threads` with one cProfile per worker thread (cProfile sees only the
    thread that enabled it), merged: where the client's CPU goes under concurrency. The
    warm-up calls are included."""
    import cProfile
    import pstats

    local = threading.local()
    profilers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def profiled(q: str) -> Any:
        prof = getattr(local, "prof", None)
        if prof is None:
            prof = local.prof = cProfile.Profile()
            with lock:
                profilers.append(prof)
            prof.enable()
        return call(q)

    result = run_threads(profiled, in_flight, per_thread, "profile")
    stats = pstats.Stats(profilers[0])
    for prof in profilers[1:]:
        stats.add(prof)
    summary = profile_summary(stats, in_flight * (per_thread + 1), top)
    summary["run_under_profiler"] = result
    return summary


def profile_summary(stats: Any, n: int, top: int) -> dict[str, Any]:
    """The top functions by own and by cumulative time, and own time grouped by package,
    all in microseconds per benchmark call."""
    raw: dict[Any, Any] = stats.stats
    rows: list[dict[str, Any]] = []
    groups: dict[str, float] = {}
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        rows.append(
            {
                "function": f"{_short_path(filename)}:{line}({func})",
                "calls_per_call": ncalls / n,
                "own_us_per_call": tottime / n * 1e6,
                "cum_us_per_call": cumtime / n * 1e6,
            }
        )
        group = _group(filename, func)
        groups[group] = groups.get(group, 0.0) + tottime / n * 1e6
    return {
        "calls": n,
        "top_own": sorted(rows, key=lambda r: r["own_us_per_call"], reverse=True)[:top],
        "top_cumulative": sorted(rows, key=lambda r: r["cum_us_per_call"], reverse=True)[:top],
        "own_us_per_call_by_group": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
    }


def _short_path(filename: str) -> str:
    for marker in ("site-packages/", "/dspy_actors/", "/lib/python3"):
        idx = filename.find(marker)
        if idx >= 0:
            tail = filename[idx + len(marker) :]
            return ("dspy_actors/" + tail) if marker == "/dspy_actors/" else tail
    return filename


def _group(filename: str, func: str) -> str:
    if "/dspy_actors/" in filename:
        sub = filename.split("/dspy_actors/", 1)[1].split("/", 1)[0]
        return f"dspy_actors.{sub.removesuffix('.py')}"
    for pkg in (
        "httpx",
        "httpcore",
        "h11",
        "pydantic",
        "json",
        "hashlib",
        "threading",
        "pykka",
        "supervisors",
        "queue",
        "concurrent",
    ):
        if f"/{pkg}/" in filename or filename.endswith(f"/{pkg}.py"):
            return pkg
    if filename == "~":
        return f"builtins ({func.split(' ')[-1].strip('<>')})" if "method" in func else "builtins"
    return "other"


def socket_call(endpoint: str, body: bytes, headers: Mapping[str, str]) -> Call:
    """A minimal HTTP/1.1 client: one keep-alive socket per thread, prebuilt request bytes,
    reads exactly Content-Length. Costs the client a few tens of us per call, so a run of
    it measures what the server itself can sustain."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    head = f"POST {url.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    local = threading.local()

    def call(_q: str) -> Any:
        sock: socket.socket | None = getattr(local, "sock", None)
        if sock is None:
            sock = socket.create_connection((host, port), timeout=60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local.sock = sock
        sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        header, _, rest = buf.partition(b"\r\n\r\n")
        if not header.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(header.split(b"\r\n", 1)[0].decode(errors="replace"))
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            rest += chunk
        return rest

    return call


def measure_common_args() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="SimLM base URL, zero latency")
    parser.add_argument("--slow-url", required=True, help="SimLM base URL, 100 ms latency")
    # A model name DSPy knows: for an unknown one DSPy 3.4.1 scans its whole model-metadata
    # table on every call (~5 ms), which would measure that instead of the call path.
    parser.add_argument("--model", default="gpt-4o-mini")
    return parser


# ------------------------------------------------------------------ our side


def main() -> None:
    args = measure_common_args().parse_args()
    # stdout carries the protocol: any log line (a warning under load) goes to stderr.
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))

    import httpx

    import dspy_actors
    from dspy_actors.lm import LM
    from dspy_actors.lm.cache import Cache
    from dspy_actors.modules import Predict

    signature = "question -> answer"
    model = f"openai/{args.model}"
    key = "bench-key"
    cached_lm = LM(model, api_base=args.url + "/v1", api_key=key, cache_store=Cache(disk_path=None))
    uncached_lm = LM(model, api_base=args.url + "/v1", api_key=key, cache=False)

    def predictor(lm: LM) -> Call:
        p = Predict(signature)
        p.lm = lm

        def call(q: str) -> Any:
            return p(question=q).answer

        return call

    cached_call = predictor(cached_lm)
    uncached_call = predictor(uncached_lm)

    def fresh_slow(run: Callable[[Call], dict[str, Any]]) -> dict[str, Any]:
        # A new LM (so a new connection pool) per throughput run: each run measures the
        # steady state at its own concurrency, not a pool left over by the previous one.
        lm = LM(model, api_base=args.slow_url + "/v1", api_key=key, cache=False)
        try:
            return run(predictor(lm))
        finally:
            lm.close()

    def fresh_raw(
        endpoint: str, body: bytes, run: Callable[[Call], dict[str, Any]]
    ) -> dict[str, Any]:
        client = raw_client()
        try:
            return run(raw_call(client, endpoint, body))
        finally:
            client.close()

    # The raw baseline: a bare shared httpx.Client with the same pool limits and TCP_NODELAY
    # as our LM (without TCP_NODELAY a two-write request can stall on delayed ACKs), posting
    # a prebuilt body and reading the whole response.
    import socket

    def raw_client() -> httpx.Client:
        transport = httpx.HTTPTransport(
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=512),
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        return httpx.Client(
            transport=transport,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=60.0,
        )

    raw_fast = raw_client()

    def raw_call(client: httpx.Client, url: str, body: bytes) -> Call:
        def call(_q: str) -> Any:
            r = client.post(url, content=body)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}")
            return r.content

        return call

    def op_cached(cmd: dict[str, Any]) -> dict[str, Any]:
        q = cmd["question"]
        answer = cached_call(q)  # warm the cache (a miss only the first time)
        return {**time_loop(cached_call, [q] * int(cmd["n"])), "answer": answer}

    def op_uncached(cmd: dict[str, Any]) -> dict[str, Any]:
        prefix, n, warm = cmd["prefix"], int(cmd["n"]), int(cmd.get("warm", 10))
        for i in range(warm):
            uncached_call(question(prefix + " warm", i))
        qs = [question(prefix, i) for i in range(n)]
        return {**time_loop(uncached_call, qs), "calls": n + warm}

    def op_raw(cmd: dict[str, Any]) -> dict[str, Any]:
        n, warm = int(cmd["n"]), int(cmd.get("warm", 10))
        call = raw_call(raw_fast, cmd["endpoint"], cmd["body"].encode())
        for _ in range(warm):
            call("")
        return {**time_loop(call, [""] * n), "calls": n + warm}

    def op_throughput(cmd: dict[str, Any]) -> dict[str, Any]:
        k, per_thread, prefix = int(cmd["in_flight"]), int(cmd["per_thread"]), cmd["prefix"]
        return fresh_slow(lambda call: run_threads(call, k, per_thread, prefix))

    def op_raw_throughput(cmd: dict[str, Any]) -> dict[str, Any]:
        k, per_thread = int(cmd["in_flight"]), int(cmd["per_thread"])
        return fresh_raw(
            cmd["endpoint"],
            cmd["body"].encode(),
            lambda call: run_threads(call, k, per_thread, "raw"),
        )

    def op_socket_throughput(cmd: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        call = socket_call(cmd["endpoint"], cmd["body"].encode(), headers)
        return run_threads(call, int(cmd["in_flight"]), int(cmd["per_thread"]), "socket")

    def op_profile(cmd: dict[str, Any]) -> dict[str, Any]:
        scenario, n, top = cmd["scenario"], int(cmd.get("n", 0)), int(cmd.get("top", 25))
        if scenario == "cached":
            q = cmd["question"]
            cached_call(q)
            return profile_loop(cached_call, [q] * n, top)
        if scenario == "uncached":
            prefix = cmd["prefix"]
            for i in range(10):
                uncached_call(question(prefix + " warm", i))
            return profile_loop(uncached_call, [question(prefix, i) for i in range(n)], top)
        if scenario == "raw":
            call = raw_call(raw_fast, cmd["endpoint"], cmd["body"].encode())
            for _ in range(10):
                call("")
            return profile_loop(call, [""] * n, top)
        k, per_thread = int(cmd.get("in_flight", 0)), int(cmd.get("per_thread", 0))
        if scenario == "throughput":
            return fresh_slow(lambda call: profile_threads(call, k, per_thread, top))
        if scenario == "raw_throughput":
            return fresh_raw(
                cmd["endpoint"],
                cmd["body"].encode(),
                lambda call: profile_threads(call, k, per_thread, top),
            )
        raise ValueError(f"unknown profile scenario {scenario!r}")

    rt_ops, rt_close = runtime_ops(args.url, args.slow_url, model, key)
    ops: dict[str, Op] = {
        **rt_ops,
        "cached": op_cached,
        "uncached": op_uncached,
        "raw": op_raw,
        "throughput": op_throughput,
        "raw_throughput": op_raw_throughput,
        "socket_throughput": op_socket_throughput,
        "profile": op_profile,
    }
    ready = {
        "peer": "ours",
        "python": sys.version.split()[0],
        "versions": {"dspy_actors": _version("dspy-actors"), "httpx": httpx.__version__},
        "module": dspy_actors.__name__,
    }
    try:
        serve(ops, ready)
    finally:
        rt_close()
        for lm in (cached_lm, uncached_lm):
            lm.close()
        raw_fast.close()


# ------------------------------------------------------------------ the runtime (bench_runtime)


def runtime_ops(
    url: str, slow_url: str, model: str, key: str
) -> tuple[dict[str, Op], Callable[[], None]]:
    """The ops of ``bench/bench_runtime.py``: calls through ``dsa.start(...)`` handles.

    - ``rt_throughput``: a fresh app (fresh LM, ``lm_max_in_flight`` = in flight, cache off) on the
      100 ms server, ``kind`` ``program`` (a one-step ``app.program`` of a Predict) or
      ``serve`` (``app.serve`` of a Predict); threads calling ``handle.call``.
    - ``rt_warm``: one call per cached path, so that the LM cache holds the answer.
    - ``rt_cached``: one thread, back to back; ``mode`` ``raw`` (a bare Pykka ask to a
      trivial actor), ``actor`` (``handle.call`` on a served Predict whose memory-only
      cache holds the answer) or ``inproc`` (the same cached Predict, no actor).
    - ``rt_profile``: cProfile of the calling thread plus, if yappi is importable (an
      investigation tool, not a dependency), CPU time of every thread.
    Returns the ops and a function that stops what they started.
    """
    import shutil
    import tempfile

    import pykka

    import dspy_actors as dsa
    from dspy_actors.lm.cache import Cache

    signature = "question -> answer"
    dirs: list[str] = []
    closers: list[Callable[[], object]] = []
    state: dict[str, Any] = {}

    class Constant(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            return 42

    def new_app(lm: Any, workers: int, processes: int = 0) -> Any:
        data_dir = tempfile.mkdtemp(prefix="bench-rt-")
        dirs.append(data_dir)
        if not processes:  # the default: the LM's HTTP on an event loop, no worker threads
            return dsa.start(lm=lm, data_dir=data_dir)
        return dsa.start(lm=lm, data_dir=data_dir, lm_max_in_flight=workers, lm_processes=processes)

    def worker_process_cpu_s(app: Any) -> float:
        """CPU seconds used so far by the app's LM worker processes (from /proc)."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for child in app.root.supervisor("lm").supervisor("workers").which_children():
            pid = child.ref.proxy().describe().get(timeout=30)["pid"]
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        return total

    def cached_setup() -> dict[str, Any]:
        if not state:
            lm = dsa.LM(model, api_base=url + "/v1", api_key=key, cache_store=Cache(disk_path=None))
            app = new_app(lm, 4)
            handle = app.serve("cached", dsa.Predict(signature))
            inproc = dsa.Predict(signature)
            inproc.lm = lm
            raw = Constant.start()
            state.update(lm=lm, app=app, handle=handle, inproc=inproc, raw=raw)
            closers.append(lambda: raw.stop(timeout=10))
            closers.append(app.stop)
            closers.append(lm.close)
        return state

    def cached_call(mode: str) -> Call:
        st = cached_setup()
        if mode == "raw":
            ref = st["raw"]
            return lambda q: ref.ask(q, timeout=10.0)
        if mode == "actor":
            handle = st["handle"]
            return lambda q: handle.call(question=q).answer
        if mode == "inproc":
            inproc = st["inproc"]
            return lambda q: inproc(question=q).answer
        raise ValueError(f"unknown mode {mode!r}")

    def op_warm(cmd: dict[str, Any]) -> dict[str, Any]:
        q = cmd["question"]
        answers = {m: cached_call(m)(q) for m in ("raw", "actor", "inproc")}
        return {"answers": {m: str(a) for m, a in answers.items()}}

    def op_cached(cmd: dict[str, Any]) -> dict[str, Any]:
        call = cached_call(cmd["mode"])
        return {**time_loop(call, [cmd["question"]] * int(cmd["n"])), "mode": cmd["mode"]}

    def with_app(
        kind: str,
        in_flight: int,
        run: Callable[[Call], dict[str, Any]],
    ) -> dict[str, Any]:
        lm = dsa.LM(model, api_base=slow_url + "/v1", api_key=key, cache=False)
        processes = LM_PROCESSES if kind == "program_procs" else 0
        app = new_app(lm, in_flight, processes)
        try:
            if kind in ("program", "program_procs"):
                steps = [("answer", dsa.Predict, {"signature": signature})]
                handle = app.program(f"{kind}{in_flight}", steps)
            elif kind == "serve":
                handle = app.serve(f"{kind}{in_flight}", dsa.Predict(signature))
            else:
                raise ValueError(f"unknown kind {kind!r}")
            before = thread_cpu_s()
            children_before = worker_process_cpu_s(app) if processes else 0.0
            result = run(lambda q: handle.call(question=q).answer)
            calls = int(result["calls"]) + in_flight
            result["cpu_us_per_call_by_thread"] = cpu_by_thread(before, thread_cpu_s(), calls)
            if processes:
                # The worker processes' CPU is the client's too (warm-up calls included,
                # hence divided by them too).
                children = (worker_process_cpu_s(app) - children_before) / calls * 1e6
                result["cpu_us_per_call_by_thread"]["LM worker processes"] = children
                result["client_cpu_us_per_call"] += children
            result["kind"] = kind
            result["lm_workers"] = in_flight
            return result
        finally:
            app.stop()
            lm.close()

    def op_throughput(cmd: dict[str, Any]) -> dict[str, Any]:
        k, per_thread, prefix = int(cmd["in_flight"]), int(cmd["per_thread"]), cmd["prefix"]
        return with_app(cmd["kind"], k, lambda call: run_threads(call, k, per_thread, prefix))

    def op_profile(cmd: dict[str, Any]) -> dict[str, Any]:
        scenario, top = cmd["scenario"], int(cmd.get("top", 25))
        if scenario == "throughput":
            k, per_thread = int(cmd["in_flight"]), int(cmd["per_thread"])
            return with_app(
                cmd["kind"],
                k,
                lambda call: yappi_profile(
                    lambda: run_threads(call, k, per_thread, "prof"), k * (per_thread + 1), top
                ),
            )
        call = cached_call(scenario)
        q = cmd["question"]
        call(q)
        n = int(cmd["n"])
        out = {"cprofile_caller_thread": profile_loop(call, [q] * n, top)}
        out["yappi_all_threads"] = yappi_profile(lambda: time_loop(call, [q] * n), n, top)
        return out

    def close() -> None:
        for closer in reversed(closers):
            closer()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)

    ops: dict[str, Op] = {
        "rt_warm": op_warm,
        "rt_cached": op_cached,
        "rt_throughput": op_throughput,
        "rt_profile": op_profile,
    }
    return ops, close


def thread_cpu_s() -> dict[int, tuple[str, float]]:
    """CPU seconds of every live thread of this process, by native id, with its kind (the
    Python thread name without its number: ``LMWorker``, ``ModuleActor``, ...). Read from
    /proc/self/task/*/schedstat (exact run time, no profiler); empty where unavailable."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as f:
                ns = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        name = names.get(int(tid), "?")
        out[int(tid)] = (re.sub(r"[-_ ]?\d+$", "", name), ns / 1e9)
    return out


def cpu_by_thread(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], calls: int
) -> dict[str, float]:
    """CPU us per call by thread kind between two :func:`thread_cpu_s` readings. Threads
    that ended in between (the benchmark's caller threads) are missing from ``after``: their
    share is the process's CPU per call minus the sum of these."""
    kinds: dict[str, float] = {}
    for tid, (kind, cpu) in after.items():
        spent = cpu - before.get(tid, (kind, 0.0))[1]
        kinds[kind] = kinds.get(kind, 0.0) + spent / max(1, calls) * 1e6
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def yappi_profile(run: Callable[[], dict[str, Any]], n: int, top: int) -> dict[str, Any]:
    """CPU time of every thread while ``run()`` runs, per function, in us per call; with
    yappi (installed in .venv for investigation only). Without yappi: just ``run()``."""
    try:
        import yappi  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        return {"run": run(), "note": "yappi not installed: no all-thread profile"}
    yappi.clear_stats()
    yappi.set_clock_type("cpu")
    yappi.start(builtins=True, profile_threads=True)
    try:
        result = run()
    finally:
        yappi.stop()
    rows: list[dict[str, Any]] = []
    groups: dict[str, float] = {}
    for stat in yappi.get_func_stats():
        rows.append(
            {
                "function": f"{_short_path(stat.module)}:{stat.lineno}({stat.name})",
                "calls_per_call": stat.ncall / n,
                "own_us_per_call": stat.tsub / n * 1e6,
                "cum_us_per_call": stat.ttot / n * 1e6,
            }
        )
        group = _group(stat.module, stat.name)
        groups[group] = groups.get(group, 0.0) + stat.tsub / n * 1e6
    threads = sorted(
        ({"thread": t.name, "cpu_us_per_call": t.ttot / n * 1e6} for t in yappi.get_thread_stats()),
        key=lambda r: -float(r["cpu_us_per_call"]),
    )
    yappi.clear_stats()
    return {
        "calls": n,
        "run": result,
        "top_own": sorted(rows, key=lambda r: r["own_us_per_call"], reverse=True)[:top],
        "top_cumulative": sorted(rows, key=lambda r: r["cum_us_per_call"], reverse=True)[:top],
        "own_us_per_call_by_group": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "threads_top": threads[:12],
        "threads_cpu_us_per_call_total": sum(float(t["cpu_us_per_call"]) for t in threads),
    }


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
