"""The ``dspy-actors`` command.

- ``dspy-actors demo``: serve a multi-step program, answer a batch of questions at
  concurrency while actors are killed and the LM misbehaves; print the tree and a summary.
- ``dspy-actors sim-lm``: run the simulated LM server (optionally with a fault plan file).
- ``dspy-actors console``: the demo with its live console open in the browser, kept up
  after the run until Ctrl-C (``dspy-actors demo --console`` does the same for the demo).
- ``dspy-actors tree``: print the supervision tree of the demo app after a short run. There
  is no remote introspection yet, so this cannot attach to another process's app; in your
  own process, ``print(app.tree().render())`` shows yours.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dspy-actors",
        description="DSPy programs on a supervised actor runtime: demo, simulated LM, tree.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    demo = commands.add_parser(
        "demo",
        help="answer a batch of questions under injected crashes and LM faults",
        description=(
            "Serve a three-step program (retrieve -> answer -> check), run a batch of "
            "questions at concurrency while a chaos monkey kills its actors and the LM "
            "server injects faults, then print the live tree and a summary."
        ),
    )
    demo.add_argument(
        "--lm",
        help="a real model, e.g. openai/gpt-4o-mini (key from OPENAI_API_KEY); "
        "default: an embedded simulated LM that also injects faults",
    )
    demo.add_argument("--api-base", help="the provider's base URL (with --lm)")
    demo.add_argument("--questions", type=_positive_int, default=200, help="default 200")
    demo.add_argument("--concurrency", type=_positive_int, default=16, help="default 16")
    demo.add_argument(
        "--kill-every",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="kill one of the program's actors this often (0: never; default 0.25)",
    )
    demo.add_argument("--seed", type=int, default=7, help="chaos and fault seed (default 7)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    _console_options(demo, flag=True)

    console = commands.add_parser(
        "console",
        help="run the demo with its live console (tree, programs, LM, dead letters)",
        description=(
            "Start the demo app with its console on 127.0.0.1, print the console's URL "
            "(with its token), run the chaos demo while you watch restarts and breaker "
            "trips, then keep the console open until Ctrl-C."
        ),
    )
    console.add_argument("--questions", type=_positive_int, default=2000, help="default 2000")
    console.add_argument("--concurrency", type=_positive_int, default=8, help="default 8")
    console.add_argument(
        "--kill-every",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="kill one of the program's actors this often (default 1.0)",
    )
    _console_options(console, flag=False)

    sim = commands.add_parser(
        "sim-lm",
        help="run the simulated OpenAI/Anthropic LM server",
        description="Print the server's base URL, then serve until interrupted (Ctrl-C).",
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=0, help="default: any free port")
    sim.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    sim.add_argument("--faults", help="a fault plan file (JSON, or YAML)")

    commands.add_parser(
        "tree",
        help="print the demo app's supervision tree after a short run",
        description=(
            "Start the demo app, answer a few questions under chaos, and print its live "
            "tree. No remote introspection exists yet: this shows the demo's own app, not "
            "another process's."
        ),
    )
    return parser


def _console_options(parser: argparse.ArgumentParser, *, flag: bool) -> None:
    if flag:
        parser.add_argument(
            "--console", action="store_true", help="serve the live console while it runs"
        )
    parser.add_argument(
        "--console-port", type=int, default=0, metavar="PORT",
        help="the console's port on 127.0.0.1 (default: any free port; the URL is printed)",
    )  # fmt: skip
    parser.add_argument(
        "--hold", type=float, default=None, metavar="SECONDS",
        help="keep the console open this long after the run (default: until Ctrl-C)",
    )  # fmt: skip


def _hold_for(seconds: float | None) -> Callable[[Any], None]:
    """Keep the console up after the run: ``seconds``, or until Ctrl-C (None)."""

    def hold(console: Any) -> None:
        print(f"console still open at {console.url} (Ctrl-C to stop)", flush=True)
        stop = threading.Event()
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            while not stop.wait(0.5):
                if deadline is not None and time.monotonic() >= deadline:
                    return
        except KeyboardInterrupt:
            return

    return hold


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dspy-actors`` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "sim-lm":
        from dspy_actors.testing.sim_lm import main as sim_main

        sim_argv = ["--host", args.host, "--port", str(args.port), "--latency", str(args.latency)]
        if args.faults:
            sim_argv += ["--faults", args.faults]
        sim_main(sim_argv)
        return 0

    from dspy_actors.lm.errors import AuthenticationError

    try:
        return _run_demo_command(args)
    except AuthenticationError as exc:  # raised before any request: say the fix, no traceback
        print(f"dspy-actors {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `dspy-actors demo | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run_demo_command(args: argparse.Namespace) -> int:
    from dspy_actors._demo import DemoOptions, run_demo

    if args.command == "tree":
        run_demo(
            DemoOptions(
                questions=20,
                concurrency=4,
                show_progress=False,
                show_summary=False,
                show_intro=False,
                kill_every_s=0.2,
            )
        )
        return 0
    if args.command == "console":
        result = run_demo(
            DemoOptions(
                questions=args.questions,
                concurrency=args.concurrency,
                kill_every_s=args.kill_every,
                console_port=args.console_port,
                hold=_hold_for(args.hold),
            )
        )
        return 0 if result.answered > 0 else 1
    with_console = args.console
    result = run_demo(
        DemoOptions(
            questions=args.questions,
            concurrency=args.concurrency,
            lm=args.lm,
            api_base=args.api_base,
            kill_every_s=args.kill_every,
            seed=args.seed,
            show_progress=not args.no_progress,
            console_port=args.console_port if with_console else None,
            hold=_hold_for(args.hold) if with_console else None,
        )
    )
    # Failures under chaos are reported, not fatal; a hung call or no answer at all is.
    return 0 if result.answered > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
