"""The overhead benchmark runs (timings themselves live in benchmarks, not here), and its real
model, a converted transformers Llama training step, matches the unconverted one."""

import copy

import pytest
import torch
import torch.nn.functional as TF

import backprop_ext.functional as BF
import backprop_ext.nn as bnn
from backprop_ext.benchmarks import bench_overhead


def test_bench_rows_for_every_op_and_direction():
    rows = bench_overhead.run("cpu", ops=["relu", "softmax", "cross_entropy", "linear+gelu"],
                              reps=1)
    assert {(r.op, r.direction) for r in rows} == {
        (op, d) for op in ("relu", "softmax", "cross_entropy", "linear+gelu")
        for d in ("fwd", "fwd+bwd")}
    assert all(r.ms > 0 and r.torch_ms > 0 for r in rows)
    assert set(bench_overhead.OPS) >= set(bench_overhead._tiny_cases("cpu"))


def test_llama_step_converted_matches_plain():
    pytest.importorskip("transformers")
    plain = bench_overhead.llama_model(64, vocab=256)
    ours = bnn.convert(copy.deepcopy(plain))
    assert any(type(m) is bnn.Linear for m in ours.modules())
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    loss_ours = bench_overhead.llama_step(ours, ids, BF.cross_entropy)()
    loss_plain = bench_overhead.llama_step(plain, ids, TF.cross_entropy)()
    torch.testing.assert_close(loss_ours, loss_plain)
    theirs = dict(plain.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, theirs[name].grad, rtol=1e-4, atol=1e-5)
