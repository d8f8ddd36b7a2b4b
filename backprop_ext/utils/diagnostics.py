"""Gradient-flow diagnostics: after a backward pass, the gradient and weight norm of every layer,
their ratio, and which layers' gradients vanish or explode.

    report = gradient_flow(model)                    # after loss.backward()
    print(report)                                    # a table, flagged layers marked
    report.vanishing, report.exploding               # lists of LayerStats
    report.plot("grad_flow.png")                     # bar chart (matplotlib, Agg backend)

All norms come from two calls of the fused per-tensor norm op (one over the gradients, one over
the weights, per device) and one transfer to the host, instead of two reductions and a sync per
parameter. For sharded models (FSDP2's DTensor parameters) the norms are over all ranks, the same
report on every rank: the per-tensor norms of the local shards take one all-reduce per mesh
dimension they are sharded over (backprop_ext.utils.sharded), so gradient_flow is then a collective
that every rank must call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import torch

from ..ops.errors import public_function
from ..ops.multi_tensor import kernels_on, kernels_take
from . import sharded as _sharded

__all__ = ["LayerStats", "GradientFlowReport", "gradient_flow"]

_ops = torch.ops.backprop_ext

# Layer statuses.
OK, VANISHING, EXPLODING = "ok", "vanishing", "exploding"
NONFINITE, NO_GRAD = "non-finite", "no grad"


@dataclasses.dataclass
class LayerStats:
    """One parameter (by="parameter") or the parameters a module holds itself (by="module")."""

    name: str
    numel: int
    grad_norm: float | None  # None: no parameter of the layer has a gradient
    weight_norm: float
    status: str  # "ok", "vanishing", "exploding", "non-finite" or "no grad"

    @property
    def ratio(self) -> float | None:
        """grad_norm / weight_norm: the relative size of a plain SGD step at learning rate 1."""
        if self.grad_norm is None:
            return None
        if self.weight_norm == 0:
            return 0.0 if self.grad_norm == 0 else math.inf
        return self.grad_norm / self.weight_norm

    @property
    def flagged(self) -> bool:
        return self.status in (VANISHING, EXPLODING, NONFINITE)


@dataclasses.dataclass
class GradientFlowReport:
    """The result of gradient_flow(): one LayerStats per layer, in model order, and the rules."""

    layers: list[LayerStats]
    norm_type: float
    vanishing_threshold: float
    exploding_threshold: float
    metric: str  # what the thresholds compare: "grad_norm" or "ratio"
    by: str  # "parameter" or "module"

    @property
    def vanishing(self) -> list[LayerStats]:
        return [layer for layer in self.layers if layer.status == VANISHING]

    @property
    def exploding(self) -> list[LayerStats]:
        """Layers above the exploding threshold and those with a NaN or infinite gradient norm."""
        return [layer for layer in self.layers if layer.status in (EXPLODING, NONFINITE)]

    @property
    def without_grad(self) -> list[LayerStats]:
        return [layer for layer in self.layers if layer.status == NO_GRAD]

    @property
    def healthy(self) -> bool:
        return not any(layer.flagged for layer in self.layers)

    @property
    def total_grad_norm(self) -> float:
        """The norm of all gradients as one vector (what clip_grad_norm_ would see)."""
        norms = [layer.grad_norm for layer in self.layers if layer.grad_norm is not None]
        return _combine(norms, self.norm_type)

    def as_dicts(self) -> list[dict]:
        return [dict(dataclasses.asdict(layer), ratio=layer.ratio) for layer in self.layers]

    def __str__(self) -> str:
        order = "inf" if math.isinf(self.norm_type) else f"{self.norm_type:g}"
        head = ["layer", "numel", "grad norm", "weight norm", "grad/weight", "status"]
        rows = [head]
        for layer in self.layers:
            rows.append([layer.name, str(layer.numel), _fmt(layer.grad_norm),
                         _fmt(layer.weight_norm), _fmt(layer.ratio),
                         layer.status.upper() if layer.flagged else layer.status])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [
            f"Gradient flow: L{order} norms per {self.by}; {self.metric} below "
            f"{self.vanishing_threshold:.0e} vanishes, above "
            f"{self.exploding_threshold:.0e} explodes"]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) if j in (0, 5) else c.rjust(w)
                                   for j, (c, w) in enumerate(zip(r, widths))).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(f"{len(self.layers)} layers: {len(self.vanishing)} vanishing, "
                     f"{len(self.exploding)} exploding, {len(self.without_grad)} without gradient; "
                     f"total grad norm {_fmt(self.total_grad_norm)}")
        return "\n".join(lines)

    def plot(self, path: str, title: str | None = None) -> str:
        """Writes a PNG: gradient norm per layer (bars, log scale, coloured by status), weight norm
        (dots) and the two thresholds (lines, when the metric is grad_norm). Returns `path`."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        colours = {OK: "tab:blue", VANISHING: "tab:orange", EXPLODING: "tab:red",
                   NONFINITE: "black", NO_GRAD: "lightgray"}
        tiny = 1e-30  # a zero or missing norm still gets a visible stub on the log axis
        xs = list(range(len(self.layers)))
        grads = [_plottable(layer.grad_norm, tiny) for layer in self.layers]
        weights = [_plottable(layer.weight_norm, tiny) for layer in self.layers]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(xs) + 2), 4.5))
        ax.bar(xs, grads, color=[colours[layer.status] for layer in self.layers],
               label="gradient norm")
        ax.scatter(xs, weights, color="tab:green", marker="o", s=14, zorder=3, label="weight norm")
        if self.metric == "grad_norm":
            ax.axhline(self.vanishing_threshold, color="tab:orange", linestyle="--",
                       label=f"vanishing < {self.vanishing_threshold:.0e}")
            ax.axhline(self.exploding_threshold, color="tab:red", linestyle="--",
                       label=f"exploding > {self.exploding_threshold:.0e}")
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([layer.name for layer in self.layers], rotation=90, fontsize=7)
        ax.set_ylabel(f"L{'inf' if math.isinf(self.norm_type) else f'{self.norm_type:g}'} norm")
        ax.set_title(title or f"Gradient flow ({len(self.vanishing)} vanishing, "
                              f"{len(self.exploding)} exploding)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3e}"


def _plottable(v: float | None, tiny: float) -> float:
    if v is None or v == 0:
        return tiny
    return v if math.isfinite(v) else 1e30


def _combine(norms: list[float], p: float) -> float:
    """The p-norm of values that are themselves p-norms of disjoint parts (float64)."""
    if not norms:
        return 0.0
    if any(math.isnan(n) for n in norms):
        return math.nan
    if math.isinf(p):
        return max(norms)
    return math.fsum(n ** p for n in norms) ** (1.0 / p)


def _norms(tensors: list[torch.Tensor], p: float) -> list[float]:
    """||t||_p of each tensor, read back to the host in one transfer per device and per mesh.
    A DTensor's norm is over all its shards (see backprop_ext.utils.sharded): the norms of all the
    DTensors of a mesh take one all-reduce per mesh dimension they are sharded over."""
    parts = _sharded.split(tensors)
    plain = tensors if parts is None else parts.plain
    out: dict[int, float] = {}  # id(tensor) -> norm
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in plain:
        by_device.setdefault(t.device, []).append(t)
    for group in by_device.values():
        out.update(zip(map(id, group), _local_norms(group, p).tolist()))
    if parts is not None:
        for g in parts.groups.values():
            local = _local_norms([t._local_tensor for t in g.dtensors], p)
            local = local.where(torch.tensor(g.counts, device=local.device), 0.0)
            out.update(zip(map(id, g.dtensors),
                           _sharded.all_ranks_norms(local, g.mesh, g.dims, p).tolist()))
        for t in parts.other:  # Partial: torch's DTensor norm reduces it first
            out[id(t)] = torch.linalg.vector_norm(t, p).full_tensor().item()
    return [out[id(t)] for t in tensors]


def _local_norms(group: list[torch.Tensor], p: float) -> torch.Tensor:
    """||t||_p of each tensor of `group` (plain tensors on one device) as one 1-d tensor."""
    device = group[0].device
    # (not meta: the norms are read back to the host)
    if device.type != "meta" and kernels_on(device) and all(map(kernels_take, group)):
        return _ops.multi_tensor_norm_per_tensor(group, p)
    return torch.stack([torch.linalg.vector_norm(t, p).double() for t in group])


def _named_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    if isinstance(model, torch.nn.Module):
        return list(model.named_parameters())
    items = list(model)
    if all(isinstance(x, tuple) and len(x) == 2 for x in items):
        return items
    return [(f"param{i}", t) for i, t in enumerate(items)]


@public_function("gradient_flow")  # arguments checked by their annotations (off the hot path)
@torch.no_grad()
def gradient_flow(model: torch.nn.Module | Iterable[torch.Tensor | tuple[str, torch.Tensor]],
                  *, by: str = "parameter",
                  norm_type: float = 2.0, vanishing_threshold: float = 1e-6,
                  exploding_threshold: float = 1e3, metric: str = "grad_norm",
                  include_frozen: bool = False, plot: str | None = None) -> GradientFlowReport:
    """Reports the gradient flow of `model` after a backward pass.

    model: a Module, or an iterable of parameters or of (name, parameter) pairs.
    by: "parameter" (a row per parameter, named as in named_parameters) or "module" (a row per
        module holding parameters of its own; its norms are over those parameters together).
    norm_type: p of the norms (p > 0 or inf). metric: what the thresholds compare, "grad_norm"
        (absolute) or "ratio" (grad_norm / weight_norm, scale-free across layers).
    A layer is "vanishing" if its metric is below vanishing_threshold, "exploding" if above
    exploding_threshold, "non-finite" if its gradient holds NaN or inf, "no grad" if it requires
    grad but got no gradient (not part of the loss); frozen parameters are left out unless
    include_frozen. plot: also write the PNG there. Reads the norms on the host (one sync).
    Sharded parameters (DTensors) report their norms over all ranks and their global numel; call
    it on every rank then.
    """
    if by not in ("parameter", "module"):
        raise ValueError(
            f"backprop_ext.gradient_flow: by must be 'parameter' or 'module', got {by!r}")
    if metric not in ("grad_norm", "ratio"):
        raise ValueError(
            f"backprop_ext.gradient_flow: metric must be 'grad_norm' or 'ratio', got {metric!r}")
    p = float(norm_type)
    if not p > 0:
        raise ValueError(
            "backprop_ext.gradient_flow: norm_type must be a positive number or inf, got "
            f"{norm_type!r}")
    if not 0 <= vanishing_threshold < exploding_threshold:
        raise ValueError(
            "backprop_ext.gradient_flow: expected 0 <= vanishing_threshold < exploding_threshold, "
            f"got {vanishing_threshold!r} and {exploding_threshold!r}")

    named = [(n, t) for n, t in _named_parameters(model) if include_frozen or t.requires_grad]
    # Parameters shared by several modules are reported once, under their first name.
    seen, params = set(), []
    for name, t in named:
        if id(t) not in seen:
            seen.add(id(t))
            params.append((name, t))
    with_grad = [i for i, (_, t) in enumerate(params) if t.grad is not None]
    weight_norms = _norms([t.detach() for _, t in params], p) if params else []
    grad_norms: list[float | None] = [None] * len(params)
    for i, v in zip(with_grad, _norms([params[i][1].grad for i in with_grad], p)):
        grad_norms[i] = v

    # Rows: a parameter each, or the parameters of one module (name up to the last dot).
    rows: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(params):
        key = name if by == "parameter" else (name.rsplit(".", 1)[0] if "." in name else "(root)")
        rows.setdefault(key, []).append(i)

    layers = []
    for key, idx in rows.items():
        grads = [grad_norms[i] for i in idx if grad_norms[i] is not None]
        grad = _combine(grads, p) if grads else None
        weight = _combine([weight_norms[i] for i in idx], p)
        layer = LayerStats(key, sum(params[i][1].numel() for i in idx), grad, weight, OK)
        layer.status = _status(layer, metric, vanishing_threshold, exploding_threshold)
        layers.append(layer)
    report = GradientFlowReport(layers, p, vanishing_threshold, exploding_threshold, metric, by)
    if plot:
        report.plot(plot)
    return report


def _status(layer: LayerStats, metric: str, vanishing: float, exploding: float) -> str:
    if layer.grad_norm is None:
        return NO_GRAD
    if not math.isfinite(layer.grad_norm):
        return NONFINITE
    value = layer.grad_norm if metric == "grad_norm" else layer.ratio
    if value > exploding:
        return EXPLODING
    if value < vanishing:
        return VANISHING
    return OK
