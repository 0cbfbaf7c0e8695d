"""The optimizer table: each documented optimizer as every style writes it (:data:`OPTIMIZERS`):
``torch.optim`` for the nn styles (its fastest implementation for ``tuned``), hand-written for
``raw``, torch.optim's arithmetic on one flat buffer for ``fused``.

Hand-written parameter updates for the ``raw`` style:

Each mirrors the ``torch.optim`` class the other styles use (same defaults, same
order of operations), written with plain tensor arithmetic under
``torch.no_grad()`` the way the notes update ``weights.data``.  Each object is
called once per step after ``loss.backward()``: it updates the parameters and
zeroes their gradients, as the notes do.

``capturable=True`` (the ``cuda_graph`` placement, see :mod:`torchloops.execution.graphs`) is
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

from torchloops.core.registry import OptimizerSpec


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


# --- optimizers, torch.optim's arithmetic on all parameters at once -----------------------------


class FusedSGD:
    """``torch.optim.SGD``: with weight decay ``g += weight_decay * p`` first; ``p -= lr * g``;
    with momentum ``b = g`` on the first step, then ``b = momentum * b + g``, and ``p -= lr * b``.

    The trainer holds one flat parameter buffer: :meth:`apply` updates it with one in-place
    op per arithmetic step (torch.optim's single-tensor order; a ``_foreach`` op over a list of
    one tensor is the same op behind a second dispatch).  ``__call__(grads)`` takes a list
    (several tensors: ``_foreach`` ops)."""

    def __init__(self, params: List[torch.Tensor], spec: OptimizerSpec, capturable: bool = False):
        self.params, self.lr, self.momentum = params, spec.lr, spec.momentum
        self.weight_decay = spec.weight_decay
        self.buffers = None
        self._flat = params[0] if len(params) == 1 else None
        self._neg_lr = -spec.lr
        self._buffer = None

    def __call__(self, grads: List[torch.Tensor]) -> None:
        if self._flat is not None:
            return self.apply(grads[0])
        if self.weight_decay:  # the gradients are this step's own buffers: decayed in place
            torch._foreach_add_(grads, self.params, alpha=self.weight_decay)
        if self.momentum:
            if self.buffers is None:
                self.buffers = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(self.buffers, self.momentum)
                torch._foreach_add_(self.buffers, grads)
            grads = self.buffers
        torch._foreach_add_(self.params, grads, alpha=-self.lr)

    def apply(self, grad: torch.Tensor) -> None:
        """The update of the single flat parameter tensor from its flat gradient ``grad``
        (decayed in place: it is the step's own buffer).  With momentum: ATen's fused SGD
        kernel (``torch.optim.SGD(fused=True)``'s), one call for decay, buffer and update: without
        weight decay the same values bit for bit (measured over 60 steps, float32 and float64);
        its decay term rounds differently (8e-7 relative after 30 steps at weight_decay 1e-2)."""
        if self.momentum:
            first = self._buffer is None
            if first:
                self._buffer = torch.empty_like(grad)
                self.buffers = [self._buffer]
                self._lists = ([self._flat], [grad], self.buffers)
            params, grads, buffers = self._lists
            if grads[0] is not grad:
                grads = [grad]
            torch._fused_sgd_(params, grads, buffers, weight_decay=self.weight_decay, momentum=self.momentum,
                              lr=self.lr, dampening=0.0, nesterov=False, maximize=False, is_first_step=first)
            return
        if self.weight_decay:
            grad.add_(self._flat, alpha=self.weight_decay)
        self._flat.add_(grad, alpha=self._neg_lr)

    def state(self) -> dict:
        return {"momentum_buffer": self.buffers}


class FusedAdam:
    """``torch.optim.Adam`` with its defaults (betas (0.9, 0.999), eps 1e-8), the
    single-tensor implementation's order: with weight decay ``g += weight_decay * p`` first
    (the L2 penalty, before the moments), ``m.lerp_(g, 1-b1)``, ``v = b2 v + (1-b2) g g``,
    ``denom = sqrt(v) / sqrt(1-b2^t) + eps``, ``p -= lr / (1-b1^t) * m / denom``.

    On the trainer's single flat buffer (:meth:`apply`): one in-place op per arithmetic step,
    ``sqrt`` into a buffer kept across steps, the constant factors as 0-dim tensors.

    ``capturable=True`` (CUDA graphs): the step count is a 0-dim tensor on the device and
    the update is torch.optim's capturable order, ``denom = sqrt(v) / (sqrt(1-b2^t) * -s)
    + eps / -s`` with ``s = lr / (1-b1^t)``, then ``p += m / denom``."""

    def __init__(self, params: List[torch.Tensor], spec: OptimizerSpec, betas=(0.9, 0.999), eps: float = 1e-8,
                 capturable: bool = False):
        self.params, self.lr, self.eps = params, spec.lr, eps
        self.weight_decay = spec.weight_decay
        self.beta1, self.beta2 = betas
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.capturable = capturable
        self.t = step_counter(params[0].device) if capturable else 0
        self._flat = params[0] if len(params) == 1 and not capturable else None
        self._lists = None
        if self._flat is not None:
            self._step = torch.zeros((), dtype=torch.float32, device=self._flat.device)  # torch.optim's step dtype

    def __call__(self, grads: List[torch.Tensor]) -> None:
        if self._flat is not None:
            return self.apply(grads[0])
        b1, b2 = self.beta1, self.beta2
        if self.weight_decay:
            torch._foreach_add_(grads, self.params, alpha=self.weight_decay)
        torch._foreach_lerp_(self.m, grads, 1 - b1)
        torch._foreach_mul_(self.v, b2)
        torch._foreach_addcmul_(self.v, grads, grads, 1 - b2)
        if self.capturable:
            t = self.t.add_(1)
            step_size_neg = (self.lr / (1 - b1**t)).neg()
            correction2_sqrt = (1 - b2**t).sqrt()
            for p, m, v in zip(self.params, self.m, self.v):
                p.addcdiv_(m, (v.sqrt() / (correction2_sqrt * step_size_neg)).add_(self.eps / step_size_neg))
            return
        self.t += 1
        step = float(self.t)
        step_size = self.lr / (1 - b1**step)
        correction2_sqrt = (1 - b2**step) ** 0.5
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, self.m, denom, -step_size)

    def apply(self, grad: torch.Tensor) -> None:
        """The update of the single flat parameter tensor from its flat gradient ``grad``: ATen's
        fused Adam kernel (``torch.optim.Adam(fused=True)``'s, the ``tuned`` style's), one call
        instead of seven; its vectorised arithmetic rounds differently from the single-tensor
        order by about one ulp (1.2e-7 relative over 60 steps, float32).  The step count stays
        a Python number, written into the kernel's step tensor each step (``fill_``), so a
        captured graph would still see it change (as the foreach form, it is not capturable)."""
        if self._lists is None or self._lists[1][0] is not grad:
            self._lists = ([self._flat], [grad], self.m, self.v, [], [self._step])
        self.t += 1
        self._step.fill_(self.t)
        torch._fused_adam_(*self._lists, lr=self.lr, beta1=self.beta1, beta2=self.beta2,
                           weight_decay=self.weight_decay, eps=self.eps, amsgrad=False, maximize=False)

    def state(self) -> dict:
        return {"step": self.t, "exp_avg": self.m, "exp_avg_sq": self.v}


# --- the optimizer table -------------------------------------------------------------------------
#
# OPTIMIZERS[kind][implementation]: (parameters, OptimizerSpec, capturable) -> optimizer, one
# entry per documented optimizer (OptimizerSpec.kind) and per way a style writes it:
#   torch  torch.optim as a user writes it (module, sequential, dataloader, as_written)
#   tuned  torch.optim with its fastest implementation on the device (fused=True, else foreach)
#   raw    the hand-written update of the raw style (plain tensor arithmetic, grads zeroed)
#   fused  torch.optim's arithmetic on the fused style's one flat buffer
# torch.optim.SGD has no ``capturable`` flag: nothing in its step depends on the step count.


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


OPTIMIZERS = {
    "sgd": {
        "torch": lambda params, spec, capturable=False: torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay),
        "tuned": lambda params, spec, capturable=False: _tuned(
            torch.optim.SGD, params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay),
        "raw": lambda params, spec, capturable=False: RawSGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay),
        "fused": FusedSGD,
    },
    "adam": {
        "torch": lambda params, spec, capturable=False: torch.optim.Adam(
            params, lr=spec.lr, weight_decay=spec.weight_decay, capturable=capturable),
        "tuned": lambda params, spec, capturable=False: _tuned(
            torch.optim.Adam, params, lr=spec.lr, weight_decay=spec.weight_decay, capturable=capturable),
        "raw": lambda params, spec, capturable=False: RawAdam(
            params, lr=spec.lr, capturable=capturable, weight_decay=spec.weight_decay),
        "fused": lambda params, spec, capturable=False: FusedAdam(params, spec, capturable=capturable),
    },
}


def make_optimizer(implementation: str, params, spec: OptimizerSpec, capturable: bool = False):
    """The documented optimizer ``spec`` in one ``implementation`` of :data:`OPTIMIZERS`."""
    return OPTIMIZERS[spec.kind][implementation](params, spec, capturable=capturable)
