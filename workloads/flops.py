"""FLOPs per optimizer step, and the machine's measured matmul throughput to compare them with.

FLOPs are counted analytically from the layer shapes: each ``nn.Linear`` costs
``2 * in * out`` per row and each ``nn.Conv2d`` ``2 * C_in/groups * kh * kw * C_out * H_out * W_out``
per row (multiply-adds as two FLOPs; biases, activations, pooling and the loss are
left out: they are a few percent at most).  The output shapes come from one forward
pass of a single zero row through ``build_module()`` with hooks.  A training step is
counted as 3x its forward (the backward computes the gradients of the inputs and of
the weights, each about one forward), over the mean rows of a step.

The throughput is a short ``torch.mm`` benchmark of square matrices at the runs' thread
count, best of ten 20 ms windows (this machine is shared: the best is the closest to
what the hardware gives; ``compare`` measures before and after its runs and keeps
the better).  ``share = FLOPs per step / step time / throughput``.
"""

from __future__ import annotations

import math
import time
from typing import Dict

import torch
from torch import nn

from .registry import Workload

BACKWARD_FACTOR = 3  # forward + backward ~ 3x the forward's matmul / conv FLOPs


def forward_flops_per_row(workload: Workload, sample: torch.Tensor) -> int:
    """Matmul and convolution FLOPs of one forward pass of one row (``sample``: one row of X)."""
    model = workload.build_module().to(sample.dtype)
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            spatial = output.shape[-1] * output.shape[-2]
            total += 2 * (module.in_channels // module.groups) * kh * kw * module.out_channels * spatial

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            model(torch.zeros_like(sample[:1]))
    finally:
        for h in handles:
            h.remove()
    return total


def rows_per_step(n_train: int, batch_size) -> float:
    """Mean rows of one step over a pass (the last batch of a pass may be short)."""
    if batch_size is None or batch_size >= n_train:
        return float(n_train)
    return n_train / math.ceil(n_train / batch_size)


def step_flops(workload: Workload, X_train: torch.Tensor, batch_size) -> float:
    rows = rows_per_step(int(X_train.shape[0]), batch_size)
    return BACKWARD_FACTOR * forward_flops_per_row(workload, X_train) * rows


def matmul_throughput(dtype: torch.dtype = torch.float32, threads: int = 1, n: int = 512,
                      repeats: int = 10, min_time: float = 0.02) -> float:
    """Best FLOP/s of ``torch.mm`` on n x n matrices with ``threads`` intra-op threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=generator, dtype=dtype)
        b = torch.randn(n, n, generator=generator, dtype=dtype)
        out = torch.empty(n, n, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up
        best = 0.0
        for _ in range(repeats):
            count, start = 0, time.perf_counter()
            while True:
                torch.mm(a, b, out=out)
                count += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_time:
                    break
            best = max(best, 2 * n**3 * count / elapsed)
        return best
    finally:
        torch.set_num_threads(previous)


def throughputs(dtypes, threads: int = 1) -> Dict[str, float]:
    """Measured peak matmul FLOP/s per dtype name (e.g. ``{"float32": 9.1e10}``)."""
    return {str(d).replace("torch.", ""): matmul_throughput(d, threads) for d in dtypes}
