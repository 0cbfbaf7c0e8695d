"""``torchloops compare``: peers, FLOPs, the paired ratios, and one cheap end-to-end run.

The end-to-end run is the regression workload alone (every style to its target in
well under a second each, both peers), so that the whole command -- tables,
``results.json``, both PNG plots, skipped placements -- is exercised cheaply.
"""

from __future__ import annotations

import importlib
import json
import os

import pytest
import torch

import torchloops as W
from torchloops import cli
from torchloops.measurement import compare, flops, peers
from torchloops.support import outputs
from torchloops.support.references import typical_seed

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_every_workload_has_peers():
    for name in W.workload_names():
        assert peers.peers_for(name), name


@pytest.mark.parametrize("workload", ["classification", "regression"])
def test_peers_fit_the_same_split_and_score_with_the_workload_metric(workload):
    wl = W.get_workload(workload)
    split = wl.make_data(0)
    for peer in peers.peers_for(workload):
        record = peers.fit_peer(wl, peer, split, seed=0)
        assert record["metric"] == wl.metric.name
        assert record["reached_target"] == wl.metric.reached(record["metric_value"], wl.target)
        assert record["fit_time_s"] > 0
        if wl.metric.is_classification:
            assert 0.5 < record["metric_value"] <= 1.0
        else:
            assert record["metric_value"] < 1e-3  # a linear truth: every peer fits it


def test_lenet_peers_see_the_original_digit_pixels():
    split = W.get_workload("lenet").make_data(0)
    pixels = W.get_workload("lenet").peer_features(split.X_train)
    assert pixels.shape == (split.n_train, 64)
    # nearest-neighbour upsampling: every 4x4 block of the 32x32 input is one of these pixels
    block = split.X_train[:, 0, :4, :4].reshape(split.n_train, -1)
    assert torch.equal(block, block[:, :1].expand_as(block))
    assert torch.equal(torch.as_tensor(pixels[:, 0]), block[:, 0])


def test_flops_per_step_from_layer_shapes():
    def per_step(name):
        wl = W.get_workload(name)
        return flops.step_flops(wl, 0, wl.batch_size)

    # FlopCounterMode over a real step: forward 2*in*out per row and layer; backward the weight
    # gradient of every layer (same cost) and the input gradient of every layer but the first
    # (autograd computes none for the data).  Conv2d: 2*Cin*k*k*Cout*Hout*Wout per row.
    def cost(layers):
        return sum(layers) + sum(layers) + sum(layers[1:])

    assert per_step("classification") == cost([2 * 10 * 10, 2 * 10 * 3]) * 800
    assert per_step("regression") == cost([2 * 5 * 1]) * 20
    lenet = [2 * 9 * 6 * 30 * 30, 2 * 6 * 9 * 16 * 13 * 13, 2 * 576 * 120, 2 * 120 * 84, 2 * 84 * 10]
    assert per_step("lenet") == pytest.approx(cost(lenet) * 1437 / 45)  # 45 batches over 1437 rows
    assert per_step("mlp_adam") == pytest.approx(cost([2 * 5 * 128, 2 * 128 * 1]) * 800 / 7)


def test_matmul_throughput_is_measured():
    value = flops.matmul_throughput(torch.float32, threads=1, n=128, repeats=2, min_time=0.01)
    assert 1e8 < value < 1e13


def test_compare_end_to_end(tmp_path, capsys, monkeypatch):
    from torchloops.measurement import counting

    def fake_count(requests, **_kwargs):  # --count's plumbing; the real count is tests/test_count.py's
        return [{"workload": w, "style": s, "seed": seed, "instructions_per_step": 1000.0 + i}
                for i, (w, s, seed) in enumerate(requests)]

    monkeypatch.setattr(counting, "count", fake_count)
    monkeypatch.setattr(counting, "valgrind_problem", lambda: None)
    out = tmp_path / "cmp"
    assert cli.main(["compare", "regression", "--out", str(out), "--quiet", "--count"]) == 0
    text = capsys.readouterr()
    assert "1,000 instructions/step" in text.out and "instructions per step 1,00" in text.out
    assert text.err == ""  # no progress bar when stderr is not a terminal
    for name in W.STYLES.names() + ["sk:LinearRegression", "sk:SGDRegressor"]:
        assert f"\n{name} " in text.out
    if not W.PLACEMENTS.get("cuda").availability().ok:
        assert "skipped cuda" in text.out  # no GPU here: listed with its reason, never an error
    document = json.loads((out / "results.json").read_text())
    assert {"machine", "versions", "threads", "records", "workloads", "peak_matmul_flops"} <= set(document)
    assert document["versions"]["torch"] == torch.__version__ and document["versions"]["sklearn"]
    kinds = [(r["kind"], r["style"]) for r in document["records"]]
    assert ("peer", "sk:LinearRegression") in kinds and ("style", "raw") in kinds
    (section,) = document["workloads"]
    assert section["seeds"] == [typical_seed("regression")]
    for row in section["rows"]:
        assert row["reached"] == 1, row  # every style and both peers reach 1e-6 here
    for png in ("curves.png", "time_to_target.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    counted = [r["instructions_per_step"] for r in document["records"] if r["kind"] == "style"]
    assert counted == [1000.0 + i for i in range(len(W.STYLES.names()))]


def test_compare_count_without_valgrind_is_one_line(tmp_path, capsys, monkeypatch):
    from torchloops.measurement import counting

    monkeypatch.setattr(counting, "valgrind_problem", lambda: "valgrind is not installed")
    assert cli.main(["compare", "regression", "--count", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "valgrind is not installed" in err and not (tmp_path / "c").exists()


def test_compare_rejects_bad_input_before_running(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(W.UsageError, match="not a directory"):
        outputs.check_out_dir(str(blocker))
    assert cli.main(["compare", "nosuchworkload", "--out", str(tmp_path / "a")]) == 2
    assert cli.main(["compare", "--seeds", "0", "--out", str(tmp_path / "b")]) == 2
    assert cli.main(["compare", "regression", "--out", str(blocker)]) == 2
    assert cli.main(["compare", "regression", "--out", ""]) == 2
    unavailable = [p.name for p in W.PLACEMENTS.entries.values() if not p.availability().ok]
    for device in unavailable:  # here: a placement that cannot run leaves nothing to compare
        assert cli.main(["compare", "regression", "--device", device, "--out", str(tmp_path / "c")]) == 2
    assert not any((tmp_path / d).exists() for d in "abc")  # nothing written
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 4 + len(unavailable)
    if unavailable:
        assert "nothing to compare" in err and "valid here: --device" in err
    if os.path.isdir("/proc"):  # os.access says root may write there; the filesystem refuses
        with pytest.raises(W.UsageError, match="cannot create folders in '/proc'"):
            outputs.check_out_dir("/proc/torchloops-out")


def test_cli_registers_compare_and_converge():
    parser = cli.build_parser()
    for command in ("compare", "converge"):
        module = importlib.import_module(f"torchloops.commands.{command}")
        args = parser.parse_args([command, "regression"])
        assert args.handler is module.main
    assert cli.main(["compare", "--seeds", "0"]) == 2


def _style(name, blocks, steps_to_target=100):
    return {"kind": "style", "style": name, "device": "cpu", "seed": 0, "reached_target": True,
            "steps_to_target": steps_to_target, "time_to_target_s": steps_to_target * blocks[0],
            "step_time_median_s": blocks[0], "step_time_blocks_s": list(blocks),
            "block_rounds": list(range(len(blocks))), "metric_value": 0.9}


def _peer(name, fits, reached=True):
    return {"kind": "peer", "style": name, "device": "cpu", "seed": 0, "reached_target": reached,
            "fit_time_s": sorted(fits)[len(fits) // 2], "fit_times_s": list(fits),
            "time_to_target_s": sorted(fits)[len(fits) // 2] if reached else None, "steps_to_target": 10,
            "step_time_median_s": fits[0] / 10, "metric_value": 0.9}


def test_as_written_against_the_fastest_and_the_fastest_against_each_peer():
    phases = [1e-3 if (r // 5) % 2 else 2e-3 for r in range(40)]  # machine phases shared by the styles
    groups = [[_style("module", phases)], [_style("as_written", [3 * p for p in phases])],
              [_style("fused", [0.5 * p for p in phases])],
              [_peer("sk:fast", [0.01, 0.011, 0.012])], [_peer("sk:slow", [1.0, 1.1, 0.9])],
              [_peer("sk:never", [0.001, 0.001, 0.001], reached=False)]]
    found = compare.as_written_vs_fastest(groups)
    assert found["fastest"] == "fused"
    assert found["as_written_over_fastest"]["ratio"] == pytest.approx(6.0)  # paired: the phases cancel
    race = compare.fastest_vs_peers(groups)
    assert race["fastest"] == "fused"
    verdicts = {p["peer"]: p["verdict"] for p in race["peers"]}
    assert verdicts == {"sk:fast": "slower", "sk:slow": "faster"}  # a peer short of the target is no rival
    rows = compare.rows_of(groups, flops_per_step=1.0, peak=1.0)
    by_name = {r["style"]: r for r in rows}
    assert by_name["fused"]["vs_reference"]["ratio"] == pytest.approx(0.5)
    assert by_name["module"]["vs_reference"] is None and by_name["fused"]["best_peer"] == "sk:fast"
