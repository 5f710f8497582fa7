import re

import pytest
from zeus.optimizer.power_limit import Energy, MaxSlowdownConstraint, PowerLimitMeasurement, Time, ZeusCost

from lightning_green.power import PowerLimitSearch, ProfileCache, limit_grid, make_selector, profile_key, profile_table
from lightning_green.power.search import ZeusWindows
from lightning_green.testing import SimClock, simulated_gpus


class _Windows:
    def __init__(self):
        self.log = []

    def begin(self):
        self.log.append("begin")

    def end(self):
        self.log.append("end")
        return 1.0, 10.0

    def cancel(self):
        self.log.append("cancel")


def _search(windows, limits=(300_000, 200_000), **kw):
    applied = []
    kw = {"warmup_steps": 2, "profile_steps": 3, "wait_steps": 1, **kw}
    s = PowerLimitSearch(list(limits), applied.append, windows, Energy(), **kw)
    return s, applied


def _drive(search, n):
    out = []
    for _ in range(n):
        out.append(search.step_begin())
    return out


def test_schedule_matches_zeus_wait_warmup_profile():
    w = _Windows()
    s, applied = _search(w)
    windows = _drive(s, 2)  # wait_steps=1: the 2nd boundary sets the first limit
    assert applied == [300_000] and s.state == "warmup" and windows == [None, None]
    _drive(s, 2)  # warm-up 2 steps, then the window opens
    assert s.state == "profiling" and w.log == ["begin"]
    assert _drive(s, 2) == [None, None]
    (win,) = _drive(s, 1)
    assert win.limit_w == 300 and win.steps == 3 and s.state == "measured"
    assert s.record(win.energy_j, win.time_s) is False and applied[-1] == 200_000


def test_pause_keeps_the_window_and_counts_the_finished_step():
    w = _Windows()
    s, _ = _search(w, limits=(300_000,), wait_steps=0, warmup_steps=1)
    _drive(s, 2)  # limit set, window open
    _drive(s, 1)  # 1 step counted
    s.pause(step_completed=True)  # validation after the 2nd profiled step
    assert w.log == ["begin", "end"] and s.state == "profiling"
    assert s.transitions_next() is False
    assert _drive(s, 1) == [None] and w.log[-1] == "begin"  # resume opens a new window, counts nothing
    assert s.transitions_next() is True
    (win,) = _drive(s, 1)
    assert win.steps == 3 and win.time_s == 2.0 and win.energy_j == 20.0  # two windows summed


def test_transitions_next_predicts_every_limit_change_and_window_end():
    w = _Windows()
    s, applied = _search(w, limits=(300_000, 250_000, 200_000))
    changes = 0
    for _ in range(40):
        predicted = s.transitions_next()
        before = (s.state, len(applied))
        win = s.step_begin()
        if win is not None:
            s.record(win.energy_j, win.time_s)
        changed = (s.state, len(applied)) != before
        assert predicted == changed or (predicted and win is not None)
        changes += changed
        if s.state == "selecting":
            break
    assert s.state == "selecting" and len(s.measurements) == 3


def test_record_refuses_an_empty_window_and_wrong_state():
    s, _ = _search(_Windows(), limits=(300_000,), wait_steps=0, warmup_steps=1, profile_steps=1)
    with pytest.raises(RuntimeError, match="record"):
        s.record(1.0, 1.0)
    _drive(s, 2)
    (win,) = _drive(s, 1)
    with pytest.raises(ValueError, match="no GPU energy"):
        s.record(0.0, win.time_s)


def test_restart_cancels_and_profiles_again():
    w = _Windows()
    s, applied = _search(w, wait_steps=0, warmup_steps=1)
    _drive(s, 3)
    s.restart()
    assert w.log[-1] == "cancel" and s.state == "waiting" and s.passes == 2 and s.measurements == []
    _drive(s, 1)
    assert applied == [300_000, 300_000]


def test_resume_keeps_the_measured_limits_and_profiles_the_rest():
    s, applied = _search(_Windows(), limits=(300_000, 250_000, 200_000), wait_steps=0, warmup_steps=1)
    done = [PowerLimitMeasurement(power_limit=300, energy=30.0, time=1.0)]
    s.resume(done, steps=3)
    assert s.state == "waiting" and s.measurements == done and s.passes == 1
    _drive(s, 1)
    assert applied == [250_000] and s.profiling_limit_mw == 250_000  # the next limit, not the maximum again
    while s.state != "selecting":
        win = s.step_begin()
        if win is not None:
            s.record(win.energy_j, win.time_s)
    assert applied == [250_000, 200_000] and [m.power_limit for m in s.measurements] == [300, 250, 200]


def test_resume_with_every_limit_measured_waits_in_selecting():
    s, applied = _search(_Windows())
    s.resume([PowerLimitMeasurement(power_limit=w, energy=1.0, time=1.0) for w in (300, 200)])
    assert s.state == "selecting" and applied == []


@pytest.mark.parametrize(
    ("limits_w", "steps", "match"),
    [
        ((250,), 3, r"limits \[250\] W are not the first of this grid \[300\] W"),
        ((200,), 3, r"are not the first of this grid"),
        ((300,), 5, r"measured over 5 steps, not profile_steps=3"),
    ],
)
def test_resume_refuses_measurements_of_another_grid_or_step_count(limits_w, steps, match):
    s, applied = _search(_Windows())
    with pytest.raises(ValueError, match=match):
        s.resume([PowerLimitMeasurement(power_limit=w, energy=1.0, time=1.0) for w in limits_w], steps=steps)
    assert s.state == "waiting" and s.measurements == [] and applied == []


def test_selectors_use_zeus_classes_and_the_true_world_size():
    assert isinstance(make_selector("energy", 0.5, None, 2), Energy)
    assert isinstance(make_selector("time", 0.5, None, 2), Time)
    assert make_selector("max-slowdown", 0.5, 1.1, 2).factor == 1.1
    assert isinstance(make_selector("max-slowdown", 0.5, 1.1, 2), MaxSlowdownConstraint)
    sel = make_selector("zeus-cost", 0.3, None, 4)
    assert isinstance(sel, ZeusCost) and sel.world_size == 4 and sel.eta_knob == 0.3
    with pytest.raises(ValueError, match="unknown objective"):
        make_selector("carbon", 0.5, None, 1)


def test_world_size_moves_the_zeus_cost_optimum():
    # 2 ranks: energy summed over both GPUs. With world_size=1 (Zeus's default under DDP) the time term is
    # undervalued by half and a lower limit wins.
    ms = [
        PowerLimitMeasurement(power_limit=300, energy=2 * 280.0, time=1.0),
        PowerLimitMeasurement(power_limit=200, energy=2 * 190.0, time=1.4),
    ]
    assert ZeusCost(0.5, world_size=2).select(ms) == 300
    assert ZeusCost(0.5, world_size=1).select(ms) == 200


def test_profile_table_per_step():
    ms = [PowerLimitMeasurement(power_limit=200, energy=400.0, time=2.0)]
    (row,) = profile_table(ms, eta=0.5, world_size=1, steps=4)
    assert row == {"limit_w": 200.0, "energy_j": 100.0, "time_s": 0.5, "avg_power_w": 200.0, "cost": 100.0}


def test_limit_grid_follows_zeus():
    assert limit_grid(100_000, 300_000, 75) == [300_000, 225_000, 150_000]


def test_profile_cache_keys_and_zeus_files(tmp_path):
    path = tmp_path / "p.json"
    cache = ProfileCache(path)
    a = [PowerLimitMeasurement(power_limit=250, energy=5.0, time=1.0)]
    b = [PowerLimitMeasurement(power_limit=200, energy=4.0, time=1.2)]
    dense, pruned = (profile_key("V100", 1, "bf16-mixed", p, 2e6, 32) for p in (1000, 800))
    cache.save(dense, a, steps=40)
    cache.save(pruned, b, steps=40)
    assert cache.load(dense)[0].power_limit == 250
    assert cache.load(pruned)[0].power_limit == 200
    assert cache.load(dense.replace("V100", "A100")) is None
    assert cache.load(dense.replace("batch=32", "batch=64")) is None
    assert cache.load(dense.replace("bf16-mixed", "32-true")) is None
    assert cache.profile(dense)[1] == 40
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a power-limit profile"):
        ProfileCache(tmp_path / "bad.json").load("k")


def test_a_zeus_file_answers_only_the_initial_workload_with_its_profile_steps(tmp_path):
    zeus_file = tmp_path / "zeus.json"
    zeus_file.write_text('{"measurements": [{"power_limit": 175, "energy": 3.0, "time": 1.5}]}')
    cache = ProfileCache(zeus_file, zeus_profile_steps=40)
    assert cache.load("anything") is None  # e.g. the pruned model: no "*" answering every key
    measurements, steps = cache.profile("anything", initial=True)
    assert measurements[0].power_limit == 175 and steps == 40  # Zeus stores totals over its profile_steps
    cache.save("k", measurements, steps=2)  # our profiles are added; Zeus's is kept
    assert ProfileCache(zeus_file, zeus_profile_steps=40).profile("other", initial=True)[1] == 40
    assert ProfileCache(zeus_file).load("k")[0].power_limit == 175


@pytest.mark.parametrize(
    ("content", "what"),
    [
        ("not json", r"not valid JSON"),
        ('{"profiles": {"k": [1, 2]}}', r"profile 'k' is not an object"),
        ('{"profiles": {"k": {"steps": 4}}}', r"profile 'k' has no `measurements`"),
        ('{"profiles": {"k": {"measurements": 7, "steps": 4}}}', r"profile 'k': `measurements` is not a list"),
        (
            '{"profiles": {"k": {"measurements": [{"power_limit": 250, "time": 1.0}], "steps": 4}}}',
            r"profile 'k', measurement 0: missing 'energy'",
        ),
        (
            '{"profiles": {"k": {"measurements": [{"power_limit": 250, "energy": "lots", "time": 1.0}], "steps": 4}}}',
            r"profile 'k', measurement 0: bad value",
        ),
        (
            '{"profiles": {"k": {"measurements": [{"power_limit": 250, "energy": 1, "time": 1}]}}}',
            r"profile 'k': `steps` must be an int >= 1 \(got None\)",
        ),
        (
            '{"profiles": {"k": {"measurements": [], "steps": 0}}}',
            r"profile 'k': `steps` must be an int >= 1 \(got 0\)",
        ),
        ('{"measurements": [{"power_limit": 175, "energy": 3.0}]}', r"profile 'zeus_profile', measurement 0: missing"),
    ],
)
def test_corrupt_profile_cache_names_the_file_the_problem_and_the_fix(tmp_path, content, what):
    path = tmp_path / "p.json"
    path.write_text(content)
    where = re.escape(repr(str(path)))
    with pytest.raises(ValueError, match=rf"corrupt power-limit profile cache {where}: {what}.*Delete or move"):
        ProfileCache(path).load("k", initial=True)
    with pytest.raises(ValueError, match=rf"corrupt power-limit profile cache {where}: {what}.*Delete or move"):
        ProfileCache(path).check()


def test_zeus_windows_measure_a_simulated_gpu_on_a_sim_clock():
    from zeus.monitor import ZeusMonitor

    clock = SimClock()
    with simulated_gpus(1, curve="v100-resnet50", clock=clock) as gpus:
        gpu = gpus.gpus[0]
        gpu.set_busy(False)
        windows = ZeusWindows(ZeusMonitor(gpu_indices=[0], cpu_indices=[]), 0, clock=clock)
        windows.begin()
        took = gpu.run(2.0)
        t, e = windows.end()
        assert t == pytest.approx(took) and e == pytest.approx(gpu.busy_draw_w() * took, rel=1e-3)
        windows.begin()
        windows.cancel()
        windows.cancel()  # idempotent


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_zeus_windows_read_a_real_gpus_energy_without_changing_it():
    # Real GPUs are only read here: no power limit is ever set on one in tests.
    import torch
    from zeus.device import get_gpus
    from zeus.monitor import ZeusMonitor

    before = get_gpus().get_power_management_limit(0)
    windows = ZeusWindows(ZeusMonitor(gpu_indices=[0], cpu_indices=[]), 0, sync=True)
    x = torch.randn(4096, 4096, device="cuda")
    windows.begin()
    for _ in range(50):
        x = (x @ x).tanh()
    t, e = windows.end()
    assert t > 0 and e > 0
    assert get_gpus().get_power_management_limit(0) == before
