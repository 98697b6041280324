"""Knobs are checked whenever they are set: at construction and on a built press (`press.retention = 1.5`), for
every registered press and every knob; and the shared types refuse what no press can work on (bad grids, meta
tensors)."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from vidpress import presses
from vidpress.types import VideoTokens

NAMES = presses.available()
#: Values of the wrong kind or out of range for some knob; which ones a knob refuses is read from its constructor.
BAD = ["0.3x", "0.3", True, math.nan, -1, 0, 1.5, 2.5, None, (), (0.5, 0.2), object()]


def knobs(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(presses.PRESSES[name]) if f.init]


@pytest.mark.parametrize("retention", [1.5, 0, -0.1, True, math.nan, "abc"])
@pytest.mark.parametrize("name", NAMES)
def test_retention_set_on_a_built_press_is_checked(name, retention):
    press = presses.get(name, retention=0.5)
    with pytest.raises(ValueError, match=r"retention must be .*\(0, 1\]"):
        press.retention = retention
    assert press.retention == 0.5  # the press keeps its last good value


@pytest.mark.parametrize("name", NAMES)
def test_a_knob_set_later_is_checked_like_a_constructor_argument(name):
    """Every knob x every value: refused on a built press exactly when (and with the message with which) the
    constructor refuses it; accepted values are normalised the same way."""
    cls = presses.PRESSES[name]
    refused = 0
    for knob in knobs(name):
        for value in BAD:
            try:
                expected = getattr(cls(**{knob: value}), knob)
                error = None
            except ValueError as e:
                error = str(e)
            press = cls()
            before = getattr(press, knob)
            if error is None:
                setattr(press, knob, value)
                got = getattr(press, knob)
                assert got is expected or got == expected or (got != got and expected != expected), (knob, value)
            else:
                refused += 1
                with pytest.raises(ValueError) as caught:
                    setattr(press, knob, value)
                assert str(caught.value) == error
                assert getattr(press, knob) is before
    assert refused  # at least the retention's bad values


def test_accepted_values_are_normalised_on_assignment():
    press = presses.get("vidcom2", retention=0.5)
    press.retention = "0.3"  # as the constructor: a numeric string becomes the number
    assert press.retention == 0.3 and isinstance(press.retention, float)
    press.alphas = [1, 2]
    assert press.alphas == (1.0, 2.0)


def test_cross_knob_rules_hold_on_assignment():
    marc = presses.get("marc", retention=0.5)
    with pytest.raises(ValueError, match="either retention or budget_tokens"):
        marc.budget_tokens = 64
    fastvid = presses.get("fastvid")
    with pytest.raises(ValueError, match=r"max_segments \(2\) must be >= min_segments \(8\)"):
        fastvid.max_segments = 2


@pytest.mark.parametrize("name,knob,value,message", [
    ("vidcom2", "tau", "0.01", r"tau must be > 0 \(a number"),
    ("vidcom2", "channel_ratio", True, r"channel_ratio must be a number in \(0, 1\]"),
    ("vidcom2", "alphas", 2.0, "alphas must be a non-empty list of positive kernel bandwidths"),
    ("cacovid", "imp_ratio", "0.5", r"imp_ratio must be a number in \[0, 1\]"),
    ("cacovid", "frame_logit_max", None, "frame_logit_max must be a number > 0"),
    ("pdrop", "stage_depths", 0.5, r"stage_depths must be increasing fractions in \(0, 1\)"),
    ("fastv", "layer", True, "layer must be an integer >= 1"),
    ("fastvid", "threshold", True, r"threshold must be a number in \[-1, 1\]"),
    ("random", "seed", 0.5, "seed must be an integer"),
    ("marc", "detector", "drop", "detector must be None"),
])
def test_wrong_kinds_name_the_knob_and_what_is_accepted(name, knob, value, message):
    with pytest.raises(ValueError, match=message):
        presses.get(name, **{knob: value})


@pytest.mark.parametrize("grid", [(2, -2, -4), (2.0, 2.0, 4.0), (2, 2.5, 3.2), (True, 2, 4), (2, 8), "284",
                                  (2, 0, 8)])
def test_video_tokens_refuse_grids_that_are_not_positive_integers(grid):
    with pytest.raises(ValueError, match=r"grid must be three integers \(t, h, w\) >= 1"):
        VideoTokens(torch.randn(2, 8, 4), grid)


def test_video_tokens_take_integer_grids_of_any_integer_kind():
    for grid in [(2, 2, 4), (np.int64(2), 2, 4), tuple(torch.tensor([2, 2, 4])), [2, 2, 4]]:
        assert VideoTokens(torch.randn(2, 8, 4), grid).grid == (2, 2, 4)


@pytest.mark.parametrize("name", NAMES)
def test_meta_tensors_are_refused_with_a_clear_error(name):
    with pytest.raises(ValueError, match="meta device"):
        presses.get(name, retention=0.5).select(VideoTokens(torch.randn(2, 8, 4, device="meta"), (2, 2, 4)))
