"""Error bars and paired tests for accuracies measured on the same examples.

`wilson_interval` gives the 95% interval of one accuracy (Wilson score interval: E. B. Wilson, "Probable inference,
the law of succession, and statistical inference", JASA 1927); `mcnemar` compares two settings answered on the
same examples with the exact McNemar test (a two-sided binomial test on the examples where exactly one of the two
is right), which is far more sensitive than comparing two intervals because both settings see the same questions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: the normal quantile of a two-sided 95% interval
Z95 = 1.959963984540054


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (default 95%) of `correct` successes out of `total` trials, as (low, high).

    Unlike the normal approximation p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at 0 or n.
    """
    if total <= 0:
        raise ValueError(f"an interval needs at least one trial; got total={total}")
    if not 0 <= correct <= total:
        raise ValueError(f"correct must be in [0, total={total}]; got {correct}")
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_two_sided(k: int, n: int) -> float:
    """Two-sided p-value of k successes in n fair coin flips: P(X <= min(k, n-k)) + P(X >= max(k, n-k)), capped
    at 1 (exact; n = 0 gives 1)."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedTest:
    """Two settings on the same examples. only_a: examples only `a` answers right; only_b: only `b`;
    p_value: exact McNemar (two-sided); difference: accuracy(a) - accuracy(b)."""

    a: str
    b: str
    examples: int
    only_a: int
    only_b: int
    p_value: float

    @property
    def difference(self) -> float:
        return (self.only_a - self.only_b) / self.examples

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "examples": self.examples, "only_a": self.only_a, "only_b": self.only_b,
                "difference": self.difference, "p_value": self.p_value}


def mcnemar(a: list[bool], b: list[bool], names: tuple[str, str] = ("a", "b")) -> PairedTest:
    """The exact McNemar test of two settings' per-example correctness (same examples, same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired predictions must cover the same examples; got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("a paired test needs at least one example")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    return PairedTest(names[0], names[1], len(a), only_a, only_b, binomial_two_sided(only_a, only_a + only_b))
