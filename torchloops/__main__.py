"""``python -m torchloops``: the same as the ``torchloops`` command."""

from torchloops.cli import entry_point

entry_point()
