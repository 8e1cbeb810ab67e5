"""A tree view of a running supervision hierarchy, as data and as text."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class TreeNode:
    """One node of a supervision tree: a supervisor (with children) or a worker."""

    id: str
    kind: Literal["supervisor", "worker"]
    state: str
    restart_count: int = 0
    last_exit: str | None = None
    strategy: str | None = None
    children: tuple[TreeNode, ...] = ()

    def walk(self) -> Iterator[TreeNode]:
        """This node, then every descendant, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "restart_count": self.restart_count,
            "last_exit": self.last_exit,
            "strategy": self.strategy,
            "children": [c.to_dict() for c in self.children],
        }

    def _label(self) -> str:
        kind = f"supervisor, {self.strategy}" if self.strategy else self.kind
        text = f"{self.id} ({kind}) {self.state}"
        if self.restart_count:
            text += f" restarts={self.restart_count}"
        if self.last_exit is not None:
            text += f" last_exit={self.last_exit}"
        return text

    def render(self, fold: int = 8) -> str:
        """The tree as text, one node a line, drawn with box characters.

        Runs of more than ``fold`` sibling workers that are running and were never restarted
        are shown as one line (``worker-0 .. worker-63: 64 workers running``); 0 never folds.
        """
        lines = [self._label()]
        self._render_children("", lines, fold)
        return "\n".join(lines)

    @property
    def _plain(self) -> bool:
        return (
            self.kind == "worker"
            and self.state == "running"
            and not self.restart_count
            and self.last_exit is None
        )

    def _render_children(self, prefix: str, lines: list[str], fold: int) -> None:
        rows: list[tuple[str, TreeNode | None]] = []
        run: list[TreeNode] = []

        def flush() -> None:
            if fold and len(run) > fold:
                rows.append((f"{run[0].id} .. {run[-1].id}: {len(run)} workers running", None))
            else:
                rows.extend((child._label(), child) for child in run)
            run.clear()

        for child in self.children:
            if child._plain:
                run.append(child)
                continue
            flush()
            rows.append((child._label(), child))
        flush()
        for index, (label, node) in enumerate(rows):
            last = index == len(rows) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{label}")
            if node is not None:
                node._render_children(prefix + ("    " if last else "│   "), lines, fold)

    def __str__(self) -> str:
        return self.render()
