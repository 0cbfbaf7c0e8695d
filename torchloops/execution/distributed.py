"""DistributedDataParallel: one process per rank, started by ``torchrun``.

What a rank does differently from the single-process run, and nothing else:

* **process group**: ``init_process_group`` from torchrun's environment
  (``env://``) with the backend ``--backend`` asks for (:func:`select_backend`;
  default nccl when CUDA is visible, else gloo): gloo ranks train on the CPU, nccl
  ranks on one GPU each (``cuda:LOCAL_RANK``); records report ``dist.get_backend()``;
* **sharding**: every rank follows the one batch plan of :mod:`torchloops.core.data`
  and takes its contiguous share of each *global* batch (``tensor_split``
  sizes: the first ``n % W`` ranks get one row more; the same rule for manual
  slicing and for the DataLoader's batch sampler), so that the union of the
  shards is the single-process batch;
* **loss weighting**: a shard of ``n_r`` rows of a global batch of ``N`` has the
  share ``n_r / N``.  The global-batch mean gradient is ``sum_r share_r * g_r``
  (``g_r`` the shard-mean gradient): DDP averages gradients over the ``W`` ranks,
  so the nn styles back-propagate ``loss_r * share_r * W``; the styles without a module
  (raw, fused, the notes' raw loop) back-propagate ``loss_r * share_r`` (fused: scale their
  flat gradient) and sum the gradients with one ``all_reduce`` (the shard-size-weighted
  average), then run their update.  Both are the ddp placement's
  :class:`~torchloops.execution.placements.Reduction`, called by each style's one ``step``; a batch
  carries its share as its weight, ``(x, y, weight)``.  With equal shards both are the plain
  average of the rank gradients;
* **the recorded loss** of a step is the global-batch loss
  ``sum_r share_r * loss_r``: each rank keeps its weighted shard losses and one
  ``all_reduce`` after training sums them (no extra collective inside a step);
* **evaluation** runs on every rank's identical replica; rank 0 reports, and the
  decision to stop (target reached, divergence) is agreed by all ranks.
"""

from __future__ import annotations

import datetime
import os
import platform
from typing import List, Optional, Tuple

import torch
from torch import nn

from torchloops.core.data import BatchEntry, entry_size

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("TORCHLOOPS_DDP_TIMEOUT_S", "600")))


def _dist():
    import torch.distributed as dist

    return dist


# --- where are we ----------------------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """True inside a process that torchrun (or any ``env://`` launcher) started as a rank."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


BACKENDS = ("gloo", "nccl")
_requested: Optional[str] = None  # --backend, for this process and the ranks it starts


def cuda_visible() -> bool:
    """Whether this torch build has CUDA and a GPU is visible."""
    return torch.version.cuda is not None and torch.cuda.is_available()


def default_backend() -> str:
    """The backend a ddp run gets unless ``--backend`` says otherwise: nccl when CUDA is
    visible, else gloo."""
    return "nccl" if cuda_visible() else "gloo"


def select_backend(name: Optional[str]) -> None:
    """``--backend``: the process group's backend for this process (None: the default).

    gloo ranks train on the CPU even where GPUs are visible; nccl ranks train on
    ``cuda:LOCAL_RANK``.  Raises :class:`UsageError` for a backend that cannot run here."""
    global _requested
    from torchloops.core.registry import UsageError

    if name is not None and name not in BACKENDS:
        raise UsageError(f"--backend {name!r} is not a ddp backend; valid: {', '.join(BACKENDS)}")
    if name == "nccl" and not cuda_visible():
        why = (f"this torch build ({torch.__version__}) has no CUDA support" if torch.version.cuda is None
               else "no CUDA device is visible")
        raise UsageError(f"--backend nccl needs one GPU per rank and {why}; valid here: gloo")
    _requested = name


def requested_backend() -> str:
    """The backend this process would initialise its group with: ``--backend``, else the default."""
    return _requested or default_backend()


def backend_name() -> str:
    """The backend of this process's group when it has joined one (``dist.get_backend()``),
    else the one it would join with."""
    if is_initialized():
        return str(_dist().get_backend())
    return requested_backend()


def use_cuda() -> bool:
    """Whether the ranks train on GPUs: nccl (one GPU per rank); gloo ranks use the CPU."""
    return backend_name() == "nccl" and cuda_visible()


def backend_problem() -> Optional[str]:
    """Why torch.distributed cannot run here at all (None when it can)."""
    dist = _dist()
    if not dist.is_available():
        return f"this torch build ({torch.__version__}) has no torch.distributed"
    backend = backend_name()
    if backend == "nccl" and not cuda_visible():
        return "the nccl backend needs one GPU per rank and no CUDA device is visible"
    if backend == "nccl" and not dist.is_nccl_available():
        return f"CUDA is visible but this torch build ({torch.__version__}) has no NCCL backend"
    if backend == "gloo" and not dist.is_gloo_available():
        return f"this torch build ({torch.__version__}) has no gloo backend"
    return None


def is_initialized() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if is_initialized():
        return _dist().get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if is_initialized():
        return _dist().get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def device() -> torch.device:
    return torch.device(f"cuda:{local_rank()}") if use_cuda() else torch.device("cpu")


def device_name() -> str:
    if use_cuda():
        return torch.cuda.get_device_name(device())
    return platform.processor() or platform.machine() or "cpu"


def ensure_process_group() -> None:
    """Join torchrun's process group once per process (later runs reuse it)."""
    if is_initialized():
        return
    dist = _dist()
    backend = requested_backend()
    if backend == "nccl":
        torch.cuda.set_device(device())
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device())
    else:
        dist.init_process_group(backend, timeout=TIMEOUT)


def shutdown() -> None:
    if is_initialized():
        _dist().destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    _dist().all_reduce(tensor)
    return tensor


def agree(flag: bool) -> bool:
    """True on every rank when it is true on any: ranks stop training together."""
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device())
    _dist().all_reduce(t, op=_dist().ReduceOp.MAX)
    return bool(t.item())


# --- sharding --------------------------------------------------------------------------------


def shard_sizes(n: int, world: int) -> List[int]:
    """``tensor_split`` sizes: the first ``n % world`` ranks take one row more."""
    base, extra = divmod(n, world)
    return [base + (1 if r < extra else 0) for r in range(world)]


def shard_entry(entry: BatchEntry, rank_: int, world: int) -> Tuple[BatchEntry, float]:
    """This rank's contiguous part of one global batch, and its share ``n_r / N``."""
    n = entry_size(entry)
    sizes = shard_sizes(n, world)
    start = sum(sizes[:rank_])
    size = sizes[rank_]
    if isinstance(entry, slice):  # stays a slice: manual slicing stays a view
        part = slice(entry.start + start, entry.start + start + size)
    else:
        part = entry[start : start + size]
    return part, size / n


def smallest_batch(n_train: int, batch_size: Optional[int]) -> int:
    """The fewest rows any step of a plan sees (the short last batch of a pass, if any)."""
    size = n_train if batch_size is None else min(batch_size, n_train)
    return n_train % size or size


def shard_plan(plan, rank_: int, world: int):
    """Per epoch: this rank's plan entries, and their weights (shares of the global batches)."""
    local, shares = [], []
    for epoch in plan:
        parts = [shard_entry(entry, rank_, world) for entry in epoch]
        local.append([p for p, _ in parts])
        shares.append([s for _, s in parts])
    return local, shares


def wrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device().index] if use_cuda() else None
    return DistributedDataParallel(model, device_ids=ids)
