"""The tolerance rule of backprop_ext.testing.compare: per element, 2x torch's own error there."""

import torch

from backprop_ext.testing import compare


def _sweep():
    x = torch.linspace(-12, 12, 2001, dtype=torch.float64)
    reference = torch.nn.functional.gelu(x)
    same = torch.nn.functional.gelu(x.bfloat16())
    return x, reference, same


def test_an_error_near_zero_is_not_excused_by_torch_error_at_large_values():
    x, reference, torch_bf16 = _sweep()
    ours = torch_bf16.clone()
    near_zero = int((x - 0.05).abs().argmin())
    ours[near_zero] += 0.08  # torch's bfloat16 error there is ~1e-4, at 12 it is ~0.03
    c = compare(ours, torch_bf16, reference)
    assert not c.ok
    assert "(1000,)" in c.message or f"({near_zero},)" in c.message


def test_torch_itself_passes_and_twice_its_error_passes():
    _, reference, torch_bf16 = _sweep()
    assert compare(torch_bf16, torch_bf16, reference).ok
    doubled = (reference + 2 * (torch_bf16.double() - reference)).bfloat16()
    # rounding the doubled error back to bfloat16 moves it by at most half an ulp: the floor
    assert compare(doubled, torch_bf16, reference).ok


def test_nan_and_inf_patterns():
    ref = torch.tensor([float("nan"), float("inf"), 1.0], dtype=torch.float64)
    same = ref.float()
    assert compare(same, same, ref).ok
    assert not compare(torch.tensor([1.0, float("inf"), 1.0]), same, ref).ok
    assert not compare(torch.tensor([float("nan"), 3.0e38, 1.0]), same, ref).ok
    assert compare(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.float64)).ok
    assert compare(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0).double()).ok
