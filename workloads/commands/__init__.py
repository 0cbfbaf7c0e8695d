"""Commands that live in a module of their own.

Each module named in ``NAMES`` exposes ``add_parser(subparsers)`` (adds its sub-command to
the CLI's parser) and ``main(args) -> int`` (runs it; the exit status).  ``workloads.cli``
registers every one of them; bad input raises :class:`workloads.UsageError` (one line, exit 2).
Keep each module's top-level imports light: ``torchloops --help`` imports them all.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict

NAMES: tuple = ("diff", "profile", "count")


def modules() -> Dict[str, ModuleType]:
    return {name: importlib.import_module(f"{__name__}.{name}") for name in NAMES}
