"""How far a benchmark's figure can be trusted, from its raw values.

A cell of a summary is a median, or a ratio, of pyperf values. Its spread
here is the half-width of the 95% bootstrap interval of that figure, relative
to it: how far another run of the same benchmark on the same machine could
plausibly land. Unlike the standard deviation of the values, which describes
the machine and does not shrink, this narrows as values are added, so it
answers "were there enough values?". A cell whose spread is over NOISY (or
that has fewer than two values) is marked noisy.

A ratio between two benchmarks measured in the same rounds is taken value by
value within each round (paired_ratio_estimate): the two sides ran seconds
apart, so a change of the machine's load between rounds, which on a shared
machine moves every value by tens of percent, cancels out instead of widening
the interval. Benchmarks measured apart fall back to the ratio of the medians
(ratio_estimate).

The bootstrap is seeded: a summary regenerated from the same JSON is the same.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

# Cells whose 95% interval reaches further than this from the figure are noisy.
NOISY = 0.10
RESAMPLES = 2000
SEED = 0

Round = TypeVar("Round", bound=Hashable)


@dataclass(frozen=True)
class Estimate:
    """A median or a ratio of medians with its 95% bootstrap interval."""

    value: float
    low: float
    high: float
    values: int  # raw values behind it (the smaller count, for a ratio)
    paired: bool = False  # a ratio taken value by value within rounds

    @property
    def spread(self) -> float:
        """Half-width of the interval relative to the value (the larger side); nan if unknown."""
        if self.values < 2 or not self.value or math.isnan(self.low):
            return math.nan
        return max(self.high - self.value, self.value - self.low) / abs(self.value)

    @property
    def noisy(self) -> bool:
        return is_noisy(self.spread)

    def pm(self) -> str:
        """The spread as text: "±4%", or "1 value" when none can be computed."""
        if math.isnan(self.spread):
            return f"{self.values} value" + ("" if self.values == 1 else "s")
        return f"±{self.spread * 100:.0f}%"

    def mark(self) -> str:
        return " noisy" if self.noisy else ""


def is_noisy(spread: float) -> bool:
    return math.isnan(spread) or spread > NOISY


def _quantiles(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    n = len(samples)
    return samples[int(0.025 * n)], samples[int(0.975 * n) - 1]


def median_estimate(values: Sequence[float]) -> Estimate:
    """The median of values with its 95% bootstrap interval."""
    if not values:
        return Estimate(math.nan, math.nan, math.nan, 0)
    med = statistics.median(values)
    if len(values) < 2:
        return Estimate(med, math.nan, math.nan, len(values))
    rng = random.Random(SEED)
    k = len(values)
    low, high = _quantiles([statistics.median(rng.choices(values, k=k))
                            for _ in range(RESAMPLES)])
    return Estimate(med, low, high, k)


def ratio_estimate(num: Sequence[float], den: Sequence[float], num_base: float = 0.0,
                   den_base: float = 0.0) -> Estimate:
    """(median(num) - num_base) / (median(den) - den_base), with its 95% bootstrap interval.

    Both sides are resampled independently (they come from different worker
    processes); the bases, when given, are held fixed (micro_bench's start-up twins).
    """
    if not num or not den:
        return Estimate(math.nan, math.nan, math.nan, 0)

    def ratio(a: float, b: float) -> float:
        d = b - den_base
        return (a - num_base) / d if d else math.nan

    value = ratio(statistics.median(num), statistics.median(den))
    n = min(len(num), len(den))
    if n < 2:
        return Estimate(value, math.nan, math.nan, n)
    rng = random.Random(SEED)
    samples = [ratio(statistics.median(rng.choices(num, k=len(num))),
                     statistics.median(rng.choices(den, k=len(den))))
               for _ in range(RESAMPLES)]
    samples = [s for s in samples if not math.isnan(s)]
    if len(samples) < RESAMPLES // 2:
        return Estimate(value, math.nan, math.nan, n)
    low, high = _quantiles(samples)
    return Estimate(value, low, high, n)


def paired_ratio_estimate(num: Mapping[Round, Sequence[float]],
                          den: Mapping[Round, Sequence[float]]) -> Estimate | None:
    """The median of num/den value by value within each round, with its 95% interval.

    num and den map a round to the values measured in it. None unless both were
    measured in exactly the same rounds with as many values in each: then every
    value has its partner, taken under the same conditions.
    """
    if not num or num.keys() != den.keys():
        return None
    if any(len(num[k]) != len(den[k]) for k in num):
        return None
    ratios = [a / b for k in num for a, b in zip(num[k], den[k]) if b]
    if len(ratios) != sum(len(v) for v in num.values()):
        return None
    return dataclasses.replace(median_estimate(ratios), paired=True)
