"""Mean, spread and paired differences over seeds, with Student-t confidence intervals (no SciPy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PairedDifference", "mean_std", "paired_difference", "t_quantile_975", "wilson_interval"]

# Two-sided 95 % quantiles t_{0.975, df} for df = 1..30 (any statistics table).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (table to 30, Cornish-Fisher beyond).

    Raises:
        ValueError: ``df < 1``.
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's 95 % score interval for a proportion, e.g. accuracy on ``n`` images (sound at 0 or ``n`` successes).

    Raises:
        ValueError: ``n < 1`` or ``successes`` outside ``0..n``.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got successes={successes}, n={n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the std of a single value is NaN, of none both are NaN."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class PairedDifference:
    """``variant - baseline`` over the seeds both have: mean, 95 % confidence interval, and how many pairs."""

    mean: float
    low: float
    high: float
    pairs: int

    @property
    def includes_zero(self) -> bool:
        """True when the interval cannot tell the variant from the baseline (or has too few pairs to say)."""
        return not (self.low > 0 or self.high < 0)

    @property
    def verdict(self) -> str:
        if self.pairs < 2:
            return "too few seeds"
        if self.includes_zero:
            return "no clear difference (the interval includes 0)"
        return "better" if self.low > 0 else "worse"


def paired_difference(variant: dict[int, float], baseline: dict[int, float]) -> PairedDifference:
    """The mean of ``variant[s] - baseline[s]`` over the seeds ``s`` both have, with its t-based 95 % interval.

    The runs of one seed share their data order and augmentations, so pairing them takes that part of the run-to-run
    noise out of the comparison. Fewer than two pairs give an infinite interval.
    """
    seeds = sorted(set(variant) & set(baseline))
    diffs = [variant[s] - baseline[s] for s in seeds]
    mean, std = mean_std(diffs)
    if len(diffs) < 2:
        return PairedDifference(mean, -math.inf, math.inf, len(diffs))
    half = t_quantile_975(len(diffs) - 1) * std / math.sqrt(len(diffs))
    return PairedDifference(mean, mean - half, mean + half, len(diffs))
