import gc
import json
import logging
import weakref
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from lightning_green import EnergyMonitor, PowerLimitTuner, workload_changed
from lightning_green.testing import SimulatedGPUWorkload, simulated_gpus
from tests.helpers import DestroyProcessGroupAtExit

FAST = {"warmup_steps": 1, "profile_steps": 2, "pl_step_w": 50, "wait_steps": 0}
# BoringModel (Linear(32, 2): 66 parameters, no example input) in fp32, batches of 1, on the simulated V100.
DEMO_KEY = "Simulated v100-resnet50|job=demo|world=1|precision=32-true|params=66|macs=?|batch=1"
PRUNED_KEY = DEMO_KEY.replace("params=66", "params=64")  # after _PruneAt drops the bias
# 4 limits (250, 200, 150, 100 W) x (1 warm-up + 2 profiled) steps, +1 to close the last window
PROFILE_STEPS = 4 * 3 + 1


def _trainer(tmp_path, callbacks, **kw):
    kw = {
        "max_steps": 20,
        "limit_val_batches": 0,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        **kw,
    }
    return Trainer(default_root_dir=tmp_path, callbacks=callbacks, **kw)


def _work(**gpu):
    return SimulatedGPUWorkload(step_work_s=0.002, gpu_kwargs={"curve": "v100-resnet50", **gpu})


class _MonitorRef(Callback):
    """A weak reference to the tuner's own Zeus monitor (on older GPUs it runs power-sampling processes)."""

    def __init__(self):
        self.ref = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        tuner = next(cb for cb in trainer.callbacks if isinstance(cb, PowerLimitTuner))
        self.ref = weakref.ref(tuner._windows.monitor)


@pytest.fixture
def v100():
    with simulated_gpus(1, curve="v100-resnet50", initial_limit_w=240) as gpus:
        yield gpus.gpus[0]


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"objective": "carbon"}, ValueError, r"objective='carbon'\): `objective` must be one of"),
        ({"eta": 1.5}, ValueError, r"eta=1.5\): `eta` must be a number >= 0.0 and <= 1.0"),
        ({"eta": -0.1}, ValueError, r"`eta` must be a number >= 0.0"),
        ({"eta": "half"}, TypeError, r"`eta` must be a number"),
        ({"objective": "max-slowdown", "max_slowdown": 0.9}, ValueError, r"`max_slowdown` must be a number >= 1.0"),
        ({"objective": "max-slowdown"}, ValueError, r"max_slowdown=None\): `max_slowdown` must be a number >= 1"),
        ({"max_slowdown": 1.2}, ValueError, r"`max_slowdown` must be None unless objective='max-slowdown'"),
        ({"warmup_steps": 0}, ValueError, r"warmup_steps=0\): `warmup_steps` must be an int >= 1"),
        ({"profile_steps": 0}, ValueError, r"profile_steps=0\): `profile_steps` must be an int >= 1"),
        ({"profile_steps": -3}, ValueError, r"`profile_steps` must be an int >= 1"),
        ({"profile_steps": 2.5}, TypeError, r"`profile_steps` must be an int"),
        ({"pl_step_w": 0}, ValueError, r"pl_step_w=0\): `pl_step_w` must be an int >= 1"),
        ({"pl_step_w": -25}, ValueError, r"`pl_step_w` must be an int >= 1"),
        ({"wait_steps": -1}, ValueError, r"`wait_steps` must be an int >= 0"),
        ({"job": ""}, ValueError, r"`job` must be None or a non-empty string"),
        ({"reprofile_on_change": 1}, TypeError, r"`reprofile_on_change` must be a bool"),
        ({"profile_path": 3}, TypeError, r"`profile_path` must be None or a file path"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        PowerLimitTuner(**kwargs)


def test_unwritable_profile_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"profile_path=.*in an existing, writable folder"):
        PowerLimitTuner(profile_path=str(tmp_path / "missing" / "power.json"))
    with pytest.raises(ValueError, match=r"`profile_path` must be a readable, writable file"):
        PowerLimitTuner(profile_path=str(tmp_path))  # a folder
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"in an existing, writable folder"):
        PowerLimitTuner(profile_path=str(tmp_path / "file" / "power.json"))  # parent is a file


def test_corrupt_profile_cache_fails_in_setup_with_the_fix(tmp_path, v100):
    path = tmp_path / "power.json"
    path.write_text("not json")
    trainer = _trainer(tmp_path, [PowerLimitTuner(profile_path=str(path), **FAST)])
    with pytest.raises(ValueError, match=r"cannot read the profile cache: corrupt .*not valid JSON.* Delete or move"):
        trainer.fit(BoringModel())
    assert v100.get_power_management_limit() == 240_000


# ---------------------------------------------------------------------------------------------- tuning
def test_profiles_every_limit_then_keeps_the_chosen_one_and_restores_at_the_end(tmp_path, v100):
    tuner = PowerLimitTuner(objective="time", **FAST)
    work = _work()
    probe = _MonitorRef()
    _trainer(tmp_path, [work, tuner, probe], max_steps=PROFILE_STEPS + 5).fit(BoringModel())
    gc.collect()
    assert probe.ref() is None  # teardown let go of the tuner's Zeus monitor
    distinct = list(dict.fromkeys(v100.limit_history))
    assert distinct[:5] == [240_000, 250_000, 200_000, 150_000, 100_000]
    assert tuner.state == "done" and tuner.chosen_limit_w is not None
    assert v100.limit_history[-2] == tuner.chosen_limit_w * 1000  # held after profiling
    assert v100.get_power_management_limit() == 240_000  # the original, restored at train end
    assert [r["limit_w"] for r in tuner.table()] == [250.0, 200.0, 150.0, 100.0]
    assert tuner.profiling_steps == PROFILE_STEPS - 1


def test_lower_limits_really_cost_time_and_save_power(tmp_path, v100):
    tuner = PowerLimitTuner(objective="energy", warmup_steps=1, profile_steps=4, pl_step_w=150, wait_steps=0)
    work = SimulatedGPUWorkload(step_work_s=0.02)  # GPU-bound steps: the limit dominates the step time
    _trainer(tmp_path, [work, tuner], max_steps=12).fit(BoringModel())
    high, low = tuner.table()  # 250 W, 100 W
    assert low["time_s"] > 1.5 * high["time_s"]  # the curve: 100 W runs at 52 % speed
    assert low["avg_power_w"] < high["avg_power_w"]


def test_gradient_accumulation_counts_optimizer_steps(tmp_path, v100):
    tuner = PowerLimitTuner(**FAST)
    _trainer(tmp_path, [_work(), tuner], max_steps=PROFILE_STEPS, accumulate_grad_batches=3).fit(BoringModel())
    assert tuner.state == "done" and tuner.profiling_steps == PROFILE_STEPS - 1


def test_a_validation_inside_an_accumulated_step_measures_the_whole_step_once(tmp_path, v100):
    # val_check_interval=4 with 3 batches a step pauses mid-step: the rest of that step went unmeasured and the step
    # uncounted while its first part stayed in the window (energy per step 44-65 % high, the profile twice as long).
    def per_step(**kw):
        tuner = PowerLimitTuner(**FAST)
        work = SimulatedGPUWorkload(step_work_s=0.02, gpu_kwargs={"curve": "v100-resnet50"})  # above timing noise
        trainer = _trainer(tmp_path, [work, tuner], max_steps=PROFILE_STEPS + 3, accumulate_grad_batches=3, **kw)
        trainer.fit(BoringModel())
        assert tuner.state == "done" and tuner.profiling_steps == PROFILE_STEPS - 1
        return [row["energy_j"] for row in tuner.table()]

    plain = per_step()
    inside = per_step(limit_train_batches=30, val_check_interval=4, limit_val_batches=1, num_sanity_val_steps=0)
    assert inside == pytest.approx(plain, rel=0.15)


def test_a_fit_that_ends_before_the_profile_says_so(tmp_path, v100, caplog):
    tuner = PowerLimitTuner(**FAST)
    with caplog.at_level(logging.INFO):
        _trainer(tmp_path, [_work(), tuner], max_steps=6).fit(BoringModel())
    assert tuner.chosen_limit_w is None and v100.limit_w == 240  # restored
    notes = [r.getMessage() for r in caplog.records if "ended before the profile" in r.getMessage()]
    assert notes == [
        "PowerLimitTuner: the fit ended before the profile did (1 of 4 limits measured, 6 profiling steps), so no "
        "limit was chosen; the original limit is restored. A resume from a checkpoint continues the profile."
    ]


def test_validation_and_epoch_ends_pause_instead_of_restarting(tmp_path, v100):
    tuner = PowerLimitTuner(**FAST)
    # 3 batches per epoch with validation: every window is interrupted, none is thrown away
    trainer = _trainer(
        tmp_path,
        [_work(), tuner],
        max_steps=PROFILE_STEPS + 2,
        limit_train_batches=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(BoringModel())
    assert tuner.state == "done" and tuner.profiling_steps == PROFILE_STEPS - 1


def test_cpu_only_run_gives_one_notice_and_does_nothing(tmp_path, caplog):
    tuner = PowerLimitTuner(**FAST)
    with caplog.at_level(logging.INFO):
        _trainer(tmp_path, [tuner], max_steps=3).fit(BoringModel())
    notices = [r.getMessage() for r in caplog.records if "PowerLimitTuner" in r.getMessage()]
    assert notices == ["PowerLimitTuner: no GPU to tune (CPU-only run); the tuner is off."]
    assert tuner.state == "off" and tuner.disabled_reason == "no GPU"


# ---------------------------------------------------------------------------------------------- permissions
def test_permission_denied_up_front_warns_once_and_leaves_the_gpu_alone(tmp_path):
    with simulated_gpus(1, curve="v100-resnet50", can_set_limits=False) as gpus:
        tuner = PowerLimitTuner(**FAST)
        with pytest.warns(UserWarning, match="cannot tune power limits: the simulated GPU has can_set_limits=False"):
            _trainer(tmp_path, [_work(), tuner]).fit(BoringModel())
        assert tuner.state == "off" and gpus.gpus[0].limit_history == [250_000]


class _RevokeAt(Callback):
    """Takes the permission away before optimizer step ``at`` (e.g. a zeusd token expired) and gives it back later."""

    def __init__(self, at, back):
        self.at, self.back = at, back

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        from lightning_green.testing import installed_simulated_gpus

        gpu = installed_simulated_gpus().gpus[0]
        if trainer.global_step == self.at:
            gpu.can_set_limits = False
        if trainer.global_step == self.back:
            gpu.can_set_limits = True


def test_permission_error_mid_run_is_caught_the_same_way(tmp_path, v100):
    tuner = PowerLimitTuner(**FAST)
    # step 3 is the boundary that moves from 250 W to 200 W: refused
    with pytest.warns(UserWarning, match="cannot tune power limits: setting the power limit failed mid-run"):
        _trainer(tmp_path, [_RevokeAt(at=3, back=6), _work(), tuner]).fit(BoringModel())
    assert tuner.state == "off" and "ZeusGPUNoPermissionError" in tuner.disabled_reason
    assert 200_000 not in v100.limit_history
    assert v100.get_power_management_limit() == 240_000  # restored once the permission came back (train end)


# ---------------------------------------------------------------------------------------------- safety
class _Boom(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 5:
            raise RuntimeError("boom")


def test_exception_restores_the_original_limit(tmp_path, v100):
    tuner = PowerLimitTuner(**FAST)
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(tmp_path, [_work(), tuner, _Boom()]).fit(BoringModel())
    assert min(v100.limit_history) < 240_000
    assert v100.get_power_management_limit() == 240_000


def test_exception_releases_what_teardown_releases_so_the_callback_can_fit_again(tmp_path, caplog):
    tuner, probe = PowerLimitTuner(**FAST), _MonitorRef()
    with simulated_gpus(1, curve="v100-resnet50", initial_limit_w=240) as gpus:
        with pytest.raises(RuntimeError, match="boom"):
            _trainer(tmp_path, [_work(), tuner, probe, _Boom()]).fit(BoringModel())
        assert gpus.gpus[0].get_power_management_limit() == 240_000  # restored (kept as it was)
        gc.collect()
        assert probe.ref is not None and probe.ref() is None  # the tuner let go of its Zeus monitor
    # the same callback on a CPU-only run afterwards: the notice, then nothing (no stale GPU from the crashed fit)
    with caplog.at_level(logging.INFO):
        _trainer(tmp_path, [tuner], max_steps=3).fit(BoringModel())
    assert tuner.state == "off" and tuner.disabled_reason == "no GPU"
    assert "PowerLimitTuner: no GPU to tune (CPU-only run); the tuner is off." in caplog.messages


# ---------------------------------------------------------------------------------------------- cache, state
def test_profile_cache_is_reused_and_skips_profiling(tmp_path, v100):
    path = tmp_path / "power.json"
    first = PowerLimitTuner(profile_path=str(path), job="demo", **FAST)
    _trainer(tmp_path, [_work(), first], max_steps=PROFILE_STEPS).fit(BoringModel())
    stored = json.loads(path.read_text())["profiles"]
    assert list(stored) == [DEMO_KEY]
    assert len(stored[DEMO_KEY]["measurements"]) == 4

    mark = len(v100.limit_history)
    second = PowerLimitTuner(profile_path=str(path), job="demo", **FAST)
    _trainer(tmp_path, [_work(), second], max_steps=4).fit(BoringModel())
    assert second.cache_hits == 1 and second.profiling_steps == 0
    assert second.chosen_limit_w == first.chosen_limit_w
    assert set(v100.limit_history[mark:]) == {first.chosen_limit_w * 1000, 240_000}


def _logged(logger, name):
    import csv

    with open(Path(logger.log_dir) / "metrics.csv") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def test_cached_profile_is_reported_per_step_with_its_own_step_count(tmp_path, v100):
    path = tmp_path / "power.json"
    first = PowerLimitTuner(profile_path=str(path), job="demo", **FAST)  # measures 2 steps per limit
    _trainer(tmp_path, [_work(), first], max_steps=PROFILE_STEPS).fit(BoringModel())
    expected = [pytest.approx(row) for row in first.table()]

    # read back by a tuner that would measure 5 steps per limit
    second = PowerLimitTuner(profile_path=str(path), job="demo", **{**FAST, "profile_steps": 5})
    logger = CSVLogger(tmp_path, name="csv")
    trainer = _trainer(
        tmp_path,
        [_work(), EnergyMonitor(print_summary=False), second],
        max_steps=3,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=True,
    )
    trainer.fit(BoringModel())
    assert second.cache_hits == 1 and second.table() == expected
    assert _logged(logger, "power/profile/250W/energy_J") == pytest.approx([first.table()[0]["energy_j"]])
    assert _logged(logger, "power/profile/100W/cost") == pytest.approx([first.table()[-1]["cost"]])
    section = json.loads((Path(logger.log_dir) / "energy_report.json").read_text())["extra"]["power_limit"]
    assert section["table"] == expected and section["steps_per_limit"] == 2
    assert json.loads(path.read_text())["profiles"][DEMO_KEY]["steps"] == 2

    # the profile restored from a checkpoint keeps its step count too
    resumed = PowerLimitTuner(job="demo", **{**FAST, "profile_steps": 7})
    ckpt = str(next(Path(logger.log_dir).rglob("*.ckpt")))
    _trainer(tmp_path, [_work(), resumed], max_steps=5).fit(BoringModel(), ckpt_path=ckpt)
    assert resumed.state == "done" and resumed.table() == expected


def test_zeus_written_profile_is_divided_by_its_profile_steps(tmp_path, v100):
    path = tmp_path / "zeus.json"
    ms = [{"power_limit": 250, "energy": 300.0, "time": 1.5}, {"power_limit": 150, "energy": 240.0, "time": 2.0}]
    path.write_text(json.dumps({"measurements": ms}))
    tuner = PowerLimitTuner(objective="energy", profile_path=str(path), **FAST)  # profile_steps=2, as Zeus's
    _trainer(tmp_path, [_work(), tuner], max_steps=3).fit(BoringModel())
    assert tuner.cache_hits == 1 and tuner.chosen_limit_w == 150
    assert [(r["energy_j"], r["time_s"]) for r in tuner.table()] == [(150.0, 0.75), (120.0, 1.0)]


def test_checkpoint_resume_keeps_the_profile(tmp_path, v100):
    tuner = PowerLimitTuner(**FAST)
    trainer = _trainer(tmp_path, [_work(), tuner], max_steps=PROFILE_STEPS + 1, enable_checkpointing=True)
    trainer.fit(BoringModel())
    ckpt = trainer.checkpoint_callback.best_model_path or str(next(Path(tmp_path).rglob("*.ckpt")))
    state = torch.load(ckpt, weights_only=True)["callbacks"]
    (tuner_state,) = [v for k, v in state.items() if k.startswith("PowerLimitTuner")]
    assert tuner_state["version"] == 2 and len(tuner_state["measurements"]) == 4

    resumed = PowerLimitTuner(**FAST)
    _trainer(tmp_path, [_work(), resumed], max_steps=PROFILE_STEPS + 4).fit(BoringModel(), ckpt_path=ckpt)
    # The run's profiling steps, not none: the report said "chose ... after 4 profiling steps" for 12.
    assert resumed.state == "done" and resumed.profiling_steps == tuner.profiling_steps > 0
    assert resumed.chosen_limit_w == tuner.chosen_limit_w


# ---------------------------------------------------------------------------------------------- closed loop
class _PruneAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:  # a real change of the model: its bias goes (66 -> 64 parameters)
            _drop_bias(pl_module)
            workload_changed(trainer, "pruning", "StructuredPruning", macs=1000)


def _drop_bias(module):
    module.layer = torch.nn.Linear(32, 2, bias=False)
    module.spare = torch.nn.Parameter(torch.zeros(0))  # keeps two parameters, as the checkpointed optimizer has


class _PrunedBoring(BoringModel):
    """The model as _PruneAt leaves it."""

    def __init__(self):
        super().__init__()
        _drop_bias(self)


def test_reprofiles_after_a_pruning_event(tmp_path, v100):
    tuner = PowerLimitTuner(**FAST)
    prune_at = PROFILE_STEPS + 2
    _trainer(tmp_path, [_work(), tuner, _PruneAt(prune_at)], max_steps=prune_at + PROFILE_STEPS + 2).fit(BoringModel())
    assert tuner.reprofiles == 1 and tuner.workload == 1 and tuner.state == "done"
    assert tuner.profiling_steps == 2 * (PROFILE_STEPS - 1)
    after = v100.limit_history[v100.limit_history.index(tuner.chosen_limit_w * 1000) :]
    assert {250_000, 200_000, 150_000, 100_000} <= set(after)  # every limit tried again


def test_reprofile_can_be_switched_off(tmp_path, v100):
    tuner = PowerLimitTuner(reprofile_on_change=False, **FAST)
    _trainer(tmp_path, [_work(), tuner, _PruneAt(PROFILE_STEPS + 1)], max_steps=PROFILE_STEPS + 4).fit(BoringModel())
    assert tuner.reprofiles == 0 and tuner.profiling_steps == PROFILE_STEPS - 1


def test_resume_mid_reprofile_keeps_the_workload_and_the_cache_key(tmp_path, v100):
    path = tmp_path / "power.json"
    dense_key, pruned_key = DEMO_KEY, PRUNED_KEY
    prune_at = PROFILE_STEPS + 2
    tuner = PowerLimitTuner(profile_path=str(path), job="demo", **FAST)
    trainer = _trainer(
        tmp_path, [_work(), tuner, _PruneAt(prune_at)], max_steps=prune_at + 5, enable_checkpointing=True
    )
    trainer.fit(BoringModel())
    assert tuner.workload == 1 and tuner.state in ("warmup", "profiling")  # stopped while re-profiling
    measured = tuner.table()  # the pruned model's limits finished before the checkpoint
    assert 1 <= len(measured) < 4
    ckpt = str(next(Path(tmp_path).rglob("*.ckpt")))
    dense = json.loads(path.read_text())["profiles"]
    assert list(dense) == [dense_key]

    resumed = PowerLimitTuner(profile_path=str(path), job="demo", **FAST)
    _trainer(tmp_path, [_work(), resumed], max_steps=prune_at + 5 + PROFILE_STEPS + 1).fit(
        _PrunedBoring(), ckpt_path=ckpt
    )
    # the re-profile goes on where it stopped: only the limits not measured yet, 1 warm-up + 2 profiled steps each,
    # after the steps both passes profiled before the checkpoint
    saved = torch.load(ckpt, weights_only=True)["callbacks"]["PowerLimitTuner"]["profiling_steps"]
    assert resumed.workload == 1 and resumed.state == "done"
    assert resumed.profiling_steps == saved + (4 - len(measured)) * 3 and saved > PROFILE_STEPS
    assert resumed.table()[: len(measured)] == measured and len(resumed.table()) == 4
    profiles = json.loads(path.read_text())["profiles"]
    assert sorted(profiles) == sorted([dense_key, pruned_key])  # the pruned model's profile under its own key
    assert profiles[dense_key] == dense[dense_key]  # the dense model's profile untouched


def test_a_second_fit_starts_again_at_workload_zero(tmp_path, v100):
    path = tmp_path / "power.json"
    tuner = PowerLimitTuner(profile_path=str(path), job="demo", **FAST)
    prune_at = PROFILE_STEPS + 2
    _trainer(tmp_path, [_work(), tuner, _PruneAt(prune_at)], max_steps=prune_at + PROFILE_STEPS + 2).fit(BoringModel())
    assert tuner.workload == 1 and tuner.reprofiles == 1
    stored = json.loads(path.read_text())["profiles"]
    dense = stored[DEMO_KEY]

    _trainer(tmp_path, [_work(), tuner], max_steps=3).fit(BoringModel())  # a fresh, dense model
    assert tuner.workload == 0 and tuner.reprofiles == 0 and tuner.cache_hits == 1
    assert [r["limit_w"] for r in tuner.table()] == [m["power_limit"] for m in dense["measurements"]]
    assert tuner.table()[0]["energy_j"] == dense["measurements"][0]["energy"] / FAST["profile_steps"]


# ---------------------------------------------------------------------------------------------- logging, sharing
def test_logs_limit_state_and_profile_and_fills_the_energy_report(tmp_path, v100):
    monitor = EnergyMonitor(print_summary=False)
    tuner = PowerLimitTuner(**FAST)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = _trainer(
        tmp_path, [_work(), monitor, tuner], max_steps=PROFILE_STEPS + 2, logger=logger, log_every_n_steps=1
    )
    trainer.fit(BoringModel())
    assert tuner.shares_monitor_with(trainer) is None  # torn down; checked during fit below
    header = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in (
        "power/limit_W",
        "power/tuner_state",
        "power/chosen_limit_W",
        "power/profile/250W/energy_J",
        "power/profile/100W/time_s",
        "power/profile/150W/cost",
    ):
        assert key in header
    report = json.loads((Path(logger.log_dir) / "energy_report.json").read_text())
    section = report["extra"]["power_limit"]
    assert section["chosen_limit_w"] == tuner.chosen_limit_w and len(section["table"]) == 4
    assert report["meter"]["gpu_indices"] == [0]  # the CPU run measured the rank's simulated GPU


class _SharedProbe(Callback):
    shared = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        tuner = next(cb for cb in trainer.callbacks if isinstance(cb, PowerLimitTuner))
        _SharedProbe.shared = tuner.shares_monitor_with(trainer)


def test_shares_the_energy_monitors_zeus_monitor(tmp_path, v100):
    tuner = PowerLimitTuner(**FAST)
    # the tuner is listed first: sharing must not depend on callback order
    _trainer(tmp_path, [_work(), tuner, EnergyMonitor(print_summary=False), _SharedProbe()], max_steps=3).fit(
        BoringModel()
    )
    assert _SharedProbe.shared == "EnergyMonitor"


# ---------------------------------------------------------------------------------------------- DDP
class _DumpRank(Callback):
    def __init__(self, out):
        self.out = out

    def teardown(self, trainer, pl_module, stage):
        tuner = next(cb for cb in trainer.callbacks if isinstance(cb, PowerLimitTuner))
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(
            json.dumps(
                {
                    "chosen": tuner.chosen_limit_w,
                    "world_size": tuner.world_size,
                    "gpu": tuner.gpu_index,
                    "selector_world": tuner._search.selector.world_size,
                    "table": tuner.table(),
                }
            )
        )


@pytest.mark.slow
def test_ddp_each_rank_tunes_its_gpu_with_the_true_world_size(tmp_path):
    state = tmp_path / "gpus"
    work = SimulatedGPUWorkload(
        count=2, step_work_s=0.002, state_dir=str(state), gpu_kwargs={"curve": "v100-resnet50", "initial_limit_w": 240}
    )
    tuner = PowerLimitTuner(profile_path=str(tmp_path / "power.json"), **FAST)
    trainer = _trainer(
        tmp_path,
        [work, tuner, _DumpRank(tmp_path), DestroyProcessGroupAtExit()],
        max_steps=PROFILE_STEPS + 2,
        strategy="ddp_spawn",
        devices=2,
        accelerator="cpu",
    )
    trainer.fit(BoringModel())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["gpu"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["selector_world"] == 2 for r in ranks)
    assert ranks[0]["chosen"] == ranks[1]["chosen"] is not None  # one decision
    assert ranks[0]["table"] == ranks[1]["table"]  # the same aggregated profile on both ranks
    for i in (0, 1):
        gpu = json.loads((state / f"gpu{i}.json").read_text())
        assert gpu["limit_mw"] == 240_000  # restored on each rank
        assert ranks[0]["chosen"] * 1000 in gpu["limit_history"] and 100_000 in gpu["limit_history"]
    (key,) = json.loads((tmp_path / "power.json").read_text())["profiles"]
    assert "|world=2|" in key


class _RecordSetupError(PowerLimitTuner):
    """Writes the error each rank's ``setup`` raises to ``out/rank{r}.err``."""

    def __init__(self, out, **kwargs):
        super().__init__(**kwargs)
        self.out = out

    def setup(self, trainer, pl_module, stage):
        try:
            super().setup(trainer, pl_module, stage)
        except ValueError as err:
            Path(self.out, f"rank{trainer.global_rank}.err").write_text(str(err))
            raise


@pytest.mark.slow
def test_ddp_corrupt_cache_fails_on_every_rank_instead_of_hanging(tmp_path):
    # Only rank 0 reads the cache. It used to raise before the broadcast, leaving rank 1 waiting in it forever
    # (here the spawn launcher kills it once rank 0 died, so it never raised anything).
    path = tmp_path / "power.json"
    entry = {"measurements": [{"power_limit": 250, "time": 1.0}], "steps": 2}  # no "energy"
    path.write_text(json.dumps({"version": 1, "profiles": {DEMO_KEY.replace("world=1", "world=2"): entry}}))
    work = SimulatedGPUWorkload(count=2, step_work_s=0.0, gpu_kwargs={"curve": "v100-resnet50"})
    tuner = _RecordSetupError(tmp_path, profile_path=str(path), job="demo", **FAST)
    trainer = _trainer(
        tmp_path,
        [work, tuner, DestroyProcessGroupAtExit()],
        max_steps=2,
        strategy="ddp_spawn",
        devices=2,
        accelerator="cpu",
    )
    with pytest.raises(Exception, match="corrupt power-limit profile cache"):
        trainer.fit(BoringModel())
    errors = [(tmp_path / f"rank{r}.err").read_text() if (tmp_path / f"rank{r}.err").exists() else None for r in (0, 1)]
    assert errors[0] is not None and errors[1] == errors[0]  # the same error on every rank
    assert "measurement 0: missing 'energy'" in errors[0] and "Delete or move the file" in errors[0]


def test_example_config_builds_the_tuner(tmp_path, monkeypatch):
    from lightning_green.cli import cli

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[2] / "examples" / "configs" / "power.yaml"
    run = cli(["--config", str(config), "--trainer.logger=false"], run=False)
    (tuner,) = [cb for cb in run.trainer.callbacks if isinstance(cb, PowerLimitTuner)]
    assert tuner.objective == "zeus-cost" and tuner.profile_path == "power_profiles.json"


# ---------------------------------------------------------------------------------------------- cache keys (issue 11)
ROOT = Path(__file__).resolve().parents[2]


def test_a_profile_written_by_zeus_is_read_per_step_and_only_for_the_starting_workload(tmp_path, v100):
    import subprocess
    import sys

    path = tmp_path / "zeus.json"
    script = ROOT / "tests" / "power" / "_zeus_profile_script.py"
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script), str(path), "5"], capture_output=True, text=True, env=env, timeout=300, check=True
    )
    per_step = {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    zeus = {m["power_limit"]: m for m in json.loads(path.read_text())["measurements"]}  # Zeus's own format

    tuner = PowerLimitTuner(objective="energy", profile_path=str(path), **{**FAST, "profile_steps": 5})
    prune_at = 3
    _trainer(tmp_path, [_work(), tuner, _PruneAt(prune_at)], max_steps=prune_at + 4 * 6 + 4).fit(BoringModel())
    assert tuner.cache_hits == 1  # the starting workload, from Zeus's file
    assert tuner.reprofiles == 1 and tuner.profiling_steps == 4 * 6  # the pruned model was profiled afresh
    stored = json.loads(path.read_text())
    assert stored["zeus_profile"]["steps"] == 5  # Zeus's profile kept, our two added under their own keys
    assert sorted(stored["profiles"]) == sorted(k.replace("job=demo|", "") for k in (DEMO_KEY, PRUNED_KEY))

    first = PowerLimitTuner(objective="energy", profile_path=str(path), **{**FAST, "profile_steps": 5})
    _trainer(tmp_path, [_work(), first], max_steps=2).fit(BoringModel())
    rows = {int(r["limit_w"]): r for r in first.table()}
    for limit_w, row in rows.items():
        assert row["energy_j"] == pytest.approx(zeus[limit_w]["energy"] / 5)  # Zeus's totals over its 5 steps
        assert row["energy_j"] == pytest.approx(per_step[limit_w], rel=0.02)  # = what one step really costs


def test_a_workload_seen_before_reuses_its_profile(tmp_path, v100):
    # fp32 -> bf16 -> fp32 (a fallback) -> bf16 (the retry): only the first two are profiled
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision

    class SwitchPrecision(Callback):
        def __init__(self, at):
            self.at = at  # global step -> precision

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            mode = self.at.get(trainer.global_step)
            if mode is not None and trainer.global_step not in getattr(self, "done", set()):
                self.done = getattr(self, "done", set()) | {trainer.global_step}
                plugin = Precision() if mode == "32-true" else MixedPrecision(mode, "cpu")
                trainer.strategy.precision_plugin = plugin
                workload_changed(trainer, "precision", "AMPScheduler", precision=mode)

    p = PROFILE_STEPS + 1
    switches = {p: "bf16-mixed", 2 * p + 1: "32-true", 2 * p + 3: "bf16-mixed"}
    tuner = PowerLimitTuner(**FAST)
    _trainer(tmp_path, [_work(), tuner, SwitchPrecision(switches)], max_steps=2 * p + 6).fit(BoringModel())
    assert tuner.reprofiles == 3 and tuner.cache_hits == 2 and tuner.state == "done"
    assert tuner.profiling_steps == 2 * (PROFILE_STEPS - 1)  # two profiles, not four
    assert sorted(k.split("|")[2] for k in tuner._profiles) == ["precision=32-true", "precision=bf16-mixed"]


def test_batch_size_is_part_of_the_key(tmp_path, v100):
    path = tmp_path / "power.json"

    class Batched(BoringModel):
        def __init__(self, batch_size):
            super().__init__()
            self.batch_size = batch_size

        def train_dataloader(self):
            from lightning.pytorch.demos.boring_classes import RandomDataset
            from torch.utils.data import DataLoader

            return DataLoader(RandomDataset(32, 64), batch_size=self.batch_size)

    for batch_size in (1, 4):
        _trainer(tmp_path, [_work(), PowerLimitTuner(profile_path=str(path), **FAST)], max_steps=PROFILE_STEPS).fit(
            Batched(batch_size)
        )
    keys = list(json.loads(path.read_text())["profiles"])
    assert sorted(k.rsplit("|", 1)[1] for k in keys) == ["batch=1", "batch=4"]


# ---------------------------------------------------------------------------------------------- resume, grid
def _checkpoint_done_on_v100(tmp_path):
    """A checkpoint of a finished profile on the simulated V100 (100-250 W)."""
    with simulated_gpus(1, curve="v100-resnet50", initial_limit_w=240):
        tuner = PowerLimitTuner(objective="energy", **FAST)
        trainer = _trainer(tmp_path, [_work(), tuner], max_steps=PROFILE_STEPS + 1)
        trainer.fit(BoringModel())
        assert tuner.state == "done"
        path = str(tmp_path / "done.ckpt")
        trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize(
    ("gpu", "limits_w"),
    [
        ({"name": "Sim A100", "min_limit_w": 100, "max_limit_w": 400}, [400, 350, 300, 250, 200, 150, 100]),
        ({"name": "Sim H100", "min_limit_w": 300, "max_limit_w": 700}, [700, 650, 600, 550, 500, 450, 400, 350, 300]),
    ],
    ids=["wider-range", "disjoint-range"],
)
def test_a_checkpoint_profile_of_another_gpu_model_is_not_applied(tmp_path, caplog, gpu, limits_w):
    ckpt = _checkpoint_done_on_v100(tmp_path)
    with simulated_gpus(1, demand_w=gpu["max_limit_w"], **gpu) as gpus:
        resumed = PowerLimitTuner(objective="energy", **FAST)
        steps = PROFILE_STEPS + 1 + len(limits_w) * 3 + 2
        with caplog.at_level(logging.INFO):
            _trainer(tmp_path, [SimulatedGPUWorkload(step_work_s=0.002), resumed], max_steps=steps).fit(
                BoringModel(), ckpt_path=ckpt
            )
        assert resumed.disabled_reason is None and resumed.state == "done"
        assert [r["limit_w"] for r in resumed.table()] == limits_w  # this GPU profiled, over its own range
        assert resumed.profiling_steps == len(limits_w) * 3
        assert gpus.gpus[0].get_power_management_limit() == gpu["max_limit_w"] * 1000  # its original, restored
    notes = [m for m in caplog.messages if "profile is of another workload" in m]
    assert len(notes) == 1 and f"not this run's ({gpu['name']}|world=1|" in notes[0]
    assert notes[0].endswith("it is not used, profiling this run's workload.")


class _SaveAt(Callback):
    """Saves a checkpoint after optimizer step ``step`` (mid-profiling with FAST: 250 and 200 W measured at 8)."""

    def __init__(self, path, step=8):
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def _checkpoint_mid_profile(tmp_path):
    path = str(tmp_path / "mid.ckpt")
    with simulated_gpus(1, curve="v100-resnet50", initial_limit_w=240):
        tuner = PowerLimitTuner(**FAST)
        _trainer(tmp_path, [_work(), tuner, _SaveAt(path)], max_steps=9).fit(BoringModel())
    return path, tuner


def test_resume_mid_profile_keeps_the_measured_limits_and_profiles_the_rest(tmp_path):
    path, first = _checkpoint_mid_profile(tmp_path)
    state = torch.load(path, weights_only=True)["callbacks"]["PowerLimitTuner"]
    assert state["state"] == "profiling" and [m["power_limit"] for m in state["measurements"]] == [250, 200]
    with simulated_gpus(1, curve="v100-resnet50", initial_limit_w=240) as gpus:
        resumed = PowerLimitTuner(**FAST)
        _trainer(tmp_path, [_work(), resumed], max_steps=8 + 2 * 3 + 3).fit(BoringModel(), ckpt_path=path)
        # 150 and 100 W only; the steps profiled before the checkpoint count too
        assert resumed.state == "done" and resumed.profiling_steps == state["profiling_steps"] + 2 * 3
        assert state["profiling_steps"] == first.profiling_steps - 1  # saved at step 8 of the first run's 9
        assert resumed.table()[:2] == first.table()[:2] and len(resumed.table()) == 4
        tried = [mw for mw in gpus.gpus[0].limit_history if mw != 240_000]
        assert tried[:2] == [150_000, 100_000] and set(tried[2:]) <= {resumed.chosen_limit_w * 1000}


@pytest.mark.parametrize("change", [{"profile_steps": 3}, {"pl_step_w": 25}], ids=["profile_steps", "pl_step_w"])
def test_resume_mid_profile_with_another_grid_or_step_count_profiles_again(tmp_path, caplog, change):
    path, _ = _checkpoint_mid_profile(tmp_path)
    with simulated_gpus(1, curve="v100-resnet50", initial_limit_w=240):
        resumed = PowerLimitTuner(**{**FAST, **change})
        with caplog.at_level(logging.INFO):
            _trainer(tmp_path, [_work(), resumed], max_steps=10).fit(BoringModel(), ckpt_path=path)
    assert resumed.table() == [] and resumed.profiling_steps > 0  # started again from the maximum
    assert sum("cannot continue the checkpoint's power-limit profile" in m for m in caplog.messages) == 1


@pytest.mark.parametrize(
    ("left_at_w", "original_w"),
    [(100, 240), (150, 240), (220, 220)],
    ids=["left-at-the-last-limit", "left-at-the-checkpoints-limit", "changed-by-an-administrator"],
)
def test_resume_after_a_hard_kill_restores_the_original_limit(tmp_path, monkeypatch, left_at_w, original_w):
    monkeypatch.setattr("lightning_green.power.guard.machine_id", lambda: 42, raising=False)  # one machine, one boot
    # A SIGKILL runs no handler: the GPU keeps the limit the killed run set last (here simulated by starting the
    # resumed run's GPU there). The checkpoint (step 8, at 150 W) may be older than that limit (100 W, step 9).
    path, _ = _checkpoint_mid_profile(tmp_path)
    state = torch.load(path, weights_only=True)["callbacks"]["PowerLimitTuner"]
    assert state["original_limits_mw"] == {0: 240_000} and state["applied_limit_mw"] == 150_000
    later = str(tmp_path / "later.ckpt")
    with simulated_gpus(1, curve="v100-resnet50", initial_limit_w=left_at_w) as gpus:
        resumed = PowerLimitTuner(**FAST)
        _trainer(tmp_path, [_work(), resumed, _SaveAt(later, step=10)], max_steps=12).fit(BoringModel(), ckpt_path=path)
        assert gpus.gpus[0].get_power_management_limit() == original_w * 1000
    again = torch.load(later, weights_only=True)["callbacks"]["PowerLimitTuner"]
    assert again["original_limits_mw"] == {0: original_w * 1000}  # a second kill still knows the original


def test_a_version_1_checkpoint_still_resumes(tmp_path, v100):
    tuner = PowerLimitTuner(**FAST)
    trainer = _trainer(tmp_path, [_work(), tuner], max_steps=PROFILE_STEPS + 1)
    trainer.fit(BoringModel())
    path = tmp_path / "v1.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    v1 = ("version", "state", "workload", "reprofiles", "world_size", "chosen_limit_w", "measurements", "steps")
    ckpt["callbacks"]["PowerLimitTuner"] = {k: ckpt["callbacks"]["PowerLimitTuner"][k] for k in v1}
    ckpt["callbacks"]["PowerLimitTuner"]["version"] = 1
    torch.save(ckpt, path)

    resumed = PowerLimitTuner(**FAST)
    _trainer(tmp_path, [_work(), resumed], max_steps=PROFILE_STEPS + 3).fit(BoringModel(), ckpt_path=path)
    assert resumed.state == "done" and resumed.profiling_steps == 0 and resumed.table() == tuner.table()

    other = PowerLimitTuner(**{**FAST, "pl_step_w": 75})  # 250, 175, 100 W: not the limits it was measured at
    _trainer(tmp_path, [_work(), other], max_steps=PROFILE_STEPS + 1 + 3 * 3 + 2).fit(BoringModel(), ckpt_path=path)
    assert other.profiling_steps == 3 * 3 and [r["limit_w"] for r in other.table()] == [250.0, 175.0, 100.0]


def test_a_pl_step_wider_than_the_gpus_range_is_refused_in_setup(tmp_path, v100):
    tuner = PowerLimitTuner(**{**FAST, "pl_step_w": 200})
    with pytest.raises(
        ValueError,
        match=r"^PowerLimitTuner\(pl_step_w=200\): `pl_step_w` must be at most 150 \(W\), the width of GPU 0's "
        r"power-limit range 100-250 W, so that at least two limits are profiled\.$",
    ):
        _trainer(tmp_path, [_work(), tuner]).fit(BoringModel())
    assert set(v100.limit_history) == {240_000}  # never changed


def test_a_gpu_without_a_limit_range_warns_once_and_stays_off(tmp_path):
    with simulated_gpus(1, min_limit_w=250, max_limit_w=250) as gpus:
        tuner = PowerLimitTuner(**{**FAST, "pl_step_w": 200})
        with pytest.warns(UserWarning, match=r"cannot tune power limits: GPU 0 has no adjustable power limit") as rec:
            _trainer(tmp_path, [SimulatedGPUWorkload(step_work_s=0.0), tuner], max_steps=3).fit(BoringModel())
        assert sum("PowerLimitTuner" in str(w.message) for w in rec) == 1
        assert tuner.state == "off" and set(gpus.gpus[0].limit_history) == {250_000}


def test_a_limit_on_another_gpu_model_is_not_taken_for_one_a_killed_run_left(tmp_path):
    path, _ = _checkpoint_mid_profile(tmp_path)  # a V100 run's checkpoint: original 240 W, its limits 100-250 W
    with simulated_gpus(1, name="Sim A100", min_limit_w=100, max_limit_w=400, initial_limit_w=200) as gpus:
        resumed = PowerLimitTuner(**FAST)
        _trainer(tmp_path, [SimulatedGPUWorkload(step_work_s=0.002), resumed], max_steps=12).fit(
            BoringModel(), ckpt_path=path
        )
        assert gpus.gpus[0].get_power_management_limit() == 200_000  # its own original, not the V100's


# ---------------------------------------------------------------------------------------------- resume, elsewhere
def _on_machine(monkeypatch, mid):
    """Pretend this process runs on machine (and boot) ``mid`` (``None``: no boot id to tell)."""
    monkeypatch.setattr("lightning_green.power.guard.machine_id", lambda: mid, raising=False)


@pytest.mark.parametrize(
    ("machine", "now_w", "end_w"),
    [
        ("same", 150, 240),  # the killed run's limit, on its machine and boot: its original comes back
        ("same", 250, 250),  # at the maximum the GPU is not capped: nothing to take over
        ("other", 250, 250),  # another node at its default
        ("other", 200, 200),  # another node an administrator capped at one of the grid's limits
        ("other", 150, 150),
        ("rebooted", 150, 150),
        ("unknown", 150, 150),  # no boot id: nothing is certain
    ],
)
def test_a_resume_adopts_the_checkpoints_original_only_on_the_machine_and_boot_the_run_left_capped(
    tmp_path, monkeypatch, machine, now_w, end_w
):
    _on_machine(monkeypatch, 0xABCDEF012345)
    path, _ = _checkpoint_mid_profile(tmp_path)  # original 240 W, limits 100-250 W
    _on_machine(monkeypatch, {"same": 0xABCDEF012345, "other": 7, "rebooted": 0xABCDEF012346, "unknown": None}[machine])
    later = str(tmp_path / "later.ckpt")
    with simulated_gpus(1, curve="v100-resnet50", initial_limit_w=now_w) as gpus:
        resumed = PowerLimitTuner(**FAST)
        _trainer(tmp_path, [_work(), resumed, _SaveAt(later, step=10)], max_steps=12).fit(BoringModel(), ckpt_path=path)
        assert gpus.gpus[0].get_power_management_limit() == end_w * 1000
    assert torch.load(later, weights_only=True)["callbacks"]["PowerLimitTuner"]["original_limits_mw"] == {
        0: end_w * 1000
    }
    state = torch.load(path, weights_only=True)["callbacks"]["PowerLimitTuner"]
    assert state["gpu_indices"] == {0: 0} and state["machine_ids"] == {0: 0xABCDEF012345}  # by global rank


def _two_ranks_on_one_gpu_index(monkeypatch, other_rank_w):
    """Add a second rank (another node, also GPU 0, at ``other_rank_w``) to the GPU rows setup gathers."""
    import lightning_green.callbacks.power_limit_tuner as plt
    from lightning_green._internal.distributed import gather_rows as real

    def gather(strategy, row, device=None):
        rows = real(strategy, row, device)
        if len(row) >= 4:  # setup's GPU rows: [index, current, min, max, (machine)]
            rows.append([0.0, other_rank_w * 1000.0, 100_000.0, 250_000.0, *rows[0][4:]])
        return rows

    monkeypatch.setattr(plt, "gather_rows", gather)


def test_originals_are_kept_per_rank_not_per_gpu_index(tmp_path, monkeypatch, caplog):
    # Two nodes, GPU 0 on each, originals 240 and 200 W: keyed by GPU index one of them was lost.
    _on_machine(monkeypatch, 12345)
    _two_ranks_on_one_gpu_index(monkeypatch, 200)
    path, _ = _checkpoint_mid_profile(tmp_path)
    state = torch.load(path, weights_only=True)["callbacks"]["PowerLimitTuner"]
    assert state["original_limits_mw"] == {0: 240_000, 1: 200_000} and state["gpu_indices"] == {0: 0, 1: 0}
    _two_ranks_on_one_gpu_index(monkeypatch, 150)  # the hard kill left both at 150 W
    later = str(tmp_path / "later.ckpt")
    with simulated_gpus(1, curve="v100-resnet50", initial_limit_w=150) as gpus, caplog.at_level(logging.INFO):
        resumed = PowerLimitTuner(**FAST)
        _trainer(tmp_path, [_work(), resumed, _SaveAt(later, step=10)], max_steps=12).fit(BoringModel(), ckpt_path=path)
        assert gpus.gpus[0].get_power_management_limit() == 240_000  # this rank's own original, not the other node's
    assert "GPU 0 of rank 0 (150 W → 240 W), GPU 0 of rank 1 (150 W → 200 W)" in caplog.text
    again = torch.load(later, weights_only=True)["callbacks"]["PowerLimitTuner"]
    assert again["original_limits_mw"] == {0: 240_000, 1: 200_000}  # every rank's true original, for a second kill


def test_reprofile_switched_off_keeps_the_profile_across_a_resume_after_a_prune(tmp_path, v100):
    tuner = PowerLimitTuner(reprofile_on_change=False, **FAST)
    trainer = _trainer(tmp_path, [_work(), tuner, _PruneAt(PROFILE_STEPS + 1)], max_steps=PROFILE_STEPS + 4)
    trainer.fit(BoringModel())
    path = tmp_path / "after_prune.ckpt"
    trainer.save_checkpoint(path)
    resumed = PowerLimitTuner(reprofile_on_change=False, **FAST)
    _trainer(tmp_path, [_work(), resumed], max_steps=2 * PROFILE_STEPS + 6).fit(_PrunedBoring(), ckpt_path=str(path))
    assert resumed.state == "done" and resumed.profiling_steps == tuner.profiling_steps and resumed.reprofiles == 0
    assert resumed.table() == tuner.table() and resumed.chosen_limit_w == tuner.chosen_limit_w
    assert v100.get_power_management_limit() == 240_000

    # still not across GPU models: the A100 profiles its own range
    with simulated_gpus(1, name="Sim A100", min_limit_w=100, max_limit_w=400, demand_w=400):
        other = PowerLimitTuner(reprofile_on_change=False, **FAST)
        _trainer(
            tmp_path, [SimulatedGPUWorkload(step_work_s=0.002), other], max_steps=PROFILE_STEPS + 4 + 7 * 3 + 2
        ).fit(_PrunedBoring(), ckpt_path=str(path))
        assert other.profiling_steps == 7 * 3 and len(other.table()) == 7


def test_a_finished_profile_of_another_grid_is_profiled_again_on_this_runs(tmp_path, caplog):
    ckpt = _checkpoint_done_on_v100(tmp_path)  # 250, 200, 150, 100 W
    with simulated_gpus(1, curve="v100-resnet50", initial_limit_w=240):
        resumed = PowerLimitTuner(objective="energy", **{**FAST, "pl_step_w": 25})  # 250, 225, ..., 100 W
        with caplog.at_level(logging.INFO):
            _trainer(tmp_path, [_work(), resumed], max_steps=PROFILE_STEPS + 1 + 7 * 3 + 3).fit(
                BoringModel(), ckpt_path=ckpt
            )
    assert [r["limit_w"] for r in resumed.table()] == [250, 225, 200, 175, 150, 125, 100]
    assert resumed.profiling_steps == 7 * 3
    notes = [m for m in caplog.messages if "was not measured at this run's limits" in m]
    assert len(notes) == 1 and notes[0].endswith("it is not used, profiling this run's workload.")


def test_another_gpu_models_checkpoint_with_a_cached_profile_says_nothing_is_profiled(tmp_path, caplog):
    ckpt = _checkpoint_done_on_v100(tmp_path)
    cache = str(tmp_path / "power.json")
    a100 = {"name": "Sim A100", "min_limit_w": 100, "max_limit_w": 400, "demand_w": 400}
    with simulated_gpus(1, **a100):  # this workload's profile on the A100, in the cache
        _trainer(
            tmp_path,
            [SimulatedGPUWorkload(step_work_s=0.002), PowerLimitTuner(profile_path=cache, **FAST)],
            max_steps=30,
        ).fit(BoringModel())
    with simulated_gpus(1, **a100):
        resumed = PowerLimitTuner(profile_path=cache, **FAST)
        with caplog.at_level(logging.INFO):
            _trainer(tmp_path, [SimulatedGPUWorkload(step_work_s=0.002), resumed], max_steps=PROFILE_STEPS + 4).fit(
                BoringModel(), ckpt_path=ckpt
            )
    assert resumed.profiling_steps == 0 and resumed.cache_hits == 1
    notes = [m for m in caplog.messages if "profile is of another workload" in m]
    assert len(notes) == 1 and notes[0].endswith("it is not used.")
    assert not any("profiling" in m for m in caplog.messages if m.startswith("PowerLimitTuner"))
    assert sum("reusing the stored profile" in m for m in caplog.messages) == 1
