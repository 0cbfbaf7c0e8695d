"""CUDA graphs: capture a style's whole training step once, replay it every later step.

The ``cuda_graph`` placement (:mod:`torchloops.execution.placements`) is the ``cuda`` placement
with each trainer wrapped in a :class:`GraphedTrainer`.  Per batch shape (a short
last batch is a second shape, so a second graph):

1. the shape's first ``WARMUP_STEPS`` steps run eagerly on a side stream, as
   PyTorch's whole-network capture recipe does (lazy initialisation, cuBLAS
   workspaces, the optimizer's first-step branches: momentum's buffer, Adam's
   state);  they are real steps of the run;
2. the next one copies its batch into static input tensors, captures
   ``trainer.step(static_x, static_y)`` into a ``torch.cuda.CUDAGraph`` (capturing
   runs nothing) and replays it, which is that step;
3. every later step of that shape copies its batch into the static inputs and
   replays; the step's loss is a copy of the graph's static output.

A graph replays the captured kernels with the captured arguments and addresses,
so a step is capturable when, once warmed up, it issues the same kernels with the
same scalar arguments on the same persistent tensors every time, and never waits
on the host (``.item()``, data-dependent shapes).  The trainers ask their optimizers
for ``capturable=True`` (Adam's step count on the device) for that reason.

:class:`TracedGraphs` checks exactly that property on any device, the CPU included:
its "capture" records the step's ATen operations (name, scalar arguments, which
persistent tensor each argument is, host syncs) and undoes every value the step
wrote, as a capture writes nothing; each "replay" runs the step again and fails with
:class:`CaptureUnsafe` at the first operation that differs from the capture.  The
tests run every style through it on the CPU; the real capture runs on a GPU.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

WARMUP_STEPS = 3  # eager steps per batch shape before its capture (PyTorch's recipe uses a few)

# ATen operations that make the host wait for the device (a value or a shape read
# back): illegal while capturing, and a step that needs one is not capturable.
HOST_SYNC_OPS = frozenset(
    {
        "aten::_local_scalar_dense",
        "aten::item",
        "aten::is_nonzero",
        "aten::nonzero",
        "aten::equal",
        "aten::allclose",
        "aten::masked_select",
        "aten::_unique2",
        "aten::unique_consecutive",
        "aten::repeat_interleave",
    }
)


class CaptureUnsafe(Exception):
    """The step cannot be captured once and replayed: it would replay different work."""


@dataclass
class _Captured:
    graph: object  # has .replay()
    x: torch.Tensor  # static inputs: every replay reads these addresses
    y: torch.Tensor
    loss: torch.Tensor  # static output: every replay writes it


class GraphedTrainer:
    """A style's trainer whose steps, once warmed up, are replays of a captured graph.

    Everything but ``step`` (``predict``, ``state_dict``, ``optimizer``, ...) is the
    wrapped trainer's: evaluation and checkpoints run eagerly on the same parameters."""

    def __init__(self, trainer, backend, warmup: int = WARMUP_STEPS):
        self.trainer = trainer
        self.backend = backend
        self.warmup = warmup
        self.graphs: Dict[tuple, _Captured] = {}
        self.eager_steps: Counter = Counter()
        self.replayed_steps = 0
        # True after a step that paid a one-off cost (an eager warm-up before a capture, or the
        # capture itself): the runner trains it but keeps it out of the timing samples.
        self.setup_step = False

    def __getattr__(self, name):  # only called for what this class does not define
        return getattr(self.__dict__["trainer"], name)

    @property
    def captures(self) -> int:
        return len(self.graphs)

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        key = (tuple(xb.shape), xb.dtype, tuple(yb.shape), yb.dtype)
        captured = self.graphs.get(key)
        self.setup_step = captured is None
        if captured is None:
            if self.eager_steps[key] < self.warmup:
                self.eager_steps[key] += 1
                return self.backend.warm(self.trainer.step, xb, yb)
            captured = self.graphs[key] = self._capture(xb, yb)
        captured.x.copy_(xb)
        captured.y.copy_(yb)
        captured.graph.replay()
        self.replayed_steps += 1
        return captured.loss.clone()

    def _capture(self, xb: torch.Tensor, yb: torch.Tensor) -> _Captured:
        x, y = torch.empty_like(xb), torch.empty_like(yb)
        x.copy_(xb)
        y.copy_(yb)
        optimizer = getattr(self.trainer, "optimizer", None)
        if isinstance(optimizer, torch.optim.Optimizer):
            # PyTorch's recipe: gradients set to None before capture, so that backward
            # allocates them from the graph's own memory pool.
            optimizer.zero_grad(set_to_none=True)
        try:
            graph, loss = self.backend.capture(lambda: self.trainer.step(x, y))
        except CaptureUnsafe:
            raise
        except RuntimeError as error:  # e.g. "operation not permitted when stream is capturing"
            first = " ".join(str(error).split())[:300]
            raise CaptureUnsafe(f"capturing the step for batch shape {tuple(xb.shape)} failed: {first}") from error
        return _Captured(graph, x, y, loss)


class CudaGraphs:
    """The real thing: ``torch.cuda.CUDAGraph`` capture and replay on ``device``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def warm(self, step: Callable, *batch):
        """One eager step on the side stream, ordered after and before the current stream's work."""
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream), warnings.catch_warnings():
            # torch.optim warns once that a capturable optimizer is stepping uncaptured: by design here
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            loss = step(*batch)
        current.wait_stream(self.stream)
        loss.record_stream(current)  # made on the side stream, read on the current one
        return loss

    def capture(self, step: Callable):
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # a private memory pool per graph
            loss = step()
        return graph, loss


# --- a device-independent model of capture and replay --------------------------------------


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _Trace(TorchDispatchMode):
    """Records each ATen operation of one step as it would be captured: its name, its
    scalar arguments, and for each tensor argument either the persistent tensor it is
    (storage, offset, shape, strides: what a graph bakes in) or a temporary made earlier
    in the step.  With ``undo=True`` the values the step writes into persistent tensors
    are saved before the first write and put back by :meth:`undo`."""

    def __init__(self, undo: bool):
        super().__init__()
        self.ops: List[tuple] = []
        self.temporaries: set = set()
        self.saved: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self._saved_keys: set = set()
        self.undo_writes = undo

    def _describe(self, value):
        if isinstance(value, torch.Tensor):
            shape = (str(value.dtype), tuple(value.shape))
            if _storage(value) in self.temporaries:
                return ("temporary",) + shape
            return ("persistent", _storage(value), value.storage_offset(), tuple(value.stride())) + shape
        if isinstance(value, (list, tuple)):
            return tuple(self._describe(v) for v in value)
        if isinstance(value, (bool, int, float, complex, str)) or value is None:
            return value
        return repr(value)  # dtype, device, layout, memory format

    def _written(self, func, args, kwargs) -> List[torch.Tensor]:
        written = []
        schema = func._schema
        for index, argument in enumerate(schema.arguments):
            if argument.alias_info is None or not argument.alias_info.is_write:
                continue
            value = kwargs[argument.name] if argument.name in kwargs else (args[index] if index < len(args) else None)
            written.extend(t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor))
        return written

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name.startswith("profiler::"):  # record_function markers: host-side labels, no kernel
            return func(*args, **kwargs)
        self.ops.append((name, func._overloadname, self._describe(list(args)),
                         self._describe(sorted(kwargs.items()))))
        if name in HOST_SYNC_OPS:
            raise CaptureUnsafe(f"{name} makes the host wait for the device: a graph cannot capture it")
        if self.undo_writes:
            for t in self._written(func, args, kwargs):
                key = (_storage(t), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
                if _storage(t) not in self.temporaries and key not in self._saved_keys:
                    self._saved_keys.add(key)
                    self.saved.append((t, t.clone()))
        inputs = {_storage(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and _storage(t) not in inputs:
                self.temporaries.add(_storage(t))  # a new allocation (not an in-place result or a view)
        return out

    def undo(self) -> None:
        with torch.no_grad():
            for tensor, value in reversed(self.saved):  # earliest save last: it holds the original
                tensor.copy_(value)


class _TracedGraph:
    def __init__(self, step: Callable, ops: List[tuple], loss: torch.Tensor):
        self.step, self.ops, self.loss = step, ops, loss

    def replay(self) -> None:
        trace = _Trace(undo=False)
        with trace:
            loss = self.step()
        for index, (captured, replayed) in enumerate(zip(self.ops, trace.ops)):
            if captured != replayed:
                raise CaptureUnsafe(
                    f"operation {index} ({replayed[0]}) differs from the captured one: "
                    f"captured {_short(captured)}, replayed {_short(replayed)}"
                )
        if len(self.ops) != len(trace.ops):
            raise CaptureUnsafe(f"the step ran {len(trace.ops)} operations; the capture recorded {len(self.ops)}")
        with torch.no_grad():
            self.loss.copy_(loss)  # a graph writes its static output in place


def _short(value, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TracedGraphs:
    """A model of CUDA graph capture and replay that runs anywhere (see the module docstring).

    It is stricter than needed in one way: a replay must read the very persistent
    tensors the capture read, where a real graph only needs their addresses."""

    def __init__(self, device: Optional[torch.device] = None):
        self.device = device

    def warm(self, step: Callable, *batch):
        return step(*batch)

    def capture(self, step: Callable):
        trace = _Trace(undo=True)
        try:
            with trace:
                loss = step()
        finally:
            trace.undo()  # capturing runs nothing: no value changes
        return _TracedGraph(step, trace.ops, loss), loss
