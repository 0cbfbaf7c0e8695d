"""The ways of writing the same training step.

A style is a trainer (how the forward, the loss and the update are written) and a
batcher (how a step gets its rows).  ``module``, ``sequential`` and ``dataloader``
share one trainer; ``dataloader`` is the ``nn.Module`` model fed by a
``TensorDataset`` + ``DataLoader`` instead of manual slicing, as the notes do it.

Three more measure the distance between a program as written and the fastest correct
one: ``as_written`` (each workload's loop as the notes write it, statement for statement,
habits included: ``Workload.as_written``, written in the workload's module; see
``NotesLoop`` below), ``tuned`` (the ``nn.Module`` model with the levers a user would adopt:
pre-indexed batches, torch.optim's fused/foreach kernels, gradients set to None,
evaluation under ``inference_mode``) and ``fused`` (no autograd: the workload's
hand-derived gradients, :mod:`workloads.fused`).
Every trainer starts from the same initial parameters (the runner hands them over
by name, in ``build_module`` order) and every batcher follows the same batch plan.
"""

from __future__ import annotations

import io
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .data import BatchEntry, Split, as_index_list
from .fused import FusedTrainer, PreIndexedBatcher, ShardedFusedTrainer
from .optimizers import RAW_OPTIMIZERS, TORCH_OPTIMIZERS, TUNED_OPTIMIZERS
from .registry import OptimizerSpec, Table, Workload

STYLES = Table("style")

Params = "OrderedDict[str, torch.Tensor]"


def load_parameters(model: nn.Module, params: "OrderedDict[str, torch.Tensor]") -> nn.Module:
    """Copy the canonical parameters into ``model`` by position, checking every shape."""
    own = list(model.parameters())
    if len(own) != len(params):
        raise ValueError(f"model has {len(own)} parameters, expected {len(params)}")
    with torch.no_grad():
        for p, (name, value) in zip(own, params.items()):
            if p.shape != value.shape:
                raise ValueError(f"parameter {name}: shape {tuple(p.shape)} != {tuple(value.shape)}")
            p.copy_(value)
    return model


class RawTrainer:
    """Plain leaf tensors with ``requires_grad=True``, the workload's hand-written forward
    and loss, and a hand-written update."""

    def __init__(self, workload: Workload, params: Params, placement, spec: OptimizerSpec):
        device = placement.device()
        self.workload = workload
        self.names = list(params)
        self.params = [p.detach().clone().to(device).requires_grad_() for p in params.values()]
        self.update = RAW_OPTIMIZERS[spec.kind](self.params, spec, capturable=placement.captures_steps)

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        loss = self.workload.raw_loss(self.workload.raw_forward(self.params, xb), yb)
        loss.backward()
        self.update()
        return loss.detach()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.workload.raw_forward(self.params, x)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return OrderedDict((n, p.detach().clone()) for n, p in zip(self.names, self.params))


class ModuleTrainer:
    """An ``nn.Module`` (or ``nn.Sequential``), the ``torch.nn`` criterion and a ``torch.optim`` optimizer."""

    optimizers = TORCH_OPTIMIZERS  # the tuned trainer: their fused/foreach implementations

    def __init__(self, model: nn.Module, workload: Workload, params: Params, placement, spec: OptimizerSpec):
        self.names = list(params)
        self.module = model
        self.model = placement.wrap(model)
        self.criterion = workload.criterion()
        self.optimizer = self.optimizers[spec.kind](model.parameters(), spec, capturable=placement.captures_steps)

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss = self.criterion(self.model(xb), yb)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        # Canonical (build_module) names, whatever the container: a Sequential's
        # "0.weight" or DataParallel's "module." prefix never reach a checkpoint.
        return OrderedDict(
            (n, p.detach().clone()) for n, p in zip(self.names, self.module.parameters())
        )


class TunedTrainer(ModuleTrainer):
    """The ``nn.Module`` model as a user tuning it would write it: torch.optim's fused (or
    foreach) kernels, gradients set to None, evaluation under ``torch.inference_mode``."""

    optimizers = TUNED_OPTIMIZERS

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.criterion(self.model(xb), yb)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x)


class _ShardedStep:
    """The nn step under DDP, as ``distributed.ShardedModuleTrainer`` writes it: the model is
    wrapped in ``DistributedDataParallel`` (which averages the gradients), the loss weighted by
    ``share * world``; evaluation on this rank's replica."""

    retain_graph = False

    def step(self, xb: torch.Tensor, yb: torch.Tensor, share: float) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.criterion(self.model(xb), yb)
        (loss * (share * torch.distributed.get_world_size())).backward(retain_graph=self.retain_graph)
        self.optimizer.step()
        return loss.detach() * share


class ShardedTunedTrainer(_ShardedStep, TunedTrainer):
    pass


# The rank-aware trainers of the styles defined here, lent to the ddp placement through
# distributed.SHARDED_TRAINERS (registered when first built: distributed imports this module).
_SHARDED = {
    FusedTrainer: ShardedFusedTrainer,
    TunedTrainer: ShardedTunedTrainer,
}


def _trainer_class(placement, cls):
    from . import distributed

    if cls in _SHARDED:
        distributed.SHARDED_TRAINERS.setdefault(cls, _SHARDED[cls])
    return placement.trainer_class(cls)


def plan_on_device(plan: List[List[BatchEntry]], device: torch.device) -> List[List[BatchEntry]]:
    """The plan with its index tensors (shuffled batches) on ``device``, moved once, untimed:
    indexing GPU data with a CPU index tensor copies the index to the GPU inside every
    timed step.  Slices (in-order batches) stay slices; on the CPU nothing is copied."""
    if device.type == "cpu":
        return plan
    moved_plan = []
    for epoch in plan:
        tensors = [e for e in epoch if not isinstance(e, slice)]
        if not tensors:
            moved_plan.append(epoch)
            continue
        # one host-to-device copy per epoch; each batch's index is a view of it
        moved = iter(torch.cat(tensors).to(device).split([t.numel() for t in tensors]))
        moved_plan.append([e if isinstance(e, slice) else next(moved) for e in epoch])
    return moved_plan


def pre_indexed_batcher(split: Split, plan: List[List[BatchEntry]]) -> PreIndexedBatcher:
    """:class:`~workloads.fused.PreIndexedBatcher` over the plan with its indices already on
    the data's device, so an epoch's gather is one ``index_select`` with no index copy."""
    return PreIndexedBatcher(split, plan_on_device(plan, split.X_train.device))


class SliceBatcher:
    """Manual indexing, as the notes slice ``x_tensor[start:end]``: a view for in-order
    batches, a gather for shuffled ones (its index already on the data's device)."""

    def __init__(self, split: Split, plan: List[List[BatchEntry]]):
        self.X, self.y = split.X_train, split.y_train
        self.plan = plan_on_device(plan, self.X.device)

    def epoch(self, index: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        X, y = self.X, self.y
        return ((X[e], y[e]) for e in self.plan[index])


def index_lists(plan: List[List[BatchEntry]]) -> List[List[List[int]]]:
    """The plan as a ``batch_sampler``'s index lists, made once, outside the timed region.
    In-order batches repeat (classification's full batch 50,000 times): each distinct slice
    becomes one shared list, not one list per step."""
    shared: dict = {}

    def index_list(entry: BatchEntry) -> List[int]:
        if not isinstance(entry, slice):
            return as_index_list(entry)
        key = (entry.start, entry.stop)
        if key not in shared:
            shared[key] = as_index_list(entry)
        return shared[key]

    return [[index_list(e) for e in epoch] for epoch in plan]


class DataLoaderBatcher:
    """``TensorDataset`` + ``DataLoader``: per-row ``__getitem__`` and a collate per batch.

    The plan's batches are given as the ``batch_sampler`` (index lists prepared once,
    outside the timed region), so the rows and their order are those of every style.
    In-order batches repeat (classification's full batch 50,000 times): each distinct
    slice becomes one shared list, not one list per step.
    """

    def __init__(self, split: Split, plan: List[List[BatchEntry]]):
        self.dataset = TensorDataset(split.X_train, split.y_train)
        self.plan = index_lists(plan)

    def epoch(self, index: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return iter(DataLoader(self.dataset, batch_sampler=self.plan[index]))


# --- as_written: each workload's loop as the notes write it --------------------------------------
#
# The notes' loops are written in each workload module (``Workload.as_written``): a trainer whose
# ``step`` is the notes' loop body, statement for statement, and the batcher that gets each batch
# the notes' way.  What the notes' loop knows beyond one batch (its epoch counter, whether the
# inner loop is at its last batch, the tensors its reports evaluate, what it prints) is one
# :class:`NotesLoop`, shared by the trainer and its batcher: the batcher, which walks the plan,
# sets the counters before it hands out a batch; the trainer's step, which owns the model, runs
# the notes' per-epoch report after the update.  The runner times batch + step + sync as for
# every style: every habit is inside that.


@dataclass
class NotesLoop:
    """The state of one notes' loop beyond a batch (see above).  ``out`` captures what the notes
    ``print`` (the same text, never written to the terminal)."""

    batcher: Callable  # (split, plan, loop) -> the workload's as-written batcher
    epoch: int = 0  # the notes' epoch counter (`for epoch in range(epochs)`), set by the batcher
    last: bool = False  # this step's batch is its epoch's last: the notes' report follows it
    data: Optional[Split] = None  # the tensors the notes' reports evaluate (train and test)
    out: io.StringIO = field(default_factory=io.StringIO)


# build() makes a run's trainer, then its batcher: the as-written trainer made last leaves its
# NotesLoop here and the batcher made next takes it (ddp: ShardedBatcher makes it the same way).
_UNPAIRED: List["weakref.ref"] = []


def _epoch_length(plan: List[list]) -> int:
    """Batches in a whole epoch of the plan: a run cut short by ``--steps`` ends with a shorter
    one, whose last batch is not the end of the notes' epoch (no report follows it)."""
    return max((len(epoch) for epoch in plan), default=0)


def _marked(loop: NotesLoop, index: int, batches, count: int, whole: int):
    """``batches`` of epoch ``index`` (``count`` of them, ``whole`` in a whole epoch), each handed
    out after the loop's counters say where it is."""
    last = count - 1 if count == whole else -1
    for j, batch in enumerate(batches):
        loop.epoch, loop.last = index, j == last
        yield batch


class SlicedAsWritten:
    """Manual slicing (a view for in-order batches, a gather for shuffled ones), with the notes'
    loop counters; a batch that is the whole training set is the tensors themselves, as the notes
    use ``x_tensor`` (mlp_sgd's full batch)."""

    def __init__(self, split: Split, plan: List[List[BatchEntry]], loop: NotesLoop):
        self.X, self.y, self.loop, self.n = split.X_train, split.y_train, loop, split.n_train
        whole = slice(0, self.n)  # None below: the whole training set
        self.plan = [[None if isinstance(e, slice) and e == whole else e for e in epoch]
                     for epoch in plan_on_device(plan, self.X.device)]
        self.whole = _epoch_length(plan)
        loop.data = split

    def epoch(self, index: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        X, y, entries = self.X, self.y, self.plan[index]
        batches = ((X, y) if e is None else (X[e], y[e]) for e in entries)
        return _marked(self.loop, index, batches, len(entries), self.whole)


class NumpyEveryStep:
    """classification's habit: the training tensors re-created from numpy inside every step,
    ``X_train_tensor = torch.tensor(X_train, dtype=torch.float)`` (X in float64, as sklearn
    returns it; the values are the other styles' exactly: float32 -> float64 -> float32 is exact)
    and ``y_train_tensor = torch.tensor(y_train, dtype=torch.long)``; on a GPU then ``.to(device)``
    (the notes' GPU recipe).  Also the fallback of an as_written batcher made without its trainer."""

    def __init__(self, split: Split, plan: List[List[BatchEntry]], loop: Optional[NotesLoop] = None):
        self.X = split.X_train.cpu().double().numpy()
        self.y = split.y_train.cpu().numpy()
        self.x_dtype, self.y_dtype, self.device = split.X_train.dtype, split.y_train.dtype, split.X_train.device
        self.plan = [[e if isinstance(e, slice) else e.numpy() for e in epoch] for epoch in plan]
        self.whole = _epoch_length(plan)
        self.loop = loop if loop is not None else NotesLoop(NumpyEveryStep)
        self.loop.data = split

    def _batches(self, entries):
        on_host = self.device.type == "cpu"
        for rows in entries:
            X_train_tensor = torch.tensor(self.X[rows], dtype=self.x_dtype)
            y_train_tensor = torch.tensor(self.y[rows], dtype=self.y_dtype)
            if not on_host:
                X_train_tensor, y_train_tensor = X_train_tensor.to(self.device), y_train_tensor.to(self.device)
            yield X_train_tensor, y_train_tensor

    def epoch(self, index: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        entries = self.plan[index]
        return _marked(self.loop, index, self._batches(entries), len(entries), self.whole)


class _PlannedBatches:
    """A ``batch_sampler`` whose batches are those of the plan's current epoch (the rows every
    style sees, in place of the notes' ``shuffle=True`` sampler)."""

    def __init__(self, plan: List[List[BatchEntry]]):
        self.plan = index_lists(plan)
        self.epoch = 0

    def __iter__(self):
        return iter(self.plan[self.epoch])

    def __len__(self) -> int:
        return len(self.plan[self.epoch])


class NotesDataLoader:
    """regression's feeding: ``TensorDataset`` + one ``DataLoader`` made once and iterated every
    epoch (``for X_train_batch, y_train_batch in dataloader_train``), per-row fetch and collate;
    its batches are the plan's (``batch_sampler``) instead of its own ``shuffle=True`` draw.  The
    notes' test loader (``batch_size * 2``) is made too, and never used, as in the notes."""

    def __init__(self, split: Split, plan: List[List[BatchEntry]], loop: NotesLoop):
        self.loop, self.sampler = loop, _PlannedBatches(plan)
        dataset_train = TensorDataset(split.X_train, split.y_train)
        dataset_test = TensorDataset(split.X_test, split.y_test)
        batch_size = max((len(b) for epoch in self.sampler.plan for b in epoch), default=1)
        self.dataloader_train = DataLoader(dataset_train, batch_sampler=self.sampler)
        self.dataloader_test = DataLoader(dataset_test, batch_size=batch_size * 2)
        self.whole = _epoch_length(plan)
        loop.data = split

    def epoch(self, index: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.epoch = index
        return _marked(self.loop, index, iter(self.dataloader_train), len(self.sampler), self.whole)


class RewrappedBatches:
    """mlp_adam's (method 2) batches: the notes keep ``x_tensor`` / ``y_tensor`` in float64 and wrap
    every slice again, ``torch.tensor(x_tensor[start:end], dtype=torch.float, requires_grad=True)``
    (inputs and targets both require grad: backward then computes their gradients too).  torch
    warns on each such copy (``To copy construct from a tensor...``): the warning is raised every
    step, as in the notes, and filtered out of the terminal."""

    def __init__(self, split: Split, plan: List[List[BatchEntry]], loop: NotesLoop):
        self.x_tensor, self.y_tensor = split.X_train.double(), split.y_train.double()
        self.dtype, self.loop = split.X_train.dtype, loop
        self.plan = plan_on_device(plan, self.x_tensor.device)
        self.whole = _epoch_length(plan)
        loop.data = split
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)

    def _batches(self, entries):
        x_tensor, y_tensor, dtype = self.x_tensor, self.y_tensor, self.dtype
        for rows in entries:
            xx = torch.tensor(x_tensor[rows], dtype=dtype, requires_grad=True)
            yy = torch.tensor(y_tensor[rows], dtype=dtype, requires_grad=True)
            yield xx, yy

    def epoch(self, index: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        entries = self.plan[index]
        return _marked(self.loop, index, self._batches(entries), len(entries), self.whole)


class AsWrittenModuleTrainer(ModuleTrainer):
    """Base of the as-written trainers with an ``nn.Module``: the workload module's subclass
    writes ``step(xb, yb, share=None)`` as the notes' loop body.  Under ddp the same class runs
    each rank (``share``: this shard's part of the global batch; the model is wrapped in
    ``DistributedDataParallel``, so :meth:`backward` weights the loss by ``share * world``)."""

    batcher: Callable = SlicedAsWritten  # (split, plan, loop) -> the notes' way of getting batches

    def __init__(self, model: nn.Module, workload: Workload, params: Params, placement, spec: OptimizerSpec):
        super().__init__(model, workload, params, placement, spec)
        self.loop = NotesLoop(type(self).batcher)
        self.world = placement.world_size()
        self.on_host = placement.device().type == "cpu"

    def backward(self, loss: torch.Tensor, share: Optional[float], **kwargs) -> None:
        (loss if share is None else loss * (share * self.world)).backward(**kwargs)

    @staticmethod
    def result(loss: torch.Tensor, share: Optional[float]) -> torch.Tensor:
        return loss.detach() if share is None else loss.detach() * share

    def numpy(self, t: torch.Tensor):
        """``t.numpy()`` as the notes write it; off the CPU it needs ``.cpu()`` first (a sync)."""
        return t.numpy() if self.on_host else t.cpu().numpy()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        # the unwrapped model: no DDP forward (collectives) nor DataParallel scatter to evaluate
        return self.module(x)


def as_written_module(cls, build: Callable[[Workload], nn.Module]) -> Callable:
    """The ``trainer`` of an :class:`~workloads.registry.AsWritten`: the model ``build`` makes,
    with the canonical parameters, on the device, trained by ``cls`` (on every placement: the
    class handles ddp's ``share`` itself)."""

    def make(workload: Workload, params: Params, placement, spec: OptimizerSpec):
        first = next(iter(params.values()))
        model = load_parameters(build(workload).to(first.dtype), params).to(placement.device())
        return cls(model, workload, params, placement, spec)

    return make


def _as_written_trainer(workload: Workload, params: Params, placement, spec: OptimizerSpec):
    if workload.as_written is None:
        raise ValueError(f"workload {workload.name} has no as-written loop (Workload.as_written)")
    trainer = workload.as_written.trainer(workload, params, placement, spec)
    _UNPAIRED[:] = [weakref.ref(trainer.loop)]
    return trainer


def _as_written_batcher(split: Split, plan: List[List[BatchEntry]]):
    """The batcher of the as-written trainer made just before (see ``_UNPAIRED``); made without
    one (a test comparing batches), classification's numpy re-creation."""
    loop = _UNPAIRED.pop()() if _UNPAIRED else None
    if loop is None:
        return NumpyEveryStep(split, plan)
    return loop.batcher(split, plan, loop)


@dataclass(frozen=True)
class Style:
    name: str
    description: str
    make_trainer: Callable  # (workload, params, placement, spec) -> trainer
    make_batcher: Callable  # (split, plan) -> batcher
    uses_module: bool
    capture_problem: Optional[str] = None  # why a CUDA graph cannot replay this style's step; None: it can


def _raw_trainer(workload: Workload, params: Params, placement, spec: OptimizerSpec) -> RawTrainer:
    # The placement may lend a rank-aware subclass (ddp); single-process placements: RawTrainer.
    return placement.trainer_class(RawTrainer)(workload, params, placement, spec)


def _module_trainer(build: Callable[[Workload], nn.Module], cls=ModuleTrainer) -> Callable:
    def make(workload: Workload, params: Params, placement, spec: OptimizerSpec) -> ModuleTrainer:
        first = next(iter(params.values()))
        model = load_parameters(build(workload).to(first.dtype), params).to(placement.device())
        return _trainer_class(placement, cls)(model, workload, params, placement, spec)

    return make


def _fused_trainer(workload: Workload, params: Params, placement, spec: OptimizerSpec) -> FusedTrainer:
    return _trainer_class(placement, FusedTrainer)(workload, params, placement, spec)


STYLES.register(
    Style(
        "raw",
        "plain tensors, hand-written forward, loss and update; manual slicing",
        _raw_trainer,
        SliceBatcher,
        uses_module=False,
    )
)
STYLES.register(
    Style(
        "module",
        "nn.Module subclass, torch.nn loss, torch.optim; manual slicing",
        _module_trainer(lambda w: w.build_module()),
        SliceBatcher,
        uses_module=True,
    )
)
STYLES.register(
    Style(
        "sequential",
        "the same layers as nn.Sequential, torch.nn loss, torch.optim; manual slicing",
        _module_trainer(lambda w: w.build_sequential()),
        SliceBatcher,
        uses_module=True,
    )
)
STYLES.register(
    Style(
        "dataloader",
        "the nn.Module model fed by TensorDataset + DataLoader",
        _module_trainer(lambda w: w.build_module()),
        DataLoaderBatcher,
        uses_module=True,
    )
)
STYLES.register(
    Style(
        "as_written",
        "each workload's loop as the notes write it, statement for statement (Workload.as_written): "
        "their per-step tensor re-creation, requires_grad batches, retain_graph, .data updates, "
        "loss.data.numpy() appends and interval reports (printed output captured)",
        _as_written_trainer,
        _as_written_batcher,
        uses_module=True,
        capture_problem=(
            "no loop of the notes replays as one captured step: classification and regression "
            "evaluate and print every 2 / 50 epochs (a Python branch on the epoch and .item() host "
            "syncs); mlp_sgd copies every step's loss to the host (loss.data.numpy(), a sync that a "
            "capture refuses) and prints it every 1000 steps; mlp_adam does the same per batch, "
            "prints each epoch, keeps each step's graph (backward(retain_graph=True)) and makes "
            "new requires_grad input tensors each step; lenet's (the notes' recommended optimizer "
            "loop) would capture, but a placement applies to a style as a whole"
        ),
    )
)
STYLES.register(
    Style(
        "tuned",
        "the nn.Module model, pre-indexed batches, torch.optim fused/foreach, grads set to None, "
        "inference_mode evaluation",
        _module_trainer(lambda w: w.build_module(), TunedTrainer),
        pre_indexed_batcher,
        uses_module=True,
    )
)
STYLES.register(
    Style(
        "fused",
        "no autograd: hand-derived gradients, _foreach in-place updates, pre-indexed batches",
        _fused_trainer,
        pre_indexed_batcher,
        uses_module=False,
    )
)
