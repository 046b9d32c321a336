"""The benchmark is not a timed test, but it must keep working: run it on tiny sizes
and check that every figure is in its JSON record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import FIGURE_KEYS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_bench_tiny_run_reports_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "latest.json").read_text())
    assert record["errors"] == {}
    assert not list(tmp_path.glob("20*.json")), "a tiny run must not write a dated record"
    figures = record["figures"]
    for key in FIGURE_KEYS:
        figure = figures[key]
        assert figure["samples"] >= 1 and figure["stageflow_median"] is not None, key
        assert figure["met"] in (True, False, None), key
    assert figures["release_latency"]["limit_median"] > 0
    assert figures["throughput"]["ratio"] > 0
    decision = figures["decision_round_trip"]
    assert decision["limit_median"] > 0
    for side in ("in_process", "bare", "cli"):  # a refused decision would time something else
        assert decision["details"]["verdicts"][side] == {"accepted": decision["samples"]}, side
    assert "| figure |" in record["markdown"]
    assert "release latency" in done.stdout  # the printed table
