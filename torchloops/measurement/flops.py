"""FLOPs per optimizer step, and the machine's measured matmul throughput to compare them with.

One source of FLOPs for the whole suite: :func:`count_step_flops` runs one real step
under ``torch.utils.flop_counter.FlopCounterMode`` and takes its total.  FlopCounterMode
counts the ATen operations that actually ran, with a formula per operation: ``mm``,
``addmm``, ``bmm`` (``2 m n k``; addmm's bias add is not counted), ``convolution`` and
``convolution_backward`` (``2 x`` the multiply-adds of each gradient its output mask asks
for: a first layer whose input needs no gradient costs one product, not two), attention
kernels.  Everything else counts zero: elementwise operations (ReLU, sigmoid, their
backward, bias and optimizer updates), reductions (bias gradients, the loss), pooling,
softmax and copies.  These are the FLOPs a matmul-bound peak can be compared with.

:func:`step_flops` is ``compare``'s figure: one real step of the ``module`` style
(autograd's backward: no gradient for the input batch), on the run's first batch,
scaled to the mean rows of a step over a pass (FLOPs are linear in the rows here;
the last batch of a pass may be short).  ``torchloops profile`` counts the profiled
style's own step with the same function.

The throughput is a short ``torch.mm`` benchmark of square matrices at the runs' thread
count, best of ten 20 ms windows (this machine is shared: the best is the closest to
what the hardware gives; ``compare`` measures before and after its runs and keeps
the better).  ``share = FLOPs per step / step time / throughput``.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, Optional

import torch

from torchloops.core.registry import Workload


def _slow_conv2d_formulas() -> dict:
    """FlopCounterMode formulas for ATen's im2col convolution kernels, which the ``fused``
    LeNet step calls directly: torch 2.13's own entry for ``_slow_conv2d_forward`` passes
    that op's arguments to the ``convolution`` formula (and fails: no ``transposed``
    argument), and it has none for ``_slow_conv2d_backward``.  These are the
    ``convolution`` / ``convolution_backward`` formulas (same counts, checked in
    tests/test_profile.py) with the arguments mapped."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def forward(x_shape, w_shape, _kernel_size, _bias, _stride, _padding, *, out_shape=None, **_kwargs):
        return fc.conv_flop_count(x_shape, w_shape, out_shape, transposed=False)

    def backward(grad_shape, x_shape, w_shape, _kernel_size, _stride, _padding, output_mask, *, out_shape=None,
                 **_kwargs):
        # as convolution_backward's formula: the input gradient (a transposed convolution of
        # the output gradient) and the weight gradient each cost the forward's products
        forward_flops = fc.conv_flop_count(x_shape, w_shape, grad_shape, transposed=False)
        return forward_flops * (int(bool(output_mask[0])) + int(bool(output_mask[1])))

    return {aten._slow_conv2d_forward: forward, aten._slow_conv2d_backward: backward}


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of one call of ``fn(*args, **kwargs)``, by ``FlopCounterMode`` (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_slow_conv2d_formulas()) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def count_step_flops(trainer, batch) -> int:
    """FLOPs of one real ``trainer.step(*batch)`` (the step runs: the trainer's parameters move)."""
    return count_flops(trainer.step, *batch)


def rows_per_step(n_train: int, batch_size) -> float:
    """Mean rows of one step over a pass (the last batch of a pass may be short)."""
    if batch_size is None or batch_size >= n_train:
        return float(n_train)
    return n_train / math.ceil(n_train / batch_size)


def step_flops(workload: Workload, seed: int = 0, batch_size: Optional[int] = None) -> float:
    """FLOPs of one ``module``-style training step of ``workload`` (forward, loss, autograd's
    backward, optimizer), counted by FlopCounterMode over the first batch of the run with
    ``seed`` and scaled to the mean rows of a step (``batch_size`` None: the workload's)."""
    from torchloops.measurement.runner import build, configure

    config = configure(workload.name, "module", "cpu", seed, steps=1, batch_size=batch_size)
    previous = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        trainer, batcher, _plan, split = build(config)
        xb, yb = next(iter(batcher.epoch(0)))
        flops = count_step_flops(trainer, (xb, yb))
    finally:
        torch.set_num_threads(previous)
    return flops * rows_per_step(split.n_train, config.batch_size) / int(xb.shape[0])


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


def peak_applies(record: dict) -> bool:
    """Whether :func:`throughputs` (a ``torch.mm`` benchmark on the CPU) is the ceiling of this
    record's steps: only for runs that computed on the CPU (``cpu``; ``ddp`` over gloo).  A GPU
    row's share of the CPU's one-thread peak would be a meaningless figure far above 100 %, so
    ``compare`` prints none for it (no GPU peak is measured)."""
    from torchloops.execution.placements import PLACEMENTS

    name = record.get("device")
    if name not in PLACEMENTS.names():
        return False
    if name == "ddp":  # its device follows the backend the ranks joined with
        return record.get("backend") == "gloo"
    return PLACEMENTS.get(name).device_type == "cpu"
