"""Where a workload runs: availability (with the reason when not), device, wrap, sync.

A placement never knows a workload by name; it only moves tensors, wraps a model
and synchronises the device around timed regions.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .registry import Availability, Table

PLACEMENTS = Table("placement")


def _cuda_availability() -> Availability:
    if torch.version.cuda is None:
        return Availability(False, f"this torch build ({torch.__version__}) has no CUDA support")
    if not torch.cuda.is_available():
        return Availability(False, "no CUDA device visible (torch.cuda.is_available() is False)")
    return Availability(True)


def _dataparallel_availability() -> Availability:
    cuda = _cuda_availability()
    if not cuda.ok:
        # On CPU nn.DataParallel is a silent pass-through: timing it would time a no-op wrapper.
        return Availability(False, f"nn.DataParallel needs CUDA devices: {cuda.reason}")
    return Availability(True)


@dataclass(frozen=True)
class Placement:
    name: str
    description: str
    device_type: str
    check: Callable[[], Availability]
    wraps_module: bool = False  # True: the model is wrapped, so the raw style does not apply

    def availability(self) -> Availability:
        return self.check()

    def applies_to(self, style) -> Availability:
        if self.wraps_module and not style.uses_module:
            return Availability(
                False, f"{self.name} wraps an nn.Module; the {style.name} style has none"
            )
        return Availability(True)

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
            return names[0] if not self.wraps_module else f"{len(names)}x {names[0]}"
        return platform.processor() or platform.machine() or "cpu"


PLACEMENTS.register(
    Placement("cpu", "one process, CPU tensors", "cpu", lambda: Availability(True))
)
PLACEMENTS.register(
    Placement("cuda", "one process, model and data on cuda:0", "cuda", _cuda_availability)
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
