"""The noise study: how far the suite's timing verdicts can be trusted on this machine.

    python scripts/noise_study.py [--parts aa,planted,separate,counts] [--runs 20] [--json PATH]

Parts (each prints its table; --json writes every figure):

* ``aa``: A/A in one run.  ``module`` and ``sequential`` compute the same arithmetic; each run
  times them interleaved (``torchloops run W --style module,sequential``'s machinery, 600
  steps) and the paired ratio's verdict should be "≈ same".  Reported per workload: the share
  of "≈ same" verdicts and the spread of the point ratios.
* ``planted``: a slowdown planted through a test-only style (``scripts/planted.py``: ``module``
  plus a fixed number of iterations of a Python loop per step, calibrated in this process to 3 % and 10 %
  of the module step by interleaved runs); each run interleaves ``module`` and ``planted``; detected = verdict
  "slower".  Reported: detection rate and the realised ratio.
* ``separate``: A/A across separate runs.  Pairs of separate processes of ``torchloops run W
  --style module --json``, each pair through ``torchloops diff``: a false alarm is exit 1.
* ``counts``: instruction counts (``torchloops count``, callgrind).  Several count processes
  of every workload's ``module`` step give the run-to-run spread and A/A ``diff`` pairs (every
  pair of processes; a false alarm is exit 1 at ``--max-slowdown 2``); a planted 3 % (calibrated by counting the
  planted op) must be flagged by ``diff --max-slowdown 2`` for every workload.
"""

from __future__ import annotations

import contextlib
import itertools
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

import torch  # noqa: E402

import planted  # noqa: E402  (registers the test-only style)
import torchloops as W  # noqa: E402
from torchloops import cli  # noqa: E402
from torchloops.support.console import ArgumentParser, positive_int  # noqa: E402
from torchloops.support.outputs import STANDARD_OUTPUT, check_output_path, json_to_standard_output, write_json  # noqa: E402
from torchloops.measurement.interleave import run_interleaved  # noqa: E402
from torchloops.measurement.runner import BLOCK_STEPS, BLOCK_WARMUP_STEPS  # noqa: E402

WORKLOADS = W.workload_names()
PARTS = ("aa", "planted", "separate", "counts")


def _interleaved(workload, styles, steps, seed=0):
    configs = [W.configure(workload, s, "cpu", seed, steps=steps) for s in styles]
    return run_interleaved(configs, reference=0)


def _summary(comparisons, band=0.05):
    ratios = [c["ratio"] for c in comparisons]
    return {"runs": len(comparisons), "verdicts": {v: sum(c["verdict"] == v for c in comparisons)
                                                   for v in ("same", "faster", "slower")},
            "ratio_min": min(ratios), "ratio_median": statistics.median(ratios), "ratio_max": max(ratios),
            "within_5pct": sum(abs(r - 1) <= band for r in ratios),
            "interval_width_median": statistics.median(c["interval"][1] - c["interval"][0] for c in comparisons)}


def part_aa(runs, steps, workloads):
    out = {}
    for name in workloads:
        comparisons = [_interleaved(name, ("module", "sequential"), steps)[1].comparison for _ in range(runs)]
        out[name] = _summary(comparisons)
        s = out[name]
        print(f"aa {name}: {s['verdicts']['same']}/{runs} same; ratios {s['ratio_min']:.3f}-{s['ratio_max']:.3f}; "
              f"{s['within_5pct']}/{runs} within +-5 %", flush=True)
    return out


def _op_seconds(n=200000):
    trainer = planted.PlantedTrainer(None, n)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        acc = trainer.acc
        for _ in range(n):
            acc = acc * 1.0000001 + 1e-9
        best = min(best, (time.perf_counter() - start) / n)
    return best


def _calibrate(name, share, steps):
    """Planted ops that slow ``name``'s module step by ``share``: a first guess from the op's
    time in a tight loop, then two corrections from interleaved runs (the op costs more
    inside a step than in a loop of its own)."""
    step = _interleaved(name, ("module",), 200)[0].step_time_median_s
    ops = max(1, round(share * step / _op_seconds()))
    for _ in range(2):
        planted.set_planted_ops(ops)
        ratio = _interleaved(name, ("module", planted.NAME), steps)[1].comparison["ratio"]
        if ratio > 1:
            ops = max(1, round(ops * share / (ratio - 1)))
    return ops, step


def part_planted(runs, steps, workloads, shares=(0.03, 0.10)):
    out = {}
    for name in workloads:
        for share in shares:
            ops, step = _calibrate(name, share, steps)
            planted.set_planted_ops(ops)
            comparisons = [_interleaved(name, ("module", planted.NAME), steps)[1].comparison for _ in range(runs)]
            s = _summary(comparisons)
            s.update(share=share, ops=ops, module_step_s=step, detected=s["verdicts"]["slower"])
            out[f"{name} +{share:.0%}"] = s
            print(f"planted {name} +{share:.0%} ({ops} ops): detected {s['detected']}/{runs}; realised ratio "
                  f"median {s['ratio_median']:.3f} ({s['ratio_min']:.3f}-{s['ratio_max']:.3f})", flush=True)
    planted.set_planted_ops(0)
    return out


def _diff(base, new, *extra):
    err, text = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(err):
        status = cli.main(["diff", str(base), str(new), *extra])
    return status, text.getvalue()


def part_separate(runs, steps, workloads, folder):
    out = {}
    for name in workloads:
        files = []
        for i in range(2 * runs):
            path = Path(folder) / f"{name}-{i}.json"
            subprocess.run([sys.executable, "-m", "torchloops", "run", name, "--style", "module", "--steps",
                            str(steps), "--quiet", "--json", str(path)], check=True, stdout=subprocess.DEVNULL)
            files.append(path)
        statuses, ratios = [], []
        for a, b in zip(files[::2], files[1::2]):
            status, _ = _diff(a, b)
            statuses.append(status)
            ra, rb = (json.loads(p.read_text())[0]["step_time_median_s"] for p in (a, b))
            ratios.append(rb / ra)
        out[name] = {"pairs": runs, "false_alarms": statuses.count(1), "exit_statuses": statuses,
                     "ratio_min": min(ratios), "ratio_max": max(ratios)}
        print(f"separate {name}: {statuses.count(1)}/{runs} false alarms (diff exit 1); step-median ratios "
              f"{min(ratios):.3f}-{max(ratios):.3f}", flush=True)
    return out


def _count(requests, folder, label, steps=None):
    from torchloops.measurement import counting

    records = counting.count(requests, steps=steps, extra_imports=("planted",))
    path = Path(folder) / f"{label}.json"
    path.write_text(json.dumps(records))
    return records, path


def part_counts(processes, workloads, folder):
    from torchloops.measurement import counting

    problem = counting.valgrind_problem()
    if problem:
        print(f"counts: skipped: {problem}")
        return {"skipped": problem}
    requests = [(name, "module") for name in workloads]
    started = time.perf_counter()
    runs = [_count(requests, folder, f"aa-{i}") for i in range(processes)]
    # Separate processes may agree to the instruction: the counted region is deterministic
    # (PYTHONHASHSEED=0 in the child; docs/measurement.md, "Instruction counts").  Say how many
    # distinct totals the processes gave, rather than implying as many as there were processes.
    distinct = len({tuple(r["instructions"] for r in records) for records, _ in runs})
    per_config = {}
    for name in workloads:
        values = [next(r["instructions_per_step"] for r in records if r["workload"] == name) for records, _ in runs]
        per_config[name] = {"counts": values, "spread": max(values) / min(values) - 1}
    pairs = list(itertools.combinations(runs, 2))  # every pair of separate processes
    pair_statuses = [_diff(a[1], b[1], "--max-slowdown", "2")[0] for a, b in pairs]
    # Planted 3 %: the op's instructions from one calibration process, then the planted count.
    planted.set_planted_ops(1000)
    calibration, _ = _count([(name, planted.NAME) for name in workloads], folder, "calibration")
    ops = {}
    for name in workloads:
        base = per_config[name]["counts"][0]
        extra = next(r["instructions_per_step"] for r in calibration if r["workload"] == name) - base
        ops[name] = max(1, round(0.03 * base / (extra / 1000)))
    planted.set_planted_ops(ops)
    records, _ = _count([(name, planted.NAME) for name in workloads], folder, "planted")
    for record in records:
        record["style"] = "module"  # compared with the module counts under the same key
    planted_path = Path(folder) / "planted-as-module.json"
    planted_path.write_text(json.dumps(records))
    planted.set_planted_ops(0)
    status, text = _diff(runs[0][1], planted_path, "--max-slowdown", "2")
    realised = {r["workload"]: r["instructions_per_step"] / per_config[r["workload"]]["counts"][0] - 1 for r in records}
    out = {"processes": processes, "distinct_totals": distinct, "per_config": per_config, "aa_pair_exit_statuses": pair_statuses,
           "aa_pairs_with_alarm": pair_statuses.count(1), "planted_ops": ops,
           "planted_realised": realised, "planted_diff_exit": status, "planted_diff_output": text,
           "wall_s": time.perf_counter() - started}
    worst = max(v["spread"] for v in per_config.values())
    print(f"counts: {processes} processes ({distinct} distinct totals); worst spread {100 * worst:.3f} %; A/A diff pairs exit {pair_statuses}; "
          f"planted 3 % realised {', '.join(f'{k} +{100 * v:.2f} %' for k, v in realised.items())}: diff exit {status}",
          flush=True)
    return out


def _table(title: str, headers, rows) -> list:
    return ["", title, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def report(document: dict) -> str:
    """The study as Markdown tables (docs/measurement.md's "Noise study" section)."""
    out = [f"Measured {document['started']} on {document['machine']['platform']} "
           f"({document['machine']['cpu_count']} cores), torch {document['torch']}, 1 thread; "
           f"`{document['command']}`" + (f"; {document['runs']} runs of {document['steps']} steps per row."
                                         if {"aa", "planted", "separate"} & set(document) else ".")]
    if "aa" in document:
        out += _table("**A/A in one run** (module vs sequential, interleaved; target: ≈ same in ≥ 95 % of runs, "
                      "point ratio within ±5 % in ≥ 95 %):",
                      ("workload", "≈ same", "point ratios (min–max)", "within ±5 %", "median interval width"),
                      [(name, f"{s['verdicts']['same']}/{s['runs']}", f"{s['ratio_min']:.3f}–{s['ratio_max']:.3f}",
                        f"{s['within_5pct']}/{s['runs']}", f"{s['interval_width_median']:.3f}")
                       for name, s in document["aa"].items()])
    if "planted" in document:
        out += _table("**Planted slowdowns, interleaved wall time** (detected = verdict \"slower\": the whole "
                      "interval above 1.03; target: planted 10 % detected in ≥ 95 %):",
                      ("workload, planted", "realised ratio median (min–max)", "detected"),
                      [(key, f"{s['ratio_median']:.3f} ({s['ratio_min']:.3f}–{s['ratio_max']:.3f})",
                        f"{s['detected']}/{s['runs']}") for key, s in document["planted"].items()])
    if "separate" in document:
        out += _table("**A/A across separate runs** (`torchloops run W --style module --json` twice, then "
                      "`torchloops diff`, default `--max-slowdown 5`; a false alarm is exit 1):",
                      ("workload", "false alarms", "step-median ratios of the pairs (min–max)"),
                      [(name, f"{s['false_alarms']}/{s['pairs']}", f"{s['ratio_min']:.3f}–{s['ratio_max']:.3f}")
                       for name, s in document["separate"].items()])
    counts = document.get("counts")
    if counts and "skipped" not in counts:
        out += _table(f"**Instruction counts** ({counts['processes']} separate `count` processes of every "
                      "workload's module step; A/A pairs through `diff --max-slowdown 2`; a planted 3 % through "
                      "the same diff):",
                      ("workload", "module instructions/step", "spread over the processes", "planted 3 % (realised)"),
                      [(name, f"{s['counts'][0]:,.0f}", f"{100 * s['spread']:.3f} %",
                        f"+{100 * counts['planted_realised'][name]:.2f} %") for name, s in counts["per_config"].items()])
        statuses = counts["aa_pair_exit_statuses"]
        out += ["", f"A/A diffs of process pairs: exit statuses {statuses} ({statuses.count(1)} of "
                f"{len(statuses)} pairs raised an alarm); planted 3 %: `diff --max-slowdown 2` exit "
                f"{counts['planted_diff_exit']}."]
        if "distinct_totals" in counts:
            out += ["", f"Distinct totals over the {counts['processes']} processes: {counts['distinct_totals']} "
                    "(separate processes can agree to the instruction: the counted region is deterministic)."]
    return "\n".join(out)


class _Parser(ArgumentParser):
    def error(self, message):  # one line naming what is valid, exit 2 (not argparse's usage block)
        print(f"noise_study: error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv=None) -> int:
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--runs", type=positive_int, default=20)
    parser.add_argument("--steps", type=positive_int, default=600)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--separate-workloads", default="regression,mlp_adam")
    parser.add_argument("--count-processes", type=positive_int, default=4)
    parser.add_argument("--json", default="results/noise_study.json", help="-: standard output (the rest on stderr)")
    parser.add_argument("--report", metavar="JSON", help="print the Markdown tables of a finished study and stop")
    args = parser.parse_args(argv)
    if args.report:
        try:
            document = json.loads(Path(args.report).read_text())
            print(report(document))
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"noise_study: error: --report {args.report!r} is not a noise study's JSON ({error})",
                  file=sys.stderr)
            return 2
        return 0
    parts, workloads = args.parts.split(","), args.workloads.split(",")
    separate = args.separate_workloads.split(",")
    problems = [f"--parts: valid: {', '.join(PARTS)}" for p in parts if p not in PARTS][:1]
    problems += [f"--workloads/--separate-workloads: unknown {w!r}; valid: {', '.join(WORKLOADS)}"
                 for w in workloads + separate if w not in WORKLOADS][:1]
    block = BLOCK_WARMUP_STEPS + BLOCK_STEPS
    if args.steps < 3 * block:  # an interval needs 3 interleaved rounds (each block: warm-up, then timed steps)
        problems.append(f"--steps {args.steps}: an interval needs at least {3 * block}")
    if "counts" in parts and args.count_processes < 2:
        problems.append("--count-processes: at least 2 (the A/A pairs)")
    if not problems:
        try:  # its folder made here, as for the default results/noise_study.json
            if args.json != STANDARD_OUTPUT:
                os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            check_output_path(args.json, standard_output=True)
        except OSError as error:
            problems.append(f"--json {args.json!r}: {error.strerror or error}")
        except W.UsageError as error:
            problems.append(str(error))
    if problems:
        print(f"noise_study: error: {'; '.join(problems)}", file=sys.stderr)
        return 2
    with json_to_standard_output(args.json == STANDARD_OUTPUT):
        return _study(args, argv, parts, workloads, separate)


def _study(args, argv, parts, workloads, separate) -> int:
    """Every part asked for, then the document written to --json (a write error: one line, exit 2)."""
    torch.set_num_threads(1)
    document = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
                "torch": torch.__version__, "runs": args.runs, "steps": args.steps,
                "command": " ".join(["python", "scripts/noise_study.py", *(argv or sys.argv[1:])]),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="noise-study-") as folder:
        if "aa" in parts:
            document["aa"] = part_aa(args.runs, args.steps, workloads)
        if "planted" in parts:
            document["planted"] = part_planted(args.runs, args.steps, workloads)
        if "separate" in parts:
            document["separate"] = part_separate(args.runs, args.steps, separate, folder)
        if "counts" in parts:
            try:
                document["counts"] = part_counts(args.count_processes, workloads, folder)
            except RuntimeError as error:  # a count that failed: one line, nothing written
                print(f"noise_study: error: {error}", file=sys.stderr)
                return 1
    try:
        write_json(args.json, document)
    except W.UsageError as error:
        print(f"noise_study: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
