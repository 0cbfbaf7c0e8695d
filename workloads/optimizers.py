"""The optimizer tables: ``torch.optim`` for the nn styles (its fastest implementation for
``tuned``), hand-written for ``raw``.

Hand-written parameter updates for the ``raw`` style:

Each mirrors the ``torch.optim`` class the other styles use (same defaults, same
order of operations), written with plain tensor arithmetic under
``torch.no_grad()`` the way the notes update ``weights.data``.  Each object is
called once per step after ``loss.backward()``: it updates the parameters and
zeroes their gradients, as the notes do.

``capturable=True`` (the ``cuda_graph`` placement, see :mod:`workloads.graphs`) is
torch.optim's flag of the same name: a step that a CUDA graph can capture once and
replay.  Adam then keeps its step count in a 0-dim tensor on the parameters' device
and computes its bias corrections there; as a Python number the count would be baked
into the captured kernels' arguments and every replay would apply step 1's bias
correction.  SGD needs nothing: its only Python branch (momentum's first step) is
taken before a capture, in the warm-up steps.
"""

from __future__ import annotations

import math
from typing import List

import torch


class RawSGD:
    """``p -= lr * g``; with momentum ``b = momentum * b + g`` (first step ``b = g``), ``p -= lr * b``;
    with weight decay, ``g = g + weight_decay * p`` first (torch.optim's L2 penalty, its order)."""

    def __init__(self, params: List[torch.Tensor], lr: float, momentum: float = 0.0, capturable: bool = False,
                 weight_decay: float = 0.0):
        self.params, self.lr, self.momentum, self.weight_decay = params, lr, momentum, weight_decay
        self.buffers = [None] * len(params)

    @torch.no_grad()
    def __call__(self) -> None:
        for i, p in enumerate(self.params):
            g = p.grad
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            if self.momentum:
                if self.buffers[i] is None:
                    self.buffers[i] = g.clone()
                else:
                    self.buffers[i].mul_(self.momentum).add_(g)
                g = self.buffers[i]
            p.add_(-self.lr * g)
            p.grad.zero_()


class RawAdam:
    """Adam (Kingma & Ba) with torch's defaults: betas (0.9, 0.999), eps 1e-8, bias correction;
    with weight decay, ``g = g + weight_decay * p`` before the moments (torch.optim.Adam's L2
    penalty, not AdamW's decoupled decay)."""

    def __init__(
        self, params: List[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8, capturable: bool = False,
        weight_decay: float = 0.0,
    ):
        self.params, self.lr, self.eps, self.weight_decay = params, lr, eps, weight_decay
        self.beta1, self.beta2 = betas
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.capturable = capturable
        self.t = step_counter(params[0].device) if capturable else 0

    @torch.no_grad()
    def __call__(self) -> None:
        if self.capturable:  # the same formulas on the device-resident count
            t = self.t.add_(1)
            correction1 = 1 - self.beta1**t
            correction2_sqrt = (1 - self.beta2**t).sqrt()
        else:
            self.t += 1
            correction1 = 1 - self.beta1**self.t
            correction2_sqrt = math.sqrt(1 - self.beta2**self.t)
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            m.mul_(self.beta1).add_((1 - self.beta1) * g)
            v.mul_(self.beta2).add_((1 - self.beta2) * g * g)
            denom = v.sqrt() / correction2_sqrt + self.eps
            p.add_(-(self.lr / correction1) * m / denom)
            p.grad.zero_()


def step_counter(device: torch.device) -> torch.Tensor:
    """A capturable optimizer's step count: a 0-dim tensor on the device, in the dtype
    torch.optim gives its own (float32, float64 under a float64 default dtype)."""
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return torch.zeros((), dtype=dtype, device=device)


# (parameters, OptimizerSpec, capturable) -> optimizer; the tables must hold the same kinds.
# torch.optim.SGD has no ``capturable`` flag: nothing in its step depends on the step count.
TORCH_OPTIMIZERS = {
    "sgd": lambda params, spec, capturable=False: torch.optim.SGD(
        params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay),
    "adam": lambda params, spec, capturable=False: torch.optim.Adam(
        params, lr=spec.lr, weight_decay=spec.weight_decay, capturable=capturable),
}


def _fastest_implementation(device: torch.device) -> dict:
    """``fused=True`` where torch has a fused kernel for the device, else ``foreach=True``."""
    try:
        devices = torch.utils._foreach_utils._get_fused_kernels_supported_devices()
    except AttributeError:  # older torch: fused kernels on CUDA only
        devices = ["cuda"]
    return {"fused": True} if device.type in devices else {"foreach": True}


def _tuned(cls, params, **kwargs):
    params = list(params)
    return cls(params, **kwargs, **_fastest_implementation(params[0].device))


# The ``tuned`` style's table: torch.optim with its fastest implementation on the device.
TUNED_OPTIMIZERS = {
    "sgd": lambda params, spec, capturable=False: _tuned(
        torch.optim.SGD, params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay),
    "adam": lambda params, spec, capturable=False: _tuned(
        torch.optim.Adam, params, lr=spec.lr, weight_decay=spec.weight_decay, capturable=capturable),
}
RAW_OPTIMIZERS = {
    "sgd": lambda params, spec, capturable=False: RawSGD(
        params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay),
    "adam": lambda params, spec, capturable=False: RawAdam(
        params, lr=spec.lr, capturable=capturable, weight_decay=spec.weight_decay),
}
