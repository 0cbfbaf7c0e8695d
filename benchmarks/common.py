"""The base of the training benchmarks (scikit-learn's asv_benchmarks style).

Every parameter grid is read from the registries when asv imports the suite, so
a new workload, style or placement appears here without touching this folder.
A configuration that cannot run here is skipped by ``setup`` raising
``NotImplementedError`` with the reason (asv shows it as skipped, never failed).
The preparation itself lives in :mod:`torchloops.measurement.benchmarking`, shared with the
pytest-benchmark front-end.

asv runs today's ``benchmarks/`` against every old commit's installed package, and the engine
moved from the package ``workloads`` to ``torchloops``: the engine is imported here once, under
whichever name the installed commit has (:func:`engine_module`), and every benchmark reaches it
through this module.
"""

import importlib


def engine_module(name: str = ""):
    """The engine (``name``: one of its modules by its old flat name, e.g. ``benchmarking``), from
    ``torchloops`` since the engine moved, from ``workloads`` in the commits before."""
    try:
        engine = importlib.import_module("torchloops")
    except ImportError:  # a commit before the move: the engine was the package `workloads`
        return importlib.import_module(f"workloads.{name}" if name else "workloads")
    if not name:
        return engine
    for floor in ("measurement", "support", "execution", "core"):
        try:
            return importlib.import_module(f"torchloops.{floor}.{name}")
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"no engine module {name!r}")


engine = engine_module()
benchmarking = engine_module("benchmarking")

WORKLOADS = engine.WORKLOADS.names()
STYLES = engine.STYLES.names()
PLACEMENTS = engine.PLACEMENTS.names()

GRID = [WORKLOADS, STYLES, PLACEMENTS]

# asv's forkserver imports this module once and forks every benchmark process from it:
# the lazy imports paid here are not paid again in each setup.
benchmarking.preload()
GRID_NAMES = ["workload", "style", "placement"]


def skip_unavailable(make, *args, **kwargs):
    """Call ``make``; an unavailable placement (or a scale that does not apply) becomes an asv skip."""
    try:
        return make(*args, **kwargs)
    except (engine.Unavailable, engine.UsageError) as why:
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
