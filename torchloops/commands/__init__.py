"""The commands of ``torchloops``, one module each.

Each module named in ``NAMES`` exposes ``add_parser(subparsers)`` (adds its sub-command to
the CLI's parser and returns that sub-parser) and ``main(args) -> int`` (runs it; the exit
status).  :mod:`torchloops.cli` builds its parser from ``NAMES``, in this order (the order
of ``torchloops --help``), and dispatches to the module that added the sub-command; bad
input raises :class:`torchloops.UsageError` (one line, exit 2).  A module is named after its
command (``listing``: ``list``, which is a builtin's name).  Keep each module's top-level
imports light: ``torchloops --help`` imports them all.

The commands sit on top: they may import any module of the package, and nothing in the
package below them imports a command or :mod:`torchloops.cli`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict

NAMES: tuple = ("listing", "run", "compare", "converge", "compile", "diff", "profile", "count")


def modules() -> Dict[str, ModuleType]:
    return {name: importlib.import_module(f"{__name__}.{name}") for name in NAMES}
