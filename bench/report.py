"""Figures, their targets, the printed table and the JSON record."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import temporalio

# Every figure a run reports, in table order. The quick test checks all are present.
FIGURE_KEYS = [
    "release_latency",
    "history_events",
    "throughput",
    "approval_latency",
    "decision_round_trip",
    "decision_cli",
    "decision_cli_startup",
    "decision_cli_help",
    "decision_cli_minus_startup",
    "log_streaming",
    "log_agent_peak_rss",
    "artifact_first_download",
    "artifact_cache_hit",
    "startup",
    "failover",
]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def p90(values: list[float]) -> float:
    """The 90th percentile, nearest rank (the largest value for fewer than 10 samples)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


@dataclass
class Target:
    """What a figure should meet: on the ratio to the limit, or on Stageflow's own value."""

    on: str  # "ratio" or "value"
    op: str  # "<=", "<" or ">="
    bound: float
    text: str

    def met(self, value: float, ratio: float) -> bool | None:
        x = ratio if self.on == "ratio" else value
        if math.isnan(x):
            return None
        return {"<=": x <= self.bound, "<": x < self.bound, ">=": x >= self.bound}[self.op]


@dataclass
class Figure:
    key: str
    name: str
    unit: str
    stageflow: list[float]
    limit: list[float] = field(default_factory=list)
    limit_name: str = ""
    target: Target | None = None
    higher_is_better: bool = False
    notes: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float:
        return median(self.stageflow)

    @property
    def limit_value(self) -> float:
        return median(self.limit)

    @property
    def ratio(self) -> float:
        if not self.limit or not self.stageflow or self.limit_value == 0:
            return math.nan
        return self.value / self.limit_value

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value, self.ratio)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            stageflow_median=_finite(self.value),
            stageflow_p90=_finite(p90(self.stageflow)),
            limit_median=_finite(self.limit_value),
            limit_p90=_finite(p90(self.limit)),
            ratio=_finite(self.ratio),
            met=self.met,
            samples=len(self.stageflow),
        )
        return data


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit == "events":
        return f"{value:.0f}"
    return f"{value:.2f} {unit}"


def table(figures: list[Figure]) -> str:
    """The results as a plain-text table (median, p90 in brackets)."""
    rows = [("figure", "Stageflow (p90)", "limit (p90)", "ratio", "target", "met?")]
    for f in figures:
        sf = _fmt(f.value, f.unit)
        if len(f.stageflow) > 1:
            sf += f" ({_fmt(p90(f.stageflow), f.unit)})"
        limit = _fmt(f.limit_value, f.unit) if f.limit else "-"
        if len(f.limit) > 1:
            limit += f" ({_fmt(p90(f.limit), f.unit)})"
        if f.limit_name:
            limit += f" [{f.limit_name}]"
        ratio = "-" if math.isnan(f.ratio) else f"{f.ratio:.2f}x"
        met = {True: "yes", False: "NO", None: "-"}[f.met]
        rows.append((f.name, sf, limit, ratio, f.target.text if f.target else "-", met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(figures: list[Figure]) -> str:
    """The same table in Markdown, for BENCHMARKS.md."""
    lines = ["| figure | Stageflow (p90) | limit (p90) | ratio | target | met? |", "|---" * 6 + "|"]
    for f in figures:
        sf = _fmt(f.value, f.unit) + (
            f" ({_fmt(p90(f.stageflow), f.unit)})" if len(f.stageflow) > 1 else ""
        )
        limit = "-"
        if f.limit:
            limit = _fmt(f.limit_value, f.unit)
            limit += f" ({_fmt(p90(f.limit), f.unit)})" if len(f.limit) > 1 else ""
            limit += f" {f.limit_name}" if f.limit_name else ""
        ratio = "-" if math.isnan(f.ratio) else f"{f.ratio:.2f}×"
        met = {True: "yes", False: "**no**", None: "-"}[f.met]
        target = f.target.text if f.target else "-"
        cells = [f.name, sf, limit, ratio, target, met]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "temporalio": temporalio.__version__,
        "temporal_cli": _temporal_version(),
    }


def _temporal_version() -> str:
    from worker.devserver import temporal_binary

    try:
        done = subprocess.run(
            [temporal_binary(), "--version"], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip()
    except Exception as err:  # a report detail, never a reason to fail
        return f"unknown ({err})"


def write_results(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
