"""The plots of ``torchloops compare`` (matplotlib, Agg backend: no display needed).

* ``curves.png``: one row per workload; the test metric of every style against
  optimizer steps (left) and against training seconds (right), every seed, the
  target as a dashed line; the sklearn peers as points at (fit time, metric).
* ``time_to_target.png``: one panel per workload; time-to-target of every style and
  every peer (median over seeds) with its 95 % interval, log scale; a run that never
  reached the target is drawn hatched at its full training time and labelled so.

A style's seconds are steps x its step time (docs/measurement.md): the curves' time axis
carries the step time's interval as a band.
"""

from __future__ import annotations

import os
from typing import List

from torchloops.support.outputs import output_file

# matplotlib's tab10 without its grey (the peers' colour): nine styles before a colour repeats
STYLE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
PEER_COLOR = "#7f7f7f"
PEER_MARKERS = ["s", "^", "D", "v"]


def _save_atomic(fig, path: str) -> None:
    """Render through the output writer: beside ``path``, then renamed (a killed run leaves the
    previous plot), or in place for a pipe or a device."""
    with output_file(path, binary=True, suffix=".png") as handle:
        fig.savefig(handle, dpi=90, format="png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(record: dict) -> str:
    return record["style"] if record["device"] == "cpu" else f"{record['style']} ({record['device']})"


def plot_curves(document: dict, path: str) -> str:
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter

    sections = document["workloads"]
    fig, axes = plt.subplots(len(sections), 2, figsize=(12, 3.1 * len(sections)), squeeze=False)
    for row, section in zip(axes, sections):
        name = section["workload"]
        records = [r for r in document["records"] if r["workload"] == name]
        styles = [r for r in records if r.get("kind") == "style"]
        labels = list(dict.fromkeys(_label(r) for r in styles))
        colors = {label: STYLE_COLORS[i % len(STYLE_COLORS)] for i, label in enumerate(labels)}
        for ax, x_key, x_name in ((row[0], "step", "optimizer steps"), (row[1], "time_s", "training seconds")):
            seen = set()
            for r in styles:
                label = _label(r)
                xs = [h[x_key] for h in r["history"]]
                ys = [h["metric_value"] for h in r["history"]]
                ax.plot(xs, ys, color=colors[label], lw=1.3, alpha=0.85,
                        label=None if label in seen else label, drawstyle="default")
                if x_key == "time_s" and r.get("step_time_interval_s"):
                    # seconds = steps x the step time: its 95 % interval is a band along the time axis
                    low, high = r["step_time_interval_s"]
                    ax.fill_betweenx(ys, [h["step"] * low for h in r["history"]],
                                     [h["step"] * high for h in r["history"]], color=colors[label], alpha=0.15, lw=0)
                seen.add(label)
            ax.axhline(section["target"], color="black", ls="--", lw=0.9, label=f"target {section['target']:g}")
            if x_key == "time_s":
                peers = [r for r in records if r.get("kind") == "peer"]
                names = list(dict.fromkeys(r["style"] for r in peers))
                for r in peers:
                    i = names.index(r["style"])
                    ax.plot([r["fit_time_s"]], [r["metric_value"]], PEER_MARKERS[i % len(PEER_MARKERS)],
                            color=PEER_COLOR, ms=7, label=r["style"] if r["seed"] == section["seeds"][0] else None)
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            if not section["higher_is_better"]:
                ax.set_yscale("log")
            ax.set_xlabel(x_name)
            ax.set_ylabel(section["metric"])
            ax.set_title(f"{name}: {section['metric']} vs {x_name}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save_atomic(fig, path)
    plt.close(fig)
    return path


def plot_time_to_target(document: dict, path: str) -> str:
    plt = _pyplot()
    sections = document["workloads"]
    fig, axes = plt.subplots(len(sections), 1, figsize=(9, 0.4 + sum(0.32 * len(s["rows"]) + 0.8 for s in sections)),
                             squeeze=False, gridspec_kw={"height_ratios": [len(s["rows"]) + 1.5 for s in sections]})
    for (ax,), section in zip(axes, sections):
        rows = section["rows"]
        names, values, errors, colors, hatches, notes = [], [], [], [], [], []
        styles = list(dict.fromkeys(r["style"] for r in rows if r["kind"] == "style"))
        for r in rows:
            label = r["style"] if r["device"] == "cpu" or r["kind"] == "peer" else f"{r['style']} ({r['device']})"
            names.append(label)
            interval = r.get("time_to_target_interval_s")
            if r["time_to_target_s"] is not None:
                values.append(r["time_to_target_s"])
                errors.append((r["time_to_target_s"] - interval[0], interval[1] - r["time_to_target_s"])
                              if interval else (0.0, 0.0))
                hatches.append("")
                notes.append("")
            else:  # never reached: the full training (or fit) time, hatched
                values.append(_full_time(document, section["workload"], r))
                errors.append((0.0, 0.0))
                hatches.append("//")
                notes.append("not reached")
            if r["kind"] == "peer":
                colors.append(PEER_COLOR)
            else:
                colors.append(STYLE_COLORS[styles.index(r["style"]) % len(STYLE_COLORS)])
        y = list(range(len(rows)))
        bars = ax.barh(y, values, color=colors, hatch=None, xerr=list(zip(*errors)),
                       error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "black"})
        for bar, hatch in zip(bars, hatches):
            if hatch:
                bar.set_hatch(hatch)
                bar.set_alpha(0.45)
        for yi, value, error, note in zip(y, values, errors, notes):
            text = f" {_short_seconds(value)}" + (f" ({note})" if note else "")
            ax.text(value + error[1], yi, text, va="center", fontsize=7)
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        arrow = ">=" if section["higher_is_better"] else "<="
        ax.set_title(f"{section['workload']}: time to {section['metric']} {arrow} {section['target']:g}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        lo, hi = min(values), max(values)
        ax.set_xlim(lo / 2, hi * 8)
    axes[-1][0].set_xlabel("seconds with 95 % interval (styles: steps to target x step time; "
                           "sklearn peers, grey: median fit)")
    fig.tight_layout()
    _save_atomic(fig, path)
    plt.close(fig)
    return path


def _full_time(document: dict, workload: str, row: dict) -> float:
    times = []
    for r in document["records"]:
        if r["workload"] == workload and r["style"] == row["style"] and r["device"] == row["device"]:
            times.append(r.get("train_time_s") or r.get("fit_time_s") or 0.0)
    times.sort()
    return times[len(times) // 2] if times else 1e-6


def _short_seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def make_plots(document: dict, out_dir: str) -> List[str]:
    """Write every plot of a ``compare`` results document into ``out_dir``; returns the paths."""
    return [
        plot_curves(document, os.path.join(out_dir, "curves.png")),
        plot_time_to_target(document, os.path.join(out_dir, "time_to_target.png")),
    ]
