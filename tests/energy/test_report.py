import json
import os
import time

import pytest

from lightning_green.energy import format_summary, read_report, write_json_atomic
from lightning_green.energy.carbon import CarbonModel


def test_atomic_write_keeps_old_content_when_serialisation_fails(tmp_path):
    path = tmp_path / "energy_report.json"
    write_json_atomic(path, {"version": 1, "stages": {}})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"version": 2, "stages": {"bad": object()}})
    assert json.loads(path.read_text()) == {"version": 1, "stages": {}}
    assert os.listdir(tmp_path) == ["energy_report.json"]  # no temp file left behind


def test_read_report_rejects_other_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a lightning-green energy report"):
        read_report(p)


def test_summary_has_a_row_per_stage_and_marks_missing_components():
    report = {
        "carbon": CarbonModel().as_dict(),
        "stages": {
            "fit": {
                "energy_j": {"gpu": 7200.0, "cpu": 100.0, "dram": 1.0, "total": 7301.0},
                "sources": {"gpu": "measured", "cpu": "estimated", "dram": "estimated"},
                "label": "mixed",
                "time_s": 10.0,
                "samples": 100,
                "gco2e": 1.0,
            },
            "test": {
                "energy_j": {"gpu": 0.0, "cpu": 5.0, "dram": 0.0, "total": 5.0},
                "sources": {"gpu": "none", "cpu": "estimated", "dram": "estimated"},
                "label": "estimated",
                "time_s": 0.0,
                "samples": 0,
                "gco2e": 0.0,
            },
        },
    }
    text = format_summary(report)
    lines = text.splitlines()
    assert "475 g/kWh (default)" in lines[0]
    assert lines[2].split()[:3] == ["fit", "2.00", "Wh"] and lines[2].endswith("mixed")
    assert lines[3].split()[1] == "-"  # no GPU metered in the test stage


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "r.json", {"version": 1, "stages": {}})
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by teammates, not mkstemp's 0600


def test_a_write_removes_the_temporaries_a_killed_writer_left_but_not_a_fresh_one(tmp_path):
    # kill -9 between mkstemp and the rename leaves `.energy_report.json.<random>.tmp`; nothing else removes it.
    stale = tmp_path / ".energy_report.json.abc123.tmp"
    fresh = tmp_path / ".energy_report.json.def456.tmp"  # another writer's, in the middle of its write
    other = tmp_path / ".other.json.ghi789.tmp"
    for p in (stale, fresh, other):
        p.write_text("{")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    write_json_atomic(tmp_path / "energy_report.json", {"version": 1, "stages": {}})
    assert not stale.exists() and fresh.exists() and other.exists()
    assert read_report(tmp_path / "energy_report.json")["version"] == 1
