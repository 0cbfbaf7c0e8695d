"""The building blocks each workload module writes its notes' loop with (the ``as_written`` style).

The notes' loops are written in each workload module (``Workload.as_written``): a trainer whose
``step`` is the notes' loop body, statement for statement, and the batcher that gets each batch
the notes' way.  What the notes' loop knows beyond one batch (its epoch counter, whether the
inner loop is at its last batch, the tensors its reports evaluate, what it prints) is one
:class:`NotesLoop`, shared by the trainer and its batcher: the batcher, which walks the plan,
sets the counters before it hands out a batch; the trainer's step, which owns the model, runs
the notes' per-epoch report after the update.  The runner times batch + step + sync as for
every style: every habit is inside that.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchloops.core.data import BatchEntry, Split, index_lists, plan_on_device
from torchloops.core.nn_trainer import ModuleTrainer, module_trainer
from torchloops.core.registry import OptimizerSpec, Workload


@dataclass
class NotesLoop:
    """The state of one notes' loop beyond a batch (see above).  ``out`` captures what the notes
    ``print`` (the same text, never written to the terminal)."""

    epoch: int = 0  # the notes' epoch counter (`for epoch in range(epochs)`), set by the batcher
    last: bool = False  # this step's batch is its epoch's last: the notes' report follows it
    data: Optional[Split] = None  # the tensors the notes' reports evaluate (train and test)
    out: io.StringIO = field(default_factory=io.StringIO)


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
        self.on_host = self.device.type == "cpu"  # else the notes' `.to(device)` after each re-creation
        self.plan = [[e if isinstance(e, slice) else e.numpy() for e in epoch] for epoch in plan]
        self.whole = _epoch_length(plan)
        self.loop = loop if loop is not None else NotesLoop()
        self.loop.data = split

    def _batches(self, entries):
        on_host = self.on_host
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
    writes ``step(xb, yb, weight=None)`` as the notes' loop body, with ``self.reduction.backward``
    where the notes write ``loss.backward()`` (on one process the same call; under ddp the
    placement's :class:`~torchloops.execution.placements.Reduction` weights this shard's loss, and the
    ``DistributedDataParallel`` wrapper averages the gradients) and ``self.reduction.loss`` for
    the loss it returns.  The same class runs on every placement."""

    batcher: Callable = SlicedAsWritten  # (split, plan, loop) -> the notes' way of getting batches

    def __init__(self, model: nn.Module, workload: Workload, params, placement, spec: OptimizerSpec):
        super().__init__(model, workload, params, placement, spec)
        self.loop = NotesLoop()
        self.on_host = placement.device().type == "cpu"

    def make_batcher(self, split: Split, plan: List[List[BatchEntry]]):
        """This loop's batcher: the notes' way of getting batches, sharing the loop's counters."""
        return type(self).batcher(split, plan, self.loop)

    def numpy(self, t: torch.Tensor):
        """``t.numpy()`` as the notes write it; off the CPU it needs ``.cpu()`` first (a sync)."""
        return t.numpy() if self.on_host else t.cpu().numpy()


def as_written_module(cls, build: Callable[[Workload], nn.Module]) -> Callable:
    """The ``trainer`` of an :class:`~torchloops.core.registry.AsWritten`: the model ``build`` makes,
    with the canonical parameters, on the device, trained by ``cls`` (on every placement)."""
    return module_trainer(cls, build)
