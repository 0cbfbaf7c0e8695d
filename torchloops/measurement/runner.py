"""The loop every style shares: configuration checks, threads, timing, sync, evaluation, target.

``configure`` turns user input into a :class:`RunConfig` (or a one-line
:class:`UsageError`); ``run`` trains it and returns a :class:`RunResult`.

What is timed: each optimizer step, from asking the batcher for the batch to the
end of the update, with the device synchronised before the clock is read (the
DataLoader's per-epoch iterator creation counts towards the epoch's first step).
What is not: data generation, the batch plan, model construction and every
evaluation.  ``final_train_loss`` and ``test_loss`` are the criterion over the
whole training and test sets after the last step, so records from different styles
and placements are comparable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import statistics
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from sklearn import metrics as sk_metrics

from torchloops.core import validation
from torchloops.core.data import Split, WeightedBatches, batch_plan, seeds, steps_per_epoch
from torchloops.execution.placements import PLACEMENTS
from torchloops.core.registry import UsageError, Workload, get_workload
from torchloops.execution.styles import STYLES


MAX_STEPS = 10_000_000  # 200x the longest documented run (classification, 50,000 steps)
MAX_THREADS = 1024  # torch.set_num_threads far beyond this crashes the process (100,000: segfault)


class Unavailable(Exception):
    """The placement cannot run here, or does not apply to the style: skip, with this reason."""


@dataclass
class RunConfig:
    workload: Workload
    style: object
    placement: object
    seed: int
    epochs: int
    steps_per_epoch: int
    total_steps: int
    batch_size: Optional[int]  # None: full batch
    lr: float
    threads: int
    until_target: bool
    eval_every: int
    # The train/test split: None until first needed (configure only validates; data() makes it).
    # Several configurations may share one (dataclasses.replace(config, split=...)).
    split: Optional[Split] = field(default=None, repr=False, compare=False)
    deterministic: bool = False
    weight_decay: float = 0.0  # the optimizer's L2 penalty (--weight-decay; default the workload's, 0)

    @property
    def optimizer(self):
        return dataclasses.replace(self.workload.optimizer, lr=self.lr, weight_decay=self.weight_decay)

    def data(self) -> Split:
        """The run's data, generated from its seed on first use and kept."""
        if self.split is None:
            split = self.workload.make_data(self.seed)
            if split.n_train != self.workload.n_train:
                # a workload's own declaration is input too (a plug-in's file): one line, exit 2
                raise UsageError(f"{self.workload.name}: make_data gave {split.n_train} training rows, the "
                                 f"workload declares n_train={self.workload.n_train}; valid: n_train={split.n_train}")
            self.split = split
        return self.split


@dataclass
class RunResult:
    workload: str
    style: str
    device: str
    device_name: str
    seed: int
    threads: int
    torch_version: str
    world_size: int
    backend: Optional[str]
    dtype: str
    optimizer: str
    lr: float
    batch_size: Optional[int]
    steps: int
    epochs: float
    final_train_loss: float
    test_loss: float
    metric: str
    metric_value: float
    target: float
    higher_is_better: bool
    reached_target: bool
    steps_to_target: Optional[int]
    time_to_target_s: Optional[float]
    # The times on the clock are steps x the steady-state step time (docs/measurement.md, "What is
    # timed"): step_time_median_s is the median over blocks of each block's mean timed step.
    step_time_median_s: float
    train_time_s: float  # steps x step_time_median_s
    until_target: bool
    diverged: bool
    diverged_at_step: Optional[int] = None  # the first step whose training loss was NaN or infinite
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) during the run
    dead_classes: Optional[List[int]] = None
    confusion_matrix: Optional[List[List[int]]] = None
    history: List[dict] = field(default_factory=list)
    step_losses: Optional[List[float]] = None
    # CUDA: what the build allocated (data, model) + the most the steps allocated on top (optimizer
    # state, activations, gradients, graph pools), evaluations and other sessions excluded; None off CUDA
    peak_gpu_memory_bytes: Optional[int] = None
    graph_replays: Optional[int] = None  # cuda_graph: steps that were replays of a captured graph
    graph_captures: Optional[int] = None  # cuda_graph: graphs captured (one per batch shape)
    # Timing statistics (torchloops.support.stats): the 95 % interval of step_time_median_s (the bootstrap
    # of the median over blocks), and the mean timed step of each block (the samples of every
    # paired and two-sample ratio).  Each block is block_warmup_steps steps timed apart, then
    # block_steps timed steps.
    step_time_interval_s: Optional[List[float]] = None
    step_time_blocks_s: Optional[List[float]] = None
    block_steps: Optional[int] = None
    block_warmup_steps: Optional[int] = None
    warmup_step_time_median_s: Optional[float] = None  # the blocks' warm-up steps (not samples)
    time_to_target_interval_s: Optional[List[float]] = None  # steps_to_target x step_time_interval_s
    # The raw sums of every step's clock, warm-up steps and interleaving's cold caches included:
    # what the loop took inside this process, not a configuration's time (kept for honesty).
    train_time_sum_s: Optional[float] = None
    time_to_target_sum_s: Optional[float] = None
    block_rounds: Optional[List[int]] = None  # the interleaving round of each block (pairs blocks of a group)
    # Interleaved runs: the paired step-time ratio against the reference configuration
    # {"reference", "ratio", "interval", "verdict", "rounds"}; None for a run timed alone.
    comparison: Optional[dict] = None
    instructions_per_step: Optional[float] = None  # torchloops count (callgrind); None when not counted
    weight_decay: float = 0.0  # the optimizer's L2 penalty (torch.optim's weight_decay)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _checked(rule, name: str, value):
    """``value`` under its rule (:mod:`torchloops.core.validation`), or a UsageError naming the option."""
    try:
        return rule(value)
    except validation.Invalid as error:
        raise UsageError(f"--{name} {error}, got {_short(value)}") from None


def _positive_int(name: str, value) -> int:
    return _checked(validation.positive_int, name, value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def configure(
    workload: str,
    style: str = "module",
    device: str = "cpu",
    seed: int = 0,
    *,
    epochs: Optional[int] = None,
    steps: Optional[int] = None,
    lr: Optional[float] = None,
    batch_size: Optional[int] = None,
    threads: int = 1,
    until_target: bool = False,
    eval_every: Optional[int] = None,
    nproc: Optional[int] = None,
    deterministic: bool = False,
    weight_decay: Optional[float] = None,
) -> RunConfig:
    """Check every input and resolve the documented defaults; nothing is built (the data is made
    by :meth:`RunConfig.data`, the trainer by :func:`build`).

    Raises :class:`UsageError` for bad input and :class:`Unavailable` for a
    placement that cannot run this here.  ``nproc`` is for the process that
    launches ``ddp`` ranks: it checks the run as each of ``nproc`` ranks will
    configure it (a rank itself leaves it out and reads torchrun's world size).
    """
    wl, st, placement = get_workload(workload), STYLES.get(style), PLACEMENTS.get(device)
    _checked(validation.seed, "seed", seed)
    epochs = wl.epochs if epochs is None else _positive_int("epochs", epochs)
    lr = wl.optimizer.lr if lr is None else _checked(validation.positive_float, "lr", lr)
    weight_decay = (wl.optimizer.weight_decay if weight_decay is None
                    else _checked(validation.non_negative_float, "weight-decay", weight_decay))
    threads = _positive_int("threads", threads)
    if threads > MAX_THREADS:
        raise UsageError(f"--threads {_short(threads)} is more than {MAX_THREADS}; valid: 1 to {MAX_THREADS}")
    for name, value in (("steps", steps), ("eval-every", eval_every), ("nproc", nproc)):
        if value is not None:
            _positive_int(name, value)
    if deterministic:
        _cublas_workspace(placement)
    batch_size = _batch_size(wl, batch_size)
    _check_placement(wl, st, placement, batch_size, nproc)
    per_epoch = steps_per_epoch(wl.n_train, batch_size, wl.steps_per_epoch)
    total = epochs * per_epoch if steps is None else min(steps, epochs * per_epoch)
    if total > MAX_STEPS:
        raise UsageError(
            f"{wl.name}: {_short(epochs)} epoch(s) of {per_epoch} step(s) is {_short(total)} steps, more than {MAX_STEPS}; "
            "lower --epochs or cap with --steps"
        )
    return RunConfig(
        workload=wl, style=st, placement=placement, seed=seed, epochs=epochs, steps_per_epoch=per_epoch,
        total_steps=total, batch_size=batch_size, lr=lr, threads=threads, until_target=bool(until_target),
        eval_every=eval_every or wl.eval_every or per_epoch, deterministic=bool(deterministic),
        weight_decay=weight_decay,
    )


def _batch_size(wl: Workload, batch_size: Optional[int]) -> Optional[int]:
    """``--batch-size`` checked against the workload's training rows (None: its documented one)."""
    if batch_size is None:
        return wl.batch_size
    _positive_int("batch-size", batch_size)
    if batch_size > wl.n_train:
        raise UsageError(
            f"--batch-size {_short(batch_size)} is larger than {wl.name}'s {wl.n_train} training rows; "
            f"valid: 1 to {wl.n_train}"
        )
    return batch_size


def _check_placement(wl: Workload, st, placement, batch_size: Optional[int], nproc: Optional[int]) -> None:
    """Whether the workload declares what the style needs, the placement runs here and applies to
    the style, and (ddp) can shard every batch."""
    launching = nproc is not None
    if launching and not hasattr(placement, "launch_availability"):
        raise UsageError(f"--nproc starts ddp ranks; it does not apply to --device {placement.name}")
    available = placement.launch_availability(nproc) if launching else placement.availability()
    for check in (st.applies_to(wl), available, placement.applies_to(st, wl)):  # workload x style x placement
        if not check.ok:
            raise Unavailable(check.reason)
    world = nproc if launching else placement.world_size()
    if world > 1:
        _check_shardable(wl, wl.n_train, batch_size, world, launching)


CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")  # the values cuBLAS's reproducibility check accepts


def _cublas_workspace(placement) -> None:
    """``--deterministic`` needs cuBLAS's fixed workspace, which CUDA reads once, when its runtime
    initialises: set it in ``configure`` (before any build touches CUDA; ddp ranks inherit it),
    refuse a value cuBLAS would reject, and refuse when it is already too late for a run on CUDA.
    A run on the CPU never reaches cuBLAS: CUDA initialised by an earlier run (a test) is no
    reason to refuse it, and the variable is then left unset (set now it would satisfy torch's
    check, which reads it at each call, for a workspace cuBLAS already chose without it)."""
    value = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if value is not None and value not in CUBLAS_DETERMINISTIC:
        raise UsageError(f"--deterministic: CUBLAS_WORKSPACE_CONFIG={value!r} is not deterministic; "
                         f"valid: {' or '.join(CUBLAS_DETERMINISTIC)} (or unset)")
    if value is None:
        if torch.cuda.is_initialized():
            if placement.device().type != "cuda":  # ddp: the backend's device (nccl: CUDA)
                return
            raise UsageError("--deterministic: CUDA is already initialised in this process without "
                             "CUBLAS_WORKSPACE_CONFIG; set CUBLAS_WORKSPACE_CONFIG=:4096:8 before starting")
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]


def _check_shardable(wl: Workload, n_train: int, batch_size: Optional[int], world: int, launching: bool) -> None:
    """Every rank needs at least one row of every global batch (and, on CUDA, a GPU)."""
    from torchloops.execution.distributed import smallest_batch, use_cuda

    if launching and use_cuda() and world > torch.cuda.device_count():
        raise UsageError(
            f"--nproc {world}: ddp on CUDA runs one rank per GPU and {torch.cuda.device_count()} "
            f"are visible; valid: 1 to {torch.cuda.device_count()}"
        )
    smallest = smallest_batch(n_train, batch_size)
    if smallest < world:
        batch = "full batch" if batch_size is None else f"batch size {batch_size}"
        raise UsageError(
            f"{wl.name} with {batch} over {n_train} training rows has a batch of {smallest} row(s), "
            f"fewer than the {world} ranks: every rank needs at least one row of each batch"
        )


def initial_parameters(workload: Workload, seed: int) -> "OrderedDict[str, torch.Tensor]":
    """The one set of starting parameters every style copies, by ``build_module`` name."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds(seed).init)
        model = workload.build_module().to(workload.dtype)
        if workload.init is not None:
            workload.init(model)
    return OrderedDict((n, p.detach().clone()) for n, p in model.named_parameters())


@torch.no_grad()
def evaluate(trainer, workload: Workload, split: Split) -> dict:
    criterion = workload.criterion()
    out_train = trainer.predict(split.X_train)
    out_test = trainer.predict(split.X_test)
    return {
        "train_loss": criterion(out_train, split.y_train).item(),
        "test_loss": criterion(out_test, split.y_test).item(),
        "metric_value": workload.metric.fn(out_test, split.y_test),
        "outputs": (out_train, out_test),
    }


def _class_report(outputs, split: Split):
    """Confusion matrix on the test rows (rows = true labels) and the classes the model
    never predicts on any row, train or test (a dead logit under the ReLU)."""
    out_train, out_test = outputs
    n_classes = out_test.shape[1]
    labels = list(range(n_classes))
    y_pred = out_test.argmax(1).cpu().numpy()
    matrix = sk_metrics.confusion_matrix(split.y_test.cpu().numpy(), y_pred, labels=labels)
    predicted = set(y_pred.tolist()) | set(out_train.argmax(1).cpu().numpy().tolist())
    return matrix.tolist(), [c for c in labels if c not in predicted]


def build(config: RunConfig):
    """Trainer and batcher of a configured run, on its device (untimed)."""
    config.placement.setup()
    split = config.data().to(config.placement.device())
    params = initial_parameters(config.workload, config.seed)
    trainer = config.style.make_trainer(config.workload, params, config.placement, config.optimizer)
    plan = batch_plan(
        split.n_train,
        config.batch_size,
        config.workload.shuffle,
        config.epochs,
        config.steps_per_epoch,
        config.total_steps,
        config.seed,
    )
    rows, weights = config.placement.shard(plan)  # ddp: this rank's rows, each batch's share
    batcher = config.style.batcher(split, rows, trainer)
    if weights is not None:
        batcher = WeightedBatches(batcher, weights)
    return config.placement.wrap_trainer(trainer), batcher, plan, split  # cuda_graph: captured and replayed


def _set_deterministic(on: bool) -> Callable[[], None]:
    """``--deterministic``: deterministic algorithms (error on a nondeterministic op), cuDNN
    deterministic and not benchmarking, cuBLAS's fixed workspace; returns the undo."""
    if not on:
        return lambda: None
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False

    def restore() -> None:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]

    return restore


# The timing unit.  Each block is BLOCK_WARMUP_STEPS steps, then BLOCK_STEPS steps whose mean is
# one timing sample.  The warm-up steps are the run's own next steps (the trajectory is the same
# whatever the blocks), timed apart: after a switch to another interleaved configuration the first
# steps run on caches the others evicted (docs/measurement.md, "Interleaving without its bias").
BLOCK_STEPS = 10
BLOCK_WARMUP_STEPS = 2
# An evaluation (off the clock: the whole training and test sets through the model) leaves the
# caches to the evaluation: the step after it is timed apart too, as after a switch.
EVALUATION_WARMUP_STEPS = 1


class Session:
    """One configured run, trained a block of steps at a time.

    :func:`run` drives one session to its end; :func:`torchloops.measurement.interleave.run_interleaved`
    alternates several, so that every configuration sees the same machine phases.  A session
    keeps its own model, optimizer, batch position and clock, so its trajectory does not
    depend on what runs between its blocks.  Threads and determinism are the caller's (they
    are process-wide): see :func:`process_settings`.

    Between two steps the session does only what it must: read the clock, keep the loss as a
    Python float (``.item()``, after the sync) and test it with :func:`math.isfinite`.  Anything
    heavier (an evaluation, the statistics) happens off the clock and only every ``eval_every``
    steps or at a block's end.
    """

    def __init__(self, config: RunConfig, *, progress=None, record_step_losses: bool = False):
        self.config, self.progress, self.record_step_losses = config, progress, record_step_losses
        before = config.placement.memory_allocated_bytes()
        self.trainer, self.batcher, self.plan, self.split = build(config)
        self.step_times: List[float] = []  # every timed step, warm-up steps included (the raw sum)
        self.block_times: List[float] = []  # mean step time of each block's timed steps (the samples)
        self.block_rounds: List[int] = []  # the interleaving round each block ran in
        self.warmup_times: List[float] = []  # block warm-ups and cuda_graph set-up steps, timed apart
        self.losses: List[float] = []
        self.history: List[dict] = []
        self.step, self.elapsed = 0, 0.0
        self.steps_to_target = self.elapsed_to_target = None
        self.diverged, self.diverged_at_step = False, None
        self.last = None
        self.finished = False
        self._epoch, self._batches = 0, None
        self._cold = 0  # steps still to be timed apart (after a block's start or an evaluation)
        self._graphed = hasattr(self.trainer, "setup_step")  # cuda_graph flags its set-up steps
        self._distributed = config.placement.world_size() > 1
        config.placement.sync()  # the data and model copies to the device are not the first step's time
        # GPU memory: what this configuration holds (data, model: allocated by its build) plus the
        # most its steps allocate on top of what was allocated when they started (optimizer state,
        # activations, gradients, graph pools).  Measured around the steps only, so neither the
        # evaluations nor the other interleaved configurations on the same device count.
        after = config.placement.memory_allocated_bytes()
        self.resident_memory = None if after is None else after - before
        self.step_memory: Optional[int] = None
        self._memory_base: Optional[int] = None

    def advance(self, steps: int = BLOCK_STEPS, round_index: Optional[int] = None,
                warmup: int = BLOCK_WARMUP_STEPS) -> int:
        """Train one block: ``warmup`` steps timed apart, then ``steps`` timed steps (fewer at the
        end, or when an evaluation stops the run; the step after an evaluation, and cuda_graph's
        set-up steps, are timed apart too).  Returns the steps trained."""
        self._mark_memory()
        timed: List[float] = []
        trained, self._cold = 0, warmup
        collector = _Collector()
        try:
            while len(timed) < steps and not self.finished:
                collector.pause(not self._cold)
                step = self._timed_step()
                if step is None:
                    self.finished = True
                    break
                one_off = self._graphed and self.trainer.setup_step  # cuda_graph: a warm-up or a capture
                (self.warmup_times if self._cold or one_off else timed).append(step[0])
                self._cold = max(0, self._cold - 1)
                trained += 1
                self.finished = self._after_step(*step)
        finally:
            collector.pause(False)
        if timed:
            self.block_times.append(math.fsum(timed) / len(timed))
            self.block_rounds.append(len(self.block_rounds) if round_index is None else round_index)
        self._read_memory()
        return trained

    def _mark_memory(self) -> None:
        """Start counting the steps' own allocations (CUDA placements; nothing elsewhere)."""
        placement = self.config.placement
        placement.reset_peak_memory()  # after build: CUDA is initialised by then
        self._memory_base = placement.memory_allocated_bytes()

    def _read_memory(self) -> None:
        """The most the steps allocated since :meth:`_mark_memory`, kept if it is the largest."""
        peak = self.config.placement.peak_memory_bytes()
        if peak is not None and self._memory_base is not None:
            self.step_memory = max(peak - self._memory_base, self.step_memory or 0)

    @property
    def peak_memory(self) -> Optional[int]:
        if self.resident_memory is None:
            return None
        return self.resident_memory + (self.step_memory or 0)

    def _timed_step(self):
        """(seconds, loss as a float) of the next step of the plan, or None when the plan is done."""
        clock = time.perf_counter()
        while True:
            if self._batches is None:
                if self._epoch >= len(self.plan):
                    return None
                clock = time.perf_counter()  # the DataLoader's iterator counts towards the epoch's first step
                self._batches = iter(self.batcher.epoch(self._epoch))
            batch = next(self._batches, None)
            if batch is not None:
                break
            self._batches, self._epoch = None, self._epoch + 1
        try:
            loss = self.trainer.step(*batch)
        except RuntimeError as error:
            # e.g. Adam's lr / bias correction beyond float32: the update itself
            # overflows before any loss is non-finite.  That is divergence too.
            if "overflow" not in str(error):
                raise
            loss = None
        self.config.placement.sync()
        took = time.perf_counter() - clock
        return took, (math.inf if loss is None else loss.item())

    def _after_step(self, took: float, loss: float) -> bool:
        """Book the step; divergence, evaluation and target outside the timed region.  True: stop."""
        config, wl, placement = self.config, self.config.workload, self.config.placement
        self.step_times.append(took)
        self.elapsed += took
        self.losses.append(loss)
        self.step += 1
        bad = not math.isfinite(loss)
        if self._distributed:
            bad = placement.agree(bad)  # ddp ranks agree, so that all stop together
        if bad and self.diverged_at_step is None:
            self.diverged, self.diverged_at_step = True, self.step
        if not bad and self.step % config.eval_every and self.step != config.total_steps:
            return False
        self._read_memory()  # the evaluation's activations are not the steps' memory
        last = self.last = evaluate(self.trainer, wl, self.split)
        self._mark_memory()
        self._cold = max(self._cold, EVALUATION_WARMUP_STEPS)
        self.history.append({"step": self.step, "epoch": self.step / config.steps_per_epoch,
                             "train_loss": last["train_loss"], "test_loss": last["test_loss"],
                             "metric_value": last["metric_value"]})
        if self.progress is not None:
            self.progress(self.step, config.total_steps)
        if not math.isfinite(last["train_loss"]) and self.diverged_at_step is None:
            self.diverged, self.diverged_at_step = True, self.step
        if not self.diverged and self.steps_to_target is None and wl.metric.reached(last["metric_value"], wl.target):
            self.steps_to_target, self.elapsed_to_target = self.step, self.elapsed
        # ddp: every rank evaluates its identical replica; all of them stop together
        stop = placement.agree(self.diverged or (config.until_target and self.steps_to_target is not None))
        return stop or self.step >= config.total_steps

    def step_time(self) -> "Estimate":
        """The steady-state step time: the median over blocks of each block's mean timed step,
        with its bootstrap interval.  A run too short for one timed step falls back on its
        warm-up steps (every step it has)."""
        from torchloops.support.stats import median_interval

        return median_interval(self.block_times or self.step_times)

    def result(self, comparison: Optional[dict] = None) -> RunResult:
        return _record(self, comparison)


class _Collector:
    """Python's cyclic garbage collector off during the steps that are timing samples, as
    ``timeit`` and ``torch.utils.benchmark.Timer`` have it off during their timed loops.  A full
    collection costs what the whole process holds (here: every interleaved configuration, torch,
    scikit-learn), not what the step does, and lands on whichever step allocates past the
    threshold: the collections run in the steps timed apart and the evaluations instead
    (docs/measurement.md, "Garbage collection").  Switched only when the wanted state changes
    (twice a block, and around an evaluation's cold step), never left off; a collector the
    caller turned off stays off."""

    def __init__(self):
        self.enabled, self.paused = gc.isenabled(), False

    def pause(self, wanted: bool) -> None:
        wanted = wanted and self.enabled
        if wanted != self.paused:
            (gc.disable if wanted else gc.enable)()
            self.paused = wanted


def _scaled(estimate: "Estimate", steps: Optional[int]):
    """``steps`` × the step time and its interval (None without steps)."""
    if steps is None:
        return None, None
    interval = None if estimate.interval is None else [steps * v for v in estimate.interval]
    return steps * estimate.point, interval


def _record(session: Session, comparison: Optional[dict]) -> RunResult:
    """The run record of a finished session: every time on the clock is steps × the step time."""
    config, wl, placement = session.config, session.config.workload, session.config.placement
    last = session.last
    matrix = dead = None
    if wl.metric.is_classification:
        matrix, dead = _class_report(last["outputs"], session.split)
    step_losses = None
    if session.record_step_losses:
        losses = torch.tensor(session.losses, dtype=wl.dtype, device=placement.device())
        step_losses = placement.reduce_step_losses(losses).double().cpu().tolist()
    step_time = session.step_time()
    history = [dict(h, time_s=h["step"] * step_time.point) for h in session.history]
    time_to_target, target_interval = _scaled(step_time, session.steps_to_target)
    return RunResult(
        workload=wl.name, style=config.style.name, device=placement.name, device_name=placement.device_name(),
        seed=config.seed, threads=config.threads, torch_version=torch.__version__,
        world_size=placement.world_size(), backend=placement.backend(),
        dtype=str(wl.dtype).replace("torch.", ""), optimizer=config.optimizer.describe(), lr=config.lr,
        batch_size=config.batch_size, steps=session.step, epochs=session.step / config.steps_per_epoch,
        final_train_loss=last["train_loss"], test_loss=last["test_loss"], metric=wl.metric.name,
        metric_value=last["metric_value"], target=wl.target, higher_is_better=wl.metric.higher_is_better,
        reached_target=session.steps_to_target is not None, steps_to_target=session.steps_to_target,
        time_to_target_s=time_to_target, time_to_target_interval_s=target_interval,
        step_time_median_s=step_time.point, train_time_s=session.step * step_time.point,
        until_target=config.until_target, diverged=session.diverged,
        diverged_at_step=session.diverged_at_step, deterministic=config.deterministic,
        dead_classes=dead, confusion_matrix=matrix, history=history, step_losses=step_losses,
        peak_gpu_memory_bytes=session.peak_memory,
        graph_replays=getattr(session.trainer, "replayed_steps", None),
        graph_captures=getattr(session.trainer, "captures", None),
        step_time_interval_s=step_time.interval, step_time_blocks_s=list(session.block_times),
        block_steps=BLOCK_STEPS, block_warmup_steps=BLOCK_WARMUP_STEPS, block_rounds=list(session.block_rounds),
        warmup_step_time_median_s=statistics.median(session.warmup_times) if session.warmup_times else None,
        train_time_sum_s=session.elapsed, time_to_target_sum_s=session.elapsed_to_target,
        comparison=comparison, weight_decay=config.weight_decay,
    )


@contextlib.contextmanager
def process_settings(config: RunConfig):
    """``config``'s threads and determinism for the duration of the block; restored after."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    restore_determinism = _set_deterministic(config.deterministic)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        restore_determinism()


def run(
    config: RunConfig,
    *,
    progress: Optional[Callable[[int, int], None]] = None,
    record_step_losses: bool = False,
    trainer_hook: Optional[Callable] = None,
) -> RunResult:
    """Train one configured run and return its record.

    ``progress(step, total_steps)`` is called after each evaluation.
    ``trainer_hook(trainer)`` is called once after training (tests use it to save a
    checkpoint of the trained model).
    """
    with process_settings(config):
        session = Session(config, progress=progress, record_step_losses=record_step_losses)
        while not session.finished:
            session.advance(BLOCK_STEPS)
        if trainer_hook is not None:
            trainer_hook(session.trainer)
        return session.result()
