"""The ``nn.Module`` trainer: the step of the module, sequential, dataloader and tuned styles,
and the base of the notes' own loops written with a module (:mod:`torchloops.core.notes_loop`).

Below the styles so that the workload modules can build their as-written trainers on it.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import nn

from torchloops.core.optimizers import make_optimizer
from torchloops.core.parameters import canonical_state, placed_model
from torchloops.core.registry import OptimizerSpec, Workload

Params = "OrderedDict[str, torch.Tensor]"


class ModuleTrainer:
    """An ``nn.Module`` (or ``nn.Sequential``), the ``torch.nn`` criterion and a ``torch.optim``
    optimizer.  The placement wraps the model (DataParallel, DistributedDataParallel) and its
    reduction weights a shard's loss (ddp); evaluation runs on the unwrapped model (no
    collective, no scatter)."""

    optimizer_implementation = "torch"  # the tuned trainer: "tuned" (fused/foreach kernels)

    def __init__(self, model: nn.Module, workload: Workload, params: Params, placement, spec: OptimizerSpec):
        self.names = list(params)
        self.module = model
        self.model = placement.wrap(model)
        self.criterion = workload.criterion()
        self.optimizer = make_optimizer(self.optimizer_implementation, model.parameters(), spec,
                                        capturable=placement.captures_steps)
        self.reduction = placement.reduction(wrapped=True)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, weight: Optional[float] = None) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss = self.criterion(self.model(xb), yb)
        self.reduction.backward(loss, weight)
        self.optimizer.step()
        return self.reduction.loss(loss, weight)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        # Canonical (build_module) names, whatever the container: a Sequential's
        # "0.weight" or DataParallel's "module." prefix never reach a checkpoint.
        return canonical_state(self.names, self.module.parameters())


def module_trainer(cls, build: Callable[[Workload], nn.Module]) -> Callable:
    """``(workload, params, placement, spec) -> cls(...)``: the model ``build`` makes, holding the
    canonical parameters in their dtype, on the placement's device, trained by ``cls``."""

    def make(workload: Workload, params: Params, placement, spec: OptimizerSpec):
        return cls(placed_model(build(workload), params, placement.device()), workload, params, placement, spec)

    return make
