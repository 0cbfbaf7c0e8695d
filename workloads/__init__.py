"""The programs: the five models and training loops of the notes, one module each.

Each module declares everything about its program as a
:class:`torchloops.core.registry.Workload` (data recipe, model, raw forward, hand-derived
gradients, loss, optimizer, schedule, target, peers, the notes' own loop, its convergence
reference) and registers it.  The engine (:mod:`torchloops`) finds this package through its
entry point (``torchloops.workloads`` in ``pyproject.toml``) and never names a workload; a
user's own workload is one more file of the same shape (docs/architecture.md, "Add a
workload").
"""

# Registration order is the notes' order, and the order of every table.
from . import classification, regression, lenet, mlp_sgd, mlp_adam  # noqa: F401,I001
