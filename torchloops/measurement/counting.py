"""Instructions per optimizer step, counted by valgrind's callgrind (``torchloops count``).

Seconds are noise on a shared 2-core machine; instruction counts are not.  This module
counts, for every requested workload x style configuration, the instructions of its
steady-state optimizer steps, all configurations in ONE valgrind process (the start-up of
Python + torch under callgrind costs about a minute, so it is paid once).

What is counted (a "step", exactly what the runner times): ask the batcher for the next
batch, ``trainer.step(xb, yb)``, ``placement.sync()`` -- :meth:`torchloops.measurement.benchmarking.Prepared.step`
on the ``cpu`` placement with ``torch.set_num_threads(threads)``.  Each configuration is
built (:func:`torchloops.measurement.runner.build`) and runs ``warmup`` uncounted steps (lazy
initialisation, optimizer state, allocator caches), then collection is switched on with
``torch._C._valgrind_toggle()``, ``steps`` steps run, and
``torch._C._valgrind_toggle_and_dump_stats()`` switches it off and dumps that window to its
own callgrind file (``--collect-atstart=no``: nothing else is ever collected).  The count
of a configuration is the ``totals:`` (or ``summary:``) line of its dump: event ``Ir``,
instructions executed by every thread of the process in the window.

How the child stays cheap: the parent validates every input (:func:`torchloops.measurement.runner.configure`,
which also generates the scikit-learn data) and hands the child the resolved configurations,
their data splits included, in one ``torch.save`` file.  The child never generates data or
scores a model, so scikit-learn is not imported there: :data:`_CHILD_BOOTSTRAP` installs a
placeholder for ``sklearn`` (any use of it raises) before importing the suite.  That halves
the child's start-up under callgrind and keeps every shipped module untouched.  On x86-64,
valgrind also starts with ``--instr-atstart=no`` and the child switches callgrind's
instrumentation on (one client request, :func:`_client_request`) only after its imports.

Exit statuses of ``torchloops count``: 0 counted; 2 bad input (one line, nothing written);
3 valgrind missing or this torch build without valgrind hooks (:data:`EXIT_UNAVAILABLE`);
1 the valgrind child failed (one line: the tail of its stderr).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

EXIT_UNAVAILABLE = 3  # valgrind missing / platform unsupported
DEFAULT_STEPS = 100  # counted steps per configuration
DEFAULT_WARMUP = 10  # uncounted steps before the window
DEVICE = "cpu"  # callgrind counts host instructions: the cpu placement only
THREADS = 1  # torch.set_num_threads, as every benchmark

VALGRIND_ARGS = (
    "--tool=callgrind",
    "--collect-atstart=no",  # only the windows between the toggles are collected
    "--dump-line=no",  # per-function totals are enough; smaller dump files
)


class CountUnavailable(RuntimeError):
    """Counting cannot run here (valgrind missing, torch without valgrind hooks)."""


class CountFailed(RuntimeError):
    """The valgrind child failed; the message is one line naming why."""


# ---------------------------------------------------------------------------------------
# can we count here?


def _valgrind() -> Optional[str]:
    return shutil.which("valgrind")


def valgrind_problem() -> Optional[str]:
    """``None`` where counting works here, else one line naming why not."""
    exe = _valgrind()
    if exe is None:
        return "valgrind is not installed (no `valgrind` on PATH; Debian/Ubuntu: apt-get install valgrind)"
    import torch

    supported = getattr(torch._C, "_valgrind_supported_platform", None)
    if supported is None or not supported():
        return (f"torch {torch.__version__} has no valgrind hooks on this platform "
                "(torch._C._valgrind_supported_platform() is False)")
    if valgrind_version() is None:
        return f"{exe} --version failed: valgrind is installed but does not run"
    return None


_VERSION: dict = {}


def valgrind_version() -> Optional[str]:
    """``valgrind --version`` (e.g. ``valgrind-3.19.0``), or None where it does not run."""
    exe = _valgrind()
    if exe is None:
        return None
    if exe not in _VERSION:
        try:
            done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
            _VERSION[exe] = done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            _VERSION[exe] = None
    return _VERSION[exe]


# ---------------------------------------------------------------------------------------
# the callgrind output


_PART = re.compile(r"^part:\s*(\d+)", re.MULTILINE)
_EVENTS = re.compile(r"^events:\s*(.+)$", re.MULTILINE)


def parse_callgrind(text: str) -> int:
    """The instruction count (event ``Ir``) of one callgrind dump: its ``totals:`` line
    (older valgrinds write ``summary:``).  ``ValueError`` when there is none."""
    events = _EVENTS.search(text)
    column = 0
    if events:
        names = events.group(1).split()
        if "Ir" not in names:
            raise ValueError(f"callgrind dump has no Ir event (events: {' '.join(names)})")
        column = names.index("Ir")
    for match in re.finditer(r"^(?:totals|summary):\s*([\d ]+)$", text, re.MULTILINE):
        numbers = match.group(1).split()
        if len(numbers) > column:
            return int(numbers[column])
    raise ValueError("callgrind dump has no totals: or summary: line")


def dump_part(text: str) -> int:
    """The dump's ``part:`` number (1 for the first dump of the process)."""
    match = _PART.search(text)
    return int(match.group(1)) if match else 0


# ---------------------------------------------------------------------------------------
# requests -> validated configurations (in the parent)

Request = Union[Tuple[str, str], Tuple[str, str, int], "object"]  # (workload, style[, seed]) or a RunConfig


def default_steps(workload: str) -> Tuple[int, int]:
    """(counted steps, warm-up steps) of a workload when the caller names none: its declared
    ``Workload.count_steps``, else the defaults."""
    from torchloops.core.registry import get_workload

    declared = get_workload(workload).count_steps if workload else None
    return declared or (DEFAULT_STEPS, DEFAULT_WARMUP)


def _resolve(workload: str, steps: Optional[int], warmup: Optional[int]) -> Tuple[int, int]:
    counted, warm = default_steps(workload)
    steps = counted if steps is None else steps
    warmup = warm if warmup is None else warmup
    _check_count("steps", steps)
    _check_count("warmup", warmup, zero_ok=True)
    return steps, warmup


def configs(workload: str = "all", style: str = "all", seed: int = 0, *, steps: Optional[int] = None,
            warmup: Optional[int] = None, skipped: Optional[list] = None) -> list:
    """Every requested configuration (cpu, 1 thread), validated: :class:`torchloops.UsageError`
    on bad input.  Each is configured with ``steps=warmup + steps`` (None: the workload's
    :func:`default_steps`): its batch plan holds the steps the child runs (cycled if longer).
    A style the workload declares nothing for is left out, its ``(workload, style, reason)``
    appended to ``skipped``."""
    from torchloops import STYLES, WORKLOADS, Unavailable, UsageError, configure

    skipped = [] if skipped is None else skipped
    _resolve("", steps, warmup)
    names = WORKLOADS.names() if workload == "all" else [WORKLOADS.get(workload).name]
    styles = STYLES.names() if style == "all" else [STYLES.get(style).name]
    out, splits = [], {}
    for name in names:
        counted, warm = _resolve(name, steps, warmup)
        for st in styles:
            try:
                config = configure(name, st, DEVICE, seed, steps=warm + counted, threads=THREADS)
            except Unavailable as why:
                skipped.append((name, st, str(why)))
                continue
            key = (name, seed)  # one data split per workload and seed: the spec file holds it once
            if key in splits:
                config = dataclasses.replace(config, split=splits[key])
            splits.setdefault(key, config.data())
            out.append(config)
    if not out:
        reasons = "; ".join(f"{w}/{st}: {why}" for w, st, why in skipped)
        raise UsageError("nothing to count" + (f": {reasons}" if reasons else ""))
    return out


def _check_count(name: str, value, zero_ok: bool = False) -> None:
    from torchloops import UsageError

    low = 0 if zero_ok else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low or value > 1_000_000:
        what = "a non-negative" if zero_ok else "a positive"
        raise UsageError(f"--{name} must be {what} integer (at most 1000000), got {value!r}")


def _plan(items: Iterable, steps: Optional[int], warmup: Optional[int]) -> List[Tuple[object, int, int]]:
    """(config, counted steps, warm-up steps) of every request."""
    from torchloops import UsageError
    from torchloops.measurement.runner import RunConfig

    out = []
    for item in items:
        if isinstance(item, RunConfig):
            if item.placement.name != DEVICE:
                raise UsageError(f"counting runs on the cpu placement, not {item.placement.name}")
            found = [item]
        else:
            workload, style, *rest = item
            found = configs(workload, style, rest[0] if rest else 0, steps=steps, warmup=warmup)
        out.extend((config, *_resolve(config.workload.name, steps, warmup)) for config in found)
    if not out:
        reasons = "; ".join(f"{w}/{st}: {why}" for w, st, why in skipped)
        raise UsageError("nothing to count" + (f": {reasons}" if reasons else ""))
    return out


# ---------------------------------------------------------------------------------------
# the parent: one valgrind process for every configuration


def count(
    requests: Sequence[Request],
    *,
    steps: Optional[int] = None,
    warmup: Optional[int] = None,
    extra_imports: Sequence[str] = (),
    progress: Optional[Callable[[int, int, str], None]] = None,
    timeout: Optional[float] = None,
) -> List[dict]:
    """Count instructions per step of every request in one callgrind process; one record each.

    ``requests``: :class:`torchloops.RunConfig` objects (cpu placement; :func:`configs` makes
    them) or ``(workload, style[, seed])`` tuples.  ``steps`` / ``warmup``: counted and
    uncounted steps of every configuration (None: :func:`default_steps` of its workload).
    ``extra_imports``: modules imported (in this process and in the child, before anything is
    built), e.g. one that registers a test-only style.  ``progress(done, total, label)`` is
    called as the child finishes each configuration.  Raises :class:`torchloops.UsageError`
    (bad input), :class:`CountUnavailable`, :class:`CountFailed`.
    """
    import importlib

    for name in extra_imports:  # before validation: a test-only style must be registered here too
        importlib.import_module(name)
    planned = _plan(requests, steps, warmup)
    problem = valgrind_problem()
    if problem is not None:
        raise CountUnavailable(problem)
    totals = _run_child(planned, tuple(extra_imports), progress, timeout)
    return [_record(config, counted, warm, total) for (config, counted, warm), total in zip(planned, totals)]


_GRID_COUNTS: dict = {}


def grid_counts(steps: Optional[int] = None, warmup: Optional[int] = None) -> dict:
    """``{(workload, style): record}`` for every workload x style of the registries on cpu,
    each workload at its typical seed (as every benchmark), counted in ONE valgrind process and
    memoised in this process: what the asv suite and the pytest-benchmark front-end record.
    Raises :class:`CountUnavailable` / :class:`CountFailed` as :func:`count`."""
    key = (steps, warmup)
    if key not in _GRID_COUNTS:
        from torchloops.measurement.benchmarking import seed_for
        from torchloops.core.registry import WORKLOADS

        planned = [c for name in WORKLOADS.names()
                   for c in configs(name, "all", seed_for(name), steps=steps, warmup=warmup)]
        records = count(planned, steps=steps, warmup=warmup)
        _GRID_COUNTS[key] = {(r["workload"], r["style"]): r for r in records}
    return _GRID_COUNTS[key]


def machine() -> str:
    return f"{platform.platform()} {platform.processor() or platform.machine()}".strip()


def _record(config, steps: int, warmup: int, total: int) -> dict:
    import torch

    return {
        "kind": "count",
        "workload": config.workload.name,
        "style": config.style.name,
        "device": config.placement.name,
        "seed": config.seed,
        "threads": config.threads,
        "batch_size": config.batch_size,
        "dtype": str(config.workload.dtype).replace("torch.", ""),
        "steps": steps,
        "warmup_steps": warmup,
        "instructions": int(total),
        "instructions_per_step": total / steps,
        "event": "Ir",
        "tool": "callgrind",
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "machine": machine(),
        "valgrind_version": valgrind_version(),
    }


def _spec(planned: list, extra_imports: tuple) -> dict:
    """What the child needs, picklable: each configuration's fields with the registry
    objects replaced by their names (the split's tensors travel as they are)."""
    entries = []
    for config, counted, warm in planned:
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        fields["workload"] = config.workload.name
        fields["style"] = config.style.name
        fields["placement"] = config.placement.name
        entries.append({"fields": fields, "steps": counted, "warmup": warm})
    return {"configs": entries, "extra_imports": list(extra_imports),
            "sys_path": [os.path.abspath(p) if p else os.getcwd() for p in sys.path],
            "late_instrumentation": late_instrumentation_supported()}


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "0"  # the same dict/set orders in every child: repeatable counts
    env["OMP_NUM_THREADS"] = str(THREADS)
    env["MKL_NUM_THREADS"] = str(THREADS)
    env.pop("TORCHLOOPS_LAUNCHED", None)
    return env


def _run_child(planned: list, extra_imports: tuple, progress, timeout) -> List[int]:
    import torch

    folder = tempfile.mkdtemp(prefix="torchloops-count-")
    try:
        spec_path = os.path.join(folder, "spec.pt")
        torch.save(_spec(planned, extra_imports), spec_path)
        out_file = os.path.join(folder, "callgrind.out")
        log_file = os.path.join(folder, "valgrind.log")
        err_file = os.path.join(folder, "child.stderr")
        late = ["--instr-atstart=no"] if late_instrumentation_supported() else []
        command = [_valgrind(), *VALGRIND_ARGS, *late, f"--callgrind-out-file={out_file}", f"--log-file={log_file}",
                   sys.executable, "-c", _CHILD_BOOTSTRAP, spec_path]
        done = 0
        with open(err_file, "w") as err:
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                     text=True, env=_child_env())
            started = time.monotonic()
            timed_out = False
            try:
                for line in child.stdout:
                    if line.startswith("counted "):
                        done += 1
                        if progress is not None:
                            progress(done, len(planned), line[len("counted "):].strip())
                    if timeout is not None and time.monotonic() - started > timeout:
                        timed_out = True
                        break
                if not timed_out:
                    left = None if timeout is None else max(1.0, timeout - (time.monotonic() - started))
                    child.wait(timeout=left)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:  # interrupted, timed out or failed: no valgrind process outlives the count
                if child.poll() is None:
                    child.kill()
                    child.wait()
            if timed_out:
                raise CountFailed(f"the valgrind child ran past {timeout:g} s and was stopped "
                                  f"({done} of {len(planned)} configurations counted)")
        if child.returncode != 0:
            raise CountFailed(f"the valgrind child exited with status {child.returncode}: "
                              f"{_tail(err_file) or _tail(log_file) or 'no message'}")
        dumps = []
        for path in glob.glob(out_file + ".*"):
            with open(path) as handle:
                text = handle.read()
            dumps.append((dump_part(text), path, text))
        dumps.sort()
        if len(dumps) != len(planned):
            raise CountFailed(f"expected {len(planned)} callgrind dumps, found {len(dumps)}: "
                              f"{_tail(log_file) or 'no valgrind message'}")
        try:
            return [parse_callgrind(text) for _part, _path, text in dumps]
        except ValueError as why:
            raise CountFailed(str(why)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _tail(path: str) -> str:
    """The last meaningful line of a log (a traceback's last line names the error)."""
    try:
        with open(path, errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return ""
    lines = [line for line in lines if not re.match(r"^==\d+==\s*$", line)]
    return " ".join(lines[-1].split())[:300] if lines else ""


# ---------------------------------------------------------------------------------------
# the child (under valgrind)

# Run with ``python -c`` so that the placeholder is in place before ``workloads`` (whose data
# and runner modules import scikit-learn at the top) is imported.  Any use of the placeholder
# raises: a counted step that needed scikit-learn would fail loudly, never count the wrong thing.
_CHILD_BOOTSTRAP = r"""
import importlib.abc, importlib.machinery, sys, types

class _Absent(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Absent(self.__name__ + "." + name)
    def __call__(self, *args, **kwargs):
        raise RuntimeError(self.__name__ + ": scikit-learn is not loaded in the torchloops counting child")

class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "sklearn" or name.startswith("sklearn."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None
    def create_module(self, spec):
        return _Absent(spec.name)
    def exec_module(self, module):
        module.__path__ = []

sys.meta_path.insert(0, _Finder())
from torchloops.measurement import counting
sys.exit(counting._child_main(sys.argv[1]))
"""


# callgrind's client requests (valgrind/callgrind.h): VG_USERREQ_TOOL_BASE('C', 'T') + n.
_START_INSTRUMENTATION = 0x43540000 + 4

# x86-64 machine code of ``uint64_t request(uint64_t *args)``: valgrind's "special instruction"
# preamble (four rotations of rdi summing to 128 bits: a no-op on the bare CPU) followed by
# ``xchg rbx, rbx``, with rax = the argument block and rdx = the default result
# (VALGRIND_DO_CLIENT_REQUEST_EXPR, valgrind.h).  torch exposes only the collection toggle and
# the dump; starting instrumentation late needs this one more request.
_AMD64_CLIENT_REQUEST = bytes.fromhex(
    "4889f8"  # mov rax, rdi
    "31d2"  # xor edx, edx
    "48c1c703" "48c1c70d" "48c1c73d" "48c1c733"  # rol rdi, 3 / 13 / 61 / 51
    "4887db"  # xchg rbx, rbx
    "4889d0"  # mov rax, rdx
    "c3"  # ret
)


def late_instrumentation_supported() -> bool:
    """Whether the child can start callgrind's instrumentation itself (x86-64 Linux)."""
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


def _client_request(code: int, *args: int) -> int:
    """One valgrind client request from Python (x86-64); 0 outside valgrind."""
    import ctypes
    import mmap

    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_AMD64_CLIENT_REQUEST)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    function = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64))(address)
    block = (ctypes.c_uint64 * 6)(code, *args, *([0] * (5 - len(args))))
    try:
        return int(function(block))
    finally:
        del function
        page.close()


def _child_main(spec_path: str) -> int:
    import gc
    import importlib

    import torch

    from torchloops.measurement.benchmarking import Prepared
    from torchloops.execution.placements import PLACEMENTS
    from torchloops.core.registry import get_workload
    from torchloops.measurement.runner import RunConfig
    from torchloops.execution.styles import STYLES

    spec = torch.load(spec_path, weights_only=False)
    # The parent's import path (a script that put its folder there finds its extra_imports here too)
    sys.path.extend(p for p in spec.get("sys_path", ()) if p not in sys.path)
    for name in spec["extra_imports"]:
        importlib.import_module(name)
    # One-off lazy imports (torch.optim's first optimizer imports torch._dynamo), outside any window.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.1)
    if spec["late_instrumentation"]:
        # Python, torch and the suite were imported uninstrumented (4x faster).  Instrumentation
        # stays on from here: switching it off and on between windows corrupts callgrind's totals
        # (measured: wrapped-around counts), so builds and warm-ups run instrumented.
        _client_request(_START_INSTRUMENTATION)
    for entry in spec["configs"]:
        steps, warmup, fields = entry["steps"], entry["warmup"], entry["fields"]
        fields = dict(fields, workload=get_workload(fields["workload"]), style=STYLES.get(fields["style"]),
                      placement=PLACEMENTS.get(fields["placement"]))
        config = RunConfig(**fields)
        torch.set_num_threads(config.threads)
        prepared = Prepared(config).warm_up(warmup)
        step = prepared.step
        gc.collect()  # no collection of the previous configuration's garbage inside the window
        torch._C._valgrind_toggle()
        for _ in range(steps):
            step()
        torch._C._valgrind_toggle_and_dump_stats()
        print(f"counted {config.workload.name}/{config.style.name}", flush=True)
        del prepared, step
    return 0
