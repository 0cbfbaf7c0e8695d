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

import dataclasses
import math
import os
import statistics
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from sklearn import metrics as sk_metrics

from .data import Split, batch_plan, seeds, steps_per_epoch
from .placements import PLACEMENTS
from .registry import UsageError, Workload, get_workload
from .styles import STYLES

MAX_SEED = 2**32 - 1  # sklearn's random_state range
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
    split: Split = field(repr=False)
    deterministic: bool = False

    @property
    def optimizer(self):
        return dataclasses.replace(self.workload.optimizer, lr=self.lr)


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
    step_time_median_s: float
    train_time_s: float
    until_target: bool
    diverged: bool
    diverged_at_step: Optional[int] = None  # the first step whose training loss was NaN or infinite
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) during the run
    dead_classes: Optional[List[int]] = None
    confusion_matrix: Optional[List[List[int]]] = None
    history: List[dict] = field(default_factory=list)
    step_losses: Optional[List[float]] = None
    peak_gpu_memory_bytes: Optional[int] = None  # torch.cuda.max_memory_allocated; None off CUDA
    graph_replays: Optional[int] = None  # cuda_graph: steps that were replays of a captured graph
    graph_captures: Optional[int] = None  # cuda_graph: graphs captured (one per batch shape)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(f"--{name} must be a positive integer, got {_short(value)}")
    return value


def _positive_float(name: str, value) -> float:
    try:
        number = float(value) if not isinstance(value, bool) and isinstance(value, (int, float)) else math.nan
    except OverflowError:  # an int beyond float range
        number = math.inf
    if not math.isfinite(number) or number <= 0:
        raise UsageError(f"--{name} must be a positive finite number, got {_short(value)}")
    return number


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
) -> RunConfig:
    """Check every input and resolve the documented defaults.

    Raises :class:`UsageError` for bad input and :class:`Unavailable` for a
    placement that cannot run this here.  ``nproc`` is for the process that
    launches ``ddp`` ranks: it checks the run as each of ``nproc`` ranks will
    configure it (a rank itself leaves it out and reads torchrun's world size).
    """
    wl = get_workload(workload)
    st = STYLES.get(style)
    placement = PLACEMENTS.get(device)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be an integer from 0 to {MAX_SEED}, got {_short(seed)}")
    epochs = wl.epochs if epochs is None else _positive_int("epochs", epochs)
    lr = wl.optimizer.lr if lr is None else _positive_float("lr", lr)
    threads = _positive_int("threads", threads)
    if threads > MAX_THREADS:
        raise UsageError(f"--threads {_short(threads)} is more than {MAX_THREADS}; valid: 1 to {MAX_THREADS}")
    if steps is not None:
        _positive_int("steps", steps)
    if eval_every is not None:
        _positive_int("eval-every", eval_every)
    launching = nproc is not None
    if launching:
        _positive_int("nproc", nproc)
        if not hasattr(placement, "launch_availability"):
            raise UsageError(f"--nproc starts ddp ranks; it does not apply to --device {placement.name}")
    split = wl.make_data(seed)
    if batch_size is None:
        batch_size = wl.batch_size
    else:
        _positive_int("batch-size", batch_size)
        if batch_size > split.n_train:
            raise UsageError(
                f"--batch-size {_short(batch_size)} is larger than {wl.name}'s {split.n_train} training rows; "
                f"valid: 1 to {split.n_train}"
            )
    available = placement.launch_availability(nproc) if launching else placement.availability()
    for check in (available, placement.applies_to(st)):
        if not check.ok:
            raise Unavailable(check.reason)
    world = nproc if launching else placement.world_size()
    if world > 1:
        _check_shardable(wl, split.n_train, batch_size, world, launching)
    per_epoch = steps_per_epoch(split.n_train, batch_size, wl.steps_per_epoch)
    total = epochs * per_epoch if steps is None else min(steps, epochs * per_epoch)
    if total > MAX_STEPS:
        raise UsageError(
            f"{wl.name}: {_short(epochs)} epoch(s) of {per_epoch} step(s) is {_short(total)} steps, more than {MAX_STEPS}; "
            "lower --epochs or cap with --steps"
        )
    return RunConfig(
        workload=wl,
        style=st,
        placement=placement,
        seed=seed,
        epochs=epochs,
        steps_per_epoch=per_epoch,
        total_steps=total,
        batch_size=batch_size,
        lr=lr,
        threads=threads,
        until_target=bool(until_target),
        eval_every=eval_every or wl.eval_every or per_epoch,
        split=split,
        deterministic=bool(deterministic),
    )


def _check_shardable(wl: Workload, n_train: int, batch_size: Optional[int], world: int, launching: bool) -> None:
    """Every rank needs at least one row of every global batch (and, on CUDA, a GPU)."""
    from .distributed import smallest_batch, use_cuda

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
    split = config.split.to(config.placement.device())
    params = initial_parameters(config.workload, config.seed)
    trainer = config.style.make_trainer(config.workload, params, config.placement, config.optimizer)
    trainer = config.placement.wrap_trainer(trainer)  # cuda_graph: captured and replayed
    plan = batch_plan(
        split.n_train,
        config.batch_size,
        config.workload.shuffle,
        config.epochs,
        config.steps_per_epoch,
        config.total_steps,
        config.seed,
    )
    return trainer, config.placement.batcher(config.style.make_batcher, split, plan), plan, split


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
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False

    def restore() -> None:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]

    return restore


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
    wl, placement = config.workload, config.placement
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    restore_determinism = _set_deterministic(config.deterministic)
    try:
        placement.reset_peak_memory()
        trainer, batcher, plan, split = build(config)
        step_times: List[float] = []
        losses: List[torch.Tensor] = []
        history: List[dict] = []
        step, elapsed = 0, 0.0
        steps_to_target = time_to_target = None
        diverged = False
        diverged_at_step = None
        last = None
        several_ranks = placement.world_size() > 1
        placement.sync()  # the data and model copies to the device are not the first step's time
        for epoch_index in range(len(plan)):
            clock = time.perf_counter()
            for batch in batcher.epoch(epoch_index):
                try:
                    loss = trainer.step(*batch)
                except RuntimeError as error:
                    # e.g. Adam's lr / bias correction beyond float32: the update itself
                    # overflows before any loss is non-finite.  That is divergence too.
                    if "overflow" not in str(error):
                        raise
                    loss = torch.full((), math.inf, dtype=wl.dtype, device=placement.device())
                placement.sync()
                now = time.perf_counter()
                step_times.append(now - clock)
                elapsed += now - clock
                losses.append(loss)
                step += 1
                # Divergence within one step, outside the timed region: the step loss is a
                # 0-dim tensor the sync above has already waited for (no extra host sync on
                # CUDA beyond reading one value); ddp ranks agree so that all stop together.
                bad = not bool(torch.isfinite(loss).all())
                if several_ranks:
                    bad = placement.agree(bad)
                if bad and diverged_at_step is None:
                    diverged, diverged_at_step = True, step
                if not bad and step % config.eval_every and step != config.total_steps:
                    clock = time.perf_counter()  # the check above is not the next step's time
                    continue
                last = evaluate(trainer, wl, split)
                history.append(
                    {
                        "step": step,
                        "epoch": step / config.steps_per_epoch,
                        "time_s": elapsed,
                        "train_loss": last["train_loss"],
                        "test_loss": last["test_loss"],
                        "metric_value": last["metric_value"],
                    }
                )
                if progress is not None:
                    progress(step, config.total_steps)
                if not math.isfinite(last["train_loss"]) and diverged_at_step is None:
                    diverged, diverged_at_step = True, step
                if not diverged and steps_to_target is None and wl.metric.reached(last["metric_value"], wl.target):
                    steps_to_target, time_to_target = step, elapsed
                # ddp: every rank evaluates its identical replica; all of them stop together
                if placement.agree(diverged or (config.until_target and steps_to_target is not None)):
                    break
                clock = time.perf_counter()
            else:
                continue
            break
        if trainer_hook is not None:
            trainer_hook(trainer)
        step_losses = None
        if record_step_losses:
            step_losses = placement.reduce_step_losses(torch.stack(losses)).double().cpu().tolist()
        peak_memory = placement.peak_memory_bytes()
    finally:
        torch.set_num_threads(previous_threads)
        restore_determinism()

    matrix = dead = None
    if wl.metric.is_classification:
        matrix, dead = _class_report(last["outputs"], split)
    return RunResult(
        workload=wl.name,
        style=config.style.name,
        device=placement.name,
        device_name=placement.device_name(),
        seed=config.seed,
        threads=config.threads,
        torch_version=torch.__version__,
        world_size=placement.world_size(),
        backend=placement.backend(),
        dtype=str(wl.dtype).replace("torch.", ""),
        optimizer=config.optimizer.describe(),
        lr=config.lr,
        batch_size=config.batch_size,
        steps=step,
        epochs=step / config.steps_per_epoch,
        final_train_loss=last["train_loss"],
        test_loss=last["test_loss"],
        metric=wl.metric.name,
        metric_value=last["metric_value"],
        target=wl.target,
        higher_is_better=wl.metric.higher_is_better,
        reached_target=steps_to_target is not None,
        steps_to_target=steps_to_target,
        time_to_target_s=time_to_target,
        step_time_median_s=statistics.median(step_times),
        train_time_s=elapsed,
        until_target=config.until_target,
        diverged=diverged,
        diverged_at_step=diverged_at_step,
        deterministic=config.deterministic,
        dead_classes=dead,
        confusion_matrix=matrix,
        history=history,
        step_losses=step_losses,
        peak_gpu_memory_bytes=peak_memory,
        graph_replays=getattr(trainer, "replayed_steps", None),
        graph_captures=getattr(trainer, "captures", None),
    )
