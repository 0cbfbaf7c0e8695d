"""Checkpoints of a trained model (and its ``torch.optim`` state): safe to load, checked before use.

A checkpoint is a plain dict of tensors, numbers, strings and lists, saved with
``torch.save`` to a temporary file beside the target and renamed (never a
half-written file), and read back with ``torch.load(weights_only=True)``: a file
holding any other pickled object (one that would run code when unpickled) is
refused with :class:`CheckpointError` and nothing in it runs.  Before a
checkpoint is used, its workload, parameter names, shapes and dtype are compared
with the workload's model; a mismatch is refused with a message naming both.

Parameter names are the workload's ``build_module`` names whatever the style
(the trainers' ``state_dict``), so a checkpoint of any style loads into any other.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from typing import Dict, Optional

import torch
from torch import nn

from torchloops.support.outputs import output_file
from torchloops.core.registry import UsageError, Workload, get_workload

FORMAT = "torchloops-checkpoint"
VERSION = 1


class CheckpointError(UsageError):
    """A checkpoint that cannot be written, read or used: one line, exit status 2 on the command line."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def expected_shapes(workload: Workload) -> "OrderedDict[str, tuple]":
    """The parameter names and shapes of ``workload``'s model, in ``build_module`` order."""
    return OrderedDict((n, tuple(p.shape)) for n, p in workload.build_module().named_parameters())


def save(path: str, workload: str, parameters: Dict[str, torch.Tensor],
         optimizer_state: Optional[dict] = None, info: Optional[dict] = None) -> None:
    """Check ``parameters`` against ``workload``'s model and write the checkpoint atomically."""
    wl = get_workload(workload)
    parameters = OrderedDict((n, t.detach().cpu().clone()) for n, t in parameters.items())
    _check_parameters(wl, parameters, f"parameters being saved for {wl.name}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "workload": wl.name,
        "dtype": _dtype_name(wl.dtype),
        "shapes": {n: list(t.shape) for n, t in parameters.items()},
        "parameters": parameters,
        "optimizer": optimizer_state,
        "info": dict(info or {}),
    }
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path {path!r} is a directory; give a file path")
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint path {path!r}: folder {folder!r} does not exist")
    with output_file(path, binary=True, suffix=".pt", error=CheckpointError) as handle:
        torch.save(payload, handle)


def save_trainer(path: str, workload: str, trainer, info: Optional[dict] = None) -> None:
    """:func:`save` of a trainer's parameters and, where it has a ``torch.optim`` optimizer, its state."""
    optimizer = getattr(trainer, "optimizer", None)
    state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else None
    save(path, workload, trainer.state_dict(), state, info)


def load(path: str, workload: str) -> dict:
    """Read and check a checkpoint for ``workload``; :class:`CheckpointError` when it is unsafe or does not fit."""
    wl = get_workload(workload)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file")
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":  # torch.save's zip container
            raise CheckpointError(f"cannot read checkpoint {path!r}: not a file written by torch.save")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = _unpickler_detail(str(error))
        if "global" in detail.lower():
            raise CheckpointError(
                f"refused checkpoint {path!r}: it holds a pickled object that is not a tensor or plain data "
                f"and could run code when loaded (weights_only=True: {detail})"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path!r}: damaged or not a checkpoint ({detail})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {_unpickler_detail(str(error))}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a torchloops checkpoint (no {FORMAT!r} header)")
    if payload.get("workload") != wl.name:
        raise CheckpointError(
            f"checkpoint {path!r} is for workload {payload.get('workload')!r}, not {wl.name!r}"
        )
    if payload.get("dtype") != _dtype_name(wl.dtype):
        raise CheckpointError(
            f"checkpoint {path!r} has dtype {payload.get('dtype')}; {wl.name} trains in {_dtype_name(wl.dtype)}"
        )
    parameters = payload.get("parameters")
    if not isinstance(parameters, dict) or not all(isinstance(t, torch.Tensor) for t in parameters.values()):
        raise CheckpointError(f"checkpoint {path!r} has no parameter tensors")
    _check_parameters(wl, parameters, f"checkpoint {path!r}")
    return payload


def _unpickler_detail(message: str) -> str:
    """The informative line of torch's weights-only error (e.g. ``Unsupported global: GLOBAL builtins.exec ...``)."""
    tail = message.split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in tail.splitlines() if line.strip() and not line.startswith("Check the documentation")]
    detail = lines[0] if lines else "unreadable"
    return detail if len(detail) <= 200 else detail[:197] + "..."


def _check_parameters(wl: Workload, parameters: Dict[str, torch.Tensor], what: str) -> None:
    expected = expected_shapes(wl)
    if list(parameters) != list(expected):
        raise CheckpointError(
            f"{what} has parameters {list(parameters)}; {wl.name}'s model has {list(expected)}"
        )
    for name, tensor in parameters.items():
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{what}: parameter {name} has shape {tuple(tensor.shape)}; "
                f"{wl.name}'s model has {expected[name]}"
            )
        if tensor.dtype != wl.dtype:
            raise CheckpointError(
                f"{what}: parameter {name} has dtype {_dtype_name(tensor.dtype)}; "
                f"{wl.name} trains in {_dtype_name(wl.dtype)}"
            )


def load_module(path: str, workload: str) -> nn.Module:
    """The workload's ``nn.Module`` with the checkpoint's parameters."""
    wl = get_workload(workload)
    payload = load(path, workload)
    model = wl.build_module().to(wl.dtype)
    model.load_state_dict(payload["parameters"])
    return model


def load_optimizer(path: str, workload: str, optimizer: torch.optim.Optimizer) -> None:
    """Restore a ``torch.optim`` optimizer's state saved with the checkpoint."""
    payload = load(path, workload)
    if payload.get("optimizer") is None:
        raise CheckpointError(f"checkpoint {path!r} holds no optimizer state (a raw-style run has none)")
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path!r}: optimizer state does not fit: {error}") from None
