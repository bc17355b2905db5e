"""What progress output keeps of a run as it goes: tokens and cost (counted from the model calls themselves, as the
run's totals are), attempts and times per top-level step, and the calls held back by the run's concurrency cap. The
terminal's live count and the closing per-step summary read it (progress.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flowctl.interpreter.reporting import ModelCallSeen, ToolCallSeen

Prices = dict[str, tuple[float | None, float | None]]  # model name → (input, output) price per million tokens
SUMMARY_ROWS = 12  # steps listed in the closing summary; a larger run lists its slowest (and those that failed)
_ITEM = re.compile(r"\[[^\[\]]+\]$")  # `[3]`, or an `item_id` name: `[task-a1]`


def item_of(where: str) -> tuple[str, str] | None:
    """(fan-out step, item) when `where` is a fan-out item or a step inside one: `fan[3]/check` → (`fan`, `fan[3]`)."""
    parts = where.split("/")
    for i, part in enumerate(parts):
        match = _ITEM.search(part)
        if match:
            item = "/".join(parts[: i + 1])
            return item[: len(item) - len(match.group())], item
    return None


def first_step(where: str) -> str:
    """The first step of a path, without an item's index: `grp/inner` → `grp`, `fan[3]/check` → `fan`. (Step ids
    have no `[`: an item's index or name is the only one.)"""
    slash = where.find("/")
    first = where if slash < 0 else where[:slash]
    return first[: first.rindex("[")] if first.endswith("]") else first


def prices_of(graph: Any) -> Prices:
    """Each model's prices (by the model name requests send), from a compiled pipeline (an ir.Graph) and the child
    files it runs."""
    prices: Prices = {}
    pending, seen = [graph], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for model in current.models.values():
            prices.setdefault(model.model, (model.price_in_per_mtok, model.price_out_per_mtok))
        pending.extend(current.children.values())
    return prices


def layout_of(graph: Any) -> dict[str, str]:
    """Each step id of a compiled pipeline's root → the top-level step it is nested in (for the closing summary: a
    parallel branch's path is its own id, not under its group's)."""
    root = graph.root
    layout: dict[str, str] = {}
    for top in (*root.steps, *root.finally_steps, *(s for t in root.triggers for s in t.steps)):
        stack = [top]
        while stack:
            step = stack.pop()
            layout.setdefault(step.id, top.id)
            stack.extend(step.children())
    return layout


def fit_name(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


@dataclass(slots=True)
class _Row:
    """One top-level step of the root run, as the summary shows it."""

    status: str = "running"
    elapsed: float = 0.0
    tokens: int = 0
    cost: float = 0.0
    attempts: int = 0
    items: dict[str, int] = field(default_factory=dict)  # a fan-out's items' max attempt, by item
    item_status: dict[str, int] = field(default_factory=dict)  # a fan-out's items, by status


class RunTally:
    """Counts for progress output. Tokens come from each model call as it ends, not from finished steps: a group
    step's tokens include its children's, so adding up step lines counts them twice. A replayed call counts only
    when resuming and only once, as the run's totals do (Journal.count_replayed)."""

    def __init__(self, prices: Prices, layout: dict[str, str] | None = None) -> None:
        self.prices = prices
        self.layout = layout or {}  # step id → the top-level step it is nested in (a branch's path is its own id)
        self.priced = any(p != (None, None) for p in prices.values())
        self.tokens = 0
        self.cost = 0.0
        self.resumed = False
        self.rows: dict[str, _Row] = {}
        self._counted: set[tuple[str, str]] = set()  # calls whose usage is in `tokens`
        self.queued = 0  # calls waiting for a slot under the concurrency cap, as last told, less those let in since
        self.cap = 0

    def top_of(self, where: str) -> str:
        """The top-level step of the root run that `where` is part of."""
        first = first_step(where)
        return self.layout.get(first, first)

    def _row(self, where: str) -> _Row:
        top = self.top_of(where)
        row = self.rows.get(top)
        if row is None:
            row = self.rows[top] = _Row()
        return row

    def _own_row(self, where: str) -> tuple[_Row | None, bool]:
        """The row `where` has a say in: its own (a top-level step), or its fan-out's (an item of a top-level
        fan-out, True); None for a nested step. String tests only: this runs twice per item of a fan-out."""
        if "/" in where:
            return None, False
        item = where.endswith("]")
        step = where[: where.rindex("[")] if item else where
        if self.layout.get(step, step) != step:
            return None, False
        row = self.rows.get(step)
        if row is None:
            row = self.rows[step] = _Row()
        return row, item

    def started(self, where: str, attempt: int) -> None:
        row, item = self._own_row(where)
        if row is None:
            return
        if item:
            if attempt > row.items.get(where, 0):
                row.items[where] = attempt
        elif attempt > row.attempts:
            row.attempts = attempt

    def finished(self, where: str, status: str, elapsed: float) -> None:
        row, item = self._own_row(where)
        if row is None:
            return
        if item:
            row.item_status[status] = row.item_status.get(status, 0) + 1
            row.items.setdefault(where, 1)
        else:
            row.status, row.elapsed = status, elapsed
            if self.queued and not self.rows_running():
                self.queued = 0

    def rows_running(self) -> bool:
        return any(row.status == "running" for row in self.rows.values())

    def model_call(self, run_id: str, where: str, call: ModelCallSeen) -> None:
        if call.replayed:
            ident = (run_id, call.key)
            if not self.resumed or ident in self._counted:
                return
            self._counted.add(ident)
        else:
            if self.resumed:  # its replays in this process are not counted again (see count_replayed)
                self._counted.add((run_id, call.key))
            self._let_in()
        usage: Any = call.response.usage if call.response is not None else getattr(call.error, "usage", None)
        if usage is None:
            return
        tokens = int(getattr(usage, "input_tokens", 0)) + int(getattr(usage, "output_tokens", 0))
        cost = self._cost(call.request.model, usage)
        self.tokens += tokens
        self.cost += cost
        row = self._row(where)
        row.tokens += tokens
        row.cost += cost

    def tool_call(self, call: ToolCallSeen) -> None:
        if not call.replayed:
            self._let_in()

    def held_back(self, queued: int, cap: int) -> None:
        self.queued, self.cap = queued, cap

    def _let_in(self) -> None:
        """A call ended and gave its slot to the next one waiting."""
        if self.queued:
            self.queued -= 1

    def _cost(self, model: str, usage: Any) -> float:
        price_in, price_out = self.prices.get(model, (None, None))
        cost = 0.0
        if price_in is not None:
            cost += usage.input_tokens * price_in / 1e6
        if price_out is not None:
            cost += usage.output_tokens * price_out / 1e6
        return cost

    def summary(self, run_id: str) -> list[str]:
        """The closing per-step lines: time, tokens, cost (when a price is set), attempts; a fan-out's items summed."""
        rows = list(self.rows.items())
        if not rows:
            return []
        left_out = 0
        if len(rows) > SUMMARY_ROWS:  # the slowest and the ones that failed, in run order
            keep = sorted(rows, key=lambda r: (r[1].status == "succeeded", -r[1].elapsed))[:SUMMARY_ROWS]
            kept = {name for name, _ in keep}
            left_out = len(rows) - len(kept)
            rows = [r for r in rows if r[0] in kept]
        table = [["step", "time", "tokens", *(["cost"] if self.priced else []), "attempts"]]
        for name, row in rows:
            mark = {"succeeded": "✓", "failed": "✗", "skipped": "–", "cancelled": "⊘"}.get(row.status, "…")
            attempts = str(row.attempts or 1)
            if row.items:
                tally = ", ".join(f"{n} {s}" for s, n in sorted(row.item_status.items(), key=lambda s: -s[1]))
                attempts = f"{sum(row.items.values())} for {len(row.items)} items"
                if set(row.item_status) - {"succeeded"}:
                    attempts += f" ({tally})"
            cost = [f"${row.cost:.4f}"] if self.priced else []
            table.append([f"{mark} {fit_name(name)}", f"{row.elapsed:.2f}s", f"{row.tokens:,}", *cost, attempts])
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
        lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in table]
        if left_out:
            lines.append(f"  … {left_out} more steps (`flowctl show {run_id}` lists them all)")
        return lines
