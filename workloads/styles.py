"""The four ways of writing the same training step.

A style is a trainer (how the forward, the loss and the update are written) and a
batcher (how a step gets its rows).  ``module``, ``sequential`` and ``dataloader``
share one trainer; ``dataloader`` is the ``nn.Module`` model fed by a
``TensorDataset`` + ``DataLoader`` instead of manual slicing, as the notes do it.
Every trainer starts from the same initial parameters (the runner hands them over
by name, in ``build_module`` order) and every batcher follows the same batch plan.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .data import BatchEntry, Split, as_index_list
from .optimizers import RAW_OPTIMIZERS, TORCH_OPTIMIZERS
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
        self.update = RAW_OPTIMIZERS[spec.kind](self.params, spec)

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

    def __init__(self, model: nn.Module, workload: Workload, params: Params, placement, spec: OptimizerSpec):
        self.names = list(params)
        self.module = model
        self.model = placement.wrap(model)
        self.criterion = workload.criterion()
        self.optimizer = TORCH_OPTIMIZERS[spec.kind](model.parameters(), spec)

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


class SliceBatcher:
    """Manual indexing, as the notes slice ``x_tensor[start:end]``: a view for in-order
    batches, a gather for shuffled ones."""

    def __init__(self, split: Split, plan: List[List[BatchEntry]]):
        self.X, self.y, self.plan = split.X_train, split.y_train, plan

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


@dataclass(frozen=True)
class Style:
    name: str
    description: str
    make_trainer: Callable  # (workload, params, placement, spec) -> trainer
    make_batcher: Callable  # (split, plan) -> batcher
    uses_module: bool


def _raw_trainer(workload: Workload, params: Params, placement, spec: OptimizerSpec) -> RawTrainer:
    # The placement may lend a rank-aware subclass (ddp); single-process placements: RawTrainer.
    return placement.trainer_class(RawTrainer)(workload, params, placement, spec)


def _module_trainer(build: Callable[[Workload], nn.Module]) -> Callable:
    def make(workload: Workload, params: Params, placement, spec: OptimizerSpec) -> ModuleTrainer:
        first = next(iter(params.values()))
        model = load_parameters(build(workload).to(first.dtype), params).to(placement.device())
        return placement.trainer_class(ModuleTrainer)(model, workload, params, placement, spec)

    return make


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
