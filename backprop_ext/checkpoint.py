"""Activation checkpointing: keep a layer's inputs, recompute its activations in backward.

    layer = Checkpoint(module)                                  # any module
    layer = Checkpoint(mlp, policy="selective")                 # keep GEMM outputs only
    stack = CheckpointedSequential(*blocks, segments=4)         # like nn.Sequential
    y = checkpoint(fn, x, policy="full")                        # a function

Recompute levels (`policy`), after flash-attention's FusedMLP(checkpoint_lvl=...):

    "full"       Keep only the region's inputs; backward re-runs the whole forward of the region
                 (one extra forward). The least memory.
    "selective"  Keep the outputs of the expensive ops (matrix products: aten.mm, addmm, bmm,
                 baddbmm, addbmm, matmul, linear, _scaled_mm; convolutions; fused attention; and
                 any backprop_ext op named linear*/matmul*/gemm*, such as a fused linear layer) and
                 recompute only the cheap ones in backward (backprop_ext.activation_fwd, aten
                 elementwise ops, views, reductions, dropout). Backward re-runs no GEMM; memory
                 falls by the share of the activations (for Linear+GELU: the GELU outputs, about
                 half of what a plain run keeps).
    "none"       No checkpointing: the wrapped module runs as is. For switching in experiments.
    a callable   A selective-checkpoint policy: policy_fn(ctx, op, *args, **kwargs) returning a
                 torch.utils.checkpoint.CheckpointPolicy, or a list of OpOverloads to keep.

Built on torch.utils.checkpoint.checkpoint(use_reentrant=False), whose guarantees carry over: the
RNG state is saved and replayed for recomputation (dropout draws the same masks as the
un-checkpointed run), it works with .backward() and torch.autograd.grad, with inputs that do not
require grad, with keyword arguments, nested, under autocast (the autocast state is replayed too)
and under torch.compile. "selective" adds torch's selective-activation-checkpoint contexts
(create_selective_checkpoint_contexts) with the policy above, and torch's two limits of it: a
kept output must not be updated in place (ReLU(inplace=True) right after a Linear raises in
backward), and a region allows one backward per forward (no retain_graph=True second pass, so no
gradcheck); "full" has neither limit (gradcheck, gradgradcheck and forward-mode AD pass).

state_dict keys: Checkpoint adds no prefix. Its state_dict is the wrapped module's, key for key,
and load_state_dict accepts the same keys, so a layer can be wrapped or unwrapped without
converting checkpoints; attribute paths (named_parameters, get_submodule) do go through
`.module`. CheckpointedSequential is an nn.Sequential: the same keys as nn.Sequential(*modules).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, Union

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

__all__ = ["Checkpoint", "CheckpointedSequential", "checkpoint", "selective_policy", "POLICIES"]

POLICIES = ("full", "selective", "none")
Policy = Union[str, Callable, list]

aten = torch.ops.aten


# --- the selective policy

def _packets(*names: str) -> frozenset:
    return frozenset(getattr(aten, n) for n in names if hasattr(aten, n))


# Ops whose outputs "selective" keeps: matrix products, convolutions, fused attention.
EXPENSIVE_OPS = _packets(
    "mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "_scaled_mm",
    "convolution", "_convolution", "cudnn_convolution", "mkldnn_convolution",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_flash_attention_forward", "_efficient_attention_forward",
)
# backprop_ext ops (e.g. a fused linear layer, written elsewhere) count as expensive by name.
_EXPENSIVE_OUR_PREFIXES = ("linear", "matmul", "gemm")


def _is_expensive(op) -> bool:
    packet = getattr(op, "overloadpacket", op)
    if packet in EXPENSIVE_OPS:
        return True
    return getattr(op, "namespace", None) == "backprop_ext" and op._opname.startswith(
        _EXPENSIVE_OUR_PREFIXES)


def selective_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """policy="selective": keep (MUST_SAVE) the outputs of EXPENSIVE_OPS and of backprop_ext
    linear/matmul/gemm ops, recompute (PREFER_RECOMPUTE) everything else."""
    return CheckpointPolicy.MUST_SAVE if _is_expensive(op) else CheckpointPolicy.PREFER_RECOMPUTE


def _check_policy(where: str, policy: Policy) -> None:
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"backprop_ext.{where}: policy must be one of {POLICIES}, a policy "
                             f"function or a list of ops to keep; got {policy!r}")
    elif not (callable(policy) or isinstance(policy, list)):
        raise TypeError(f"backprop_ext.{where}: policy must be one of {POLICIES}, a policy "
                        f"function or a list of ops to keep; got {type(policy).__name__}")


# torch >= 2.14 can route the tensors selective checkpointing keeps through the surrounding
# saved_tensors_hooks (e.g. torch.autograd.graph.save_on_cpu), as it does every other saved
# tensor, and will by default; we opt in where the option exists.
_SAC_RESPECTS_HOOKS = ("respect_saved_tensors_hooks"
                       in inspect.signature(torch.utils.checkpoint.checkpoint).parameters)

# torch.utils.checkpoint.checkpoint's own keyword arguments: a function's keyword argument with
# one of these names is passed through functools.partial instead.
_CHECKPOINT_KWARGS = frozenset({"function", "use_reentrant", "preserve_rng_state", "context_fn",
                                "determinism_check", "debug", "early_stop",
                                "respect_saved_tensors_hooks"})


# --- the functional form


def checkpoint(function: Callable, *args: Any, policy: Policy = "full",
               preserve_rng_state: bool = True, determinism_check: str = "default",
               **kwargs: Any) -> Any:
    """function(*args, **kwargs), keeping what `policy` says (see the module docstring) and
    recomputing the rest in backward.

    Without grad mode, or with policy="none", it is a plain call. Otherwise it is
    torch.utils.checkpoint.checkpoint(use_reentrant=False) with the policy's context_fn.
    """
    _check_policy("checkpoint", policy)
    if policy == "none" or not torch.is_grad_enabled():
        return function(*args, **kwargs)
    if kwargs.keys() & _CHECKPOINT_KWARGS:
        function, kwargs = functools.partial(function, **kwargs), {}
    if policy != "full":
        # Built here rather than once at import: torch.compile traces a context_fn only when it
        # is a function or a functools.partial made in the traced code.
        kwargs["context_fn"] = functools.partial(
            create_selective_checkpoint_contexts,
            selective_policy if policy == "selective" else policy)
        if _SAC_RESPECTS_HOOKS:
            kwargs["respect_saved_tensors_hooks"] = True
    return torch.utils.checkpoint.checkpoint(
        function, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state,
        determinism_check=determinism_check, **kwargs)


# --- modules


def _strip_prefix(state_dict: dict, prefix: str, child: str) -> None:
    old = prefix + child + "."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + key[len(old):]] = state_dict.pop(key)


def _add_prefix(state_dict: dict, prefix: str, child: str) -> None:
    new = prefix + child + "."
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[new + key[len(prefix):]] = state_dict.pop(key)


class Checkpoint(torch.nn.Module):
    """Wraps `module` so that its activations are recomputed in backward instead of kept.

    module: any nn.Module; forward(*args, **kwargs) is passed through unchanged.
    policy: "full" (default: keep only the inputs), "selective" (also keep GEMM outputs),
        "none", or a custom selective-checkpoint policy; see backprop_ext.checkpoint.
    preserve_rng_state: replay the RNG state in recomputation (default True: dropout masks are
        those of the forward). determinism_check: passed to torch.utils.checkpoint.

    state_dict() has the wrapped module's keys, without a prefix; attributes not found on the
    wrapper are looked up on the wrapped module (ckpt.weight is ckpt.module.weight).
    """

    def __init__(self, module: torch.nn.Module, policy: Policy = "full",
                 preserve_rng_state: bool = True, determinism_check: str = "default"):
        super().__init__()
        _check_policy("Checkpoint", policy)
        if not isinstance(module, torch.nn.Module):
            raise TypeError("backprop_ext.Checkpoint: expected an nn.Module to wrap, got "
                            f"{type(module).__name__}")
        self.module = module
        self.policy = policy
        self.preserve_rng_state = preserve_rng_state
        self.determinism_check = determinism_check
        self.register_state_dict_post_hook(
            lambda mod, state_dict, prefix, metadata: _strip_prefix(state_dict, prefix, "module"))
        self.register_load_state_dict_pre_hook(
            lambda mod, state_dict, prefix, *_: _add_prefix(state_dict, prefix, "module"))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return checkpoint(self.module, *args, policy=self.policy,
                          preserve_rng_state=self.preserve_rng_state,
                          determinism_check=self.determinism_check, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            if not modules or "module" not in modules:  # during __init__, copy, unpickling
                raise
            return getattr(modules["module"], name)

    def extra_repr(self) -> str:
        policy = self.policy if isinstance(self.policy, str) else "custom"
        return f"policy={policy!r}"


def _run(modules, input):
    for module in modules:
        input = module(input)
    return input


class CheckpointedSequential(torch.nn.Sequential):
    """nn.Sequential that checkpoints its modules in `segments` contiguous segments.

    *args: modules (or one OrderedDict), exactly as nn.Sequential; same indexing, same state_dict.
    segments: how many segments to cut the modules into, as evenly as possible; default
        round(sqrt(len(self))), the classic memory/compute balance (Chen et al., 2016). Every
        segment but the last is checkpointed; the last runs plainly, because backward starts
        there and recomputing it would cost a forward without lowering the peak. So segments=1
        checkpoints nothing; segments=len(self) checkpoints each module but the last.
    policy: "full", "selective" or "none" (see backprop_ext.checkpoint), for every segment.
    """

    def __init__(self, *args, segments: int | None = None, policy: Policy = "full",
                 preserve_rng_state: bool = True):
        super().__init__(*args)
        _check_policy("CheckpointedSequential", policy)
        if segments is not None and (not isinstance(segments, int) or segments < 1):
            raise ValueError("backprop_ext.CheckpointedSequential: segments must be a positive "
                             f"integer or None, got {segments!r}")
        self.segments = segments
        self.policy = policy
        self.preserve_rng_state = preserve_rng_state

    def segment_bounds(self) -> list[tuple[int, int]]:
        """[start, end) of each segment, in order."""
        n = len(self)
        if n == 0:
            return []
        k = min(n, self.segments or max(1, round(math.sqrt(n))))
        size, extra = divmod(n, k)
        bounds, start = [], 0
        for i in range(k):
            end = start + size + (1 if i < extra else 0)
            bounds.append((start, end))
            start = end
        return bounds

    def forward(self, input):
        modules = list(self)
        bounds = self.segment_bounds()
        for i, (start, end) in enumerate(bounds):
            segment = modules[start:end]
            if i == len(bounds) - 1:
                input = _run(segment, input)
            else:
                input = checkpoint(functools.partial(_run, segment), input, policy=self.policy,
                                   preserve_rng_state=self.preserve_rng_state)
        return input

    def extra_repr(self) -> str:
        policy = self.policy if isinstance(self.policy, str) else "custom"
        return f"segments={len(self.segment_bounds())}, policy={policy!r}"
