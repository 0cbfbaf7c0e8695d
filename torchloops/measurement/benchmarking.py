"""What both benchmark front-ends share: prepare a run for timing, time it honestly.

asv (``benchmarks/``) and pytest-benchmark (``tests/test_bench_*.py``) are thin
layers over this module.  Both read the registries, so a new workload, style or
placement appears in both without touching either.

Definitions (the same in both front-ends):

* **threads** -- every benchmark runs with ``torch.set_num_threads(THREADS)``
  (one intra-op thread), set by :func:`pin_threads` and passed to the runner.
* **one step** -- ask the batcher for the next batch, one optimizer step, then
  ``placement.sync()``: what the runner times per step.  Batches come from an
  endless cycle over the run's batch plan, so the DataLoader style pays for its
  iterator at each epoch boundary, as in a run.
* **one epoch** -- every batch of the next epoch of the plan, one step each, one
  sync at the end.  The scaling benchmarks define an epoch as one pass over the
  rows (the classification workload documents 1000 full-batch steps an epoch).
* **steady state** -- :func:`prepare` builds the trainer and batcher on the
  device (untimed) and runs ``WARMUP_STEPS`` steps before anything is timed.
* **a full run** -- :func:`quality_run` is ``torchloops.run`` over the documented
  schedule, capped at ``QUALITY_STEPS`` optimizer steps so that the whole suite
  fits in minutes (the classification dataloader run alone is ~6 minutes
  uncapped on a 2-core machine); the cap is above every workload's median
  steps-to-target (at most 2,737 steps, mlp_adam).  :func:`run_to_target` stops
  at the workload's quality target, within the same cap.
* **seed** -- one typical seed per workload (:func:`torchloops.support.references.typical_seed`, the shipped reference's median seed), for every
  benchmark, so that steps-to-target is representative.
* **skips** -- a placement that cannot run here raises
  :class:`torchloops.Unavailable` with the reason; the front-ends turn it into an
  asv skip (``NotImplementedError``) or a pytest skip.  Never an error.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import nn

from torchloops.core import data as _data
from torchloops.execution.placements import PLACEMENTS
from torchloops.support.references import typical_seed
from torchloops.core.registry import WORKLOADS, UsageError
from torchloops.measurement.runner import RunConfig, RunResult, Unavailable, build, configure, evaluate, run
from torchloops.execution.styles import STYLES

THREADS = 1  # torch.set_num_threads for every benchmark, in both front-ends
WARMUP_STEPS = 5  # steps run after the build and before timing (steady state)
TIMING_EPOCHS = 2  # epochs of batch plan a timing build holds (cycled): warm-up, then timed epochs
QUALITY_STEPS = 4000  # cap on the optimizer steps of a quality / time-to-target run
PEAKMEM_STEPS = 200  # length of the training run whose peak memory is measured

# Workloads whose cost is scanned over rows, batch size and hidden width: the
# classification MLP and the "from raw" MLPs (two Linear layers around one hidden layer).
SCALING_ROWS = (1_000, 10_000, 100_000)  # training rows
SCALING_BATCH_SIZES = (16, 128, 800)  # 800 = the documented training set (full batch)
SCALING_HIDDEN = (16, 128, 1024)

# The fields of the result record that describe quality (pytest-benchmark extra_info).
QUALITY_FIELDS = (
    "steps",
    "epochs",
    "final_train_loss",
    "test_loss",
    "metric",
    "metric_value",
    "target",
    "higher_is_better",
    "reached_target",
    "steps_to_target",
    "time_to_target_s",
    "step_time_median_s",
    "diverged",
)

__all__ = [
    "PEAKMEM_STEPS",
    "QUALITY_FIELDS",
    "QUALITY_STEPS",
    "SCALING_BATCH_SIZES",
    "SCALING_HIDDEN",
    "SCALING_ROWS",
    "THREADS",
    "WARMUP_STEPS",
    "Diverged",
    "Prepared",
    "Unavailable",
    "check_finite",
    "error_value",
    "gpu_config",
    "grid",
    "peak_gpu_memory",
    "pin_threads",
    "preload",
    "prepare",
    "prepare_scaled",
    "quality_fields",
    "quality_record",
    "quality_records",
    "quality_run",
    "run_to_target",
    "scaled_config",
    "smoke_target_config",
    "scaling_workloads",
    "seed_for",
    "target_config",
    "training_run",
]


def pin_threads() -> None:
    """One intra-op thread, the same for every benchmark."""
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)


def preload() -> None:
    """Pay the one-off lazy imports once, in the process that forks the benchmark processes.

    The first ``torch.optim`` optimizer imports ``torch._dynamo`` (1-4 s here), and
    sklearn's dataset generators load on first use: under asv's forkserver every
    benchmark process would pay them again inside ``setup``.
    """
    import sklearn.datasets  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import sklearn.preprocessing  # noqa: F401

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.1)


def grid() -> List[Tuple[str, str, str]]:
    """Every workload x style x placement of the registries, in registration order."""
    return list(itertools.product(WORKLOADS.names(), STYLES.names(), PLACEMENTS.names()))


def seed_for(workload: str) -> int:
    """The workload's typical seed: its shipped reference's median seed (seed 0 is not typical
    everywhere: mlp_sgd seed 0 plateaus at test MSE 0.24 > 0.2)."""
    return typical_seed(workload)


def scaling_workloads() -> List[str]:
    """The workloads the scaling benchmarks take (``Workload.scales``: the two-layer MLPs)."""
    return [name for name, wl in WORKLOADS.entries.items() if wl.scales]


# ---------------------------------------------------------------------------------------
# configuration (memoised: the sklearn data is generated once per process and never mutated)

_CONFIGS: dict = {}


def _configure(workload: str, style: str, placement: str, **overrides) -> RunConfig:
    key = (workload, style, placement, tuple(sorted(overrides.items())))
    if key not in _CONFIGS:
        _CONFIGS[key] = configure(workload, style, placement, seed_for(workload), threads=THREADS, **overrides)
    return _CONFIGS[key]


# ---------------------------------------------------------------------------------------
# timing: one step, one epoch


class Diverged(RuntimeError):
    """The run's training loss went NaN or infinite: it has no time to report."""


def check_finite(result: RunResult) -> RunResult:
    """``result``, or :class:`Diverged` when the run diverged (a benchmark never times a diverged run)."""
    if result.diverged:
        raise Diverged(
            f"{result.workload}/{result.style}/{result.device}: diverged at step {result.diverged_at_step} "
            f"(NaN or infinite training loss, lr {result.lr:g}); no time is reported"
        )
    return result


class Prepared:
    """A trainer and batcher built on the device and warmed up, ready to be timed.

    ``step()`` and ``epoch()`` end with the device synchronised, so a timer
    read straight after them is honest.  Each call mutates the model (it trains):
    asv rebuilds it in ``setup`` before every timed call.
    """

    def __init__(self, config: RunConfig):
        self.config = config
        self.trainer, self.batcher, self.plan, self.split = build(config)
        self.sync: Callable[[], None] = config.placement.sync
        self._epoch_ids = itertools.cycle(range(len(self.plan)))
        self._batches: Iterator = iter(())

    def next_batch(self):
        """The next batch of the plan, cycling over its epochs (untimed when called alone)."""
        while True:
            try:
                return next(self._batches)
            except StopIteration:
                self._batches = self.batcher.epoch(next(self._epoch_ids))

    def step(self) -> None:
        batch = self.next_batch()
        self.trainer.step(*batch)
        self.sync()

    def epoch(self) -> None:
        step = self.trainer.step
        for batch in self.batcher.epoch(next(self._epoch_ids)):
            step(*batch)
        self.sync()
        self._batches = iter(())  # the next step() starts the following epoch

    def warm_up(self, steps: int) -> "Prepared":
        """``steps`` steps, each loss checked (untimed): a run that diverges is never timed.

        On ``cuda_graph`` the warm-up goes on until every batch shape of the plan has been
        captured (a short last batch is met once an epoch), so no timed call pays for a capture."""
        for index in range(steps):
            self._checked_step(index)
        graphs = getattr(self.trainer, "graphs", None)
        if graphs is not None:
            shapes = {_data.entry_size(e) for epoch in self.plan for e in epoch}
            limit = (self.trainer.warmup + 2) * sum(len(epoch) for epoch in self.plan)
            while len(graphs) < len(shapes) and steps < limit:
                self._checked_step(steps)
                steps += 1
        return self

    def _checked_step(self, index: int) -> None:
        loss = self.trainer.step(*self.next_batch())
        self.sync()
        if not bool(torch.isfinite(loss).all()):
            c = self.config
            raise Diverged(f"{c.workload.name}/{c.style.name}/{c.placement.name}: diverged at warm-up "
                           f"step {index + 1} (NaN or infinite training loss); nothing is timed")

    def check(self) -> None:
        """After timing: :class:`Diverged` if the model's training loss is no longer finite."""
        if not math.isfinite(self.quality()["train_loss"]):
            c = self.config
            raise Diverged(f"{c.workload.name}/{c.style.name}/{c.placement.name}: diverged during the timed "
                           "steps (NaN or infinite training loss); the time is not a result")

    @property
    def steps_per_epoch(self) -> int:
        return len(self.plan[0])

    def info(self) -> dict:
        """What was timed (pytest-benchmark extra_info, asv logs)."""
        c = self.config
        return {
            "workload": c.workload.name,
            "style": c.style.name,
            "device": c.placement.name,
            "threads": c.threads,
            "dtype": str(c.workload.dtype).replace("torch.", ""),
            "rows": self.split.n_train,
            "batch_size": c.batch_size,
            "steps_per_epoch": self.steps_per_epoch,
            "warmup_steps": WARMUP_STEPS,
            "torch_version": torch.__version__,
        }

    def quality(self) -> dict:
        """Test loss and metric of the model as it is now (after the timed steps)."""
        with torch.no_grad():
            result = evaluate(self.trainer, self.config.workload, self.split)
        result.pop("outputs")
        return result


def prepare(workload: str, style: str, placement: str, *, warmup_steps: int = WARMUP_STEPS) -> Prepared:
    """Build ``workload`` in ``style`` on ``placement`` (documented defaults), warmed up.

    Raises :class:`Unavailable` when the placement cannot run here.
    """
    pin_threads()
    config = _configure(workload, style, placement, epochs=_timing_epochs(workload))
    return Prepared(config).warm_up(warmup_steps)


def _timing_epochs(workload: str) -> int:
    # Enough plan for the warm-up and the timed epochs (cycled), without building the
    # index lists of a whole documented run (the dataloader batcher materialises them).
    return min(TIMING_EPOCHS, WORKLOADS.get(workload).epochs)


# ---------------------------------------------------------------------------------------
# scaling variants: more rows, another batch size, another hidden width


def _tile_rows(split: _data.Split, rows: int) -> _data.Split:
    """``rows`` training rows: the documented rows repeated (cost, not quality, scales)."""
    index = torch.arange(rows) % split.n_train
    return dataclasses.replace(split, X_train=split.X_train[index], y_train=split.y_train[index])


def _widen(model: nn.Module, width: int) -> nn.Module:
    """Give a two-layer MLP (exactly two ``nn.Linear``) a hidden layer of ``width`` units."""
    linears = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    if len(linears) != 2:
        raise UsageError(f"hidden width applies to two-layer MLPs; this model has {len(linears)} Linear layers")
    (p1, n1, first), (p2, n2, second) = linears
    setattr(p1, n1, nn.Linear(first.in_features, width, bias=first.bias is not None))
    setattr(p2, n2, nn.Linear(width, second.out_features, bias=second.bias is not None))
    return model


def _with_hidden(workload, width: int):
    return dataclasses.replace(
        workload,
        build_module=lambda: _widen(workload.build_module(), width),
        build_sequential=lambda: _widen(workload.build_sequential(), width),
    )


def scaled_config(
    workload: str,
    style: str = "module",
    placement: str = "cpu",
    *,
    rows: Optional[int] = None,
    batch_size: Optional[int] = None,
    hidden: Optional[int] = None,
    epochs: int = TIMING_EPOCHS,
) -> RunConfig:
    """The documented configuration with more rows, another batch size or hidden width.

    An epoch here is one pass over the training rows.
    """
    base = _configure(workload, style, placement, epochs=1)
    wl, split = base.workload, base.data()
    if rows is not None:
        split = _tile_rows(split, rows)
        wl = dataclasses.replace(wl, n_train=split.n_train)
    if hidden is not None:
        wl = _with_hidden(wl, hidden)
    size = base.batch_size if batch_size is None else batch_size
    if size is not None and size > split.n_train:
        raise UsageError(f"batch size {size} is larger than the {split.n_train} training rows")
    per_epoch = _data.steps_per_epoch(split.n_train, size, None)
    return dataclasses.replace(
        base,
        workload=wl,
        split=split,
        batch_size=size,
        epochs=epochs,
        steps_per_epoch=per_epoch,
        total_steps=epochs * per_epoch,
        eval_every=per_epoch,
    )


def prepare_scaled(workload: str, *, warmup_steps: int = WARMUP_STEPS, **scale) -> Prepared:
    """:func:`prepare` for a :func:`scaled_config` (style ``module`` on the CPU unless given)."""
    pin_threads()
    return Prepared(scaled_config(workload, **scale)).warm_up(warmup_steps)


# ---------------------------------------------------------------------------------------
# whole runs: quality, time to target, memory


def _has_target(config: RunConfig) -> bool:
    return math.isfinite(config.workload.target)


def training_run(workload: str, style: str, placement: str, steps: int) -> RunResult:
    """A run through the runner of at most ``steps`` optimizer steps."""
    pin_threads()
    config = _configure(workload, style, placement, steps=steps)
    return check_finite(run(config))


def quality_run(workload: str, style: str, placement: str, steps: int = QUALITY_STEPS) -> RunResult:
    """The documented schedule (capped at ``steps``): its final test loss, metric, steps to target."""
    return training_run(workload, style, placement, steps)


def target_config(workload: str, style: str, placement: str, steps: int = QUALITY_STEPS) -> RunConfig:
    """The configuration of a run to the target; :class:`Unavailable` when there is none to reach."""
    config = _configure(workload, style, placement, steps=steps, until_target=True)
    if not _has_target(config):
        raise Unavailable(f"{workload} has no quality target registered yet (target={config.workload.target})")
    return config


def smoke_target_config(workload: str, style: str, placement: str, steps: int) -> RunConfig:
    """A short run that stops at the target if it gets there (smoke tests; any target, even none)."""
    return _configure(workload, style, placement, steps=steps, until_target=True)


def run_to_target(config: RunConfig) -> RunResult:
    """Train until the quality target (or the step cap); raise if it is not reached."""
    pin_threads()
    result = check_finite(run(config))
    if not result.reached_target:
        raise RuntimeError(
            f"{result.workload}/{result.style}/{result.device}: {result.metric} target {result.target:g} "
            f"not reached in {result.steps} steps (last {result.metric_value:.4g})"
        )
    return result


def error_value(result) -> float:
    """The quality metric as a lower-is-better number: 1 - accuracy, or the loss-like metric itself."""
    record = result if isinstance(result, dict) else result.to_dict()
    value = record["metric_value"]
    return 1.0 - value if record["higher_is_better"] else value


def quality_fields(result) -> dict:
    record = result if isinstance(result, dict) else result.to_dict()
    fields = {name: record[name] for name in QUALITY_FIELDS}
    fields["error"] = error_value(record)
    return fields


def quality_record(workload: str, style: str, placement: str, steps: Optional[int] = None):
    """:func:`quality_run` as a plain dict (no per-evaluation history), or the reason it cannot run here."""
    try:
        result = quality_run(workload, style, placement, steps=QUALITY_STEPS if steps is None else steps)
    except Unavailable as why:
        return str(why)
    record = result.to_dict()
    for bulky in ("history", "step_losses", "confusion_matrix"):
        record.pop(bulky, None)
    return record


def quality_records(steps: Optional[int] = None) -> dict:
    """:func:`quality_record` of every configuration of :func:`grid`: ``{(workload, style, placement): record}``."""
    return {key: quality_record(*key, steps=steps) for key in grid()}


def gpu_config(workload: str, style: str, placement: str, steps: int = PEAKMEM_STEPS) -> RunConfig:
    """The run whose GPU memory is tracked; :class:`Unavailable` off CUDA or where it cannot run."""
    if PLACEMENTS.get(placement).device().type != "cuda":  # ddp: its backend's device, asked now
        raise Unavailable(f"placement {placement} runs on the CPU: no GPU memory to track")
    return _configure(workload, style, placement, steps=steps)


def peak_gpu_memory(workload: str, style: str, placement: str, steps: int = PEAKMEM_STEPS) -> int:
    """A short training run's ``peak_gpu_memory_bytes`` (CUDA placements only): what the build
    allocated on the placement's first GPU plus the most its steps allocated on top, evaluations
    excluded (:class:`torchloops.measurement.runner.Session`)."""
    gpu_config(workload, style, placement, steps)  # Unavailable before touching CUDA
    return int(training_run(workload, style, placement, steps).peak_gpu_memory_bytes)
