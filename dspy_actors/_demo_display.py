"""How the demo shows itself: rich panels, a live progress bar and tables on a terminal;
plain lines elsewhere (a log file, CI, a pipe), with no carriage returns or colour codes.

The demo decides *what* to say (``_demo.py``); a display decides *how*. Both displays
say the same things, so what a person reads in a terminal is what a log keeps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol, TextIO

from rich.console import Console
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

__all__ = ["Display", "PlainDisplay", "RichDisplay", "display_for"]

Rows = Sequence[tuple[str, str]]


class Display(Protocol):
    """What the demo asks of its output."""

    def intro(self, title: str, rows: Rows, watch: Sequence[str]) -> None: ...

    def progress_start(self, total: int) -> None: ...

    def progress(self, done: int, answered: int, failed: int, kills: int) -> None: ...

    def progress_end(self) -> None: ...

    def samples(self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None: ...

    def tree(self, title: str, text: str) -> None: ...

    def summary(self, verdict: str, rows: Rows) -> None: ...


class PlainDisplay:
    """Line by line, for logs: a progress line every ``every_s`` seconds (and at the end)."""

    def __init__(self, out: TextIO, show_progress: bool = True, every_s: float = 1.0) -> None:
        self.out = out
        self.show_progress = show_progress
        self.every_s = every_s
        self._total = 0
        self._last = 0.0
        self._last_line = ""
        self._final = ""

    def _write(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def intro(self, title: str, rows: Rows, watch: Sequence[str]) -> None:
        self._write(title)
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            self._write(f"  {key.ljust(width)}  {value}")
        self._write("What to watch:")
        for line in watch:
            self._write(f"  - {line}")
        self._write()

    def progress_start(self, total: int) -> None:
        self._total = total
        self._last = time.monotonic()

    def _line(self, done: int, answered: int, failed: int, kills: int) -> str:
        return (
            f"progress {done}/{self._total}: answered {answered}, failed {failed}, "
            f"actors killed {kills}"
        )

    def progress(self, done: int, answered: int, failed: int, kills: int) -> None:
        if not self.show_progress:
            return
        now = time.monotonic()
        line = self._final = self._line(done, answered, failed, kills)
        if now - self._last >= self.every_s and line != self._last_line:
            self._last, self._last_line = now, line
            self._write(line)

    def progress_end(self) -> None:
        if self.show_progress and self._final and self._final != self._last_line:
            self._write(self._final)  # always the final count, however short the run
        self._write()

    def samples(self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self._write(title)
        for row in rows:
            self._write("  " + "  |  ".join(f"{h}: {v}" for h, v in zip(header, row, strict=True)))
        self._write()

    def tree(self, title: str, text: str) -> None:
        self._write(title)
        self._write()
        self._write(text)
        self._write()

    def summary(self, verdict: str, rows: Rows) -> None:
        self._write("Summary")
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            self._write(f"  {key.ljust(width)}  {value}")
        self._write(f"In short: {verdict}")


class RichDisplay:
    """Panels, a live bar and tables, for a person at a terminal."""

    def __init__(self, console: Console, show_progress: bool = True) -> None:
        self.console = console
        self.show_progress = show_progress
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def intro(self, title: str, rows: Rows, watch: Sequence[str]) -> None:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            table.add_row(key, value)
        table.add_row("", "")
        table.add_row("What to watch", "\n".join(f"• {line}" for line in watch))
        self.console.print(Panel(table, title=title, title_align="left"))

    def progress_start(self, total: int) -> None:
        if not self.show_progress:
            return
        self._progress = Progress(
            TextColumn("[bold]questions"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "answered [green]{task.fields[answered]}[/]  failed [red]{task.fields[failed]}[/]"
                "  actors killed [yellow]{task.fields[kills]}[/]"
            ),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._task = self._progress.add_task(
            "questions", total=total, answered=0, failed=0, kills=0
        )
        self._progress.start()

    def progress(self, done: int, answered: int, failed: int, kills: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, completed=done, answered=answered, failed=failed, kills=kills
            )

    def progress_end(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def samples(self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        table = Table(title=title, title_justify="left", show_lines=False)
        for name in header:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*row)
        self.console.print(table)

    def tree(self, title: str, text: str) -> None:
        self.console.print(Panel(Text(text), title=title, title_align="left"))

    def summary(self, verdict: str, rows: Rows) -> None:
        table = Table(title="Summary", title_justify="left", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            table.add_row(key, value)
        self.console.print(table)
        self.console.print(Text(f"In short: {verdict}", style="bold"))


def display_for(out: TextIO, show_progress: bool) -> Display:
    """Rich on a terminal, plain lines otherwise (a file, a pipe, CI)."""
    console = Console(file=out, highlight=False)
    if console.is_terminal:
        return RichDisplay(console, show_progress)
    return PlainDisplay(out, show_progress)
