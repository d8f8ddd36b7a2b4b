"""Activation checkpointing: keep less for backward, recompute the rest there.

    layer = Checkpoint(block)                                    # any module; policy="full"
    layer = Checkpoint(mlp, policy="selective")                  # keep GEMM outputs only
    stack = CheckpointedSequential(*blocks, segments=4)          # like nn.Sequential
    stack = CheckpointedSequential(*blocks, memory_budget=0.25)  # a quarter of plain's memory
    print(stack.plan(x))                                         # what it chose, and why
    y = checkpoint(fn, x, policy="full")                         # a function

Recompute levels (`policy`), after flash-attention's FusedMLP(checkpoint_lvl=...), cheapest first:

    "none"            No checkpointing: the region runs as is.
    "selective"       Keep what autograd keeps, except activation outputs computed from a kept
                      tensor: a Linear -> GELU keeps its GEMM output z (GELU's backward needs it)
                      but not y = gelu(z) (the next Linear's input), which backward rebuilds from
                      z. One tensor a layer instead of two, for one elementwise pass a layer in
                      backward; no matrix product re-runs, and the region is not re-run at all
                      (backprop_ext.checkpoint.recompute). Written as two modules or as the fused
                      Linear(..., activation=...), the same. Consecutive selective regions link
                      up, so Checkpoint(block, "selective") on every block saves as much as one
                      region around them all.
    "full"            Keep only the region's inputs; backward re-runs its forward (one extra
                      forward) and keeps everything that re-run saves until the region's backward
                      is done. torch.utils.checkpoint.checkpoint(use_reentrant=False), exactly.
    "full+selective"  "full", with "selective" inside the re-run: the deep setting (while a
                      region is re-run it holds one tensor a layer instead of two).
    a callable        A torch selective-checkpoint policy: policy_fn(ctx, op, *args, **kwargs)
                      returning a torch.utils.checkpoint.CheckpointPolicy, or a list of
                      OpOverloads to keep (torch's create_selective_checkpoint_contexts).
                      selective_policy below keeps matrix products, convolutions and attention.

Guarantees (all levels): the same outputs and gradients as the plain run, bit for bit in eager
mode (the rebuilt tensors are the same ops on the same inputs; dropout replays the forward's RNG
state; autocast state is replayed too; on CUDA as deterministic as cuBLAS's choices);
.backward() and torch.autograd.grad, inputs that do not require grad, keyword arguments, nesting,
retain_graph, double backward, gradcheck and forward-mode AD; torch.compile
(under which "selective" becomes torch's selective checkpointing with selective_policy, and the
compiler's partitioner decides what is recomputed); state_dict keys of the wrapped modules. A
tensor kept for backward and then modified in place raises in backward, as without
checkpointing; an in-place op on an activation before it is saved (ReLU(inplace=True) after a
Linear) is simply kept. Callable policies keep torch's two limits: a kept output must not be
modified in place, and one backward per forward.

Where torch.utils.checkpoint cannot run, the region runs without checkpointing (same values,
gradients and tangents; no memory saved there): under torch.func.grad/vjp (saved-tensor hooks are
not supported there, on any torch), and under torch.func.jvp, vmap and forward-mode dual tensors
on torch versions whose checkpoint lacks forward-AD/vmap rules (2.11; probed once, not assumed
from the version). "selective" regions also run plainly under any torch.func transform.

state_dict keys: Checkpoint adds no prefix. Its state_dict is the wrapped module's, key for key,
and load_state_dict accepts the same keys, so a layer can be wrapped or unwrapped without
converting checkpoints; attribute paths (named_parameters, get_submodule) do go through
`.module`. CheckpointedSequential is an nn.Sequential: the same keys as nn.Sequential(*modules).
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from ..ops.errors import public_init
from . import planner as _planner
from .memory import StepProfile, profile_sequential, step_peak_bytes
from .planner import CheckpointPlan
from .recompute import rebuild_scope

__all__ = ["Checkpoint", "CheckpointedSequential", "CheckpointPlan", "checkpoint",
           "selective_policy", "POLICIES"]

POLICIES = _planner.LEVELS  # the policies are the planner's levels
Policy = str | Callable | list

aten = torch.ops.aten


# --- torch's selective checkpointing, for callable policies and under torch.compile


def _packets(*names: str) -> frozenset:
    return frozenset(getattr(aten, n) for n in names if hasattr(aten, n))


# Ops whose outputs selective_policy keeps: matrix products, convolutions, fused attention.
EXPENSIVE_OPS = _packets(
    "mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "_scaled_mm",
    "convolution", "_convolution", "cudnn_convolution", "mkldnn_convolution",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_flash_attention_forward", "_efficient_attention_forward",
)
# backprop_ext ops (e.g. the fused linear layer) count as expensive by name.
_EXPENSIVE_OUR_PREFIXES = ("linear", "matmul", "gemm")


def _is_expensive(op) -> bool:
    packet = getattr(op, "overloadpacket", op)
    if packet in EXPENSIVE_OPS:
        return True
    return getattr(op, "namespace", None) == "backprop_ext" and op._opname.startswith(
        _EXPENSIVE_OUR_PREFIXES)


def selective_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """A torch selective-checkpoint policy: keep (MUST_SAVE) the outputs of EXPENSIVE_OPS and of
    backprop_ext linear/matmul/gemm ops, recompute (PREFER_RECOMPUTE) everything else. Used for
    policy="selective" under torch.compile; pass it as `policy` to get torch's mechanism in eager
    mode (it re-runs the region's cheap ops in backward, and keeps the region's inputs)."""
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


# --- where checkpointing cannot run


@functools.cache
def _torch_checkpoint_runs_under(transform: str) -> bool:
    """Whether torch.utils.checkpoint works under torch.func.jvp / vmap on this torch (2.11's
    internal autograd.Function has neither a jvp nor a vmap rule). Probed once on a scalar."""
    fn = functools.partial(torch.utils.checkpoint.checkpoint, torch.sin, use_reentrant=False)
    x = torch.zeros(1)
    try:
        with torch.enable_grad():
            if transform == "jvp":
                torch.func.jvp(fn, (x,), (torch.ones(1),))
            else:
                torch.func.vmap(fn)(x)
        return True
    except (NotImplementedError, RuntimeError):
        return False


def _functorch_transforms() -> set:
    if not torch._C._are_functorch_transforms_active():
        return set()
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return {i.key().name for i in retrieve_all_functorch_interpreters()}


def _has_tangent(args, kwargs) -> bool:
    if fwAD._current_level < 0:
        return False
    return any(isinstance(t, torch.Tensor) and fwAD.unpack_dual(t).tangent is not None
               for t in (*args, *kwargs.values()))


def _effective_policy(policy: Policy, args, kwargs) -> Policy:
    """The policy this call can run with: `policy`, a weaker one, or "none" (see the module
    docstring: where torch.utils.checkpoint or saved-tensor hooks cannot run)."""
    transforms = _functorch_transforms()
    if transforms:
        if "Grad" in transforms:
            return "none"
        if ("Jvp" in transforms and not _torch_checkpoint_runs_under("jvp")) or (
                "Vmap" in transforms and not _torch_checkpoint_runs_under("vmap")):
            return "none"
        # The rebuild scope keys tensors by storage, which functorch's wrappers do not expose.
        if policy == "selective":
            return "none"
        return "full" if policy == "full+selective" else policy
    if policy != "selective" and _has_tangent(args, kwargs):
        return policy if _torch_checkpoint_runs_under("jvp") else "none"
    return policy


# --- the functional form


def _in_rebuild_scope(function: Callable, *args: Any, **kwargs: Any) -> Any:
    with rebuild_scope():
        return function(*args, **kwargs)


def checkpoint(function: Callable, *args: Any, policy: Policy = "full",
               preserve_rng_state: bool = True, determinism_check: str = "default",
               **kwargs: Any) -> Any:
    """function(*args, **kwargs), keeping what `policy` says (see the module docstring) and
    recomputing the rest in backward.

    Without grad mode, or with policy="none", it is a plain call. "full" is
    torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False, ...) as is.
    """
    _check_policy("checkpoint", policy)
    if not callable(function):
        raise TypeError("backprop_ext.checkpoint(): argument 'function' (position 1) must be "
                        f"callable, not {type(function).__name__}")
    if determinism_check != "default" and determinism_check != "none":
        kind = ValueError if determinism_check.__hash__ is not None else TypeError  # torch's
        raise kind("backprop_ext.checkpoint(): determinism_check must be 'default' or "
                         f"'none', got {determinism_check!r}")
    if policy == "none" or not torch.is_grad_enabled():
        return function(*args, **kwargs)
    if any(k in _CHECKPOINT_KWARGS for k in kwargs):
        function, kwargs = functools.partial(function, **kwargs), {}
    if torch.compiler.is_compiling():
        # The compiler partitions recomputation itself; "selective" hands it torch's policy.
        if policy == "selective":
            policy = selective_policy
        elif policy == "full+selective":
            policy = "full"
    else:
        policy = _effective_policy(policy, args, kwargs)
        if policy == "none":
            return function(*args, **kwargs)
        if policy == "selective":
            return _in_rebuild_scope(function, *args, **kwargs)
        if policy == "full+selective":
            function = functools.partial(_in_rebuild_scope, function)
    if not isinstance(policy, str):
        # Built here rather than once at import: torch.compile traces a context_fn only when it
        # is a function or a functools.partial made in the traced code.
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, policy)
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


@public_init("Checkpoint")
class Checkpoint(torch.nn.Module):
    """Wraps `module` so that its activations are recomputed in backward instead of kept.

    module: any nn.Module; forward(*args, **kwargs) is passed through unchanged.
    policy: "full" (default: keep only the inputs), "selective" (keep GEMM outputs, rebuild the
        activations), "full+selective", "none", or a torch selective-checkpoint policy; see
        backprop_ext.checkpoint.
    preserve_rng_state: replay the RNG state in recomputation (default True: dropout masks are
        those of the forward). determinism_check: passed to torch.utils.checkpoint.

    state_dict() has the wrapped module's keys, without a prefix; attributes not found on the
    wrapper are looked up on the wrapped module (ckpt.weight is ckpt.module.weight).
    """

    def __init__(self, module: torch.nn.Module, policy: Policy = "full",
                 preserve_rng_state: bool = True, determinism_check: str = "default"):
        super().__init__()
        _check_policy("Checkpoint", policy)
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


@public_init("CheckpointedSequential")
class CheckpointedSequential(torch.nn.Sequential):
    """nn.Sequential that checkpoints its modules in contiguous segments.

    *args: modules (or one OrderedDict), exactly as nn.Sequential; same indexing, same state_dict.
    segments: how many segments to cut the modules into, as evenly as possible; default
        round(sqrt(len(self))), the classic memory/compute balance (Chen et al., 2016). Every
        segment but the last runs under `policy`; the last runs plainly ("full") or under
        "selective" ("full+selective"), because backward starts there and recomputing it would
        cost a forward without lowering the peak. So segments=1 recomputes nothing under "full";
        segments=len(self) checkpoints each module but the last. Under "selective" the segments
        make no difference (nothing is re-run).
    policy: "full" (default), "full+selective", "selective" or "none" (see
        backprop_ext.checkpoint), or a torch selective-checkpoint policy, for every segment.
    memory_budget: instead of segments and policy, a budget for the step's activation memory:
        bytes (an int), or a fraction of the plain step's peak (a float in (0, 1]). The first
        forward in grad mode (or plan(input)) measures one plain step on its input (each module's
        forward, and the step's peak as the allocator counts it), chooses the segments and each
        one's level with the least predicted recompute that fits, and checks the choice on a
        measured step, correcting the model and choosing again if need be
        (checkpoint.planner); plan() returns the choice, its predictions and its measured
        peak. It is chosen once: call plan(input, remeasure=True) when the input's size changes.
    """

    def __init__(self, *args: torch.nn.Module | OrderedDict, segments: int | None = None,
                 policy: Policy = "full",
                 memory_budget: int | float | None = None, preserve_rng_state: bool = True):
        super().__init__(*args)
        _check_policy("CheckpointedSequential", policy)
        if segments is not None and (not isinstance(segments, int) or segments < 1):
            raise ValueError("backprop_ext.CheckpointedSequential: segments must be a positive "
                             f"integer or None, got {segments!r}")
        if memory_budget is not None:
            _check_budget(memory_budget, "CheckpointedSequential")
            if segments is not None or policy != "full":
                raise ValueError("backprop_ext.CheckpointedSequential: memory_budget chooses the "
                                 "segments and the policy; pass either memory_budget or "
                                 "segments/policy, not both")
        self.segments = segments
        self.policy = policy
        self.memory_budget = memory_budget
        self.preserve_rng_state = preserve_rng_state
        self._plan: CheckpointPlan | None = None
        self._profile: StepProfile | None = None

    def segment_bounds(self) -> list[tuple[int, int]]:
        """[start, end) of each segment, in order (with memory_budget: once planned)."""
        if self.memory_budget is not None:
            plan = self._plan.segments if self._plan is not None else [(0, len(self), "none")]
            return [(a, b) for a, b, _ in plan if b > a]
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

    def _segments(self) -> list:
        """(start, end, level) of each segment, as forward runs them."""
        if self.memory_budget is not None:
            return list(self._plan.segments) if self._plan is not None else []
        bounds = self.segment_bounds()
        last = {"full": "none", "full+selective": "selective"}.get(self.policy, "none") \
            if isinstance(self.policy, str) else "none"
        if self.policy == "selective" and bounds:
            return [(0, len(self), "selective")]
        return [(a, b, self.policy if i < len(bounds) - 1 else last)
                for i, (a, b) in enumerate(bounds)]

    def plan(self, input: torch.Tensor | None = None, remeasure: bool = False) -> CheckpointPlan:
        """The segments and levels forward runs, with predicted memory and recompute.

        input: a sample input (the next batch, or one like it). With memory_budget, the plan is
        chosen from one measured plain step on it (see the class docstring) if it has not been
        yet, or again with remeasure=True. Without memory_budget, the configured plan, with
        predictions when an input is given.
        """
        if input is not None and (self._profile is None or remeasure):
            self._profile = profile_sequential(list(self), input)
            if self.memory_budget is not None:
                self._plan = None
        if self.memory_budget is not None:
            if self._plan is None:
                if self._profile is None:
                    raise ValueError("backprop_ext.CheckpointedSequential.plan: memory_budget "
                                     "is chosen from a measured step: pass an input")
                budget = self.memory_budget
                if isinstance(budget, float):
                    budget = int(budget * _planner.plain_bytes(self._profile))
                if input is None:
                    self._plan = _planner.choose(self._profile, budget)
                else:
                    self._plan = _planner.choose_measured(
                        self._profile, budget, functools.partial(self._step_peak, input))
                if not self._plan.fits:
                    warnings.warn("backprop_ext.CheckpointedSequential: no plan fits "
                                  f"memory_budget={self.memory_budget!r}; running the one with "
                                  f"the least memory found:\n{self._plan}", stacklevel=2)
            return self._plan
        if self._profile is not None:
            return _planner.describe(self._profile, self._segments())
        return CheckpointPlan(self._segments())

    def _step_peak(self, input, segments) -> int:
        """One step's measured peak under the plan `segments` (for choose_measured)."""
        chosen, self._plan = self._plan, CheckpointPlan(list(segments))
        try:
            return step_peak_bytes(self.forward, list(self), input)  # not our own hooks again
        finally:
            self._plan = chosen

    def forward(self, input):
        if self.memory_budget is not None and self._plan is None and torch.is_grad_enabled():
            self.plan(input)
        modules = list(self)
        for start, end, level in self._segments() or [(0, len(self), "none")]:
            run = functools.partial(_run, modules[start:end])
            input = checkpoint(run, input, policy=level,
                               preserve_rng_state=self.preserve_rng_state)
        return input

    def extra_repr(self) -> str:
        if self.memory_budget is not None:
            return f"memory_budget={self.memory_budget!r}"
        policy = self.policy if isinstance(self.policy, str) else "custom"
        return f"segments={len(self.segment_bounds())}, policy={policy!r}"


def _check_budget(budget, where: str) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(f"backprop_ext.{where}: memory_budget must be bytes (an int) "
                        f"or a fraction of the plain step's activation memory (a float); got "
                        f"{type(budget).__name__}")
    if isinstance(budget, float) and not 0.0 < budget <= 1.0:
        raise ValueError(f"backprop_ext.{where}: a fractional memory_budget must be "
                         f"in (0, 1], got {budget!r}")
    if isinstance(budget, int) and budget < 1:
        raise ValueError(f"backprop_ext.{where}: memory_budget in bytes must be "
                         f"positive, got {budget!r}")
