"""The base of the training benchmarks (scikit-learn's asv_benchmarks style).

Every parameter grid is read from the registries when asv imports the suite, so
a new workload, style or placement appears here without touching this folder.
A configuration that cannot run here is skipped by ``setup`` raising
``NotImplementedError`` with the reason (asv shows it as skipped, never failed).
The preparation itself lives in :mod:`workloads.benchmarking`, shared with the
pytest-benchmark front-end.
"""

import workloads
from workloads import benchmarking

WORKLOADS = workloads.WORKLOADS.names()
STYLES = workloads.STYLES.names()
PLACEMENTS = workloads.PLACEMENTS.names()

GRID = [WORKLOADS, STYLES, PLACEMENTS]

# asv's forkserver imports this module once and forks every benchmark process from it:
# the lazy imports paid here are not paid again in each setup.
benchmarking.preload()
GRID_NAMES = ["workload", "style", "placement"]


def skip_unavailable(make, *args, **kwargs):
    """Call ``make``; an unavailable placement (or a scale that does not apply) becomes an asv skip."""
    try:
        return make(*args, **kwargs)
    except (workloads.Unavailable, workloads.UsageError) as why:
        raise NotImplementedError(str(why)) from None


class Benchmark:
    """Timing policy shared by every training benchmark.

    Each timed call trains the model (it mutates state), so ``number = 1`` and asv
    re-runs ``setup`` (rebuild + fixed warm-up) before every call; asv's own
    time-based warm-up is off because the warm-up is a fixed number of steps.
    ``repeat``: (min samples, max samples, max seconds) per round, chosen from the
    noise study in the README.  Threads: ``benchmarking.THREADS`` (1) everywhere.
    """

    number = 1
    warmup_time = 0.0
    repeat = (10, 50, 5.0)
    rounds = 2
    timeout = 300.0
