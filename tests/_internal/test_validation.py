import pytest

from lightning_green._internal.validation import (
    InvalidArgumentError,
    check_bool,
    check_choice,
    check_number,
    check_str_list,
    find_argument_error,
)


def test_choice_message_names_owner_argument_value_and_choices():
    with pytest.raises(ValueError, match=r"^X\(mode='hour'\): `mode` must be one of \('epoch', 'step'\)\.$"):
        check_choice("X", "mode", "hour", ("epoch", "step"))
    assert check_choice("X", "mode", "step", ("epoch", "step")) == "step"


@pytest.mark.parametrize(
    ("value", "bounds", "exc", "match"),
    [
        (True, {}, TypeError, "must be a number"),
        ("1", {}, TypeError, "must be a number"),
        (float("nan"), {}, ValueError, "finite"),
        (-1, {"ge": 0}, ValueError, ">= 0"),
        (0, {"gt": 0}, ValueError, "> 0"),
        (1.5, {"integer": True}, TypeError, "must be an int"),
        (2, {"le": 1}, ValueError, "<= 1"),
    ],
)
def test_number_rejects(value, bounds, exc, match):
    with pytest.raises(exc, match=match):
        check_number("X", "n", value, **bounds)


def test_number_accepts_in_range():
    assert check_number("X", "n", 3, integer=True, ge=1, le=3) == 3


def test_bool_and_str_list():
    with pytest.raises(TypeError, match="must be a bool"):
        check_bool("X", "flag", 1)
    with pytest.raises(TypeError, match="list of strings"):
        check_str_list("X", "names", "conv1")
    assert check_str_list("X", "names", ("a", "b")) == ["a", "b"]


def test_find_argument_error_walks_the_cause_chain():
    try:
        try:
            check_number("X", "n", -1, ge=0)
        except ValueError as inner:
            raise RuntimeError("wrapped by a library") from inner
    except RuntimeError as outer:
        found = find_argument_error(outer)
    assert isinstance(found, InvalidArgumentError)
    assert find_argument_error(RuntimeError("unrelated")) is None
