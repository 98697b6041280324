"""Intervals and paired tests against values computed by hand and published tables."""

import math

import pytest

from vidpress.evaluation.stats import binomial_two_sided, mcnemar, wilson_interval


@pytest.mark.parametrize(
    "correct, total, low, high",
    [
        (8, 10, 0.4902, 0.9433),    # the textbook example (Newcombe 1998, Table I, method 3)
        (0, 10, 0.0, 0.2775),       # never empty at 0 / n
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),  # Newcombe 1998, Table I: 81/263 -> 0.2553-0.3662
    ],
)
def test_wilson_interval_known_values(correct, total, low, high):
    got = wilson_interval(correct, total)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_shrinks_with_n_and_rejects_bad_counts():
    width = [b - a for a, b in (wilson_interval(n * 85 // 100, n) for n in (100, 240, 600))]
    assert width[0] > width[1] > width[2]
    with pytest.raises(ValueError, match="at least one"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="correct"):
        wilson_interval(11, 10)


def test_exact_mcnemar_known_values():
    # b = 1, c = 6: p = 2 * (C(7,0) + C(7,1)) / 2^7 = 0.125
    assert binomial_two_sided(1, 7) == pytest.approx(0.125)
    assert binomial_two_sided(0, 5) == pytest.approx(2 / 32)
    assert binomial_two_sided(3, 6) == 1.0 and binomial_two_sided(0, 0) == 1.0
    assert binomial_two_sided(2, 12) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    a = [True] * 5 + [False] * 6 + [True] * 3 + [False]
    b = [True] * 5 + [True] * 6 + [False] * 1 + [True] * 2 + [False]
    test = mcnemar(a, b, ("x", "y"))
    assert (test.only_a, test.only_b, test.examples) == (1, 6, 15)
    assert test.p_value == pytest.approx(0.125) and test.difference == pytest.approx(-5 / 15)
    assert math.isclose(mcnemar(b, a).p_value, test.p_value)


def test_mcnemar_needs_paired_predictions():
    with pytest.raises(ValueError, match="same examples"):
        mcnemar([True], [True, False])
