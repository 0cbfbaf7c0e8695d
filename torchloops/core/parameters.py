"""A model's parameters by their canonical names (``build_module`` order), in and out.

Every trainer starts from the same initial parameters, handed over by name in
``build_module`` order, and hands its trained ones back the same way, whatever its
container (a ``Sequential``'s ``0.weight`` or a wrapper's ``module.`` prefix never
reaches a checkpoint).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List

import torch
from torch import nn


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


def canonical_state(names: List[str], params) -> Dict[str, torch.Tensor]:
    """``params`` (in ``build_module`` order) as a state dict keyed by the canonical ``names``."""
    return OrderedDict((n, p.detach().clone()) for n, p in zip(names, params))


def placed_model(model: nn.Module, params, device: torch.device) -> nn.Module:
    """``model`` in the canonical parameters' dtype, holding their values, on ``device``."""
    first = next(iter(params.values()))
    return load_parameters(model.to(first.dtype), params).to(device)
