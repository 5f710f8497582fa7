import pytest

from lightning_green.precision.schedule import PrecisionSchedule, validate_schedule


def test_positions_before_first_key_run_fp32():
    s = PrecisionSchedule({2: "bf16-mixed", 5: "32-true"})
    assert [s.at(p) for p in range(7)] == ["32-true"] * 2 + ["bf16-mixed"] * 3 + ["32-true"] * 2


def test_segment_start_is_the_key_in_force():
    s = PrecisionSchedule({0: "32-true", 3: "16-mixed"}, "step")
    assert [s.segment_start(p) for p in (0, 2, 3, 9)] == [0, 0, 3, 3]


@pytest.mark.parametrize(
    ("warmup", "final", "max_epochs", "expected"),
    [
        (0, 0, 3, ["bf16-mixed"] * 3),
        (1, 0, 3, ["32-true", "bf16-mixed", "bf16-mixed"]),
        (0, 1, 3, ["bf16-mixed", "bf16-mixed", "32-true"]),
        (2, 2, 5, ["32-true", "32-true", "bf16-mixed", "32-true", "32-true"]),
    ],
)
def test_shortcuts(warmup, final, max_epochs, expected):
    s = PrecisionSchedule.from_shortcuts("bf16-mixed", warmup, final, max_epochs)
    assert [s.at(e) for e in range(max_epochs)] == expected


def test_resolve_replaces_auto_only():
    s = PrecisionSchedule({0: "auto", 2: "32-true", 4: "16-mixed"}).resolve("bf16-mixed")
    assert s.entries == {0: "bf16-mixed", 2: "32-true", 4: "16-mixed"}


def test_validate_sorts_keys():
    assert list(validate_schedule("X", {3: "32-true", 0: "auto"})) == [0, 3]


@pytest.mark.parametrize(
    ("schedule", "exc", "match"),
    [
        ({0: "fp16"}, ValueError, r"mapping to one of .*found 'fp16' at 0"),
        ({0: 16}, ValueError, r"mapping to one of"),
        ({-1: "32-true"}, ValueError, r"keyed by epochs or steps >= 0 \(found key -1\)"),
        ({"0": "32-true"}, TypeError, r"keyed by int epochs or steps \(found key '0'\)"),
        ({True: "32-true"}, TypeError, r"keyed by int"),
        ({}, TypeError, r"None or a non-empty dict"),
        ([(0, "32-true")], TypeError, r"None or a non-empty dict"),
    ],
)
def test_validate_rejects(schedule, exc, match):
    with pytest.raises(exc, match=r"^X\(schedule=.*\): `schedule` must be " + match):
        validate_schedule("X", schedule)
