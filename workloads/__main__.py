"""``python -m workloads``: the same as the ``torchloops`` command."""

from .cli import entry_point

entry_point()
