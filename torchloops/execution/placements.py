"""Where a workload runs: availability (with the reason when not), device, wrap, sync.

A placement never knows a workload by name; it only moves tensors, wraps a model,
combines gradients and synchronises the device around timed regions.  ``cuda_graph`` is
``cuda`` with every step captured once and replayed (:mod:`torchloops.execution.graphs`).  ``ddp``
also shards each global batch over the ranks (each batch then carries its weight, its share
of the global batch) and sums the weighted shards' gradients (its :class:`Reduction`; see
:mod:`torchloops.execution.distributed`); the single-process placements leave both as they are.  A
style's trainer is the same class on every placement.
"""

from __future__ import annotations

import platform
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn

from torchloops.execution import distributed
from torchloops.execution.graphs import CudaGraphs, GraphedTrainer
from torchloops.core.registry import Availability, Table


PLACEMENTS = Table("placement")


@dataclass(frozen=True)
class Reduction:
    """How a placement turns one process's gradients into the global batch's: the part of a
    training step that is the placement's, called by every style's one ``step``.

    A batch without a weight is the global batch (one process): ``backward`` is
    ``loss.backward()`` and nothing else happens.  A weighted batch (ddp: ``weight`` is this
    shard's rows over the global batch's) back-propagates ``loss * weight * loss_scale``:
    ``loss_scale`` is the world size when a ``DistributedDataParallel`` wrapper averages the
    gradients over the ranks, 1 when the trainer has no wrapper and ``all_reduce`` sums the
    weighted shard gradients instead (raw, fused, the notes' raw loop).  The sum of the
    weighted shard-mean gradients is the global-batch mean gradient; the loss a step returns
    is its weighted shard loss (the runner sums them over the ranks after training)."""

    loss_scale: int = 1
    all_reduce: Optional[Callable[[torch.Tensor], object]] = None  # in-place sum over the ranks

    def backward(self, loss: torch.Tensor, weight: Optional[float] = None, **kwargs) -> None:
        (loss if weight is None else loss * (weight * self.loss_scale)).backward(**kwargs)

    def sum_grads(self, params) -> None:
        """Sum the parameters' ``.grad`` over the ranks, one ``all_reduce`` of a flat copy."""
        if self.all_reduce is None:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        self.all_reduce(flat)
        with torch.no_grad():
            for p, g in zip(params, flat.split([p.numel() for p in params])):
                p.grad.copy_(g.view_as(p.grad))

    def sum_flat(self, flat: torch.Tensor, loss: torch.Tensor, weight: float) -> torch.Tensor:
        """A flat gradient of a shard's mean loss, weighted and summed over the ranks in place;
        returns the weighted loss (the fused style: no backward to weight)."""
        flat.mul_(weight)
        if self.all_reduce is not None:
            self.all_reduce(flat)
        return loss * weight

    @staticmethod
    def loss(loss: torch.Tensor, weight: Optional[float] = None) -> torch.Tensor:
        """The loss a step returns: its value, weighted by the batch's share of the global batch."""
        return loss.detach() if weight is None else loss.detach() * weight


LOCAL = Reduction()  # one process: the batch is the global batch


def _cuda_availability() -> Availability:
    if torch.version.cuda is None:
        return Availability(False, f"this torch build ({torch.__version__}) has no CUDA support")
    if not torch.cuda.is_available():
        return Availability(False, "no CUDA device visible (torch.cuda.is_available() is False)")
    return Availability(True)


def _ddp_availability() -> Availability:
    problem = distributed.backend_problem()
    if problem:
        return Availability(False, problem)
    if not (distributed.launched_by_torchrun() or distributed.is_initialized()):
        return Availability(
            False,
            f"runs as one process per rank under torchrun (backend {distributed.backend_name()} here), "
            "not in this single process: start it with `torchloops run WORKLOAD --device ddp --nproc N`, "
            "or `torchrun --nproc-per-node N -m torchloops run WORKLOAD --device ddp`",
        )
    if distributed.use_cuda() and distributed.local_rank() >= torch.cuda.device_count():
        return Availability(
            False,
            f"local rank {distributed.local_rank()} has no GPU of its own "
            f"({torch.cuda.device_count()} visible; nccl needs one GPU per rank)",
        )
    return Availability(True)


def unwrap_state_dict(state: Dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """A state_dict saved from an ``nn.DataParallel`` or ``DistributedDataParallel`` model
    (keys ``module.<name>``) as the plain model's (``<name>``): loads with ``load_state_dict``."""
    prefix = "module."
    return OrderedDict((k[len(prefix):] if k.startswith(prefix) else k, v) for k, v in state.items())


def _dataparallel_availability() -> Availability:
    cuda = _cuda_availability()
    if not cuda.ok:
        # On CPU nn.DataParallel is a silent pass-through: timing it would time a no-op wrapper.
        return Availability(False, f"nn.DataParallel needs CUDA devices: {cuda.reason}")
    gpus = torch.cuda.device_count()
    if gpus < 2:
        # torch/nn/parallel/data_parallel.py, forward(): ``if len(self.device_ids) == 1:
        # return self.module(*inputs[0], **module_kwargs[0])``: one GPU is the cuda run renamed.
        return Availability(
            False, f"nn.DataParallel is a pass-through on one GPU: it scatters over 2+ GPUs ({gpus} visible)"
        )
    return Availability(True)


# Devices whose one-off start-up (context, cuBLAS/cuDNN handles, lazily loaded kernel
# modules) this process has already paid, untimed, in a placement's setup.
_WARMED: set = set()


def warm_up(device: torch.device) -> None:
    """Pay a device's one-off start-up before anything is timed: a float32 and a float64
    matmul (cuBLAS handle and workspace), a convolution forward and backward (cuDNN handle,
    its kernels), a reduction and an elementwise kernel, then a synchronisation.  Once per
    device per process; on the CPU it just runs the same small operations."""
    key = str(device)
    if key in _WARMED:
        return
    for dtype in (torch.float32, torch.float64):
        a = torch.ones(8, 8, dtype=dtype, device=device)
        (a @ a).sum().item()
    x = torch.ones(2, 1, 8, 8, device=device, requires_grad=True)
    w = torch.ones(2, 1, 3, 3, device=device, requires_grad=True)
    torch.nn.functional.conv2d(x, w).relu().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    _WARMED.add(key)


def strict_float32() -> None:
    """float32 means float32 on the GPU too: no TensorFloat-32 in cuBLAS matmuls or cuDNN
    convolutions.  torch's defaults differ by library: cuBLAS matmuls are IEEE float32
    (``float32_matmul_precision`` "highest"), but cuDNN convolutions run in TF32 unless told
    otherwise (torch/backends/cudnn/__init__.py, ``allow_tf32``; ATen/Context.h keeps
    ``{CUDA, CONV}`` at ``DEFAULT``, read back as "tf32") on Ampere and later GPUs, so LeNet's
    convolutions would carry 10-bit mantissas while its records say float32.  The legacy flags
    are used (not ``fp32_precision = "ieee"``): mixing the two APIs makes torch's own
    ``torch.backends.cudnn.allow_tf32`` getter raise.  Process-wide; CPU kernels ignore both."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def float32_precision() -> str:
    """What float32 means on CUDA in this process now, for the record (``device_name``)."""
    try:
        flags = (("cuBLAS", torch.backends.cuda.matmul.allow_tf32), ("cuDNN", torch.backends.cudnn.allow_tf32))
    except RuntimeError:  # someone mixed the legacy and the fp32_precision APIs: ask the new one
        flags = (("cuBLAS", torch.backends.cuda.matmul.fp32_precision == "tf32"),
                 ("cuDNN", torch.backends.cudnn.conv.fp32_precision == "tf32"))
    tf32 = [name for name, on in flags if on]
    return f"float32 with TF32 in {' and '.join(tf32)}" if tf32 else "float32 IEEE (TF32 off)"


def _reset_peak_memory_stats(device: torch.device) -> None:
    """``torch.cuda.reset_peak_memory_stats(device)``, safe in a process where CUDA is not
    initialised yet.  torch/cuda/memory.py's ``reset_peak_memory_stats`` goes straight to
    ``torch._C._cuda_resetPeakMemoryStats(device)`` with an explicit index (only ``None``
    makes ``_get_device_index`` ask ``current_device()``, which runs ``_lazy_init``), and the
    caching allocator refuses a device it has not been initialised for ("Invalid device
    argument 0: did you call init?"); ``max_memory_allocated`` is guarded by
    ``memory_stats_as_nested_dict``'s ``if not is_initialized(): return {}``, the reset is
    not.  So: initialise first."""
    if not torch.cuda.is_initialized():
        torch.cuda.init()
    torch.cuda.reset_peak_memory_stats(device)


def _cuda_graph_availability() -> Availability:
    cuda = _cuda_availability()
    if not cuda.ok:
        return Availability(False, f"CUDA graphs capture CUDA kernels: {cuda.reason}")
    return Availability(True)


@dataclass(frozen=True)
class Placement:
    name: str
    description: str
    # "cpu" or "cuda"; "backend" (ddp): the backend a rank joins with decides, ask device().type.
    # Never computed at import: see the ddp registration below.
    device_type: str
    check: Callable[[], Availability]
    wraps_module: bool = False  # True: the model is wrapped, so the raw style does not apply
    # (device) -> capture/replay backend: each step captured once and replayed (torchloops.execution.graphs)
    graphs: Optional[Callable[[torch.device], object]] = None

    def availability(self) -> Availability:
        return self.check()

    def applies_to(self, style, workload=None) -> Availability:
        """Whether this placement applies to ``style`` (on ``workload``: as_written is each
        workload's own loop, and mlp_sgd's has no nn.Module to wrap)."""
        if self.wraps_module and not style.uses_module_for(workload):
            whose = f"{workload.name}'s {style.name} loop" if workload is not None and style.uses_module \
                else f"the {style.name} style"
            return Availability(False, f"{self.name} wraps an nn.Module; {whose} has none")
        if self.captures_steps and style.capture_problem:
            return Availability(False, f"{self.name} does not apply to the {style.name} style: {style.capture_problem}")
        return Availability(True)

    @property
    def captures_steps(self) -> bool:
        """Whether steps are captured and replayed: the trainers then build capturable optimizers."""
        return self.graphs is not None

    def wrap_trainer(self, trainer):
        """The trainer as this placement steps it: captured and replayed, or as it is."""
        if self.graphs is None:
            return trainer
        return GraphedTrainer(trainer, self.graphs(self.device()))

    def device(self) -> torch.device:
        return torch.device("cuda:0" if self.device_type == "cuda" else "cpu")

    def wrap(self, model: nn.Module) -> nn.Module:
        return nn.DataParallel(model) if self.wraps_module else model

    def sync(self) -> None:
        """Wait for queued device work, so that a timer read after it is honest."""
        if self.device_type == "cuda":
            torch.cuda.synchronize()

    def device_name(self) -> str:
        if self.device_type == "cuda":
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            name = names[0] if not self.wraps_module else f"{len(names)}x {names[0]}"
            return f"{name}, {float32_precision()}"
        return platform.processor() or platform.machine() or "cpu"

    # --- what a multi-process placement changes; one process: nothing -----------------------

    def world_size(self) -> int:
        return 1

    def backend(self) -> Optional[str]:
        return None

    def setup(self) -> None:
        """Prepare the process before a run is built (untimed): on CUDA, float32 without TF32
        (:func:`strict_float32`) and the devices' one-off start-up paid (:func:`warm_up`);
        ddp: join the process group first."""
        if self.device_type == "cuda":
            strict_float32()
            for device in self.devices():
                warm_up(device)

    def devices(self) -> list:
        """Every device a run of this placement computes on (DataParallel: every visible GPU)."""
        if self.device_type == "cuda" and self.wraps_module:
            return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        return [self.device()]

    def reduction(self, wrapped: bool) -> Reduction:
        """How a trainer's gradients become the global batch's (``wrapped``: its model went
        through :meth:`wrap`); one process: they already are."""
        return LOCAL

    def shard(self, plan):
        """The plan of the rows this process trains on, and each batch's weight (its share of
        the global batch; None: every batch is the global batch).  One process: the whole plan."""
        return plan, None

    def agree(self, flag: bool) -> bool:
        """Whether to stop training: the same answer in every process."""
        return flag

    def reduce_step_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """Per-step losses of the global batch (ddp: the sum of the ranks' weighted shard losses)."""
        return losses

    def reset_peak_memory(self) -> None:
        """Start this placement's peak-memory count (safe before CUDA is initialised)."""
        if self.device().type == "cuda":
            _reset_peak_memory_stats(self.device())

    def peak_memory_bytes(self) -> Optional[int]:
        """Peak memory allocated by torch on this placement's (first) GPU; None off CUDA."""
        if self.device().type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device()))
        return None

    def memory_allocated_bytes(self) -> Optional[int]:
        """Memory allocated by torch on this placement's (first) GPU now (0 before CUDA is
        initialised: ``memory_stats`` answers ``{}`` then); None off CUDA."""
        if self.device().type == "cuda":
            return int(torch.cuda.memory_allocated(self.device()))
        return None


@dataclass(frozen=True)
class DistributedPlacement(Placement):
    """``DistributedDataParallel``, one process per rank under torchrun: gloo ranks on the CPU,
    nccl ranks on CUDA (``cuda:LOCAL_RANK``); ``--backend`` chooses (default nccl when CUDA is
    visible, else gloo).  The raw style applies: it averages gradients itself."""

    def launch_availability(self, nproc: int) -> Availability:
        """Whether ``torchloops run --device ddp --nproc N`` can start its ranks here."""
        problem = distributed.backend_problem()
        if problem:
            return Availability(False, problem)
        return Availability(True)

    def device(self) -> torch.device:
        return distributed.device()

    def sync(self) -> None:
        if distributed.use_cuda():
            torch.cuda.synchronize(self.device())

    def device_name(self) -> str:
        name = distributed.device_name()
        return f"{name}, {float32_precision()}" if self.device().type == "cuda" else name

    def world_size(self) -> int:
        return distributed.world_size()

    def backend(self) -> Optional[str]:
        return distributed.backend_name()

    def setup(self) -> None:
        distributed.ensure_process_group()  # nccl: sets this rank's GPU first
        if self.device().type == "cuda":
            strict_float32()
            warm_up(self.device())

    def devices(self) -> list:
        return [self.device()]

    def wrap(self, model: nn.Module) -> nn.Module:
        return distributed.wrap(model)

    def reduction(self, wrapped: bool) -> Reduction:
        if wrapped:  # DistributedDataParallel averages over the ranks in backward
            return Reduction(loss_scale=distributed.world_size())
        return Reduction(all_reduce=distributed.all_reduce_sum)

    def shard(self, plan):
        return distributed.shard_plan(plan, distributed.rank(), distributed.world_size())

    def agree(self, flag: bool) -> bool:
        return distributed.agree(flag)

    def reduce_step_losses(self, losses: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_sum(losses.clone())


PLACEMENTS.register(
    Placement("cpu", "one process, CPU tensors", "cpu", lambda: Availability(True))
)
PLACEMENTS.register(
    Placement("cuda", "one process, model and data on cuda:0", "cuda", _cuda_availability)
)
PLACEMENTS.register(
    Placement(
        "cuda_graph",
        "cuda, each training step captured once as a CUDA graph and replayed",
        "cuda",
        _cuda_graph_availability,
        graphs=CudaGraphs,
    )
)
PLACEMENTS.register(
    Placement(
        "dataparallel",
        "nn.DataParallel over the visible GPUs (single process)",
        "cuda",
        _dataparallel_availability,
        wraps_module=True,
    )
)
PLACEMENTS.register(
    DistributedPlacement(
        "ddp",
        "DistributedDataParallel, one process per rank started by torchrun (--backend gloo: CPU ranks; "
        "nccl: one GPU per rank; default nccl when CUDA is visible, else gloo)",
        # decided when asked, not at import: each rank's device() follows the backend it joined
        # with, and asking whether CUDA is visible here would initialise the CUDA driver in the
        # importing process (torch.cuda.is_available -> cudaGetDeviceCount) and poison every fork
        "backend",
        _ddp_availability,
    )
)
