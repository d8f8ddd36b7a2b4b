"""Bad values inside tensors never reach memory: every op that indexes with a tensor's values
checks them where it uses them. Each case runs in a child process, so that a crash (a segfault, a
corrupted heap) fails its test instead of taking the test run down with it.

Audit (ops whose memory accesses depend on data or on arguments):
* cross_entropy_fwd / cross_entropy_bwd index the logits (and the class weights) with `target`:
  both kernels check every target, on CPU before the row is read (IndexError naming the position,
  as torch raises IndexError) and on CUDA with a device-side assert (no host sync).
* softmax_bwd, logsumexp_bwd, activation_bwd, linear_bwd, linear_preact_bwd take tensors whose
  shapes must match what forward produced: checked against each other in C++ (tested with
  mismatched shapes here).
* multi_tensor_scale_ reads one value of total_norm: its size is checked.
* cross_entropy_bwd_out writes into `out` (linear_cross_entropy's blocks): its shape, device,
  dtype and contiguity are checked; gated_fwd / gated_bwd check that gate, up and the gradient
  have one shape; linear_cross_entropy reaches the logits only through the cross-entropy ops.
"""

import subprocess
import sys
import textwrap

import pytest
import torch

import backprop_ext  # noqa: F401


def _run(code: str, device: str = "cpu") -> subprocess.CompletedProcess:
    script = textwrap.dedent("""
        import torch
        import backprop_ext
        import backprop_ext.functional as BF
        ops = torch.ops.backprop_ext
        dev = {device!r}
    """).format(device=device) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)


def _assert_raised(proc: subprocess.CompletedProcess, error: str, message: str) -> None:
    # A negative return code is a signal (SIGSEGV, SIGABRT from a corrupted heap): the bug.
    assert proc.returncode >= 0, f"crashed with signal {-proc.returncode}:\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f"raised {error}", proc.stdout
    assert message in proc.stdout, proc.stdout


_CATCH = """
try:
    {stmt}
except Exception as e:
    print(str(e).splitlines()[0])
    print("raised", type(e).__name__)
else:
    print("no error")
"""


def _catching(setup: str, stmt: str) -> str:
    return textwrap.dedent(setup) + _CATCH.format(stmt=stmt)


# (id, setup, statement, expected message): targets corrupted between forward and backward, and
# bad targets handed to the raw ops.
CROSS_ENTROPY_CASES = [
    ("mutated-after-forward", """
        x = torch.randn(4, 5, device=dev, requires_grad=True)
        t = torch.tensor([0, 1, 2, 3], device=dev)
        loss = BF.cross_entropy(x, t)
        t.data[1] = 10**6  # behind autograd's back (no version bump), as t.numpy()[1] = ... is
     """, "loss.backward()", "target 1000000 at position 1 is out of bounds"),
    ("mutated-negative", """
        x = torch.randn(4, 5, device=dev, requires_grad=True)
        t = torch.tensor([0, 1, 2, 3], device=dev)
        loss = BF.cross_entropy(x, t, label_smoothing=0.2, weight=torch.rand(5, device=dev))
        t.data[3] = -7
     """, "loss.backward()", "target -7 at position 3 is out of bounds"),
    ("raw-bwd-op", """
        _, _, lse = ops.cross_entropy_fwd(torch.randn(4, 5, device=dev),
                                          torch.tensor([0, 1, 2, 3], device=dev), None, -100, False)
     """, "ops.cross_entropy_bwd(torch.randn(4, 5, device=dev), "
          "torch.tensor([0, 10**6, 2, -7], device=dev), None, lse, "
          "torch.ones(4, device=dev), None, -100)", "target 1000000 at position 1"),
    ("raw-bwd-op-smoothing", """
        x = torch.randn(3, 5, device=dev)
        _, _, lse = ops.cross_entropy_fwd(x, torch.tensor([0, 1, 2], device=dev), None, -100, True)
     """, "ops.cross_entropy_bwd(x, torch.tensor([0, 1, 5], device=dev), "
          "torch.ones(5, device=dev), lse, torch.ones(3, device=dev), torch.ones(3, device=dev), "
          "-100)",
     "target 5 at position 2"),
    ("raw-fwd-op", "", "ops.cross_entropy_fwd(torch.randn(4, 5, device=dev), "
     "torch.tensor([0, 1, -2**62, 3], device=dev), None, -100, False)",
     "target -4611686018427387904 at position 2"),
    ("fwd-past-the-end", "", "BF.cross_entropy(torch.randn(2, 3, 4, device=dev), "
     "torch.tensor([[0, 1, 2, 3], [0, 4, 1, 1]], device=dev))", "out of bounds"),
    # No classes: the op is not called; the targets are checked all the same.
    ("no-classes", "", "BF.cross_entropy(torch.empty(3, 0, device=dev), "
     "torch.tensor([-100, 0, -100], device=dev))", "target 0 is out of bounds"),
]


@pytest.mark.parametrize("case", CROSS_ENTROPY_CASES, ids=[c[0] for c in CROSS_ENTROPY_CASES])
def test_cross_entropy_bad_targets_raise_index_error(case):
    _, setup, stmt, message = case
    _assert_raised(_run(_catching(setup, stmt)), "IndexError", message)


@pytest.mark.cuda
@pytest.mark.parametrize("case", CROSS_ENTROPY_CASES, ids=[c[0] for c in CROSS_ENTROPY_CASES])
def test_cross_entropy_bad_targets_fail_the_cuda_launch(case):
    # A device-side assert poisons the CUDA context: the child reports it once synchronized.
    _, setup, stmt, _ = case
    proc = _run(_catching(setup, stmt + "; torch.cuda.synchronize()"), device="cuda")
    assert proc.returncode >= 0, f"crashed with signal {-proc.returncode}:\n{proc.stderr[-2000:]}"
    assert "raised" in proc.stdout and "no error" not in proc.stdout, proc.stdout + proc.stderr
    assert "device-side assert" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# Shapes that backward ops trust only after checking them against each other.
SHAPE_CASES = [
    ("softmax_bwd", "ops.softmax_bwd(torch.randn(3, 4), torch.randn(3, 5), 1)", "same shape"),
    ("logsumexp_bwd", "ops.logsumexp_bwd(torch.randn(3, 2), torch.randn(3, 5), "
     "torch.randn(3, 1), 1)", "expected grad of shape"),
    ("activation_bwd", "ops.activation_bwd(torch.randn(8), torch.randn(4), 'gelu')", "same shape"),
    ("linear_bwd", "ops.linear_bwd(torch.randn(2, 3), torch.randn(2, 4), torch.randn(5, 4), "
     "torch.randn(2, 5), 'gelu', 0., 0., [True, True, True])", "expected grad_output of shape"),
    ("linear_bwd_saved", "ops.linear_bwd(torch.randn(2, 5), torch.randn(2, 4), torch.randn(5, 4), "
     "torch.randn(1, 5), 'gelu', 0., 0., [True, True, True])", "same shape"),
    ("linear_preact_bwd", "ops.linear_preact_bwd(torch.randn(2, 5), torch.randn(2, 4), 'gelu', "
     "0., 0., True)", "same shape"),
    ("cross_entropy_bwd_lse", "ops.cross_entropy_bwd(torch.randn(4, 5), torch.zeros(4, "
     "dtype=torch.long), None, torch.zeros(2), torch.ones(4), None, -100)",
     "expected lse of shape (4,)"),
    ("multi_tensor_scale_", "ops.multi_tensor_scale_([torch.randn(3)], torch.empty(0), 1.0)",
     "expected total_norm to hold one value"),
    ("cross_entropy_bwd_out", "ops.cross_entropy_bwd_out(torch.randn(4, 5), torch.zeros(4, "
     "dtype=torch.long), None, torch.zeros(4), torch.ones(4), None, -100, torch.empty(2, 5))",
     "same shape"),
    ("gated_fwd", "ops.gated_fwd(torch.randn(8), torch.randn(4), 'silu')", "same shape"),
    ("gated_bwd", "ops.gated_bwd(torch.randn(8), torch.randn(8), torch.randn(4), 'silu')",
     "same shape"),
]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_backward_ops_check_shapes_before_reading(case):
    _, stmt, message = case
    _assert_raised(_run(_catching("", stmt)), "RuntimeError", message)


def test_valid_targets_still_work_after_the_check():
    x = torch.randn(6, 5, requires_grad=True)
    t = torch.tensor([0, 4, -100, 2, 3, 1])
    import torch.nn.functional as TF

    import backprop_ext.functional as BF

    ours = BF.cross_entropy(x, t)
    ours.backward()
    xt = x.detach().clone().requires_grad_()
    TF.cross_entropy(xt, t).backward()
    torch.testing.assert_close(ours, TF.cross_entropy(xt.detach(), t))
    torch.testing.assert_close(x.grad, xt.grad)
