"""Checkpointing a model's repeated blocks under a memory budget: convert(model, memory_budget=...).

A transformers model calls its decoder layers (model.model.layers, GPT-2's transformer.h) one by
one in a Python loop, with extra arguments (masks, position embeddings, a cache), so the blocks
cannot run as one CheckpointedSequential. Instead each block of a ModuleList of alike blocks is
wrapped in a PlannedBlock (a Checkpoint: no state_dict prefix, attributes passed through), and the
first forward in grad mode of any of them plans all of them: it takes the arguments of that call,
runs the blocks in order on its hidden states as a sequence (memory.profile_sequential: what
each saves and costs, the plain step's peak with the gradients it makes), and the planner
chooses one level per block (planner.choose_measured with segments of one block), checked on
measured steps. The budget is of that stack: the blocks' forward and backward, their gradients
included (the embeddings, the head and the loss are outside it).

Under "full" a block's forward runs twice; as transformers does under gradient checkpointing, a
block so checkpointed is called without its key/value cache (cache, past_key_values or
layer_past None, use_cache False) in training, so that the re-run does not append to it.
"""

from __future__ import annotations

import functools
import warnings

import torch

from . import planner as _planner
from .api import Checkpoint, _check_budget, checkpoint
from .memory import profile_sequential, step_peak_bytes

__all__ = ["PlannedBlock", "checkpoint_blocks", "repeated_blocks"]

_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


def _is_cache(value) -> bool:
    """A key/value cache (transformers' Cache classes), by what it does."""
    return hasattr(value, "get_seq_length") and hasattr(value, "update")


def _without_cache(args: tuple, kwargs: dict) -> tuple:
    """The call's arguments with any key/value cache replaced by None and use_cache False."""
    args = tuple(None if _is_cache(a) else a for a in args)
    kwargs = {k: (None if k in _CACHE_KWARGS or _is_cache(v) else v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs


class _Bound(torch.nn.Module):
    """block(h, *args, **kwargs) as a module of h alone, its hidden-state output only."""

    def __init__(self, block, args, kwargs):
        super().__init__()
        self.block = block
        self.args, self.kwargs = args, kwargs

    def forward(self, h):
        out = self.block(h, *self.args, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def _detached(value):
    """The probe's copy of a call argument: tensors detached (the probe's backward stops at the
    blocks), in tuples and lists too (position embeddings)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    return value


class _BlockPlanner:
    def __init__(self, blocks: list, memory_budget):
        self.blocks = blocks
        self.memory_budget = memory_budget
        self.plan: _planner.CheckpointPlan | None = None

    def choose(self, args, kwargs) -> None:
        args, kwargs = _without_cache(args, kwargs)
        if args:
            hidden, rest = args[0], tuple(_detached(a) for a in args[1:])
        else:
            kwargs = dict(kwargs)
            hidden, rest = kwargs.pop("hidden_states"), ()
        kw = {k: _detached(v) for k, v in kwargs.items()}
        bound = [_Bound(b.module, rest, kw) for b in self.blocks]
        profile = profile_sequential(bound, hidden)
        budget = self.memory_budget
        if isinstance(budget, float):
            budget = int(budget * _planner.plain_bytes(profile))

        def run(segments, h):
            for start, end, level in segments:
                h = checkpoint(functools.partial(_run, bound[start:end]), h, policy=level)
            return h

        def measure(segments):
            return step_peak_bytes(functools.partial(run, segments), bound, hidden)

        self.plan = _planner.choose_measured(profile, budget, measure, max_segment=1)
        for start, end, level in self.plan.segments:
            for b in self.blocks[start:end]:
                b.policy = level
        if not self.plan.fits:
            warnings.warn(f"backprop_ext.convert: no plan of the {len(self.blocks)} blocks fits "
                          f"memory_budget={self.memory_budget!r}; running the one with the least "
                          f"memory found:\n{self.plan}", stacklevel=3)


def _run(modules, h):
    for m in modules:
        h = m(h)
    return h


class PlannedBlock(Checkpoint):
    """One block of a ModuleList checkpointed under a shared memory budget; its level (policy)
    is chosen with the other blocks' on the first forward in grad mode (see the module
    docstring). plan() returns the blocks' CheckpointPlan (None before it is chosen)."""

    def __init__(self, module: torch.nn.Module, planner: _BlockPlanner):
        super().__init__(module, policy="none")
        self.__dict__["_block_planner"] = planner  # shared, not a submodule

    def plan(self):
        return self.__dict__["_block_planner"].plan

    def forward(self, *args, **kwargs):
        planner = self.__dict__["_block_planner"]
        if planner.plan is None and torch.is_grad_enabled():
            planner.choose(args, kwargs)
        if self.policy in ("full", "full+selective") and torch.is_grad_enabled():
            args, kwargs = _without_cache(args, kwargs)
        return super().forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"policy={self.policy!r} (planned)"


def _signature(module: torch.nn.Module) -> tuple:
    return (type(module), tuple((k, tuple(v.shape), v.dtype)
                                for k, v in module.state_dict().items()))


def repeated_blocks(model: torch.nn.Module) -> list:
    """(path, ModuleList) for each ModuleList of two or more alike blocks (one class, the same
    state_dict shapes), outermost first; lists inside a found block are left to it."""
    found = []
    for path, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) < 2:
            continue
        if any(path.startswith(p + ".") for p, _ in found):
            continue
        blocks = list(module)
        if isinstance(blocks[0], PlannedBlock):
            continue
        if len({_signature(b) for b in blocks}) == 1:
            found.append((path, module))
    return found


def checkpoint_blocks(model: torch.nn.Module, memory_budget) -> list:
    """Wraps every block of the model's repeated-block ModuleLists in a PlannedBlock under
    `memory_budget` (bytes, or a fraction of the blocks' plain step peak), in place; returns
    the paths of the lists. state_dict keys are unchanged."""
    _check_budget(memory_budget, "nn.convert")
    paths = []
    for path, blocks in repeated_blocks(model):
        planner = _BlockPlanner([], memory_budget)
        for i, block in enumerate(list(blocks)):
            blocks[i] = PlannedBlock(block, planner)
        planner.blocks = list(blocks)
        paths.append(path)
    return paths
