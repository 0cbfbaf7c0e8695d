"""``torchloops list``: the workloads, the styles and the placements (with why one is unavailable)."""

from __future__ import annotations

from .. import PLACEMENTS, STYLES, WORKLOADS
from ..console import format_table


def add_parser(subparsers):
    return subparsers.add_parser("list", help="workloads, styles and placements (with why a placement is unavailable)")


def main(_args) -> int:
    rows = []
    for w in WORKLOADS.entries.values():
        arrow = ">=" if w.metric.higher_is_better else "<="
        batch = "full" if w.batch_size is None else str(w.batch_size)
        rows.append([w.name, w.summary, f"{w.epochs}", batch, f"{w.metric.name} {arrow} {w.target:g}"])
    print(format_table(("workload", "model / loss / optimizer", "epochs", "batch", "target"), rows))
    print()
    print(format_table(("style", "what it is"), [[s.name, s.description] for s in STYLES.entries.values()]))
    print()
    rows = []
    for p in PLACEMENTS.entries.values():
        avail = p.availability()
        if avail.ok:
            here = "available"
        elif hasattr(p, "launch_availability") and p.launch_availability(None).ok:
            here = "via torchrun"  # not in this process, but `run --device ddp --nproc N` starts it
        else:
            here = "unavailable"
        rows.append([p.name, here, p.description if avail.ok else avail.reason])
    print(format_table(("placement", "here", "what it is / why not"), rows))
    return 0
