"""Whether two ``torchloops run ... --json`` files hold the same records in every field but times.

The check of a refactoring that must not change what a run computes (issue 12):

    torchloops run all --style all --steps 50 --seed 7 --step-losses --json before.json
    ... change the code ...
    torchloops run all --style all --steps 50 --seed 7 --step-losses --json after.json
    python scripts/same_records.py before.json after.json

Times (step times, their intervals and blocks, train and target times, each evaluation's
``time_s``, the paired comparison) are left out; everything else must be equal, value for
value.  Exit 0: the same; 1: a record differs (each named, with its differing fields);
2: bad input (one line).
"""

from __future__ import annotations

import json
import sys

TIME_FIELDS = {"step_time_median_s", "step_time_interval_s", "step_time_blocks_s", "train_time_s",
               "time_to_target_s", "time_s", "comparison", "time_to_target_interval_s", "warmup_step_time_median_s",
               "train_time_sum_s", "time_to_target_sum_s"}


def without_times(value):
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in TIME_FIELDS}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def differences(before: list, after: list) -> list:
    """``(workload, style, device, [fields])`` of each record pair that differs beyond times."""
    if len(before) != len(after):
        return [("*", "*", "*", [f"{len(before)} records before, {len(after)} after"])]
    found = []
    for a, b in zip(before, after):
        a, b = without_times(a), without_times(b)
        if a != b:
            fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            found.append((a.get("workload"), a.get("style"), a.get("device"), fields))
    return found


def _load(path: str) -> list:
    try:
        with open(path) as handle:
            records = json.load(handle)
    except (OSError, ValueError) as error:
        raise SystemExit(f"same_records: error: {path}: {error}")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise SystemExit(f"same_records: error: {path}: not a list of run records (torchloops run --json)")
    return records


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("same_records: error: give two files: BEFORE.json AFTER.json", file=sys.stderr)
        return 2
    try:
        before, after = (_load(p) for p in argv)
    except SystemExit as error:
        print(error, file=sys.stderr)
        return 2
    found = differences(before, after)
    for workload, style, device, fields in found:
        print(f"differs: {workload} {style} {device}: {', '.join(fields)}")
    print(f"{len(before)} records; {len(found)} differ in more than their times")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
