import json
import os
import re

import pytest

from lightning_green import GreenReport
from lightning_green.cli import cli, main
from tests.report.runs import fit_digits


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [fit_digits(root / name, "tb", epochs=2).log_dir for name in ("baseline", "green")]


def run_main(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_fit_writes_the_green_report_by_default(tmp_path):
    result = cli(
        [
            "fit",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=2",
            "--trainer.enable_progress_bar=false",
            "--data.image_size=8",
        ]
    )
    assert any(isinstance(cb, GreenReport) for cb in result.trainer.callbacks)
    assert os.path.isfile(os.path.join(result.trainer.log_dir, "green_report.md"))


def test_report_regenerates_one_run(two_runs, capsys):
    md = os.path.join(two_runs[0], "green_report.md")
    os.remove(md)
    code, out, _ = run_main(["report", two_runs[0], "--no-html"], capsys)
    assert code == 0 and os.path.isfile(md) and md in out
    assert not os.path.exists(os.path.join(two_runs[1], "green_comparison.md"))


def test_report_compares_two_runs(two_runs, tmp_path, capsys):
    out_dir = tmp_path / "cmp"
    args = ["report", *two_runs, "--target", "0.0", "--names", "base,green", "--out", str(out_dir)]
    code, out, _ = run_main([*args, "--json", str(tmp_path / "cmp.json")], capsys)
    assert code == 0
    assert "target: val_acc ≥ 0 (given)" in out
    lines = out.splitlines()
    assert any(line.startswith("base ") and "1.00×" in line for line in lines)
    assert any(line.startswith("green ") for line in lines)
    assert (out_dir / "green_comparison.md").is_file() and (out_dir / "green_comparison.html").is_file()
    data = json.loads((tmp_path / "cmp.json").read_text())
    assert [r["name"] for r in data["runs"]] == ["base", "green"]
    assert all(r["target"]["reached"] and r["target"]["energy_j"] > 0 for r in data["runs"])
    base, green = (r["target"]["energy_j"] for r in data["runs"])
    green_line = next(line for line in lines if line.startswith("green "))
    assert f"{green / base:.2f}×" in green_line  # energy-to-target against the first run


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root, runs: str(root / "nope"), r"run directory '.*nope' does not exist\."),
        (lambda root, runs: os.path.dirname(runs[0]), r"is not a run directory \(no energy_report\.json\); runs found"),
        (lambda root, runs: str(root), r"is not a run directory .*pass the log dir of a fit run"),
    ],
)
def test_bad_run_directory_is_a_one_line_error_with_exit_2(two_runs, tmp_path, capsys, make, message):
    code, _, err = run_main(["report", make(tmp_path, two_runs)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("lightning-green: error: ")
    assert re.search(message, lines[0])


def test_names_must_match_the_runs(two_runs, capsys):
    code, _, err = run_main(["report", *two_runs, "--names", "only-one"], capsys)
    assert code == 2 and "--names has 1 name(s) for 2 run directories" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target", "nan"], "argument --target: must be a finite number, got nan"),
        (["--target", "inf"], "argument --target: must be a finite number, got inf"),
        (["--json", "one.json"], "argument --json: writes the comparison of two or more runs"),
    ],
)
def test_report_refuses_a_non_finite_target_and_json_of_one_run(two_runs, tmp_path, capsys, extra, message):
    code, _, err = run_main(["report", two_runs[0], "--no-html", *extra], capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "one.json").exists()


def test_out_with_one_run_is_refused_before_anything_is_written(two_runs, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_main(["report", two_runs[0], "--no-html", "--out", str(out)], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "lightning-green report: error: argument --out: applies to the comparison of two or more runs (its folder); "
        "one run's report is written into its own run dir (drop --out)"
    )
    assert not out.exists()


def test_an_interrupted_run_is_marked_in_the_comparison(two_runs, tmp_path, capsys):
    import shutil

    broken = tmp_path / "interrupted"
    shutil.copytree(two_runs[1], broken)
    path = broken / "energy_report.json"
    report = json.loads(path.read_text())
    report["status"] = "interrupted: KeyboardInterrupt"
    path.write_text(json.dumps(report))
    out_dir = tmp_path / "cmp"
    code, out, _ = run_main(["report", two_runs[0], str(broken), "--names", "base,cut", "--out", str(out_dir)], capsys)
    assert code == 0
    assert any(line.startswith("cut (interrupted: KeyboardInterrupt) ") for line in out.splitlines())
    assert "note: run 'cut' did not finish normally (interrupted: KeyboardInterrupt)" in out
    assert "did not finish normally" in (out_dir / "green_comparison.md").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"version": 1, "stages": []}, "'stages' is not a mapping"),
        ({"version": 1, "stages": {"fit": {}}}, "stage 'fit' has no 'energy_j' total"),
        ({"version": 1, "stages": {"fit": {"energy_j": {"total": "2.7"}}}}, "energy_j['total'] is '2.7'"),
        ({"version": 1, "stages": {"fit": {"energy_j": {"total": 1.0}, "time_s": None}}}, "'time_s' is None"),
        ({"version": 1, "stages": {}, "extra": None}, "'extra' is None, not a mapping"),
        ({"version": 1, "stages": {}, "extra": {"power_limit": "off"}}, "extra['power_limit'] is 'off'"),
        ({"version": 2, "stages": {}}, "written by a newer lightning-green"),
    ],
)
def test_a_malformed_energy_report_is_a_one_line_error(tmp_path, capsys, content, message):
    (tmp_path / "energy_report.json").write_text(json.dumps(content))
    code, _, err = run_main(["report", str(tmp_path)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0]


def test_a_comparison_error_comes_before_any_report_is_rewritten(two_runs, capsys):
    md = os.path.join(two_runs[0], "green_report.md")
    before = os.stat(md).st_mtime_ns if os.path.exists(md) else None
    code, _, err = run_main(["report", *two_runs, "--metric", "no_such_metric"], capsys)
    assert code == 2 and "metric 'no_such_metric' was not logged in" in err
    assert (os.stat(md).st_mtime_ns if os.path.exists(md) else None) == before


def test_a_metric_one_run_did_not_log_is_refused_before_its_report_is_rewritten(two_runs, capsys):
    # One run with a typo exited 0 and rewrote its good report as one with no metric section.
    md = os.path.join(two_runs[0], "green_report.md")
    before = os.stat(md).st_mtime_ns if os.path.exists(md) else None
    code, _, err = run_main(["report", two_runs[0], "--metric", "val_accc"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "metric 'val_accc' was not logged in: " in err and "val_acc" in err.split("it logged ")[1]
    assert (os.stat(md).st_mtime_ns if os.path.exists(md) else None) == before


def test_a_run_without_a_fit_is_not_compared_as_one_that_missed_the_target(two_runs, tmp_path, capsys):
    import shutil

    shutil.copytree(two_runs[0], tmp_path / "eval")
    path = tmp_path / "eval" / "energy_report.json"
    report = json.loads(path.read_text())
    report["stages"] = {"validate": report["stages"]["fit"]}  # as a stand-alone `validate` writes it
    path.write_text(json.dumps(report))
    code, _, err = run_main(["report", str(tmp_path / "eval"), two_runs[1], "--out", str(tmp_path)], capsys)
    assert code == 2 and "no fit in: eval (a stand-alone validate/test/predict run)" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--names", "a,"], "argument --names: 'a,' has an empty name"),
        (["--json", "cmp/"], "argument --json: 'cmp/' names a folder; pass the path of a file"),
    ],
)
def test_an_empty_name_or_a_folder_for_json_is_refused(two_runs, tmp_path, capsys, extra, message):
    code, _, err = run_main(["report", *two_runs, "--out", str(tmp_path), *extra], capsys)
    assert code == 2 and message in err


def _copy_run(src, dst, **changes):
    import shutil

    shutil.copytree(src, dst)
    path = dst / "energy_report.json"
    report = json.loads(path.read_text())
    report.setdefault("extra", {}).update(changes)
    path.write_text(json.dumps(report))
    return dst


def test_a_comparison_keeps_each_run_report_s_recorded_settings(two_runs, tmp_path, capsys):
    settings = {"metric": "val_loss", "mode": "auto", "target": 30.0, "filename": "mine", "html": False}
    run = _copy_run(two_runs[0], tmp_path / "a", green_report=settings)
    code, _, _ = run_main(["report", str(run), two_runs[1], "--out", str(tmp_path / "cmp")], capsys)
    assert code == 0
    md = (run / "mine.md").read_text()
    assert "| energy to val_loss ≤ 30 |" in md and "## Validation: val_loss" in md
    assert not (run / "mine.html").exists()
    # An option given wins over the recorded setting.
    code, _, _ = run_main(["report", str(run), "--metric", "val_acc"], capsys)
    md = (run / "mine.md").read_text()
    assert code == 0 and "## Validation: val_acc" in md and "val_loss ≤ 30" not in md


def test_a_run_with_a_custom_energy_report_name_is_found(two_runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "custom"
    shutil.copytree(two_runs[0], run)
    (run / "energy_report.json").rename(run / "energy.json")
    code, out, _ = run_main(["report", str(run), "--no-html"], capsys)
    assert code == 0 and str(run / "green_report.md") in out
    shutil.copy(run / "energy.json", run / "other.json")
    code, _, err = run_main(["report", str(run)], capsys)
    assert code == 2 and "--energy-report" in err and "energy.json, other.json" in err
    code, _, _ = run_main(["report", str(run), "--energy-report", "other.json", "--no-html"], capsys)
    assert code == 0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda tmp: ["--json", str(tmp)], "argument --json: "),
        (lambda tmp: ["--out", str(tmp / "afile")], "argument --out: "),
        # a run's measured energy: the comparison JSON replaced it
        (lambda tmp: ["--json", str(tmp / "run" / "energy_report.json")], "is a lightning-green energy report"),
    ],
)
def test_a_bad_output_path_is_refused_before_any_report_is_rewritten(two_runs, tmp_path, capsys, bad, message):
    (tmp_path / "afile").write_text("")
    run = _copy_run(two_runs[0], tmp_path / "run")
    report = (run / "energy_report.json").read_bytes()
    md = os.path.join(two_runs[0], "green_report.md")
    before = os.stat(md).st_mtime_ns if os.path.exists(md) else None
    code, _, err = run_main(["report", *two_runs, *bad(tmp_path)], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and message in last and ".tmp" not in last
    assert (os.stat(md).st_mtime_ns if os.path.exists(md) else None) == before
    assert (run / "energy_report.json").read_bytes() == report


def test_the_comparison_links_the_report_written_for_each_run(two_runs, tmp_path, capsys):
    run = _copy_run(two_runs[0], tmp_path / "a", green_report={"filename": "mine", "html": False})
    code, _, _ = run_main(["report", str(run), two_runs[1], "--out", str(tmp_path / "cmp")], capsys)
    assert code == 0
    md = (tmp_path / "cmp" / "green_comparison.md").read_text()
    links = [line.split("|")[-2].strip() for line in md.split("## Runs", 1)[1].strip().splitlines()[2:]]
    assert links == [str(run / "mine.md"), os.path.join(two_runs[1], "green_report.md")]
    assert all(os.path.isfile(link) for link in links)
