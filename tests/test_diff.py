"""``torchloops diff``: matching, verdicts, the gate's exit status, and bad input as one line (exit 2)."""

from __future__ import annotations

import json
import random

import pytest

from torchloops.support import stats
from torchloops.cli import main

BLOCK = 1e-3  # seconds: the base's step time


def blocks(scale: float = 1.0, noise: float = 0.01, n: int = 30, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [BLOCK * scale * (1 + noise * rng.gauss(0, 1)) for _ in range(n)]


def run_record(workload="regression", style="module", device="cpu", seed=0, *, samples=None, median=None,
               instructions=None, torch_version="2.5.1", machine="x86_64 2 cores", **extra) -> dict:
    samples = blocks() if samples is None else samples
    record = {
        "workload": workload, "style": style, "device": device, "device_name": "cpu", "seed": seed,
        "threads": 1, "torch_version": torch_version, "diverged": False,
        "step_time_median_s": median if median is not None else sorted(samples)[len(samples) // 2],
        "step_time_blocks_s": samples, "step_time_interval_s": [min(samples), max(samples)],
        "instructions_per_step": instructions, "machine": machine,
    }
    record.update(extra)
    return record


def count_record(workload="regression", style="module", device="cpu", seed=0, *, instructions=1_000_000.0,
                 torch_version="2.5.1", machine="x86_64 2 cores") -> dict:
    return {"kind": "count", "workload": workload, "style": style, "device": device, "seed": seed, "threads": 1,
            "steps": 100, "instructions_per_step": instructions, "instructions": instructions * 100,
            "torch_version": torch_version, "python_version": "3.11.7", "machine": machine,
            "valgrind_version": "valgrind-3.19.0"}


def write(tmp_path, name, payload) -> str:
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


def diff(capsys, tmp_path, base, new, *options):
    """Exit status, stdout lines and stderr of ``torchloops diff`` on two payloads."""
    capsys.readouterr()
    status = main(["diff", write(tmp_path, "base.json", base), write(tmp_path, "new.json", new), *options])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def row(lines, *cells) -> str:
    found = [line for line in lines if line.split()[: len(cells)] == list(cells)]
    assert len(found) == 1, lines
    return found[0]


# --------------------------------------------------------------------------- the gate


def test_a_a_files_exit_0(capsys, tmp_path):
    records = [run_record(w, s, instructions=1e6) for w in ("regression", "lenet") for s in ("module", "raw")]
    status, lines, err = diff(capsys, tmp_path, records, records)
    assert status == 0, lines
    assert err == ""
    assert "≈ same (instructions)" in row(lines, "lenet", "raw", "cpu")
    assert lines[-1] == "no configuration slower beyond 5 % (4 compared)"


def test_a_a_wall_time_from_two_separate_noisy_runs_exits_0(capsys, tmp_path):
    base = [run_record(samples=blocks(1.0, noise=0.05, seed=1))]
    new = [run_record(samples=blocks(1.0, noise=0.05, seed=2))]
    status, lines, _ = diff(capsys, tmp_path, base, new)
    assert status == 0, lines
    assert "≈ same (wall time)" in row(lines, "regression", "module", "cpu")


def test_planted_3_percent_more_instructions_exits_1(capsys, tmp_path):
    base = [count_record(instructions=163_320_347 / 100), count_record("lenet", instructions=5e6)]
    new = [count_record(instructions=163_320_347 / 100 * 1.03), count_record("lenet", instructions=5e6 * 1.001)]
    status, lines, _ = diff(capsys, tmp_path, base, new, "--max-slowdown", "2")
    assert status == 1, lines
    line = row(lines, "regression", "module", "cpu")
    assert "1.0300x" in line and "slower (instructions)" in line and line.endswith("FAIL")
    assert "≈ same (instructions)" in row(lines, "lenet", "module", "cpu")
    assert lines[-1] == "1 slower beyond 2 %: regression/module/cpu seed 0 (instructions 1.0300x)"


def test_instruction_ratio_within_the_threshold_passes_the_gate(capsys, tmp_path):
    base, new = [count_record(instructions=1e6)], [count_record(instructions=1.03e6)]
    status, lines, _ = diff(capsys, tmp_path, base, new)  # default 5 %: 3 % is printed slower, not failed
    assert status == 0, lines
    assert row(lines, "regression", "module", "cpu").endswith("slower (instructions)  ok")
    status, lines, _ = diff(capsys, tmp_path, base, [count_record(instructions=1.051e6)])
    assert status == 1, lines


def test_wall_time_interval_wholly_above_the_threshold_exits_1(capsys, tmp_path):
    base, new = blocks(1.0, seed=1), blocks(1.10, seed=2)
    estimate = stats.two_sample_ratio(base, new)
    assert estimate.low > 1.05
    status, lines, _ = diff(capsys, tmp_path, [run_record(samples=base)], [run_record(samples=new)])
    assert status == 1, lines
    assert "slower (wall time)" in row(lines, "regression", "module", "cpu")
    assert lines[-1].startswith("1 slower beyond 5 %: regression/module/cpu seed 0 (wall time 1.")


def test_noisy_wall_time_straddling_the_threshold_exits_0(capsys, tmp_path):
    base, new = blocks(1.0, noise=0.2, seed=3), blocks(1.06, noise=0.2, seed=4)
    estimate = stats.two_sample_ratio(base, new)
    assert estimate.low < 1.05 < estimate.high  # the point may be beyond 5 %, the interval is not
    status, lines, _ = diff(capsys, tmp_path, [run_record(samples=base)], [run_record(samples=new)])
    assert status == 0, lines
    assert lines[-1] == "no configuration slower beyond 5 % (1 compared)"


def test_max_slowdown_is_in_percent(capsys, tmp_path):
    base, new = [run_record(samples=blocks(1.0, seed=1))], [run_record(samples=blocks(1.10, seed=2))]
    assert diff(capsys, tmp_path, base, new, "--max-slowdown", "20")[0] == 0
    assert diff(capsys, tmp_path, base, new, "--max-slowdown", "5%")[0] == 1
    status, lines, _ = diff(capsys, tmp_path, base, new, "--max-slowdown", "0.05")  # 0.05 %, not 5 %
    assert status == 1 and lines[-1].startswith("1 slower beyond 0.05 %")


def test_files_without_blocks_compare_medians_without_interval_and_never_fail(capsys, tmp_path):
    old = run_record(median=BLOCK)
    del old["step_time_blocks_s"], old["step_time_interval_s"], old["instructions_per_step"], old["machine"]
    slow = dict(old, step_time_median_s=2 * BLOCK)
    status, lines, err = diff(capsys, tmp_path, [old], [slow])
    assert status == 0 and err == "", lines
    assert "2.000x (no interval)" in row(lines, "regression", "module", "cpu")


def test_counts_decide_and_a_wall_time_alarm_is_a_note(capsys, tmp_path):
    base = [run_record(samples=blocks(1.0, seed=1), instructions=1e6)]
    new = [run_record(samples=blocks(1.2, seed=2), instructions=1e6)]
    status, lines, _ = diff(capsys, tmp_path, base, new)
    assert status == 0, lines
    assert "≈ same (instructions)" in row(lines, "regression", "module", "cpu")
    assert any(line.startswith("note: wall time beyond the gate where instruction counts are not") for line in lines)


# --------------------------------------------------------------------------- matching


def test_count_and_run_records_of_one_configuration_merge(capsys, tmp_path):
    base = [run_record(samples=blocks(1.0, seed=1)), count_record(instructions=1e6)]
    new = [count_record(instructions=1.10e6), run_record(samples=blocks(1.0, seed=2))]
    status, lines, _ = diff(capsys, tmp_path, base, new)
    assert status == 1, lines
    line = row(lines, "regression", "module", "cpu")  # one row, with both kinds of evidence
    assert "1.1000x" in line and "[" in line and "slower (instructions)" in line


def test_compare_results_json_loads_and_its_peers_are_ignored(capsys, tmp_path):
    def document(scale, seed):
        return {"versions": {"torch": "2.5.1"}, "machine": {"platform": "Linux", "cpu_count": 2},
                "records": [dict(run_record(samples=blocks(scale, seed=seed)), kind="style"),
                            {"kind": "peer", "workload": "regression", "style": "sgd_regressor", "device": "cpu"}]}

    status, lines, err = diff(capsys, tmp_path, document(1.0, 1), document(1.0, 2))
    assert status == 0 and err == "", lines
    assert not any("sgd_regressor" in line for line in lines)
    assert not any(line.startswith("note:") for line in lines)


def test_one_seed_on_each_side_matches_with_a_note(capsys, tmp_path):
    status, lines, _ = diff(capsys, tmp_path, [run_record(seed=0)], [run_record(seed=7)])
    assert status == 0, lines
    assert row(lines, "regression", "module", "cpu").split()[3] == "0/7"
    assert ("note: seeds differ, matched anyway (one seed on each side): "
            "regression/module/cpu (BASE seed 0, NEW seed 7)") in lines


def test_several_seeds_match_per_seed(capsys, tmp_path):
    base = [run_record(seed=s, samples=blocks(1.0, seed=s)) for s in (0, 1, 2)]
    new = [run_record(seed=s, samples=blocks(1.2 if s == 2 else 1.0, seed=10 + s)) for s in (1, 2, 3)]
    status, lines, _ = diff(capsys, tmp_path, base, new)
    assert status == 1, lines
    assert row(lines, "regression", "module", "cpu", "1").endswith("ok")
    assert row(lines, "regression", "module", "cpu", "2").endswith("FAIL")
    assert "note: only in BASE (not compared): regression/module/cpu seed 0" in lines
    assert "note: only in NEW (not compared): regression/module/cpu seed 3" in lines
    assert lines[-1].startswith("1 slower beyond 5 %: regression/module/cpu seed 2 (wall time")


def test_configurations_in_one_file_only_are_listed(capsys, tmp_path):
    base = [run_record("regression"), run_record("lenet")]
    new = [run_record("regression"), run_record("mlp_adam", "fused")]
    status, lines, err = diff(capsys, tmp_path, base, new)
    assert status == 0 and err == "", lines
    assert "note: only in BASE (not compared): lenet/module/cpu seed 0" in lines
    assert "note: only in NEW (not compared): mlp_adam/fused/cpu seed 0" in lines


def test_different_versions_and_machines_are_notes(capsys, tmp_path):
    base = [run_record(torch_version="2.5.1", machine="box-a")]
    new = [run_record(torch_version="2.6.0", machine="box-b")]
    status, lines, _ = diff(capsys, tmp_path, base, new)
    assert status == 0, lines
    assert "note: different torch versions: BASE 2.5.1, NEW 2.6.0" in lines
    assert "note: different machines: BASE box-a, NEW box-b" in lines
    status, lines, _ = diff(capsys, tmp_path, base, base)
    assert not any(line.startswith("note:") for line in lines)


def test_results_json_machine_reads_as_the_records_machine(capsys, tmp_path):
    document = {"versions": {"torch": "2.5.1"}, "machine": {"platform": "Linux-6.1", "processor": "x86_64"},
                "records": [run_record(machine=None)]}
    same = [count_record(machine="Linux-6.1 x86_64")]
    status, lines, _ = diff(capsys, tmp_path, document, same)
    assert status == 0 and not any("different machines" in line for line in lines), lines
    assert row(lines, "regression", "module", "cpu").split()[4:] == ["-"] * 4  # one side times, the other counts
    assert "note: no evidence on both sides (one side counts, the other times): regression/module/cpu seed 0" in lines
    status, lines, _ = diff(capsys, tmp_path, document, [count_record(machine="Linux-6.5 aarch64")])
    assert "note: different machines: BASE Linux-6.1 x86_64, NEW Linux-6.5 aarch64" in lines


# --------------------------------------------------------------------------- bad input: exit 2, one line


GOOD = [run_record()]

BAD = {
    "invalid JSON": ("[{\"workload\": ", "is not valid JSON"),
    "not UTF-8": ("\udcff", None),  # replaced by bytes below
    "a number": ("42", "is not a torchloops results file"),
    "a dict without records": ({"workload": "regression"}, "is not a torchloops results file"),
    "a list of numbers": ([1, 2], "record 0 is not a JSON object"),
    "an empty list": ([], "holds no run or count records"),
    "foreign records": ([{"name": "test_x", "stats": {"median": 1}}], "holds no run or count records"),
    "blocks not a list": ([dict(run_record(), step_time_blocks_s="fast")], "step_time_blocks_s is not a list"),
    "a negative count": ([count_record(instructions=-5.0)], "instructions_per_step -5.0 is not a positive"),
    "a NaN median": ("[" + json.dumps(run_record(median=1.0)).replace("1.0,", "NaN,", 1) + "]", "not a positive"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_exits_2_with_one_line(capsys, tmp_path, case):
    payload, message = BAD[case]
    if case == "not UTF-8":
        (tmp_path / "new.json").write_bytes(b"\xff\xfe\x00garbage")
        argv = ["diff", write(tmp_path, "base.json", GOOD), str(tmp_path / "new.json")]
        message = "not UTF-8"
    else:
        argv = ["diff", write(tmp_path, "base.json", GOOD), write(tmp_path, "new.json", payload)]
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("torchloops: error: "), err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("where", ["missing", "directory"])
def test_unreadable_file_exits_2_with_one_line(capsys, tmp_path, where):
    path = tmp_path / "nope.json"
    if where == "directory":
        path.mkdir()
    capsys.readouterr()
    assert main(["diff", str(path), write(tmp_path, "new.json", GOOD)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"torchloops: error: cannot read '{path}'"), err


def test_no_configuration_in_common_exits_2(capsys, tmp_path):
    status, lines, err = diff(capsys, tmp_path, [run_record("lenet")], [run_record("regression")])
    assert status == 2 and lines == []
    assert len(err.splitlines()) == 1 and "no configuration in common" in err


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", ""])
def test_bad_max_slowdown_exits_2_with_one_line(capsys, tmp_path, value):
    status, lines, err = diff(capsys, tmp_path, GOOD, GOOD, "--max-slowdown", value)
    assert status == 2 and lines == []
    assert len(err.splitlines()) == 1 and "--max-slowdown" in err and "percentage" in err, err


# --------------------------------------------------------------------------- a real file


def test_a_real_run_file_diffs_against_itself(capsys, tmp_path):
    path = str(tmp_path / "run.json")
    assert main(["run", "regression", "--style", "module", "--steps", "60", "--quiet", "--json", path]) == 0
    capsys.readouterr()
    assert main(["diff", path, path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "≈ same" in row(lines, "regression", "module", "cpu")
    assert lines[-1] == "no configuration slower beyond 5 % (1 compared)"
