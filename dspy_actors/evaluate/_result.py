"""``EvaluationResult``: the score, one row per example, a text table, CSV and JSON export."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from dspy_actors.primitives._jsonable import to_jsonable
from dspy_actors.primitives.example import Example

__all__ = ["EvaluationResult", "ExampleResult"]


class _Outcome(NamedTuple):
    example: Example
    prediction: Any
    score: float


class ExampleResult(_Outcome):
    """One example's outcome: ``(example, prediction, score)`` as in DSPy (so
    ``for example, prediction, score in result.results`` works), plus ``error``: what the
    program or metric raised (the prediction is then None)."""

    error: BaseException | None

    def __new__(
        cls, example: Example, prediction: Any, score: float, error: BaseException | None = None
    ) -> ExampleResult:
        self = super().__new__(cls, example, prediction, score)
        self.error = error
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (ExampleResult, (self.example, self.prediction, self.score, self.error))


def _cell(value: Any, width: int) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class EvaluationResult:
    """What :class:`~dspy_actors.evaluate.Evaluate` returns.

    ``score`` is a percentage (as in DSPy): the mean example score times 100 over every
    example of the devset (one not evaluated counts as the failure score). ``results``
    holds an :class:`ExampleResult` per evaluated example, in devset order. ``interrupted``
    is True when Ctrl-C (or a cancel) stopped the run early.
    """

    score: float
    results: list[ExampleResult]
    total: int = -1  # -1: as many as ``results`` (DSPy builds it from score and results)
    interrupted: bool = False
    errors: int = 0
    timed_out: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.results = [
            r if isinstance(r, ExampleResult) else ExampleResult(*r) for r in self.results
        ]
        if self.total < 0:
            self.total = len(self.results)
        if not self.errors:
            self.errors = sum(1 for r in self.results if r.error is not None)

    def __repr__(self) -> str:
        return (
            f"EvaluationResult(score={self.score}, results=<list of {len(self.results)} results>)"
        )

    def __iter__(self) -> Iterator[Any]:
        # ``score, results = evaluate(program)`` works as with DSPy's tuple form.
        yield self.score
        yield self.results

    def __float__(self) -> float:
        return float(self.score)

    # -- rows -----------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per example: its fields, the predicted fields (``pred_`` prefixed),
        the score and the error (if any)."""
        rows = []
        for r in self.results:
            row: dict[str, Any] = {k: to_jsonable(v) for k, v in r.example.items()}
            if r.prediction is not None and hasattr(r.prediction, "items"):
                for k, v in r.prediction.items():
                    row[f"pred_{k}"] = to_jsonable(v)
            row["score"] = r.score
            row["error"] = None if r.error is None else f"{type(r.error).__name__}: {r.error}"
            rows.append(row)
        return rows

    def _columns(self, rows: list[dict[str, Any]]) -> list[str]:
        columns: list[str] = []
        for row in rows:
            for key in row:
                if key not in columns:
                    columns.append(key)
        return columns

    def table(self, max_rows: int | None = 20, width: int = 28) -> str:
        """The results as a plain-text table (first ``max_rows`` rows), then the score."""
        rows = self.rows()
        shown = rows if max_rows is None else rows[:max_rows]
        columns = self._columns(shown)
        cells = [
            [_cell("" if row.get(c) is None else row.get(c), width) for c in columns]
            for row in shown
        ]
        widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
            "  ".join("-" * w for w in widths),
        ]
        lines += [
            "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in cells
        ]
        if len(rows) > len(shown):
            lines.append(f"... {len(rows) - len(shown)} more rows")
        status = " (interrupted)" if self.interrupted else ""
        lines.append(
            f"score {self.score:.2f}% over {self.total} examples "
            f"({len(self.results)} evaluated, {self.errors} errors, "
            f"{self.timed_out} timed out){status}"
        )
        return "\n".join(lines)

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the rows as CSV (values that are not text are JSON-encoded)."""
        rows = self.rows()
        columns = self._columns(rows)
        target = Path(path)
        with target.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        c: (v if isinstance(v, str | int | float) or v is None else json.dumps(v))
                        for c, v in ((c, row.get(c)) for c in columns)
                    }
                )
        return target

    def dspy_rows(self, metric_name: str) -> list[dict[str, Any]]:
        """DSPy's saved layout: each example's fields and its prediction's fields (a name in
        both gets ``example_``/``pred_`` prefixes), and the score under ``metric_name``."""
        out = []
        for r in self.results:
            ex = {k: to_jsonable(v) for k, v in r.example.items()}
            if r.prediction is not None and hasattr(r.prediction, "items"):
                pred = {k: to_jsonable(v) for k, v in r.prediction.items()}
                row = {(f"example_{k}" if k in pred else k): v for k, v in ex.items()}
                row.update({(f"pred_{k}" if k in ex else k): v for k, v in pred.items()})
            else:
                row = {**ex, "prediction": to_jsonable(r.prediction)}
            row[metric_name] = r.score
            out.append(row)
        return out

    def save_as_csv(self, path: str | os.PathLike[str], metric_name: str = "score") -> Path:
        """Write :meth:`dspy_rows` as CSV (what ``Evaluate(save_as_csv=...)`` writes)."""
        rows = self.dspy_rows(metric_name)
        columns = self._columns(rows)
        target = Path(path)
        with target.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        c: v if isinstance(v, str | int | float) or v is None else json.dumps(v)
                        for c, v in ((c, row.get(c)) for c in columns)
                    }
                )
        return target

    def save_as_json(self, path: str | os.PathLike[str], metric_name: str = "score") -> Path:
        """Write :meth:`dspy_rows` as a JSON list (what ``Evaluate(save_as_json=...)``
        writes)."""
        target = Path(path)
        target.write_text(
            json.dumps(self.dspy_rows(metric_name), ensure_ascii=False), encoding="utf-8"
        )
        return target

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the score, counts and rows as one JSON document."""
        payload = {
            "score": self.score,
            "total": self.total,
            "evaluated": len(self.results),
            "errors": self.errors,
            "timed_out": self.timed_out,
            "interrupted": self.interrupted,
            "results": self.rows(),
        }
        target = Path(path)
        target.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
        return target
