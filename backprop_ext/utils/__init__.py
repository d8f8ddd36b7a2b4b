"""Gradient utilities: clipping on the fused multi-tensor kernels (torch.nn.utils' signatures)
and the gradient-flow report.

    clip.py         clip_grad_norm_, get_total_norm, clip_grads_with_norm_, clip_grad_value_
    diagnostics.py  gradient_flow(model) -> GradientFlowReport
    sharded.py      DTensor gradients split into local parts, each counted once
"""

from .clip import clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, get_total_norm
from .diagnostics import GradientFlowReport, LayerStats, gradient_flow

__all__ = ["clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm",
           "gradient_flow", "GradientFlowReport", "LayerStats"]
