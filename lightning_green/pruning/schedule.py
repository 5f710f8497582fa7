"""When to prune and how far: the prune points and the gradual schedules (linear, cubic).

The cubic schedule is Zhu & Gupta's gradual pruning ("To prune, or not to prune", 2017): sparsity after step
``k`` of ``n`` is ``s_final · (1 - (1 - k/n)³)`` — large steps early, while the network is still redundant, small
steps late.
"""

from __future__ import annotations

__all__ = ["SCHEDULES", "macs_fraction", "prune_points", "schedule_fraction", "step_ratio"]

#: Known schedules.
SCHEDULES = ("linear", "cubic")


def prune_points(start: int, end: int, frequency: int) -> list[int]:
    """The epochs (or steps) at which a prune happens: every ``frequency`` from ``start``, always ending at ``end``.

    Example:
        >>> prune_points(1, 7, 2)
        [1, 3, 5, 7]
        >>> prune_points(2, 6, 3)
        [2, 5, 6]
        >>> prune_points(4, 4, 1)
        [4]
    """
    if end < start or frequency < 1:
        raise ValueError(f"need start <= end and frequency >= 1, got start={start}, end={end}, frequency={frequency}")
    points = list(range(start, end + 1, frequency))
    if points[-1] != end:
        points.append(end)
    return points


def schedule_fraction(schedule: str, k: int, n: int) -> float:
    """Share of the final goal reached after prune ``k`` of ``n`` (``k`` from 1).

    Example:
        >>> [schedule_fraction("linear", k, 4) for k in range(1, 5)]
        [0.25, 0.5, 0.75, 1.0]
        >>> [round(schedule_fraction("cubic", k, 4), 4) for k in range(1, 5)]
        [0.5781, 0.875, 0.9844, 1.0]
    """
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    t = k / n
    if schedule == "linear":
        return t
    if schedule == "cubic":
        return 1.0 - (1.0 - t) ** 3
    raise ValueError(f"unknown schedule {schedule!r}; known: {SCHEDULES}")


def step_ratio(pruning_ratio: float, schedule: str, k: int, n: int) -> float:
    """Share of the *current* channels prune ``k`` removes, so ``pruning_ratio`` of the dense ones are gone at ``n``.

    Example:
        >>> [round(step_ratio(0.5, "linear", k, 2), 4) for k in (1, 2)]
        [0.25, 0.3333]
    """
    before = pruning_ratio * schedule_fraction(schedule, k - 1, n)
    after = pruning_ratio * schedule_fraction(schedule, k, n)
    return 1.0 - (1.0 - after) / (1.0 - before)


def macs_fraction(target_speedup: float, schedule: str, k: int, n: int) -> float:
    """Share of the dense MACs left after prune ``k`` of ``n`` when the goal is ``target_speedup`` at ``n``.

    Example:
        >>> [round(macs_fraction(2.0, "linear", k, 2), 4) for k in (1, 2)]
        [0.75, 0.5]
    """
    return 1.0 - (1.0 - 1.0 / target_speedup) * schedule_fraction(schedule, k, n)
