"""Where workloads come from: plug-ins, found on the workload registry's first use.

* **Installed packages** declare an entry point in the group ``torchloops.workloads``
  (``[project.entry-points."torchloops.workloads"]`` in their ``pyproject.toml``); loading it
  imports a module that registers its workloads.  The notes' five programs are one such package,
  :mod:`workloads`, declared by this project's own ``pyproject.toml``.
* **A file of one's own**: ``TORCHLOOPS_WORKLOADS`` names one or more Python files
  (``os.pathsep``-separated); each is imported once, as the module ``torchloops_plugin_<stem>``.  An
  environment variable reaches every process the suite starts (asv's and pytest's workers,
  torchrun's ranks, the counting child), where a command-line flag would not.

A workload module registers a :class:`torchloops.core.registry.Workload` with
``register_workload``; what it declares decides which styles and placements apply to it
(:meth:`torchloops.execution.styles.Style.applies_to`).  Registration order is load order: this
project's entry point first, other entry points by name, then the files in the order given.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path

from .registry import WORKLOADS, UsageError

ENTRY_POINT_GROUP = "torchloops.workloads"
ENVIRONMENT = "TORCHLOOPS_WORKLOADS"
PLUGIN_PREFIX = "torchloops_plugin_"  # a file of TORCHLOOPS_WORKLOADS is the module PREFIX + its stem


def load_workloads() -> None:
    """Import every installed workload package, then every file of ``TORCHLOOPS_WORKLOADS``."""
    for entry in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=_order):
        entry.load()
    for path in workload_files():
        load_file(path)


def _order(entry) -> tuple:
    """This project's own entry point first (the notes' programs keep the first places of every
    table, and asv's parameter lists their order), then the others by name."""
    own = entry.dist is not None and entry.dist.name == "torchloops"
    return (not own, entry.name)


def workload_files() -> list:
    """The files ``TORCHLOOPS_WORKLOADS`` names, in order (empty entries ignored)."""
    return [p for p in os.environ.get(ENVIRONMENT, "").split(os.pathsep) if p.strip()]


def load_file(path: str):
    """Import one workload file (once: a second load of the same file returns the first module)."""
    file = Path(path).expanduser()
    if file.suffix != ".py" or not file.is_file():
        raise UsageError(f"{ENVIRONMENT}: {path!r} is not a Python file; give paths of .py files "
                         f"separated by {os.pathsep!r}")
    name = PLUGIN_PREFIX + file.stem
    if name in sys.modules:
        if Path(sys.modules[name].__file__).resolve() == file.resolve():
            return sys.modules[name]
        raise UsageError(f"{ENVIRONMENT}: two workload files named {file.stem}.py; rename one")
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # a user's file: one line naming it, not a traceback
        del sys.modules[name]
        raise UsageError(f"{ENVIRONMENT}: {path!r} failed to load: {type(error).__name__}: {error}") from error
    return module


WORKLOADS.set_loader(load_workloads)  # the registry finds its workloads on first use
