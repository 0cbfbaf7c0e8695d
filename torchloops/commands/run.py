"""``torchloops run``: train workloads and print a table of their records.

The styles of one workload are timed interleaved (:mod:`torchloops.measurement.interleave`), each
compared with the reference style (``module`` when it is among them, else the first).
Every combination is configured (and so checked) before anything trains: bad input
never costs a run.

``run --device ddp --nproc N`` starts N ranks of this same command with
``torchrun --standalone`` (:func:`torchloops.support.launcher.launch`); each rank is
``run --device ddp`` under torchrun, and rank 0 alone prints and writes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import List

from torchloops import PLACEMENTS, STYLES, WORKLOADS, Unavailable, UsageError, configure
from torchloops.measurement import checkpoint
from torchloops.execution import distributed
from torchloops.support import launcher
from torchloops.support.console import (PROG, comparison_cell, format_table, non_negative_float, positive_float, positive_int,
                       progress_bar, progress_trackers, seconds, seconds_interval)
from torchloops.support.console import seed as seed_type
from torchloops.measurement.interleave import run_interleaved
from torchloops.measurement.runner import BLOCK_STEPS, BLOCK_WARMUP_STEPS
from torchloops.support.outputs import check_output_path, replaced_atomically, write_json

HEADERS = ("workload", "style", "device", "steps", "train loss", "test loss", "metric", "target",
           "to target", "time to target [95 % CI]", "step time [95 % CI]", "vs reference", "train time", "notes")
FOOTNOTE = ("step time: the median over blocks of each block's mean step ({warmup} steps timed apart, then {steps} "
            "timed); time to target and train time: steps x the step time, with its 95 % interval.  vs reference: "
            "step time over the reference style's (module, else the first), paired per interleaved round, "
            "with its 95 % interval; \u2248 same: the interval straddles 1 or lies within \u00b13 %.").format(
                warmup=BLOCK_WARMUP_STEPS, steps=BLOCK_STEPS)


def _style_list(text: str) -> str:
    """argparse type: ``all``, a style, or styles separated by commas (each once)."""
    names = text.split(",")
    valid = STYLES.names()
    if text != "all" and (any(n not in valid for n in names) or len(set(names)) != len(names)):
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose all, or one or more of {', '.join(valid)} separated by commas, each once)")
    return text


def add_parser(subparsers):
    r = subparsers.add_parser("run", help="train workloads and print a table of their records")
    r.add_argument("workload", nargs="?", default="all", choices=WORKLOADS.names() + ["all"], metavar="WORKLOAD|all")
    r.add_argument("--style", default="all", type=_style_list, metavar="S[,S...]|all",
                   help="a style, several separated by commas (timed interleaved), or all (default)")
    r.add_argument("--device", default="cpu", choices=PLACEMENTS.names())
    r.add_argument("--seed", type=seed_type, default=0)
    r.add_argument("--epochs", type=positive_int)
    r.add_argument("--steps", type=positive_int, help="cap on the total number of optimizer steps")
    r.add_argument("--lr", type=positive_float)
    r.add_argument("--weight-decay", type=non_negative_float, metavar="X",
                   help="the optimizer's L2 penalty, torch.optim's weight_decay (finite, >= 0; default 0)")
    r.add_argument("--batch-size", type=positive_int)
    r.add_argument("--threads", type=positive_int, default=1, help="torch.set_num_threads (default 1)")
    r.add_argument("--until-target", action="store_true", help="stop each run at its quality target")
    r.add_argument("--nproc", type=positive_int, metavar="N",
                   help="with --device ddp: start N ranks on this machine (torchrun --standalone)")
    r.add_argument("--backend", choices=distributed.BACKENDS,
                   help="with --device ddp: the process group's backend (gloo: CPU ranks; nccl: one GPU per "
                   "rank; default nccl when CUDA is visible, else gloo)")
    r.add_argument("--json", metavar="PATH", help="write the list of result records here (-: standard output, "
                   "the table then on standard error)")
    r.add_argument("--step-losses", action="store_true",
                   help="keep every step's training loss (of the global batch) in the JSON records")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True), cuDNN deterministic (recorded in the JSON)")
    r.add_argument("--save", metavar="PATH",
                   help="one workload and one style: save the trained model (and torch.optim state) here")
    return r


def main(args) -> int:
    _check_arguments(args)
    rank_mode = _check_ddp_arguments(args)
    distributed.select_backend(args.backend)  # before configure: the checks depend on it
    planned = _plan(args)
    if args.nproc is not None and any(config is not None for _, _, config, _ in planned):
        return _launch_ranks(args)
    if rank_mode:
        launcher.stop_with_launcher()
        try:
            status = _run_planned(args, planned, rank_mode)
        except Exception:
            distributed.shutdown()
            raise
        # Not on SIGINT/SIGTERM (BaseException): leaving the group is a conversation with ranks that
        # are being stopped too; the process ends at once and the OS closes its sockets.
        distributed.shutdown()
        return status
    return _run_planned(args, planned, rank_mode)


def _check_arguments(args) -> None:
    """--json and --save: writable, and --save only where it keeps one model."""
    if args.json is not None:
        check_output_path(args.json, standard_output=True)
    if args.save is not None:
        if args.workload == "all" or args.style == "all" or "," in args.style:
            raise UsageError("--save keeps one model: name one workload and one --style")
        if args.device == "ddp":
            raise UsageError("--save applies to single-process runs, not --device ddp")
        check_output_path(args.save, "--save")
        if args.nproc is not None:
            raise UsageError("--save applies to single-process runs, not --nproc")


def _check_ddp_arguments(args) -> bool:
    """Whether this process is a ddp rank; bad combinations of --device/--nproc/--backend are usage errors."""
    rank_mode = args.device == "ddp" and distributed.launched_by_torchrun()
    if args.nproc is not None and args.device != "ddp":
        raise UsageError(f"--nproc starts ddp ranks; it does not apply to --device {args.device}")
    if rank_mode and args.nproc is not None:
        raise UsageError(
            f"this process is already rank {distributed.rank()} of {distributed.world_size()} "
            "started by torchrun; leave --nproc out"
        )
    if args.device == "ddp" and not rank_mode and args.nproc is None:
        raise UsageError(
            "--device ddp runs one process per rank: add --nproc N to start N ranks here, "
            "or start this command with torchrun (see `torchloops list`)"
        )
    if args.backend is not None and args.device != "ddp":
        raise UsageError(f"--backend chooses the ddp process group's backend; it does not apply to --device {args.device}")
    return rank_mode


def _plan(args) -> list:
    """``(workload, style, config or None, why skipped or None)`` of every combination asked for."""
    names = WORKLOADS.names() if args.workload == "all" else [args.workload]
    styles = STYLES.names() if args.style == "all" else args.style.split(",")
    overrides = dict(epochs=args.epochs, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                     threads=args.threads, until_target=args.until_target, nproc=args.nproc,
                     deterministic=args.deterministic, weight_decay=args.weight_decay)
    planned = []
    for name in names:
        for style in styles:
            try:
                planned.append((name, style, configure(name, style, args.device, args.seed, **overrides), None))
            except Unavailable as why:
                planned.append((name, style, None, str(why)))
    return planned


def _rank_argv(args, json_path: str) -> List[str]:
    """This command as each rank runs it under torchrun (no --nproc; results to json_path)."""
    argv = ["run", args.workload, "--style", args.style, "--device", "ddp", "--seed", str(args.seed),
            "--threads", str(args.threads), "--json", json_path]
    if args.backend is not None:
        argv += ["--backend", args.backend]
    for flag, value in (("--epochs", args.epochs), ("--steps", args.steps), ("--lr", args.lr),
                        ("--batch-size", args.batch_size), ("--weight-decay", args.weight_decay)):
        if value is not None:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    for flag, on in (("--until-target", args.until_target), ("--quiet", args.quiet),
                     ("--step-losses", args.step_losses), ("--deterministic", args.deterministic)):
        if on:
            argv.append(flag)
    return argv


def _launch_ranks(args) -> int:
    """Start the ranks with torchrun --standalone; report every failed rank in one line."""
    if args.json and replaced_atomically(args.json):
        json_path, scratch = os.path.abspath(args.json), None
    else:  # rank 0 hands its records back through a scratch file (to see divergence); `-`, a pipe: written here
        fd, scratch = tempfile.mkstemp(prefix="torchloops-ddp-", suffix=".json")
        os.close(fd)
        json_path = scratch
    try:
        status, failure = launcher.launch(
            args.nproc, launcher.rank_python_args(_rank_argv(args, json_path)), threads=args.threads
        )
        if status:
            print(f"{PROG}: error: ddp run with {args.nproc} ranks failed: {failure}", file=sys.stderr)
            return status
        with open(json_path) as handle:
            records = json.load(handle)
    finally:
        if scratch is not None and os.path.exists(scratch):
            os.unlink(scratch)
    if scratch is not None and args.json:
        write_json(args.json, records)
    return _diverged_status(records)


def _diverged_status(records) -> int:
    """Exit 1 with one line when any run diverged: its numbers are not a result."""
    diverged = [r for r in records if r["diverged"]]
    if diverged:
        where = ", ".join(
            f"{r['workload']}/{r['style']} at step {r.get('diverged_at_step')} (lr {r['lr']:g})" for r in diverged
        )
        print(f"{PROG}: error: {len(diverged)} run(s) diverged (NaN or infinite training loss): {where}",
              file=sys.stderr)
        return 1
    return 0


def _run_planned(args, planned, rank_mode: bool) -> int:
    """Train every planned run in this process (a ddp rank: its part); the main process reports."""
    main_process = not rank_mode or distributed.rank() == 0
    records, rows = [], []
    for name in dict.fromkeys(n for n, _, _, _ in planned):
        group = [p for p in planned if p[0] == name]
        for _, style, config, skipped in group:
            if config is None:
                rows.append([name, style, args.device] + ["-"] * 10 + [f"skipped: {skipped}"])
        configs = [config for _, _, config, _ in group if config is not None]
        if not configs:
            continue
        for result in _run_group(args, name, configs, main_process):
            record = result.to_dict()
            records.append(record)
            rows.append(_row(record))
    if not main_process:
        return 0
    print(format_table(HEADERS, rows), flush=True)
    print(FOOTNOTE, flush=True)
    if args.json:
        write_json(args.json, records)
    if rank_mode and launcher.launched_by_torchloops():
        return 0  # the launching process reads the records and reports divergence
    return _diverged_status(records)


def _run_group(args, name: str, configs, main_process: bool):
    """One workload's configurations, interleaved; saves the trained model with --save."""
    styles = [c.style.name for c in configs]
    reference = styles.index("module") if "module" in styles else 0
    bar = progress_bar(args.quiet or not main_process, f"{name}/{','.join(styles) if len(styles) < 3 else 'styles'}")
    if bar is not None:
        bar.reset(total=sum(c.total_steps for c in configs))
    progress = progress_trackers(bar, len(configs))
    trained = {}
    hooks = [(lambda trainer: trained.update(trainer=trainer)) if args.save else None] * len(configs)
    try:
        results = run_interleaved(configs, reference=reference, progress=progress,
                                  record_step_losses=args.step_losses, trainer_hooks=hooks)
    finally:
        if bar is not None:
            bar.close()
    if args.save and not results[0].diverged:  # a diverged model is not saved over a good one
        checkpoint.save_trainer(args.save, name, trained["trainer"],
                                info={"style": styles[0], "seed": args.seed, "steps": results[0].steps})
    return results


def _row(record: dict) -> List[str]:
    arrow = ">=" if record["higher_is_better"] else "<="
    notes = []
    if record["diverged"]:
        at = record.get("diverged_at_step")
        notes.append("DIVERGED" + (f" at step {at}" if at is not None else ""))
    if record["dead_classes"]:
        notes.append(f"dead class {','.join(map(str, record['dead_classes']))} (never predicted)")
    if record.get("graph_replays") is not None:
        notes.append(f"{record['graph_replays']} steps replayed from {record['graph_captures']} CUDA graph(s)")
    reached = f"step {record['steps_to_target']}" if record["reached_target"] else "not reached"
    times = [seconds_interval(record["time_to_target_s"], record.get("time_to_target_interval_s")),
             seconds_interval(record["step_time_median_s"], record.get("step_time_interval_s")),
             comparison_cell(record), seconds(record["train_time_s"])]
    if record["diverged"]:
        times = ["-"] * 4  # a diverged run's time is not a result
    device = record["device"]
    if record.get("backend"):
        device += f" {record['world_size']}x{record['backend']}"
    return [
        record["workload"], record["style"], device, str(record["steps"]),
        f"{record['final_train_loss']:.5g}", f"{record['test_loss']:.5g}",
        f"{record['metric']}={record['metric_value']:.4g}", f"{arrow} {record['target']:g}",
        reached, *times, "; ".join(notes),
    ]
