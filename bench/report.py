"""Result rows and the table `run_benchmarks.py` prints."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class Row:
    """One benchmark line: flowctl's figure against a baseline measured in the same run.

    `passed` is None for informational rows (no target); `target` is shown as written. `ratio` is value / baseline.
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""
    passed: bool | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        data = {k: v for k, v in data.items() if k != "ratio"}
        return cls(**data)


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    """`min X, max Y, n=K` for notes."""
    lo, hi = min(values) * scale, max(values) * scale
    return f"min {_num(lo)}{unit}, max {_num(hi)}{unit}, n={len(values)}"


def _num(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{_num(value)} {unit}".strip()


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    if ratio >= 100:
        return f"{ratio:,.0f}×"
    return f"{ratio:.1f}×" if ratio >= 10 else f"{ratio:.2f}×"


def render_table(rows: list[Row]) -> str:
    headers = ("benchmark", "flowctl", "baseline", "ratio", "target", "result")
    body = []
    for row in rows:
        baseline = fmt(row.baseline, row.unit) if row.baseline is not None else "—"
        if row.baseline_label and row.baseline is not None:
            baseline += f" ({row.baseline_label})"
        ratio = fmt_ratio(row.ratio)
        result = {True: "PASS", False: "FAIL", None: "info"}[row.passed]
        body.append((row.name, fmt(row.value, row.unit), baseline, ratio, row.target or "—", result))
    widths = [max(len(str(r[i])) for r in (headers, *body)) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    notes = [f"- {row.name}: {note}" for row in rows for note in row.notes]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def render_markdown(rows: list[Row]) -> str:
    """The same table as GitHub markdown (for bench/README.md)."""
    out = ["| benchmark | flowctl | baseline | ratio | target | result |", "|---|---|---|---|---|---|"]
    for row in rows:
        baseline = fmt(row.baseline, row.unit) if row.baseline is not None else "—"
        if row.baseline_label and row.baseline is not None:
            baseline += f" ({row.baseline_label})"
        ratio = fmt_ratio(row.ratio)
        result = {True: "PASS", False: "FAIL", None: "info"}[row.passed]
        out.append(
            f"| {row.name} | {fmt(row.value, row.unit)} | {baseline} | {ratio} | {row.target or '—'} | {result} |"
        )
    notes = [f"- {row.name}: {note}" for row in rows for note in row.notes]
    if notes:
        out += ["", "Notes:", "", *notes]
    return "\n".join(out)
