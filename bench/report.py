"""Medians, ratios, the results table and bench/RESULTS.md."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.targets import ALL_TARGETS, HAPROXY, HAPROXY_XFF_ONLY, MAITRED, NGINX


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

    def met(self, row: Row) -> bool | None:
        if self.kind == "at_most":
            value = row.median(MAITRED)
            return None if value is None else value <= self.value
        if self.kind == "ratio_at_least":
            value = row.paired_ratio(MAITRED, HAPROXY)
            return None if value is None else value >= self.value
        value = row.paired_difference(MAITRED, HAPROXY)
        return None if value is None else value <= self.value


@dataclass
class Row:
    """One metric of one scenario: a value per round for each target.

    Round i of every target ran back to back (A B C), so a value missing from
    a round is NaN, never left out: the lists stay aligned round by round.
    """

    scenario: str
    metric: str
    runs: dict[str, list[float]] = field(default_factory=dict)
    goal: Goal | None = None
    skipped: str = ""  # why the whole row was not measured

    def median(self, target: str) -> float | None:
        return median(self.runs.get(target, []))

    def _pairs(self, first: str, second: str) -> list[tuple[float, float]]:
        pairs = zip(self.runs.get(first, []), self.runs.get(second, []), strict=False)
        return [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]

    def paired_ratio(self, numerator: str, denominator: str) -> float | None:
        """Median over rounds of the ratio within each round.

        The machine's load drifts between rounds; within one round the targets
        ran seconds apart, so per-round ratios cancel most of the drift.
        """
        return median([a / b for a, b in self._pairs(numerator, denominator) if b != 0])

    def paired_difference(self, first: str, second: str) -> float | None:
        return median([a - b for a, b in self._pairs(first, second)])


def median(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else None


def format_number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
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
    met = row.goal.met(row)
    return [row.goal.describe(), {True: "yes", False: "**no**", None: "n/a"}[met]]


def table(rows: list[Row]) -> str:
    header = [
        "scenario",
        "metric",
        *ALL_TARGETS,
        f"{MAITRED}/{HAPROXY}",
        f"{MAITRED}/{NGINX}",
        f"{MAITRED}/{HAPROXY_XFF_ONLY}",
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
                format_ratio(row.paired_ratio(MAITRED, HAPROXY)),
                format_ratio(row.paired_ratio(MAITRED, NGINX)),
                format_ratio(row.paired_ratio(MAITRED, HAPROXY_XFF_ONLY)),
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
    sections: list[tuple[str, str]] | None = None,
) -> str:
    """The whole report; `sections` (title, markdown) go after the rounds, before the notes."""
    machine = "\n".join(f"- {name}: {value}" for name, value in facts.items())
    notes_text = "\n".join(f"- {note}" for note in notes)
    extra = "".join(f"## {title}\n\n{body}\n\n" for title, body in sections or [])
    return f"""# Benchmark results

Command: `{command}` (from the project root), {date}.

## Machine

{machine}

## Medians

{table(rows)}

## Every round

{per_round(rows)}

{extra}## Notes

{notes_text}
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
