"""Power-limit profiles: Zeus's optimum selectors, the cost table, and the on-disk profile cache.

A profile is one :class:`zeus.optimizer.power_limit.PowerLimitMeasurement` per power limit: GPU energy (J,
summed over all ranks) and time (s, the slowest rank) of the same number of training steps. The selectors are
Zeus's own (``Energy``, ``Time``, ``ZeusCost``, ``MaxSlowdownConstraint``), built with the job's *true* world
size (Zeus's optimizer would pass the number of GPUs one rank monitors, i.e. 1 under DDP).

The cache file holds many profiles, keyed by what determines one (:func:`profile_key`): the GPU model, the world
size, the precision, the model's size (parameters, MACs) and the batch size. So a rerun of the same job, and a
workload seen before in the same run (precision back to fp32 after a fallback, then low precision again), skip
profiling, while a pruned model or another batch size is profiled afresh.

A file written by Zeus's ``GlobalPowerLimitOptimizer(profile_path=...)`` (``{"measurements": [...]}``) holds one
profile of an unknown workload, each figure a total over Zeus's ``profile_steps``: it is read as the profile of the
workload a fit *starts* with (``initial=True``), never for a later one (after a prune it would be the dense model's).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_green.energy.report import write_json_atomic

if TYPE_CHECKING:  # zeus.optimizer.power_limit imports zeus.monitor (pandas, scikit-learn): only when used
    from zeus.optimizer.power_limit import OptimumSelector, PowerLimitMeasurement

__all__ = [
    "OBJECTIVES",
    "CACHE_VERSION",
    "ProfileCache",
    "make_selector",
    "profile_key",
    "profile_table",
]

OBJECTIVES = ("zeus-cost", "energy", "time", "max-slowdown")
CACHE_VERSION = 1


def make_selector(objective: str, eta: float, max_slowdown: float | None, world_size: int) -> OptimumSelector:
    """Zeus's selector for ``objective``; ``zeus-cost`` uses ``world_size`` for the maximum power term.

    Example:
        >>> type(make_selector("zeus-cost", 0.5, None, 4)).__name__, make_selector("zeus-cost", 0.5, None, 4).world_size
        ('ZeusCost', 4)
    """
    from zeus.optimizer.power_limit import Energy, MaxSlowdownConstraint, Time, ZeusCost

    if objective == "zeus-cost":
        return ZeusCost(eta_knob=eta, world_size=world_size)
    if objective == "energy":
        return Energy()
    if objective == "time":
        return Time()
    if objective == "max-slowdown":
        return MaxSlowdownConstraint(factor=float(max_slowdown if max_slowdown is not None else 1.0))
    raise ValueError(f"unknown objective {objective!r}; one of {OBJECTIVES}")


def profile_key(
    gpu_name: str,
    world_size: int,
    precision: str,
    params: int,
    macs: float | None,
    batch_size: int | None,
    job: str | None = None,
) -> str:
    """The cache key of one profile: everything that determines a step's time and energy at a power limit.

    ``job`` (optional) keeps profiles of jobs apart that would otherwise share a key; ``None`` for an unknown MAC
    count or batch size is part of the key (``?``).

    Example:
        >>> profile_key("NVIDIA A100-SXM4-40GB", 8, "bf16-mixed", 124_000_000, 2.1e9, 32)
        'NVIDIA A100-SXM4-40GB|world=8|precision=bf16-mixed|params=124000000|macs=2100000000|batch=32'
    """
    parts = [gpu_name] + ([f"job={job}"] if job else [])
    parts += [f"world={world_size}", f"precision={precision}", f"params={int(params)}"]
    parts += [f"macs={int(macs) if macs is not None else '?'}"]
    parts += [f"batch={batch_size if batch_size is not None else '?'}"]
    return "|".join(parts)


def profile_table(
    measurements: Sequence[PowerLimitMeasurement], eta: float, world_size: int, steps: int
) -> list[dict[str, float]]:
    """One row per limit, highest first: energy and time per step, average power and Zeus's cost per step.

    The cost is ``eta·energy + (1−eta)·max_limit·world_size·time`` (Zeus's, in J per step).
    """
    if not measurements:
        return []
    from zeus.utils.metric import zeus_cost

    max_power = max(m.power_limit for m in measurements) * world_size
    steps = max(int(steps), 1)
    rows = []
    for m in sorted(measurements, key=lambda m: -m.power_limit):
        rows.append(
            {
                "limit_w": float(m.power_limit),
                "energy_j": m.energy / steps,
                "time_s": m.time / steps,
                "avg_power_w": m.energy / m.time / world_size if m.time > 0 else 0.0,
                "cost": zeus_cost(m.energy, m.time, eta, max_power) / steps,
            }
        )
    return rows


_FIELDS = ("power_limit", "energy", "time")
_ZEUS = "zeus_profile"  # a converted Zeus file keeps its profile under this top-level key


class _Corrupt(ValueError):
    """What is wrong with a cache file (the :class:`ProfileCache` adds the path and the fix)."""


def _measurements(raw: Any, key: str) -> list[PowerLimitMeasurement]:
    from zeus.optimizer.power_limit import PowerLimitMeasurement

    if not isinstance(raw, list):
        raise _Corrupt(f"profile {key!r}: `measurements` is not a list")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise _Corrupt(f"profile {key!r}, measurement {i}: not an object")
        missing = [k for k in _FIELDS if k not in m]
        if missing:
            raise _Corrupt(f"profile {key!r}, measurement {i}: missing {missing[0]!r}")
        try:
            out.append(PowerLimitMeasurement(**{k: m[k] for k in _FIELDS}))
        except (TypeError, ValueError) as err:
            values = {k: m[k] for k in _FIELDS}
            raise _Corrupt(f"profile {key!r}, measurement {i}: bad value in {values} ({type(err).__name__})") from err
    return out


class ProfileCache:
    """A JSON file of profiles (see the module docstring). Reads are lenient about absent files, strict otherwise.

    Args:
        path: The file.
        zeus_profile_steps: The ``profile_steps`` of the Zeus optimizer that wrote the file, when Zeus wrote it: its
            figures are totals over that many steps (Zeus's default is 40).

    Example:
        >>> import tempfile, os
        >>> from zeus.optimizer.power_limit import PowerLimitMeasurement
        >>> cache = ProfileCache(os.path.join(tempfile.mkdtemp(), "power.json"))
        >>> cache.load("k") is None
        True
        >>> m = [PowerLimitMeasurement(power_limit=300, energy=900.0, time=3.0)]
        >>> cache.save("k", m, steps=40)
        >>> cache.load("k")[0].power_limit, cache.profile("k")[1]
        (300, 40)
    """

    def __init__(self, path: str | os.PathLike[str], zeus_profile_steps: int = 40) -> None:
        self.path = Path(path)
        self.zeus_profile_steps = int(zeus_profile_steps)

    def _corrupt(self, what: str) -> ValueError:
        return ValueError(
            f"corrupt power-limit profile cache {os.fspath(self.path)!r}: {what}. Delete or move the file (or "
            "remove that profile from it) to profile again."
        )

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": CACHE_VERSION, "profiles": {}}
        try:
            with self.path.open(encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise self._corrupt(f"not valid JSON ({err})") from err
        if isinstance(data, dict) and "measurements" in data and "profiles" not in data:
            # Zeus's own file: totals over its profile_steps, for the workload its job started with.
            zeus = {"measurements": data["measurements"], "steps": self.zeus_profile_steps}
            return {"version": CACHE_VERSION, "profiles": {}, _ZEUS: zeus}
        if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
            raise self._corrupt("it is not a power-limit profile file (no 'profiles')")
        return data

    def _lookup(self, key: str, initial: bool) -> tuple[str, dict[str, Any]] | None:
        data = self._read()
        profiles = data["profiles"]
        if key in profiles:
            name, entry = key, profiles[key]
        elif initial and _ZEUS in data:
            name, entry = _ZEUS, data[_ZEUS]
        else:
            return None
        if not isinstance(entry, dict):
            raise self._corrupt(f"profile {name!r} is not an object")
        return name, dict(entry)

    def entry(self, key: str, initial: bool = False) -> dict[str, Any] | None:
        """The stored entry for ``key`` (a Zeus-written file's only for the ``initial`` workload).

        Raises:
            ValueError: The file or the entry is corrupt (the message names the file, the problem and the fix).
        """
        found = self._lookup(key, initial)
        return found[1] if found is not None else None

    def check(self) -> None:
        """Read every profile in the file (to fail before training, not at the first look-up).

        Raises:
            ValueError: The file or an entry is corrupt (the message names the file, the problem and the fix).
        """
        data = self._read()
        for name, entry in [*data["profiles"].items(), *([(_ZEUS, data[_ZEUS])] if _ZEUS in data else [])]:
            self._parse(name, entry)

    def _parse(self, name: str, entry: Any) -> tuple[list[PowerLimitMeasurement], int] | None:
        try:
            if not isinstance(entry, dict):
                raise _Corrupt(f"profile {name!r} is not an object")
            if "measurements" not in entry:
                raise _Corrupt(f"profile {name!r} has no `measurements`")
            measurements = _measurements(entry["measurements"], name)
            steps = entry.get("steps")
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise _Corrupt(f"profile {name!r}: `steps` must be an int >= 1 (got {steps!r})")
        except _Corrupt as err:
            raise self._corrupt(str(err)) from err
        return (measurements, steps) if measurements else None

    def profile(self, key: str, initial: bool = False) -> tuple[list[PowerLimitMeasurement], int] | None:
        """The measurements stored for ``key`` and the training steps each one covers, or ``None``.

        A file written by Zeus's optimizer answers only the ``initial`` look-up (the workload a fit starts with),
        with ``zeus_profile_steps`` steps per measurement (Zeus stores totals over its profile window).

        Raises:
            ValueError: The file or the entry is corrupt (the message names the file, the problem and the fix).
        """
        found = self._lookup(key, initial)
        return self._parse(*found) if found is not None else None

    def load(self, key: str, initial: bool = False) -> list[PowerLimitMeasurement] | None:
        """The measurements stored for ``key``, or ``None`` (:meth:`profile` also gives their step count).

        Raises:
            ValueError: The file or the entry is corrupt (the message names the file, the problem and the fix).
        """
        found = self.profile(key, initial)
        return found[0] if found is not None else None

    def save(self, key: str, measurements: Sequence[PowerLimitMeasurement], steps: int, **meta: Any) -> None:
        """Store ``measurements`` under ``key`` (atomically; other keys, and a Zeus file's profile, are kept)."""
        data = self._read()
        data["version"] = CACHE_VERSION
        data["profiles"][key] = {
            "measurements": [{"power_limit": m.power_limit, "energy": m.energy, "time": m.time} for m in measurements],
            "steps": int(steps),
            **meta,
        }
        write_json_atomic(self.path, data)
