"""The command line: demo, check and bench, each on a small setting, output checked."""

import json
import subprocess
import sys

import pytest
import torch

from backprop_ext import check as check_mod
from backprop_ext.__main__ import main


def test_demo_loss_curves_agree(capsys, tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")  # --plot
    png = tmp_path / "loss.png"
    assert main(["demo", "--epochs", "1", "--device", "cpu", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "loss curves agree" in out
    diff = float(out.split("max |difference| over")[1].split("=")[1].split()[0])
    assert diff < 1e-4
    assert "layers swapped for backprop_ext's" in out
    assert png.stat().st_size > 0
    assert " 0 failed" in out
    # the checks as a summary: one line per family, not one per op x check
    checks = out.split("gradient checks (float64) of every op:\n")[1].splitlines()
    assert checks[0].startswith("activations") and "gradcheck, gradgradcheck, jvp" in checks[0]
    assert len(checks) < 15 and checks[-1].endswith(" 0 failed")
    full = next(line for line in out.splitlines() if "checkpointed (full)" in line)
    assert float(full.split("(")[-1].split("x")[0]) < 1.0  # checkpointing saves memory
    assert "Gradient flow" in out and "0 vanishing, 0 exploding" in out


def test_check_passes_and_reports_a_planted_failure(capsys, monkeypatch):
    cases = check_mod.all_cases()
    relu = next(c for c in cases if c.label == "relu")
    planted = check_mod.CheckCase("planted", lambda x: relu.ours(x) * 1.01, relu.torch, relu.make)
    monkeypatch.setattr(check_mod, "all_cases", lambda: [relu, planted])
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "planted" in out and "FAIL" in out
    assert any(line.startswith("relu ") and "pass" in line for line in out.splitlines())


def test_check_all_green(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].endswith(" 0 failed")
    ops = {line.split()[0] for line in out[2:-1]}
    assert {"relu", "gelu", "softmax(dim=-1)", "cross_entropy(weight,ignore)"} <= ops


def test_bench_writes_table_json_csv(capsys, tmp_path):
    js, cs = tmp_path / "b.json", tmp_path / "b.csv"
    rc = main(["bench", "--family", "activation", "--ops", "gelu", "--dtypes", "float32",
               "--sizes", "4096", "--reps", "2", "--json", str(js), "--csv", str(cs)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "gelu" in out and "x torch" in out
    data = json.loads(js.read_text())
    assert data["environment"]["torch"] == torch.__version__
    assert {r["direction"] for r in data["rows"]} == {"fwd", "bwd", "fwd+bwd"}
    assert all(r["ms"] > 0 and r["torch_ms"] > 0 for r in data["rows"])
    assert cs.read_text().splitlines()[0].count(",") >= 8


def test_readme_tables_come_from_the_bench_json(tmp_path):
    from backprop_ext.benchmarks import readme

    js = tmp_path / "b.json"
    assert main(["bench", "--family", "activation", "--ops", "relu", "--dtypes", "float32",
                 "--sizes", "4096", "--reps", "2", "--json", str(js)]) == 0
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- bench:cpu -->\nstale table\n<!-- /bench:cpu -->\nafter\n")
    assert readme.main([str(js), "--readme", str(doc)]) == 0
    text = doc.read_text()
    rows = json.loads(js.read_text())["rows"]
    assert "stale table" not in text and text.startswith("intro\n") and text.endswith("after\n")
    assert "| op | shape | dtype | dir | ours ms | torch ms | x torch | GB/s |" in text
    for r in rows:  # every row, with its own ratio
        assert f"| relu | (4096,) | float32 | {r['direction']} |" in text
        assert f"| {r['speedup']:.2f} |" in text
    with pytest.raises(ValueError, match="no <!-- bench:cuda --> ... <!-- /bench:cuda --> markers"):
        readme.main([str(js), "--readme", str(doc), "--section", "cuda"])


def test_summary_lists_each_family_once_and_failures_in_full():
    R = check_mod.CheckResult
    results = [R("gelu", "cpu", "float64", "gradcheck", True),
               R("gelu(approximate=tanh)", "cpu", "float64", "jvp", True),
               R("linear+gelu", "cpu", "float32", "parity fwd+bwd", True, 1e-7),
               R("linear+silu", "cpu", "float64", "gradcheck", False, 0.0, "GradcheckError: x")]
    out = check_mod.format_summary(results).splitlines()
    assert out[0].split() == ["activations", "2", "cases", "ok", "gradcheck,", "jvp"]
    assert out[1].startswith("linear (+ each activation)") and "FAIL (1)" in out[1]
    assert "parity (float32)" in out[1]
    assert "  linear+silu cpu float64 gradcheck: max err 0.00e+00 GradcheckError: x" in out
    assert out[-1] == "3 passed, 1 failed"


def test_demo_full_table_behind_a_flag(monkeypatch, capsys):
    from backprop_ext import demo

    ran = {}
    monkeypatch.setattr(check_mod, "format_results", lambda r: ran.setdefault("full", "TABLE"))
    monkeypatch.setattr(check_mod, "run_checks", lambda *a, **k: [
        check_mod.CheckResult("relu", "cpu", "float64", "gradcheck", True)])
    monkeypatch.setattr(demo, "train", lambda *a, **k: ([1.0], [0.001]))
    monkeypatch.setattr(demo, "activation_memory", lambda *a: {"plain": 1})
    pytest.importorskip("sklearn")
    assert main(["demo", "--epochs", "1", "--device", "cpu", "--full"]) == 0
    assert "TABLE" in capsys.readouterr().out


def test_checks_raise_no_torch_warning():
    # In a fresh process, where torch's first forward-mode AD call loads its jvp decompositions
    # (torch.jit.script: a FutureWarning on torch 2.14): as an error, a jvp row would fail.
    code = ("from backprop_ext import check; c = check.all_cases()[0]; "
            "r = check.run_checks([c], ['cpu'], dtypes=()); "
            "assert all(x.ok for x in r), [x.detail for x in r]")
    proc = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr
