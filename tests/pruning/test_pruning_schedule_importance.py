import pytest
import torch_pruning as tp

from lightning_green.pruning import (
    IMPORTANCES,
    SCHEDULES,
    build_importance,
    macs_fraction,
    prune_points,
    schedule_fraction,
    step_ratio,
)


@pytest.mark.parametrize(
    ("name", "cls", "p"),
    [
        ("magnitude-l1", tp.importance.GroupMagnitudeImportance, 1),
        ("magnitude-l2", tp.importance.GroupMagnitudeImportance, 2),
        ("taylor", tp.importance.GroupTaylorImportance, None),
        ("bn-scale", tp.importance.BNScaleImportance, None),
        ("lamp", tp.importance.LAMPImportance, 2),
        ("random", tp.importance.RandomImportance, None),
    ],
)
def test_each_importance_maps_to_its_torch_pruning_class(name, cls, p):
    imp = build_importance(name)
    assert type(imp) is cls
    if p is not None:
        assert imp.p == p


def test_registry_lists_exactly_the_documented_criteria():
    assert set(IMPORTANCES) == {"magnitude-l1", "magnitude-l2", "taylor", "bn-scale", "lamp", "random"}


def test_unknown_importance_is_refused():
    with pytest.raises(ValueError, match=r"unknown importance 'l3'; known: \('magnitude-l1'"):
        build_importance("l3")


@pytest.mark.parametrize(
    ("start", "end", "freq", "expected"), [(0, 0, 1, [0]), (1, 4, 1, [1, 2, 3, 4]), (1, 6, 2, [1, 3, 5, 6])]
)
def test_prune_points_end_at_end(start, end, freq, expected):
    assert prune_points(start, end, freq) == expected


def test_prune_points_refuse_reversed_range():
    with pytest.raises(ValueError, match="need start <= end"):
        prune_points(3, 2, 1)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("n", [1, 3, 5])
def test_step_ratios_compound_to_the_final_ratio(schedule, n):
    kept = 1.0
    for k in range(1, n + 1):
        kept *= 1.0 - step_ratio(0.6, schedule, k, n)
        assert kept == pytest.approx(1.0 - 0.6 * schedule_fraction(schedule, k, n))
    assert kept == pytest.approx(0.4)


def test_cubic_prunes_more_early_than_linear():
    n = 4
    cubic = [schedule_fraction("cubic", k, n) for k in range(1, n + 1)]
    linear = [schedule_fraction("linear", k, n) for k in range(1, n + 1)]
    assert all(c > lin for c, lin in zip(cubic[:-1], linear[:-1], strict=True))
    assert cubic[-1] == linear[-1] == 1.0
    steps = [b - a for a, b in zip([0.0, *cubic[:-1]], cubic, strict=True)]
    assert steps == sorted(steps, reverse=True)


def test_macs_fraction_reaches_the_inverse_speedup():
    assert macs_fraction(4.0, "linear", 4, 4) == pytest.approx(0.25)
    assert macs_fraction(4.0, "linear", 2, 4) == pytest.approx(0.625)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule 'exp'"):
        schedule_fraction("exp", 1, 2)
