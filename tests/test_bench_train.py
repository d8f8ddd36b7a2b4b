"""The train benchmark (bench --family train) on its tiny configuration: the rows, the loss
agreement, the JSON/CSV/plot it writes (not its timings)."""

import inspect
import json

import pytest
import torch

pytest.importorskip("transformers")

from backprop_ext import nn as bnn
from backprop_ext.__main__ import main
from backprop_ext.benchmarks import bench_train

HAS_BUDGET = "memory_budget" in inspect.signature(bnn.convert).parameters
HAS_TORCH_LCE = hasattr(torch.nn.functional, "linear_cross_entropy")


def test_text_is_real_and_in_the_vocabulary():
    ids = bench_train.text_tokens(512, 2000)
    assert ids.dtype == torch.int64 and ids.shape == (2000,)
    assert 0 <= int(ids.min()) and int(ids.max()) < 512
    assert torch.equal(ids, bench_train.text_tokens(512, 2000))  # deterministic
    assert len(ids.unique()) > 100  # words, not one repeated token
    assert not torch.equal(ids[:100], ids[100:200])


def _check_output(js, cs, png, models, ops):
    data = json.loads(js.read_text())
    rows = {(r["shape"].split()[0], r["op"]): r for r in data["rows"]}
    assert set(rows) == {(m, o) for m in models for o in ops}
    for m in models:
        eager = rows[(m, "eager")]
        assert eager["loss_max_rel_diff"] == 0.0 and eager["time_ratio"] == 1.0
        assert len(eager["losses"]) == bench_train.QUICK["steps"]
        assert all(0 < v < 2 * torch.log(torch.tensor(512.0)) for v in eager["losses"])
        assert eager["peak_bytes"] > 0 and eager["memory_ratio"] == 1.0
        for op in ops:
            r = rows[(m, op)]
            if r["skipped"]:
                assert r["note"] == r["skipped"] and r["memory_ratio"] is None
                continue
            assert r["loss_max_rel_diff"] is not None and r["loss_max_rel_diff"] < 1e-5, r
            assert len(r["loss_rel_diffs"]) == len(r["losses"]) == bench_train.QUICK["steps"]
            assert r["ms"] > 0 and r["torch_ms"] == eager["ms"] and r["peak_bytes"] > 0
            assert r["vs"] == "torch eager" and r["speedup"] > 0
    for op, available in (("converted_budget", HAS_BUDGET), ("torch_lce", HAS_TORCH_LCE)):
        if op in ops:
            assert bool(rows[(models[0], op)]["skipped"]) == (not available)
    header = cs.read_text().splitlines()[0].split(",")
    assert {"op", "ms", "loss_max_rel_diff", "rss_peak_bytes", "rss_ratio"} <= set(header)
    assert png.stat().st_size > 0


def test_bench_train_tiny_in_process(tmp_path, monkeypatch, capsys):
    """The whole command on the tiny configuration, each configuration trained in this process
    (the subprocess boundary is the slow test's), output checked."""
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(bench_train, "_spawn", lambda spec, cache_dir: bench_train.train(spec))
    js, cs, png = tmp_path / "t.json", tmp_path / "t.csv", tmp_path / "t.png"
    ops = ["eager", "converted", "converted_budget", "torch_lce", "ours_lce"]
    assert main(["bench", "--family", "train", "--quick", "--device", "cpu", "--models", "llama",
                 "--ops", *ops, "--json", str(js), "--csv", str(cs), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "loss rel diff" in out and "bnn.convert(model)" in out
    _check_output(js, cs, png, ["llama"], ops)


def test_a_failing_configuration_is_reported_not_fatal(monkeypatch):
    def spawn(spec, cache_dir):
        if spec["row"] == "ours_lce":
            return {"error": "exit 1: boom"}
        return bench_train.train(spec)

    monkeypatch.setattr(bench_train, "_spawn", spawn)
    rows = bench_train.run("cpu", ops=["eager", "ours_lce"], quick=True, models=["llama"])
    failed = next(r for r in rows if r.op == "ours_lce")
    assert failed.skipped == "failed: exit 1: boom" and failed.memory_ratio is None


@pytest.mark.slow
def test_bench_train_tiny_in_fresh_processes(tmp_path):
    """End to end as a user runs it: every configuration in its own process, malloc told to mmap
    large blocks there, the resident peak measured."""
    pytest.importorskip("matplotlib")
    js, cs, png = tmp_path / "t.json", tmp_path / "t.csv", tmp_path / "t.png"
    ops = ["eager", "converted_budget", "ours_lce"]
    assert main(["bench", "--family", "train", "--quick", "--device", "cpu", "--models", "gpt2",
                 "--ops", *ops, "--json", str(js), "--csv", str(cs), "--plot", str(png)]) == 0
    _check_output(js, cs, png, ["gpt2"], ops)


def test_phases_split_time_and_memory():
    """On the CPU a configuration is timed in one process and metered in another: "time" meters
    nothing and times every step after the warm-up, "memory" runs only up to the metered step."""
    spec = dict(bench_train.QUICK, model="gpt2", row="eager", device="cpu", dtype="float32",
                budget=0.2, threads=1)
    timed = bench_train.train(dict(spec, phase="time"))
    assert timed["peak_bytes"] is None and timed["rss_peak_bytes"] is None
    assert len(timed["losses"]) == spec["steps"]
    assert len(timed["times_ms"]) == spec["steps"] - bench_train.WARMUP
    metered = bench_train.train(dict(spec, phase="memory"))
    assert metered["peak_bytes"] > 0 and metered["times_ms"] == []
    assert len(metered["losses"]) == bench_train.WARMUP + 1
    assert metered["losses"] == timed["losses"][:bench_train.WARMUP + 1]
    with pytest.raises(ValueError, match="unknown phase"):
        bench_train.train(dict(spec, phase="both"))


@pytest.mark.slow
def test_only_the_memory_process_mmaps_large_blocks(tmp_path):
    spec = dict(bench_train.QUICK, model="gpt2", row="eager", device="cpu", dtype="float32",
                budget=0.2, threads=1)
    merged = bench_train._measure(spec, str(tmp_path))
    assert merged["malloc_mmap_threshold"] == str(bench_train.MMAP_THRESHOLD)
    assert merged["peak_bytes"] > 0 and len(merged["times_ms"]) == spec["steps"] - 2
    assert bench_train._spawn(dict(spec, phase="time"), str(tmp_path))[
        "malloc_mmap_threshold"] is None
