"""``torchloops list``: the workloads, the styles and the placements (with why a style does not apply
to a workload, or a placement is unavailable here)."""

from __future__ import annotations

from torchloops import PLACEMENTS, STYLES, WORKLOADS
from torchloops.support.console import format_table


def add_parser(subparsers):
    return subparsers.add_parser("list", help="workloads, styles and placements (with why a style or a placement "
                                              "is unavailable)")


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
    skipped = [[w.name, s.name, s.applies_to(w).reason] for w in WORKLOADS.entries.values()
               for s in STYLES.entries.values() if not s.applies_to(w).ok]
    if skipped:  # what a workload does not declare: those styles are skipped everywhere, with this reason
        print(format_table(("workload", "style", "skipped: why"), skipped))
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
