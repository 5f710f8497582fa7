"""The carbon-aware benchmark on the shipped two-week CAISO excerpt: runs, writes its JSON, meets its goals there."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "tests" / "data" / "carbon" / "us_caiso_2022-06-01_14_eia.csv"


def test_replay_on_an_excerpt(tmp_path):
    out = tmp_path / "carbon.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "carbon_aware.py"), "--trace", str(TRACE), "--quick"]
        + ["--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())[TRACE.name]
    assert set(figures) == {"perfect", "persistence", "persistence-week"}
    for r in figures.values():
        assert r["deadline_misses"] == 0 and r["starts"] == len(range(7 * 24, 13 * 24, 7))
        assert r["median_ratio"] < 1.0 and r["oracle_median_ratio"] <= r["median_ratio"] + 1e-9
    assert figures["perfect"]["oracle_share"] >= 0.97
    assert figures["persistence"]["oracle_share"] > 0.5
    assert "us_caiso_2022-06-01_14_eia.csv" in proc.stdout
