"""Gradient clipping on the fused multi-tensor kernels, with torch.nn.utils' signatures.

    clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None)
    get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None)
    clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None)
    clip_grad_value_(parameters, clip_value, foreach=None)

Drop-ins for torch.nn.utils' functions of the same names: same arguments, the same return value
(dtype and device included), gradients modified in place the same way, and no host sync unless
error_if_nonfinite=True (then one, as in torch). Where they differ from torch, on purpose:

* Accuracy. The norm is accumulated in float32 (float64 when any gradient is float64) over all
  elements at once. torch rounds each tensor's norm to the tensor's dtype first, so with float16
  or bfloat16 gradients ours is the more accurate; the value returned is still rounded to torch's
  dtype (float16 for all-float16 gradients), but the clipping coefficient is computed from the
  float32 norm. For float16 gradients whose norm exceeds 65504 both return inf, yet torch then
  zeroes the gradients while ours scales them correctly.
* Arguments that torch accepts but that cannot clip are refused with a ValueError: norm_type 0
  (a count of nonzeros), negative or NaN norm_type, and a negative or NaN max_norm or clip_value
  (torch flips the gradients' sign).
* `foreach`: None or True run the fused ops (one call per device for every gradient; True is
  accepted on CPU too, where torch has no foreach kernels and raises); False runs the same
  kernels one tensor per call.
* An empty gradient counts as no elements for every norm order; torch raises for the inf norm.
  Gradients our kernels cannot take (devices other than CPU and CUDA, complex dtypes, sparse
  layouts, tensor subclasses other than DTensor) go through torch's own implementation, with
  torch's rules for `foreach` (True raises where torch has no foreach).

Sharded gradients (DTensor: FSDP2's fully_shard, tensor and hybrid parallelism) go through the
same kernels on each rank's local parts. The norm is over all ranks: one fused norm of the local
parts, then one all-reduce of one number (two for the inf norm) per mesh dimension the gradients
are sharded over (one for FSDP2, however many gradients), asynchronous and without a host sync
(utils.sharded says how replicated copies are counted once). The result is a DTensor, as
torch's is, replicated over the first gradient's mesh: the same value on every rank. Scaling and
clamping are local. Where they differ from torch on DTensors: an empty local shard (a rank holding
no part of a parameter, as FSDP2 leaves when a dimension is smaller than the world) counts as no
elements for the inf norm too (torch raises on that rank); torch's inf norm is a DTensor still to
be reduced (Partial), ours is reduced already (Replicate); plain tensors may be mixed with DTensors
(each rank counts its plain tensors whole, as under DDP), where torch raises. Partial placements
(addends of a gradient) go through torch's DTensor ops: a collective each for the norm, scaled
locally, refused by clip_grad_value_ (as by torch 2.14; torch 2.11's DTensor clamp_ clamps the
addends).
"""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Iterable

import torch
from torch.utils._foreach_utils import _device_has_foreach_support, _has_foreach_support

from ..ops.errors import public_function
from ..ops.multi_tensor import kernels_on, kernels_take, norm_dtype
from . import sharded as _sharded

__all__ = ["clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm"]

_TensorOrTensors = torch.Tensor | Iterable[torch.Tensor]

_ops = torch.ops.backprop_ext


# --- argument handling


def _as_list(tensors: _TensorOrTensors) -> list[torch.Tensor]:
    return [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)


def _grads(parameters: list[torch.Tensor]) -> list[torch.Tensor]:
    try:
        return [p.grad for p in parameters if p.grad is not None]
    except AttributeError:  # the public function names the argument (_public)
        raise TypeError("argument 'parameters' must be Tensor or an iterable of Tensor") from None


# Bad arguments raise naming the function and the argument, by their annotations, once a call has
# failed (ops.errors.public_function: a valid call pays one Python call, no check). foreach,
# where ours differs from torch's (True runs on CPU), is checked on the way in: None, True or
# False. The bools are torch's: anything truthy.
_public = functools.partial(public_function, upfront=False,
                            lax_bool=("error_if_nonfinite", "foreach"))


def _check_foreach(fn: str, foreach) -> None:
    if foreach is not None and foreach is not True and foreach is not False:
        raise TypeError(f"backprop_ext.utils.{fn}(): argument 'foreach' must be bool or None, "
                        f"not {type(foreach).__name__}")


def _float(fn: str, name: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as error:  # torch's kind: float()'s
        raise type(error)(f"backprop_ext.utils.{fn}(): argument '{name}' must be a number, "
                          f"not {type(value).__name__}") from None


def _norm_order(fn: str, norm_type) -> float:
    p = _float(fn, "norm_type", norm_type)
    if not p > 0:  # also catches NaN
        raise ValueError(
            f"backprop_ext.utils.{fn}: norm_type must be a positive number or inf, got "
            f"{norm_type!r} (0 counts nonzero elements and negative orders are not norms; "
            "neither can clip gradients)")
    return p


def _nonnegative(fn: str, name: str, value) -> float:
    v = _float(fn, name, value)
    if not v >= 0:  # also catches NaN
        raise ValueError(
            f"backprop_ext.utils.{fn}: {name} must be >= 0, got {value!r} (a negative bound "
            "would flip the sign of the gradients)")
    return v


def _partition(tensors: list[torch.Tensor]):
    """(device, tensors for our kernels, tensors for torch's path) per device, in first-seen
    order. Our kernels take plain dense float64/32/16/bfloat16 tensors on their devices; torch's
    path the rest: other devices, complex dtypes, sparse layouts, tensor subclasses.

    Called for every gradient of every clipping call, so written for speed: each device is
    judged once (device.type alone costs 0.2 us), each tensor by four attribute reads."""
    groups: dict[torch.device, tuple[bool, list, list]] = {}
    for t in tensors:
        device = t.device
        group = groups.get(device)
        if group is None:
            group = groups[device] = (kernels_on(device), [], [])
        runs, ours, rest = group
        (ours if runs and kernels_take(t) else rest).append(t)
    return [(device, ours, rest) for device, (_, ours, rest) in groups.items()]


def _torch_foreach(tensors: list[torch.Tensor], device: torch.device, foreach) -> bool:
    """torch's own choice between its foreach and per-tensor paths, for tensors ours cannot take."""
    if (foreach is None and _has_foreach_support(tensors, device)) or (
            foreach and _device_has_foreach_support(device)):
        return True
    if foreach:
        raise RuntimeError(
            f"foreach=True was passed, but can't use the foreach API on {device.type} tensors")
    return False


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype.to_real() if dtype.is_complex else dtype


def _torch_norm_dtype(tensors: list[torch.Tensor]) -> torch.dtype:
    """The dtype torch.nn.utils.get_total_norm returns: its per-tensor norms, in each tensor's
    dtype, stacked (which promotes)."""
    dtypes = {t.dtype for t in tensors}  # promotion is associative and commutative
    return functools.reduce(torch.promote_types, (_real_dtype(d) for d in dtypes))


# --- the norm


def _accumulated_norm(tensors: list[torch.Tensor], p: float, foreach) -> torch.Tensor:
    """||tensors||_p as a 0-d float32 (float64 if any tensor is float64) tensor on the first
    tensor's device; no host sync."""
    first_device = tensors[0].device
    norms = []
    for device, ours, rest in _partition(tensors):
        if ours and foreach is False:
            norms.extend(_ops.multi_tensor_norm([t], p) for t in ours)
        elif ours:
            norms.append(_ops.multi_tensor_norm(ours, p))
        if rest and _torch_foreach(rest, device, foreach):
            norms.extend(torch._foreach_norm(rest, p))
        elif rest:
            norms.extend(torch.linalg.vector_norm(t, p) for t in rest)
    return _combine(norms, p, first_device)


def _combine(norms: list[torch.Tensor], p: float, device: torch.device) -> torch.Tensor:
    """The p-norm of norms of disjoint parts, in float32 (float64 if any norm is float64)."""
    if len(norms) == 1 and norms[0].dtype in (torch.float32, torch.float64):
        return norms[0]
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
    stacked = torch.stack([n.to(device, dtype) for n in norms])
    # Ours where it runs: torch's overflows for norms whose squares do (e.g. two of 3e34).
    return (_ops.multi_tensor_norm([stacked], p) if kernels_on(device)
            else torch.linalg.vector_norm(stacked, p))


def _sharded_norm(parts: _sharded.Split, p: float, foreach) -> torch.Tensor:
    """||tensors||_p over all ranks for a list holding DTensors, taken apart in `parts`: as
    _accumulated_norm computes it (dtype included), the same on every rank.

    Plain tensors count as they are on this rank (whole, as under DDP). The DTensors of one mesh
    take one fused norm of the local parts this rank counts and one all-reduce per mesh dimension
    they are sharded over (see backprop_ext.utils.sharded); Partial ones go through torch's DTensor
    norm (a collective each).
    """
    device = parts.locals[0].device
    norms = [_accumulated_norm(parts.plain, p, foreach)] if parts.plain else []
    for group in parts.groups.values():
        mine = group.contributing()
        local_norm = (_accumulated_norm(mine, p, foreach) if mine
                      else torch.zeros((), device=group.dtensors[0]._local_tensor.device))
        norms.append(_sharded.all_ranks_norms(local_norm, group.mesh, group.dims, p))
    norms += [torch.linalg.vector_norm(t, p).full_tensor() for t in parts.other]
    return _combine(norms, p, device).to(norm_dtype(parts.locals))


def _raise_if_nonfinite(total_norm: torch.Tensor, norm_type: float) -> None:
    if torch.logical_or(total_norm.isnan(), total_norm.isinf()):  # the one host sync
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, "
            "so it cannot be clipped. To disable this error and scale the gradients by the "
            "non-finite norm anyway, set `error_if_nonfinite=False`")


@_public("utils.get_total_norm")
@torch.no_grad()
def get_total_norm(tensors: _TensorOrTensors, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False, foreach: bool | None = None) -> torch.Tensor:
    """The p-norm of `tensors` viewed as one vector, like torch.nn.utils.get_total_norm.

    tensors: a tensor or an iterable of tensors of any shapes, dtypes and devices; DTensors count
    with all their shards (the norm is over all ranks, the same on each).
    norm_type: p > 0, or inf. Returns a 0-d tensor on the first tensor's device, in the dtype torch
    returns (the promotion of the tensors' dtypes), tensor(0.) for no tensors; with DTensors, a
    DTensor replicated over the first one's mesh. Raises RuntimeError for a NaN or infinite norm
    when error_if_nonfinite (which reads the norm on the host).
    """
    _check_foreach("get_total_norm", foreach)
    tensors = _as_list(tensors)
    p = _norm_order("get_total_norm", norm_type)
    if not tensors:
        return torch.tensor(0.0)
    parts = _sharded.split(tensors)
    norm = (_accumulated_norm(tensors, p, foreach) if parts is None
            else _sharded_norm(parts, p, foreach))
    total_norm = norm.to(_torch_norm_dtype(tensors))
    if error_if_nonfinite:
        _raise_if_nonfinite(total_norm, p)
    # For DTensors, like torch: a DTensor (replicated: the same value on every rank).
    return total_norm if parts is None else _sharded.replicated(total_norm, parts.mesh)


# --- scaling and clamping


def _scale(grads: list[torch.Tensor], max_norm: float, total_norm: torch.Tensor, foreach) -> None:
    """grads *= min(1, max_norm / (total_norm + 1e-6)), the coefficient computed on the device."""
    coef = None  # torch's clip_coef_clamped, only needed for tensors our kernels cannot take
    for device, ours, rest in _partition(grads):
        if ours:
            norm = total_norm.to(device)  # no copy when already there
            if foreach is False:
                for g in ours:
                    _ops.multi_tensor_scale_([g], norm, max_norm)
            else:
                _ops.multi_tensor_scale_(ours, norm, max_norm)
        if rest:
            if coef is None:
                coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
            if _torch_foreach(rest, device, foreach):
                torch._foreach_mul_(rest, coef.to(device))
            else:
                for g in rest:
                    g.mul_(coef.to(device))


@_public("utils.clip_grads_with_norm_")
@torch.no_grad()
def clip_grads_with_norm_(parameters: _TensorOrTensors, max_norm: float,
                          total_norm: torch.Tensor | float, foreach: bool | None = None) -> None:
    """Scales the gradients of `parameters` in place by min(1, max_norm / (total_norm + 1e-6)),
    like torch.nn.utils.clip_grads_with_norm_.

    total_norm: a tensor (as get_total_norm returns, ours or torch's, DTensor included; any
    device) or a number. Parameters without a gradient are skipped. max_norm must be >= 0.
    """
    _check_foreach("clip_grads_with_norm_", foreach)
    parameters = _as_list(parameters)
    max_norm = _nonnegative("clip_grads_with_norm_", "max_norm", max_norm)
    grads = _grads(parameters)
    if not grads:
        return
    if not isinstance(total_norm, torch.Tensor):
        total_norm = torch.tensor(float(total_norm))
    elif _sharded.is_dtensor(total_norm):
        # Ours is replicated (no collective here); torch's inf norm is still a pending max.
        total_norm = total_norm.full_tensor()
    parts = _sharded.split(grads)
    # Scaling commutes with every placement: each rank scales its own parts of DTensors.
    _scale(grads if parts is None else parts.locals, max_norm, total_norm, foreach)


@_public("utils.clip_grad_norm_")
@torch.no_grad()
def clip_grad_norm_(parameters: _TensorOrTensors, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> torch.Tensor:
    """Clips the gradients of `parameters` in place so that their joint p-norm is at most
    max_norm, like torch.nn.utils.clip_grad_norm_: get_total_norm, then clip_grads_with_norm_.

    parameters: a tensor or an iterable of tensors (their .grad is clipped; None grads skipped).
    max_norm >= 0; norm_type p > 0 or inf. Returns the total norm of the gradients before
    clipping, as torch does (0-d, torch's dtype, first gradient's device; a replicated DTensor
    for sharded gradients, whose norm is over all ranks). No host sync unless
    error_if_nonfinite=True. When the norm is within max_norm the coefficient is exactly 1 and
    our kernels leave the gradients untouched (torch multiplies them by 1: the same bits).
    """
    _check_foreach("clip_grad_norm_", foreach)
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)  # a generator would be exhausted by the first pass
        if is_generator and not parameters:
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.",
                          stacklevel=3)
    max_norm = _nonnegative("clip_grad_norm_", "max_norm", max_norm)
    p = _norm_order("clip_grad_norm_", norm_type)
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    parts = _sharded.split(grads)
    if parts is None:
        norm = _accumulated_norm(grads, p, foreach)
    else:  # sharded: the norm over all ranks; each rank scales its own parts
        norm, grads = _sharded_norm(parts, p, foreach), parts.locals
    total_norm = norm.to(_torch_norm_dtype(grads))
    if error_if_nonfinite:
        _raise_if_nonfinite(total_norm, p)
    _scale(grads, max_norm, norm, foreach)
    return total_norm if parts is None else _sharded.replicated(total_norm, parts.mesh)


@_public("utils.clip_grad_value_")
@torch.no_grad()
def clip_grad_value_(parameters: _TensorOrTensors, clip_value: float,
                     foreach: bool | None = None) -> None:
    """Clamps the gradients of `parameters` in place to [-clip_value, clip_value], like
    torch.nn.utils.clip_grad_value_ (NaN stays NaN). clip_value must be >= 0. Sharded gradients
    (DTensors) are clamped through their local parts; Partial ones (addends of a gradient:
    clamping them would not clamp their sum) raise a RuntimeError before anything is clamped."""
    _check_foreach("clip_grad_value_", foreach)
    parameters = _as_list(parameters)
    clip_value = _nonnegative("clip_grad_value_", "clip_value", clip_value)
    grads = _grads(parameters)
    parts = _sharded.split(grads)
    if parts is not None:
        # Clamping commutes with splitting and replicating but not with summing: each rank clamps
        # its own parts of DTensors. Partial ones are refused here, whatever the torch: 2.14's
        # DTensor clamp_ refuses them too, 2.11's clamps the addends.
        for t in parts.other:
            if any(pl.is_partial() for pl in t.placements):
                raise RuntimeError(
                    f"clip_grad_value_: a gradient has placements {tuple(t.placements)}: clamping "
                    "the addends of a Partial placement does not clamp their sum; redistribute it "
                    "to Replicate (or Shard) first")
        partial = {id(t) for t in parts.other}
        grads = [t if id(t) in partial else x for t, x in zip(grads, parts.locals)]
    for device, ours, rest in _partition(grads):
        if ours and foreach is False:
            for g in ours:
                _ops.multi_tensor_clamp_([g], -clip_value, clip_value)
        elif ours:
            _ops.multi_tensor_clamp_(ours, -clip_value, clip_value)
        if rest and _torch_foreach(rest, device, foreach):
            torch._foreach_clamp_min_(rest, -clip_value)
            torch._foreach_clamp_max_(rest, clip_value)
        elif rest:
            for g in rest:
                g.clamp_(min=-clip_value, max=clip_value)
