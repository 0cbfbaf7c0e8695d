"""Convergence statistics: steps-to-target over seeds, and the check against a reference.

``torchloops converge`` (:mod:`torchloops.commands.converge`) records steps-to-target
over seeds, the way MLPerf's reference convergence points do.  The repository ships
one such distribution per workload in ``workloads/reference/<workload>.json``
(written by ``converge --json``; read by :mod:`torchloops.support.references`), and
:func:`check_consistency` is the one-sided check a fresh set of seeds must pass:

* speed: the median steps-to-target of the fresh seeds that reach the target lies in
  ``[p10 / FACTOR - q, p90 * FACTOR + q]`` of the reference's runs that reached it,
  where ``q`` is the evaluation interval (steps-to-target is only known to within one
  interval) -- neither suspiciously faster nor slower than the reference's spread;
* reliability: the number of fresh seeds that never reach the target is not
  improbably high for the reference's never-reached rate: a one-sided binomial test
  at ``ALPHA``, with the rate Laplace-smoothed ``(never + 1) / (n + 2)`` so that a
  reference where every seed converged still allows an occasional miss.

A fresh run being checked is capped at ``p_max * FACTOR + q`` steps (``p_max``: the
reference's slowest steps-to-target; never beyond the documented length): a run
that has not reached the target by then is slower than the reference allows and
counts as never reaching it.
"""

from __future__ import annotations

import math
import statistics
from typing import List, Optional, Sequence

from torchloops.support.console import progress_bar
from torchloops.measurement.runner import configure, run

FACTOR = 1.25  # the reference band's widening (and the fresh runs' step cap) for the speed check
ALPHA = 0.01  # one-sided level of the never-reached (reliability) check


def converge_record(result) -> dict:
    """The part of a run's record a convergence distribution keeps (one seed)."""
    history = result.history
    values = [h["metric_value"] for h in history if math.isfinite(h["metric_value"])]
    best = (max(values) if result.higher_is_better else min(values)) if values else None
    return {
        "seed": result.seed,
        "reached": result.reached_target,
        "steps_to_target": result.steps_to_target,
        "steps": result.steps,
        "metric_value": result.metric_value,
        "best_metric_value": best,
        "dead_classes": result.dead_classes,
        "diverged": result.diverged,
        "time_to_target_s": result.time_to_target_s,
        "step_time_median_s": result.step_time_median_s,
    }


def converge_runs(workload: str, seeds: Sequence[int], *, style: str = "raw", device: str = "cpu",
                  lr: Optional[float] = None, threads: int = 1, steps: Optional[int] = None,
                  quiet: bool = True) -> List[dict]:
    """Train ``workload`` once per seed until its target (capped at ``steps`` or the documented length)."""
    configs = [configure(workload, style, device, s, lr=lr, threads=threads, steps=steps, until_target=True)
               for s in seeds]  # every input checked before anything trains
    bar = progress_bar(quiet, f"converge {workload}/{style}", len(configs), unit="seed")
    out = []
    try:
        for config in configs:
            out.append(converge_record(run(config)))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(runs: Sequence[dict]) -> dict:
    reached = [r["steps_to_target"] for r in runs if r["reached"]]
    summary = {
        "n": len(runs),
        "reached": len(reached),
        "never_reached": len(runs) - len(reached),
        "never_reached_seeds": [r["seed"] for r in runs if not r["reached"]],
        "dead_class_seeds": [r["seed"] for r in runs if r.get("dead_classes")],
    }
    if reached:
        summary.update(
            min=min(reached), p10=_percentile(reached, 10), median=_percentile(reached, 50),
            p90=_percentile(reached, 90), max=max(reached),
        )
    return summary


def eval_interval(workload: str) -> int:
    """The steps between evaluations: the quantum of a steps-to-target."""
    config = configure(workload, "raw", "cpu", 0, steps=1)
    return config.workload.eval_every or config.steps_per_epoch


def check_cap(reference: dict) -> int:
    """The step cap of a fresh run being checked: beyond it, it is slower than the reference allows."""
    s = reference["summary"]
    return min(reference["max_steps"], math.ceil(s["max"] * FACTOR + reference["eval_every"]))


def _binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def check_consistency(reference: dict, fresh: Sequence[dict], factor: float = FACTOR,
                      alpha: float = ALPHA) -> dict:
    """Whether fresh seeds' steps-to-target agree with a reference distribution (see the module doc).

    Returns ``{"ok": bool, "speed_ok", "reliability_ok", "lines": [...], ...}``.
    """
    s = reference["summary"]
    q = reference["eval_every"]
    low = s["p10"] / factor - q
    high = s["p90"] * factor + q
    reached = [r["steps_to_target"] for r in fresh if r["reached"]]
    never = len(fresh) - len(reached)
    median = statistics.median(reached) if reached else None
    speed_ok = median is not None and low <= median <= high
    rate = (s["never_reached"] + 1) / (s["n"] + 2)
    p_value = _binomial_tail(never, len(fresh), rate)
    reliability_ok = p_value >= alpha
    lines = [
        f"reference: {s['n']} seeds, {s['never_reached']} never reach the target; steps-to-target "
        f"p10 {s['p10']:g}, median {s['median']:g}, p90 {s['p90']:g} (eval every {q} steps)",
        f"speed: fresh median {median if median is not None else 'n/a'} over {len(reached)} reached "
        f"of {len(fresh)}; allowed [{low:g}, {high:g}] = [p10/{factor:g} - {q}, p90*{factor:g} + {q}]: "
        + ("ok" if speed_ok else ("FAIL (faster)" if median is not None and median < low else "FAIL (slower)")),
        f"reliability: {never} of {len(fresh)} never reach it; P(>= {never} | rate {rate:.3f}) = "
        f"{p_value:.3g} {'>=' if reliability_ok else '<'} {alpha:g}: " + ("ok" if reliability_ok else "FAIL"),
    ]
    return {"ok": speed_ok and reliability_ok, "speed_ok": speed_ok, "reliability_ok": reliability_ok,
            "median": median, "band": [low, high], "never_reached": never, "p_value": p_value, "lines": lines}
