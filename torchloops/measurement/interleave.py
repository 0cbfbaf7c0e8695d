"""Several configurations timed in one process, alternating in short blocks.

On a shared or throttled machine the speed of the same step drifts between phases that last
seconds (measured on the 2-core development machine: block medians of one configuration
flipping between ~650 us and ~1000 us).  A configuration timed in one contiguous window
catches one phase or the other, and the difference is then reported as a property of the
configuration.  So every command that compares configurations runs them round-robin: in
each round, every configuration that is not finished trains one block (its own model,
optimizer, batch position and clock: :class:`torchloops.measurement.runner.Session`), the order rotated
from round to round.  Each configuration's trajectory is exactly the one it has alone;
what changes is that all of them see the same machine phases.

What interleaving costs is kept off the samples: a block starts with
``runner.BLOCK_WARMUP_STEPS`` steps timed apart (the run's own next steps, on the caches
the other configurations left), then ``block_steps`` timed steps whose mean is the block's
sample.

A configuration's ratio to the reference is then paired per round (its block's mean step
time over the reference's in the same round), summarised by the median of those ratios with
a bootstrap interval (:mod:`torchloops.support.stats`).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from torchloops.measurement.runner import BLOCK_STEPS, RunConfig, RunResult, Session, process_settings
from torchloops.support.stats import Estimate, paired_ratio, verdict


def _label(config: RunConfig) -> dict:
    return {"workload": config.workload.name, "style": config.style.name,
            "device": config.placement.name, "seed": config.seed}


def comparison(session: Session, reference: Session) -> Optional[dict]:
    """``session``'s step time over ``reference``'s, paired per round (None without common rounds)."""
    pairs = _pairs(session.block_rounds, session.block_times, reference.block_rounds, reference.block_times)
    if not pairs:
        return None
    estimate = paired_ratio(*zip(*pairs))
    return {"reference": _label(reference.config), "ratio": estimate.point, "interval": estimate.interval,
            "verdict": verdict(estimate), "rounds": estimate.samples}


def _pairs(rounds, times, base_rounds, base_times) -> list:
    base = dict(zip(base_rounds, base_times))
    return [(t, base[r]) for r, t in zip(rounds, times) if r in base]


def paired_records(records: Sequence[dict], references: Sequence[dict]) -> Optional[Estimate]:
    """The paired step-time ratio of run records over their references, pooled over the pairs
    ``(records[i], references[i])`` (each pair timed in the same interleaved group, e.g. one seed)."""
    pairs = []
    for record, base in zip(records, references):
        if record.get("block_rounds") is None or base.get("block_rounds") is None:
            continue
        pairs += _pairs(record["block_rounds"], record["step_time_blocks_s"],
                        base["block_rounds"], base["step_time_blocks_s"])
    return paired_ratio(*zip(*pairs)) if pairs else None


def run_interleaved(
    configs: Sequence[RunConfig],
    *,
    reference: Optional[int] = 0,
    block_steps: int = BLOCK_STEPS,
    progress: Optional[Sequence[Optional[Callable[[int, int], None]]]] = None,
    record_step_losses: bool = False,
    trainer_hooks: Optional[Sequence[Optional[Callable]]] = None,
) -> List[RunResult]:
    """Train ``configs`` to their ends, round-robin in blocks; their records, in order.

    ``reference``: the index of the configuration the others are compared with (None: no
    comparison).  ``progress[i]`` and ``trainer_hooks[i]`` are the per-configuration
    callbacks of :func:`torchloops.measurement.runner.run`.  All configurations must agree on threads and determinism (they are process-wide).
    """
    if not configs:
        return []
    settings = {(c.threads, c.deterministic) for c in configs}
    if len(settings) > 1:
        raise ValueError(f"interleaved configurations differ in threads/determinism: {sorted(settings)}")
    progress = list(progress) if progress is not None else [None] * len(configs)
    with process_settings(configs[0]):
        sessions = [Session(c, progress=p, record_step_losses=record_step_losses) for c, p in zip(configs, progress)]
        round_index = 0
        while not all(s.finished for s in sessions):
            start = round_index % len(sessions)
            for session in sessions[start:] + sessions[:start]:
                if not session.finished:
                    session.advance(block_steps, round_index)
            round_index += 1
        for session, hook in zip(sessions, trainer_hooks or []):
            if hook is not None:
                hook(session.trainer)
        base = sessions[reference] if reference is not None else None
        return [s.result(None if base is None or s is base else comparison(s, base)) for s in sessions]
