"""The ways of writing the same training step.

A style is a trainer (how the forward, the loss and the update are written) and a
batcher (how a step gets its rows).  ``module``, ``sequential`` and ``dataloader``
share one trainer; ``dataloader`` is the ``nn.Module`` model fed by a
``TensorDataset`` + ``DataLoader`` instead of manual slicing, as the notes do it.

Three more measure the distance between a program as written and the fastest correct
one: ``as_written`` (the notes' habits: each batch re-created from numpy, the graph
retained), ``tuned`` (the ``nn.Module`` model with the levers a user would adopt:
pre-indexed batches, torch.optim's fused/foreach kernels, gradients set to None,
evaluation under ``inference_mode``) and ``fused`` (no autograd: the workload's
hand-derived gradients, :mod:`workloads.fused`).
Every trainer starts from the same initial parameters (the runner hands them over
by name, in ``build_module`` order) and every batcher follows the same batch plan.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
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


class AsWrittenTrainer(ModuleTrainer):
    """The notes' method 2 as written: ``loss.backward(retain_graph=True)`` every step, so
    each step's graph buffers are kept until the loss is dropped."""

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss = self.criterion(self.model(xb), yb)
        loss.backward(retain_graph=True)
        self.optimizer.step()
        return loss.detach()


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


class ShardedAsWrittenTrainer(_ShardedStep, AsWrittenTrainer):
    retain_graph = True

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


# The rank-aware trainers of the styles defined here, lent to the ddp placement through
# distributed.SHARDED_TRAINERS (registered when first built: distributed imports this module).
_SHARDED = {
    FusedTrainer: ShardedFusedTrainer,
    TunedTrainer: ShardedTunedTrainer,
    AsWrittenTrainer: ShardedAsWrittenTrainer,
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


class DataLoaderBatcher:
    """``TensorDataset`` + ``DataLoader``: per-row ``__getitem__`` and a collate per batch.

    The plan's batches are given as the ``batch_sampler`` (index lists prepared once,
    outside the timed region), so the rows and their order are those of every style.
    In-order batches repeat (classification's full batch 50,000 times): each distinct
    slice becomes one shared list, not one list per step.
    """

    def __init__(self, split: Split, plan: List[List[BatchEntry]]):
        self.dataset = TensorDataset(split.X_train, split.y_train)
        lists: dict = {}

        def index_list(entry: BatchEntry) -> List[int]:
            if not isinstance(entry, slice):
                return as_index_list(entry)
            key = (entry.start, entry.stop)
            if key not in lists:
                lists[key] = as_index_list(entry)
            return lists[key]

        self.plan = [[index_list(e) for e in epoch] for epoch in plan]

    def epoch(self, index: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return iter(DataLoader(self.dataset, batch_sampler=self.plan[index]))


class AsWrittenBatcher:
    """The notes' habit of re-creating tensors from numpy every step (classification builds
    its training tensors with ``torch.tensor`` inside the loop; method 2 re-wraps each batch):
    the training split kept as numpy arrays (X in float64, as sklearn returns it), each batch
    cut from them and converted with ``torch.tensor(..., dtype=...)``.  The values are the
    other styles' exactly (float32 -> float64 -> float32 is exact)."""

    def __init__(self, split: Split, plan: List[List[BatchEntry]]):
        self.X = split.X_train.cpu().double().numpy()
        self.y = split.y_train.cpu().numpy()
        self.x_dtype, self.y_dtype, self.device = split.X_train.dtype, split.y_train.dtype, split.X_train.device
        self.plan = [[e if isinstance(e, slice) else e.numpy() for e in epoch] for epoch in plan]

    def epoch(self, index: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for rows in self.plan[index]:
            yield (
                torch.tensor(self.X[rows], dtype=self.x_dtype, device=self.device),
                torch.tensor(self.y[rows], dtype=self.y_dtype, device=self.device),
            )


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
        "the nn.Module model as the notes' loops write it: each batch re-created from numpy "
        "with torch.tensor, backward(retain_graph=True)",
        _module_trainer(lambda w: w.build_module(), AsWrittenTrainer),
        AsWrittenBatcher,
        uses_module=True,
        capture_problem=(
            "it keeps every step's autograd graph alive (backward(retain_graph=True)), which one "
            "captured step replayed cannot do, and the loop as written is not captured"
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
