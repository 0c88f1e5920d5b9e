"""Medians, ratios, the results table and bench/RESULTS.md."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.targets import ALL_TARGETS, HAPROXY, MAITRED, NGINX


@dataclass(frozen=True)
class Goal:
    """What issue 3 asks of maitred for one row, compared with HAProxy."""

    kind: str  # "ratio_at_least" | "haproxy_plus_at_most" | "at_most"
    value: float

    def describe(self) -> str:
        if self.kind == "ratio_at_least":
            return f"≥ {self.value:g}× HAProxy"
        if self.kind == "haproxy_plus_at_most":
            return f"≤ HAProxy + {self.value:g}"
        return f"≤ {self.value:g}"

    def met(self, maitred: float | None, haproxy: float | None) -> bool | None:
        if maitred is None:
            return None
        if self.kind == "at_most":
            return maitred <= self.value
        if haproxy is None:
            return None
        if self.kind == "ratio_at_least":
            return maitred >= self.value * haproxy
        return maitred <= haproxy + self.value


@dataclass
class Row:
    scenario: str
    metric: str
    runs: dict[str, list[float]] = field(default_factory=dict)  # target -> value per round
    goal: Goal | None = None
    skipped: str = ""  # why the whole row was not measured

    def median(self, target: str) -> float | None:
        return median(self.runs.get(target, []))


def median(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def format_number(value: float | None) -> str:
    if value is None:
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _goal_cells(row: Row) -> list[str]:
    if row.goal is None:
        return ["", ""]
    met = row.goal.met(row.median(MAITRED), row.median(HAPROXY))
    return [row.goal.describe(), {True: "yes", False: "**no**", None: "n/a"}[met]]


def table(rows: list[Row]) -> str:
    header = [
        "scenario",
        "metric",
        *ALL_TARGETS,
        f"{MAITRED}/{HAPROXY}",
        f"{MAITRED}/{NGINX}",
        "goal",
        "met",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.skipped:
            cells = [row.scenario, row.metric, f"skipped: {row.skipped}"] + [""] * (len(header) - 3)
        else:
            medians = {t: row.median(t) for t in ALL_TARGETS}
            cells = [
                row.scenario,
                row.metric,
                *(format_number(medians[t]) for t in ALL_TARGETS),
                format_ratio(ratio(medians[MAITRED], medians[HAPROXY])),
                format_ratio(ratio(medians[MAITRED], medians[NGINX])),
                *_goal_cells(row),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_round(rows: list[Row]) -> str:
    lines = []
    for row in rows:
        if row.skipped:
            continue
        values = "; ".join(
            f"{t} " + ", ".join(format_number(v) for v in row.runs.get(t, [])) for t in ALL_TARGETS
        )
        lines.append(f"- {row.scenario} {row.metric}: {values}")
    return "\n".join(lines)


def results_markdown(
    rows: list[Row],
    command: str,
    date: str,
    facts: dict[str, str],
    notes: list[str],
) -> str:
    machine = "\n".join(f"- {name}: {value}" for name, value in facts.items())
    notes_text = "\n".join(f"- {note}" for note in notes)
    return f"""# Benchmark results

Command: `{command}` (from the project root), {date}.

## Machine

{machine}

## Medians

{table(rows)}

## Every round

{per_round(rows)}

## Notes

{notes_text}
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
