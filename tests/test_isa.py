"""Every CPU instruction-set build of the kernels against torch.

csrc/cpu/*_kernels.cpp are compiled once per ISA and picked at run time like ATen's own, so
ATEN_CPU_CAPABILITY steers torch's kernels and ours alike. One child process per ISA this CPU
has runs backprop_ext.testing.isa_self_check: every case of every family (activations, linear,
softmax, logsumexp, cross-entropy) in every dtype, and clipping, against torch.
"""

from types import SimpleNamespace

import torch

import backprop_ext.testing as testing
from backprop_ext.testing import ISAS, isas_of_this_cpu, run_on_each_isa
from backprop_ext.testing import isa as isa_module


def test_every_cpu_isa_build_matches_torch():
    isas = isas_of_this_cpu()
    assert set(isas) <= set(ISAS)
    for isa, (returncode, capability, stderr) in run_on_each_isa(isas).items():
        assert returncode == 0, f"{isa}: {stderr[-3000:]}"
        assert capability == isa.upper()


def test_the_self_check_reports_a_wrong_kernel(monkeypatch):
    relu = next(c for c in testing.CASES if c.label == "relu")
    planted = SimpleNamespace(label="planted", ours=lambda x: relu.ours(x) * 1.01,
                              torch=relu.torch, make=relu.make)
    monkeypatch.setattr(isa_module, "CASES", (relu, planted))
    bad = testing.isa_self_check(dtypes=(torch.float32,))
    assert any(line.startswith("planted float32 out") for line in bad), bad
    assert not any(line.startswith("relu ") for line in bad), bad
