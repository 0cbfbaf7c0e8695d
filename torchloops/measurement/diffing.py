"""What ``torchloops diff`` compares: records loaded, merged, matched, and their verdicts.

Nothing here prints; :mod:`torchloops.commands.diff` makes the table and the exit status.

* **Loading** accepts the suite's three files: ``run --json`` (a list of run records),
  ``count --json`` (a list of ``kind: "count"`` records) and ``compare``'s ``results.json``
  (a dict whose ``records`` hold run records and ``kind: "peer"`` records, the latter
  ignored).  Anything else is bad input (:class:`UsageError`, one line, exit 2).
* **Merging**: within one file, the records of one configuration (workload × style ×
  placement × seed) are one :class:`Config`: the run record's step-time blocks and median,
  the count record's (or the run record's) instructions per step.
* **Matching**: configurations are matched by workload × style × placement, and by seed
  where both files hold several seeds of it; one seed on each side is matched whatever the
  seeds (with a note).
* **Verdicts**: by instruction counts where both sides have them (deterministic to ~0.5 %),
  by the two-sample wall-time ratio and its bootstrap interval otherwise
  (:mod:`torchloops.support.stats`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from torchloops.support import stats
from torchloops.core.registry import UsageError

# Instruction counts are deterministic to ~0.5 % run to run (docs/diff.md): a count ratio
# within 1 ± 1 % is "≈ same".  The band never exceeds the gate's PCT, so a configuration
# that fails the gate is always printed "slower".
COUNT_BAND = 0.01

INSTRUCTIONS, WALL_TIME = "instructions", "wall time"

Key = Tuple[str, str, str]  # workload, style, placement


@dataclass
class Config:
    """Everything one file says about one configuration (one seed), its records merged."""

    workload: str
    style: str
    device: str
    seed: Optional[int]
    blocks: List[float] = field(default_factory=list)  # step_time_blocks_s of every run record
    medians: List[float] = field(default_factory=list)  # step_time_median_s of every run record
    instructions: List[float] = field(default_factory=list)  # instructions_per_step, all records
    threads: set = field(default_factory=set)
    diverged: int = 0  # run records left out: a diverged run's time is not a result

    @property
    def key(self) -> Key:
        return (self.workload, self.style, self.device)

    @property
    def label(self) -> str:
        seed = "" if self.seed is None else f" seed {self.seed}"
        return f"{self.workload}/{self.style}/{self.device}{seed}"


@dataclass
class Side:
    """One file: its configurations by key and seed, and what it says about where it ran."""

    path: str
    configs: Dict[Key, Dict[Optional[int], Config]] = field(default_factory=dict)
    torch_versions: set = field(default_factory=set)
    machines: set = field(default_factory=set)  # ("text", s); ("dict", json) for a dict of another form
    ignored: int = 0  # records of another kind (not peers): left out

    def count(self) -> int:
        return sum(len(seeds) for seeds in self.configs.values())


@dataclass
class Comparison:
    """One matched configuration and its verdict against the gate."""

    base: Config
    new: Config
    instructions: Optional[float]  # NEW/BASE instructions per step; None unless both sides count
    wall: Optional[stats.Estimate]  # NEW/BASE step median, interval where both sides have blocks
    verdict: Optional[str]  # stats.SLOWER / FASTER / SAME; None: no evidence common to both sides
    evidence: Optional[str]  # INSTRUCTIONS or WALL_TIME
    fails: bool  # slower beyond the gate's PCT
    wall_beyond: bool  # the whole wall-time interval lies beyond the gate (whatever decided)

    @property
    def label(self) -> str:
        if self.base.seed == self.new.seed:
            return self.base.label
        return f"{self.base.workload}/{self.base.style}/{self.base.device}"


@dataclass
class Diff:
    comparisons: List[Comparison]
    only_base: List[str]
    only_new: List[str]
    seed_mismatches: List[Tuple[str, Optional[int], Optional[int]]]
    notes: List[str]


# --------------------------------------------------------------------------- loading


def load(path: str) -> Side:
    """The configurations of one results file; :class:`UsageError` (one line) for bad input."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as why:
        raise UsageError(f"cannot read {path!r}: {why.strerror or why}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path!r} is not JSON (not UTF-8 text)") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as why:
        raise UsageError(f"{path!r} is not valid JSON: {why.msg} (line {why.lineno}, column {why.colno})") from None
    except (ValueError, RecursionError) as why:
        raise UsageError(f"{path!r} is not valid JSON: {why}") from None
    side = Side(path)
    if isinstance(document, list):
        records = document
    elif isinstance(document, dict) and isinstance(document.get("records"), list):
        records = document["records"]  # compare's results.json
        versions = document.get("versions")
        if isinstance(versions, dict) and isinstance(versions.get("torch"), str):
            side.torch_versions.add(versions["torch"])
        where = document.get("machine")
        if isinstance(where, dict) and isinstance(where.get("platform"), str):
            # compare.machine(): written the way count records write theirs, "platform processor"
            side.machines.add(("text", f"{where['platform']} {where.get('processor') or ''}".strip()))
        elif isinstance(where, dict) and where:
            side.machines.add(("dict", json.dumps(where, sort_keys=True)))
        elif isinstance(where, str) and where:
            side.machines.add(("text", where))
    else:
        raise UsageError(
            f"{path!r} is not a torchloops results file: expected a list of records "
            "(run/count --json) or compare's results.json (a dict with 'records')"
        )
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise UsageError(f"{path!r} is not a torchloops results file: record {index} is not a JSON object")
        _add(side, record, index)
    if not side.configs:
        raise UsageError(
            f"{path!r} holds no run or count records (workload, style, device and "
            "step_time_median_s or instructions_per_step)"
        )
    return side


def _add(side: Side, record: dict, index: int) -> None:
    kind = record.get("kind")
    if kind == "peer":
        return  # compare's sklearn peers: not a configuration of the suite
    names = [record.get(k) for k in ("workload", "style", "device")]
    is_run = kind in (None, "style") and "step_time_median_s" in record
    is_count = kind == "count" and "instructions_per_step" in record
    if not (is_run or is_count) or not all(isinstance(n, str) and n for n in names):
        side.ignored += 1
        return
    where = f"{side.path!r}: record {index} ({'/'.join(names)})"
    seed = record.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UsageError(f"{where}: seed {seed!r} is not an integer")
    device = names[2]
    if record.get("backend"):
        device += f" {record.get('world_size')}x{record['backend']}"
    seeds = side.configs.setdefault((names[0], names[1], device), {})
    config = seeds.setdefault(seed, Config(names[0], names[1], device, seed))
    if isinstance(record.get("torch_version"), str):
        side.torch_versions.add(record["torch_version"])
    if isinstance(record.get("machine"), str) and record["machine"]:
        side.machines.add(("text", record["machine"]))
    if isinstance(record.get("threads"), int):
        config.threads.add(record["threads"])
    count = _number(record.get("instructions_per_step"), where, "instructions_per_step")
    if count is not None:
        config.instructions.append(count)
    if not is_run:
        return
    if record.get("diverged"):
        config.diverged += 1
        return
    median = _number(record.get("step_time_median_s"), where, "step_time_median_s")
    if median is not None:
        config.medians.append(median)
    blocks = record.get("step_time_blocks_s")
    if blocks is not None:
        if not isinstance(blocks, list):
            raise UsageError(f"{where}: step_time_blocks_s is not a list of numbers")
        config.blocks.extend(_number(b, where, "step_time_blocks_s") for b in blocks)


def _number(value, where: str, name: str) -> Optional[float]:
    """A positive finite number, or None for a missing one; anything else is bad input."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise UsageError(f"{where}: {name} {value!r} is not a positive finite number")
    return float(value)


# --------------------------------------------------------------------------- matching and verdicts


def diff(base: Side, new: Side, max_slowdown: float) -> Diff:
    """Every configuration the two files share, with its verdict against ``max_slowdown`` (a fraction)."""
    comparisons, only_base, only_new, mismatches = [], [], [], []
    for key in list(base.configs) + [k for k in new.configs if k not in base.configs]:
        b, n = base.configs.get(key, {}), new.configs.get(key, {})
        if len(b) == 1 and len(n) == 1:
            (bc,), (nc,) = b.values(), n.values()
            pairs = [(bc, nc)]
            if bc.seed != nc.seed:
                mismatches.append(("/".join(key), bc.seed, nc.seed))
        else:
            pairs = [(b[s], n[s]) for s in b if s in n]
            only_base += [b[s].label for s in b if s not in n]
            only_new += [n[s].label for s in n if s not in b]
        comparisons += [compare(bc, nc, max_slowdown) for bc, nc in pairs]
    if not comparisons:
        raise UsageError(
            f"no configuration in common between {base.path!r} ({base.count()} configurations) "
            f"and {new.path!r} ({new.count()}): nothing to compare"
        )
    return Diff(comparisons, only_base, only_new, mismatches, _notes(base, new, comparisons))


def compare(base: Config, new: Config, max_slowdown: float) -> Comparison:
    limit = 1 + max_slowdown
    instructions = None
    if base.instructions and new.instructions:
        instructions = float(np.median(new.instructions) / np.median(base.instructions))
    wall = None
    if base.blocks and new.blocks:
        wall = stats.two_sample_ratio(base.blocks, new.blocks)
    elif base.medians and new.medians:  # older files: no samples, so no interval, never a failure
        wall = stats.Estimate(float(np.median(new.medians) / np.median(base.medians)), None, None, 0)
    wall_beyond = wall is not None and wall.low is not None and wall.low > limit
    if instructions is not None:
        band = min(COUNT_BAND, max_slowdown)
        verdict = stats.SLOWER if instructions > 1 + band else stats.FASTER if instructions < 1 - band else stats.SAME
        return Comparison(base, new, instructions, wall, verdict, INSTRUCTIONS, instructions > limit, wall_beyond)
    if wall is not None:
        verdict = stats.verdict(wall, min(stats.EQUIVALENCE_BAND, max_slowdown))
        return Comparison(base, new, None, wall, verdict, WALL_TIME, wall_beyond, wall_beyond)
    return Comparison(base, new, None, None, None, None, False, False)


def _notes(base: Side, new: Side, comparisons: List[Comparison]) -> List[str]:
    notes = []
    if base.torch_versions and new.torch_versions and base.torch_versions != new.torch_versions:
        notes.append(f"different torch versions: BASE {', '.join(sorted(base.torch_versions))}, "
                     f"NEW {', '.join(sorted(new.torch_versions))}")
    for form in ("text", "dict"):  # a dict of an unknown form is not comparable with a string
        b = sorted(m for f, m in base.machines if f == form)
        n = sorted(m for f, m in new.machines if f == form)
        if b and n and b != n:
            notes.append(f"different machines: BASE {'; '.join(b)}, NEW {'; '.join(n)}")
    threads = [c.label for c in comparisons if c.base.threads and c.new.threads and c.base.threads != c.new.threads]
    if threads:
        notes.append(f"different thread counts on the two sides: {', '.join(threads)}")
    diverged = [c.label for c in comparisons if c.base.diverged or c.new.diverged]
    if diverged:
        notes.append(f"diverged runs left out (their time is not a result): {', '.join(diverged)}")
    for side, name in ((base, "BASE"), (new, "NEW")):
        if side.ignored:
            notes.append(f"{name}: {side.ignored} record(s) neither run nor count records, left out")
    return notes
