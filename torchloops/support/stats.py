"""Intervals and verdicts for timings taken on a noisy machine (``scipy.stats.bootstrap``).

Every timing statistic the suite prints comes with a 95 % confidence interval, and every
ratio with a verdict:

* a **median with its interval**: the median of samples (per-block mean step times: the step
  time of every record), its interval the percentile bootstrap of the median over those samples;
* a **paired ratio**: two configurations timed in the same rounds (interleaved blocks,
  :mod:`torchloops.measurement.interleave`) give one ratio per round; the point is the median of those
  ratios and the interval its bootstrap.  Pairing cancels what the machine did during the
  round, which is what makes a ratio trustworthy here;
* a **two-sample ratio**: two separate runs (``torchloops diff``) cannot be paired; the point
  is the ratio of the medians, the interval the bootstrap over both samples resampled
  independently;
* a **verdict**: ``slower`` or ``faster`` only when the whole interval lies on one side of 1
  *and* outside the equivalence band ``1 ± EQUIVALENCE_BAND``; otherwise ``same`` (printed
  "≈ same"): the difference is inside what this machine can tell apart.

The resampling is seeded, so the same samples always give the same interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
# Ratios whose whole interval lies within 1 ± 3 % are reported as "≈ same": the A/A study
# (module vs sequential, same arithmetic) put point ratios within ±4 % of 1 and intervals
# about ±3 % wide on the 2-core machine (docs/measurement.md, "Noise study").
EQUIVALENCE_BAND = 0.03
RESAMPLES = 2000
MIN_SAMPLES = 3  # fewer samples than this: no interval

SAME, FASTER, SLOWER = "same", "faster", "slower"


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval (``low``/``high`` None: too few samples)."""

    point: float
    low: Optional[float]
    high: Optional[float]
    samples: int

    @property
    def interval(self) -> Optional[list]:
        return None if self.low is None else [self.low, self.high]


def _bootstrap(data: tuple, statistic, paired: bool = False) -> tuple:
    result = stats.bootstrap(
        data,
        statistic,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        paired=paired,
        vectorized=True,
        axis=-1,
        rng=np.random.default_rng(0),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _clean(samples: Sequence[float]) -> np.ndarray:
    values = np.asarray([s for s in samples if s is not None], dtype=float)
    return values[np.isfinite(values)]


def median_interval(samples: Sequence[float]) -> Estimate:
    """The median of ``samples`` and the bootstrap interval of that median."""
    values = _clean(samples)
    if values.size == 0:
        raise ValueError("no samples")
    point = float(np.median(values))
    if values.size < MIN_SAMPLES or np.all(values == values[0]):
        low = high = (point if values.size >= MIN_SAMPLES else None)
        return Estimate(point, low, high, int(values.size))
    low, high = _bootstrap((values,), np.median)
    return Estimate(point, low, high, int(values.size))


def paired_ratio(values: Sequence[float], references: Sequence[float]) -> Estimate:
    """Median of the per-round ratios ``values[i] / references[i]`` and its bootstrap interval."""
    if len(values) != len(references):
        raise ValueError(f"paired samples differ in length: {len(values)} and {len(references)}")
    return median_interval([v / r for v, r in zip(values, references) if v is not None and r])


def _ratio_of_medians(base, new, axis=-1):
    return np.median(new, axis=axis) / np.median(base, axis=axis)


def two_sample_ratio(base: Sequence[float], new: Sequence[float]) -> Estimate:
    """``median(new) / median(base)`` of two unpaired samples, each resampled on its own."""
    a, b = _clean(base), _clean(new)
    if a.size == 0 or b.size == 0:
        raise ValueError("no samples")
    point = float(np.median(b) / np.median(a))
    if min(a.size, b.size) < MIN_SAMPLES:
        return Estimate(point, None, None, int(min(a.size, b.size)))
    low, high = _bootstrap((a, b), _ratio_of_medians)
    return Estimate(point, low, high, int(min(a.size, b.size)))


def verdict(estimate: Estimate, band: float = EQUIVALENCE_BAND) -> str:
    """``slower``/``faster`` only for an interval wholly beyond ``1 ± band``; else ``same``."""
    if estimate.low is None:
        return SAME
    if estimate.low > 1 + band:
        return SLOWER
    if estimate.high < 1 - band:
        return FASTER
    return SAME


def format_ratio(estimate: Optional[Estimate], band: float = EQUIVALENCE_BAND) -> str:
    """``0.52x [0.50-0.55]`` for a difference the interval shows, ``≈ same`` for one it does not."""
    if estimate is None:
        return "-"
    if verdict(estimate, band) == SAME:
        return "≈ same" if estimate.low is not None else f"{_x(estimate.point)} (no interval)"
    return f"{_x(estimate.point)} [{_x(estimate.low, False)}-{_x(estimate.high, False)}]"


def _x(value: float, suffix: bool = True) -> str:
    text = f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return text + ("x" if suffix else "")
