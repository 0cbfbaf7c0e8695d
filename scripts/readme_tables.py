"""The README's and docs' result tables, generated from a `torchloops compare` results.json.

    python scripts/readme_tables.py results/compare/results.json

Prints Markdown: the front page's table (per workload: the module step with its interval, the
fastest style and its paired ratio to module, the fastest style's time to target with its
interval, as written vs fastest, the fastest style against
the best scikit-learn peer) and the fast-path table (every style's paired ratio to module).
Nothing here is typed by hand: rerun `torchloops compare` and this script to regenerate them.
"""

from __future__ import annotations

import json
import sys

from torchloops.support.console import ratio_cell, seconds_interval


def _speedup(found) -> str:
    """A paired ratio as a speed-up ``1/ratio``, with its interval (for "fused is 2.6x faster")."""
    if not found or not found["interval"]:
        return "-"
    text = ratio_cell(found)
    if text.startswith("≈"):
        return text
    low, high = found["interval"]
    return f"{1 / found['ratio']:.2f}× [{1 / high:.2f}–{1 / low:.2f}]"


def front_table(document: dict) -> str:
    lines = ["| workload | module step [95 % CI] | fastest style: speed-up vs module | fastest: time to target "
             "[95 % CI] | as written / fastest | fastest vs best sklearn peer (time to target) |",
             "|---|---|---|---|---|---|"]
    for section in document["workloads"]:
        rows = {(r["style"], r["device"]): r for r in section["rows"]}
        module = rows[("module", "cpu")]
        found = section["as_written_vs_fastest"]
        fastest = rows[(found["fastest"], "cpu")]
        peer = fastest.get("vs_best_peer")
        versus = f"{ratio_cell(peer)} of {fastest['best_peer']}" if peer else "no peer reaches the target"
        lines.append(f"| {section['workload']} | {seconds_interval(module['step_time_median_s'], module['step_time_interval_s'])} "
                     f"| {found['fastest']}: {_speedup(fastest['vs_reference'])} | "
                     f"{seconds_interval(fastest['time_to_target_s'], fastest.get('time_to_target_interval_s'))} | "
                     f"{ratio_cell(found['as_written_over_fastest'])} | {versus} |")
    return "\n".join(lines)


def styles_table(document: dict) -> str:
    styles = [r["style"] for r in document["workloads"][0]["rows"] if r["kind"] == "style" and r["device"] == "cpu"]
    lines = ["| workload | module | " + " | ".join(s for s in styles if s != "module") + " |",
             "|---" * (len(styles) + 1) + "|"]
    for section in document["workloads"]:
        rows = {r["style"]: r for r in section["rows"] if r["kind"] == "style" and r["device"] == "cpu"}
        module = rows["module"]
        cells = [ratio_cell(rows[s]["vs_reference"]) for s in styles if s != "module"]
        lines.append(f"| {section['workload']} | "
                     f"{seconds_interval(module['step_time_median_s'], module['step_time_interval_s'])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv) -> int:
    if len(argv) != 1:
        print("usage: python scripts/readme_tables.py RESULTS.json", file=sys.stderr)
        return 2
    try:
        with open(argv[0]) as handle:
            document = json.load(handle)
        tables = front_table(document), styles_table(document)
        machine, versions = document["machine"], document["versions"]
        provenance = (f"<!-- {machine['platform']}, {machine['cpu_count']} cores, torch {versions['torch']}, "
                      f"threads {document['threads']}, {document['wall_s']:.0f} s -->\n")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        print(f"readme_tables: error: {argv[0]!r} is not a torchloops compare results.json ({error})",
              file=sys.stderr)
        return 2
    print(provenance)
    print(tables[0])
    print()
    print(tables[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
