"""Every CPU instruction set: the kernels' per-ISA builds checked, each in a child process."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from .cases import CASES, CLIP_NORM_TYPES, clip_parity, clip_value_matches
from .compare import DTYPES, dtype_name, parity

# --- every CPU instruction set

ISAS = ("default", "avx2", "avx512")


def isas_of_this_cpu() -> list[str]:
    """The kernel builds this CPU can run (csrc/cpu/*_kernels.cpp are compiled once per ISA)."""
    cap = torch.backends.cpu.get_cpu_capability()
    return ["default"] + (["avx2"] if cap in ("AVX2", "AVX512") else []) + (
        ["avx512"] if cap == "AVX512" else [])


def isa_self_check(dtypes=DTYPES) -> list[str]:
    """Every case of every family in `dtypes` on the CPU, plus clipping: the failures, as text.
    Run under ATEN_CPU_CAPABILITY=<isa> to test that ISA's build of the kernels."""
    bad = []
    for case in CASES:
        for dtype in dtypes:
            for what, c in parity(case.ours, case.torch, case.make("cpu", dtype)):
                if not c.ok:
                    bad.append(f"{case.label} {dtype_name(dtype)} {what}: {c.message}")
    for dtype in DTYPES:
        for p in CLIP_NORM_TYPES:
            bad += [f"clip_grad_norm_(p={p:g}) {dtype_name(dtype)} {what}: {c.message}"
                    for what, c in clip_parity("cpu", dtype, p) if not c.ok]
        if not clip_value_matches("cpu", dtype):
            bad.append(f"clip_grad_value_ {dtype_name(dtype)}")
    return bad


_ISA_SCRIPT = """
import torch, backprop_ext
from backprop_ext.testing import isa_self_check
bad = isa_self_check()
print(torch.backends.cpu.get_cpu_capability())
assert not bad, "\\n".join(bad)
"""


def run_on_each_isa(isas, timeout: float = 600) -> dict[str, tuple[int, str, str]]:
    """isa_self_check in one child process per ISA, side by side: {isa: (returncode, the
    capability the child ran with, stderr)}."""
    procs = {isa: subprocess.Popen([sys.executable, "-c", _ISA_SCRIPT], text=True,
                                   env=dict(os.environ, ATEN_CPU_CAPABILITY=isa),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for isa in isas}
    out = {}
    for isa, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=timeout)
        lines = stdout.strip().splitlines()
        out[isa] = (proc.returncode, lines[-1] if lines else "", stderr)
    return out
