"""convert(): swaps a model's torch.nn (and transformers, timm) layers for ours, in place.

The conversion table is keyed by qualified class name; fusion folds an activation into the
Linear before it where a probe input confirms the pair computes the same.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable

import torch

from ..checkpoint.api import _check_budget
from ..ops import activation as _activation
from ..ops.errors import public_function
from . import causal_lm as _causal_lm
from .activations import (
    ACTIVATION_MODULES,
    GELU,
    Hardsigmoid,
    Hardswish,
    Mish,
    QuickGELU,
    ReLU6,
    Sigmoid,
    SiLU,
    Tanh,
)
from .modules import (
    Conv1D,
    CrossEntropyLoss,
    GatedMLP,
    Linear,
    LinearCrossEntropyLoss,
    LogSoftmax,
    Softmax,
)

# --- convert(): the conversion table
#
# Keyed by qualified class name (module.qualname), so that transformers and timm need not be
# installed, or imported, for their entries to exist. Each factory takes the module and returns
# its replacement, or a string saying why the module is left alone. A class maps only where ours
# computes its exact function, gradient included (kinks, NaN, parameters); exact classes only, so
# subclasses, which may override forward, are left alone.


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _rebadge(ours: type):
    """Factory for a torch.nn class ours subclasses: the instance itself, its class swapped (our
    classes add no state: every attribute, parameter, buffer and hook stays as it was)."""
    def factory(module):
        module.__class__ = ours
        return module
    factory.target = ours.__name__
    return factory


def _new(make, target: str):
    """Factory building a fresh Module of ours (stateless activations)."""
    def factory(module):
        return make(module)
    factory.target = target
    return factory


def _leave(reason: str):
    def factory(module):
        return reason
    factory.target = None
    factory.reason = reason
    return factory


def _hardtanh(module):
    if module.min_val == 0.0 and module.max_val == 6.0:
        module.__class__ = ReLU6
        return module
    return f"Hardtanh({module.min_val}, {module.max_val}): no activation row computes it"


_hardtanh.target = "ReLU6 (for min_val=0, max_val=6)"

_NO_INPLACE = "in place, and torch.nn's (so ours) has no in-place form"
_TF_ACT = "transformers.activations."
_TIMM_ACT = "timm.layers.activations."
_TIMM_ME = "timm.layers.activations_me."

_CONVERSIONS: dict = {
    **{_qualname(getattr(torch.nn, name)): _rebadge(cls) for name, cls in ACTIVATION_MODULES.items()
       if hasattr(torch.nn, name)},
    _qualname(torch.nn.Hardtanh): _hardtanh,
    _qualname(torch.nn.Softmax): _rebadge(Softmax),
    _qualname(torch.nn.LogSoftmax): _rebadge(LogSoftmax),
    _qualname(torch.nn.CrossEntropyLoss): _rebadge(CrossEntropyLoss),
    _qualname(torch.nn.Linear): _rebadge(Linear),
    # transformers: the classes ACT2FN builds, by what each forward computes.
    _TF_ACT + "GELUActivation": _new(lambda m: GELU(), "GELU()"),
    _TF_ACT + "GELUTanh": _new(lambda m: GELU("tanh"), "GELU('tanh')"),
    _TF_ACT + "PytorchGELUTanh": _new(lambda m: GELU("tanh"), "GELU('tanh')"),
    _TF_ACT + "NewGELUActivation": _new(lambda m: GELU("tanh"), "GELU('tanh')"),
    # 0.5 x (1 + tanh(0.7978845608 x (1 + 0.044715 x^2))): the tanh GELU; its constant is
    # sqrt(2 / pi) to 10 digits (the same float32, 4e-12 relative in float64).
    _TF_ACT + "FastGELUActivation": _new(lambda m: GELU("tanh"), "GELU('tanh')"),
    _TF_ACT + "AccurateGELUActivation": _new(lambda m: GELU("tanh"), "GELU('tanh')"),
    _TF_ACT + "QuickGELUActivation": _new(lambda m: QuickGELU(), "QuickGELU()"),
    _TF_ACT + "SiLUActivation": _new(lambda m: SiLU(), "SiLU()"),
    _TF_ACT + "MishActivation": _new(lambda m: Mish(), "Mish()"),
    _TF_ACT + "ClippedGELUActivation": _leave("clip(gelu(x), min, max): no row computes it"),
    _TF_ACT + "LaplaceActivation": _leave("an erf-based approximation no row computes"),
    _TF_ACT + "ReLUSquaredActivation": _leave("relu(x)^2: no row computes it"),
    _TF_ACT + "LinearActivation": _leave("the identity: nothing to compute"),
    # timm (its `inplace` arguments are kept where ours has an in-place form).
    _TIMM_ACT + "GELU": _new(lambda m: GELU(), "GELU()"),
    _TIMM_ACT + "GELUTanh": _new(lambda m: GELU("tanh"), "GELU('tanh')"),
    _TIMM_ACT + "QuickGELU": _new(lambda m: QuickGELU(), "QuickGELU()"),
    _TIMM_ACT + "Swish": _new(lambda m: SiLU(m.inplace), "SiLU(inplace)"),
    _TIMM_ACT + "Mish": _new(lambda m: Mish(), "Mish()"),
    _TIMM_ACT + "HardSwish": _new(lambda m: Hardswish(m.inplace), "Hardswish(inplace)"),
    _TIMM_ACT + "HardSigmoid": _new(lambda m: Hardsigmoid(m.inplace),
                                    "Hardsigmoid(inplace)"),
    _TIMM_ACT + "Sigmoid": _new(lambda m: _NO_INPLACE if m.inplace else Sigmoid(),
                                "Sigmoid() (inplace=False)"),
    _TIMM_ACT + "Tanh": _new(lambda m: _NO_INPLACE if m.inplace else Tanh(),
                             "Tanh() (inplace=False)"),
    _TIMM_ACT + "HardMish": _leave("hard mish: no row computes it"),
    _TIMM_ME + "SwishMe": _new(lambda m: SiLU(), "SiLU()"),
    _TIMM_ME + "MishMe": _new(lambda m: Mish(), "Mish()"),
    _TIMM_ME + "HardSwishMe": _leave("its gradient at x = -3 and 3 differs from hardswish's"),
    _TIMM_ME + "HardSigmoidMe": _leave("its gradient at x = -3 and 3 differs from hardsigmoid's"),
    **({_qualname(torch.nn.LinearCrossEntropyLoss): _rebadge(LinearCrossEntropyLoss)}
       if hasattr(torch.nn, "LinearCrossEntropyLoss") else {}),  # torch >= 2.14
    # GPT-2's linear layer, weight (in, out): re-badged onto our linear, same Parameters.
    "transformers.pytorch_utils.Conv1D": _rebadge(Conv1D),
}


@public_function("nn.register_conversion")
def register_conversion(cls_or_name: type | str, factory: Callable) -> None:
    """Adds (or replaces) convert()'s entry for a class, given as the class itself or its
    qualified name ("package.module.ClassName", matched against type(m).__module__ + "." +
    type(m).__qualname__, so the package need not be imported). factory(module) returns the
    module's replacement, or a string saying why it is left alone (the report shows it). Exact
    classes only: a subclass needs its own entry.

        bnn.register_conversion("mylib.layers.MyGELU", lambda m: bnn.GELU(approximate="tanh"))
    """
    name = cls_or_name if isinstance(cls_or_name, str) else _qualname(cls_or_name)
    _CONVERSIONS[name] = factory


# --- the report


@dataclasses.dataclass
class ConversionReport:
    """What convert() did: replaced (class -> ours, count), fused (path, what), and the leaf
    modules left alone (class, reason, count, first path)."""

    replaced: dict = dataclasses.field(default_factory=dict)  # (theirs, ours) -> count
    fused: list = dataclasses.field(default_factory=list)  # (path, description)
    left: dict = dataclasses.field(default_factory=dict)  # (class, reason) -> [count, path]

    def _leave(self, path: str, module, reason: str) -> None:
        entry = self.left.setdefault((type(module).__name__, reason), [0, path])
        entry[0] += 1

    def __str__(self) -> str:
        lines = ["replaced:"]
        lines += [f"  {n:4d} x {a} -> {b}" for (a, b), n in self.replaced.items()] or ["  none"]
        lines.append("fused:")
        lines += [f"  {path}: {what}" for path, what in self.fused] or ["  none"]
        lines.append("left alone:")
        lines += [f"  {n:4d} x {cls} ({reason}; e.g. {path or '<root>'})"
                  for (cls, reason), (n, path) in self.left.items()] or ["  none"]
        return "\n".join(lines)


# --- structure: gated MLPs and fusible pairs, recognised by what they compute


def _activation_of(module: torch.nn.Module):
    """The linear() activation argument equivalent to `module`, or None if it is not one we fuse:
    the row's name, with its float parameters as a tuple when it has any ("gelu_tanh",
    ("leaky_relu", 0.2)).

    Exact types only (torch's or ours): a subclass may compute something else.
    """
    kind = type(module)
    ours = ACTIVATION_MODULES.get(kind.__name__)
    if ours is None or kind not in (ours, getattr(torch.nn, kind.__name__, None)):
        return None
    for spec in _activation.SPECS.values():
        if spec.module == kind.__name__ and all(
                getattr(module, key) == value for key, value in spec.selector):
            params = tuple(getattr(module, p) for p in spec.params)
            return (spec.name, *params) if params else spec.name
    return None


def _has_hooks(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _is_fsdp_unit(module) -> bool:
    """True for a module fully_shard (FSDP2) has made a unit of: it gets a class of its own."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(module, FSDPModule)


def _computes_the_same(before, after, in_features: int, probe_of) -> bool:
    """Runs both on one small input (the first parameter's device and dtype, a private
    generator, no autograd, eval mode) and compares: a class we recognise by its children could
    still wire them differently in its forward."""
    param = next(before.parameters(), None)
    if param is None or param.device.type == "meta":
        return False
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, in_features, generator=g, dtype=torch.float64).to(param.device, param.dtype)
    # In eval mode (dropout off, so that both runs see the same function and no random number is
    # drawn), each module's mode restored after.
    modes = {m: m.training for root in (before, after) for m in root.modules()}
    try:
        for m in modes:
            m.training = False
        with torch.no_grad():
            expected = before(x)
            got = probe_of(after)(x)
    except Exception:  # a forward that does not take (N, in_features) is not an MLP
        return False
    finally:
        for m, training in modes.items():
            m.training = training
    if not isinstance(expected, torch.Tensor) or expected.shape != got.shape:
        return False
    tol = {torch.float16: 2e-2, torch.bfloat16: 5e-2}.get(param.dtype, 1e-4)
    return torch.allclose(got.float(), expected.float(), rtol=tol, atol=tol)


def _plain_linear(module) -> bool:
    return type(module) in (torch.nn.Linear, Linear) and getattr(module, "activation", None) is None


_GATED_NAMES = ("gate_proj", "up_proj", "down_proj")


def _activation_argument(module):
    """The functional.gated / linear activation argument computing `module`, or None."""
    if module is None or _has_hooks(module):
        return None
    spec = _activation_of(module)
    if spec is not None:
        return spec
    factory = _CONVERSIONS.get(_qualname(type(module)))
    if factory is None or getattr(factory, "target", None) is None:
        return None
    replacement = factory(copy.copy(module))
    return _activation_of(replacement) if isinstance(replacement, torch.nn.Module) else None


def _gated_mlp_of(module):
    """(GatedMLP, activation) replacing `module` when it has Llama's MLP structure (three plain
    Linears named gate_proj, up_proj, down_proj of matching shapes, one activation module, nothing
    else) and computes down_proj(act(gate_proj(x)) * up_proj(x)); else (None, reason or None)."""
    children = dict(module.named_children())
    if not all(n in children for n in _GATED_NAMES) or isinstance(module, GatedMLP):
        return None, None
    if _is_fsdp_unit(module):
        return None, "FSDP2 unit (fully_shard gives it a class of its own): convert before sharding"
    gate, up, down = (children[n] for n in _GATED_NAMES)
    others = [m for n, m in children.items() if n not in _GATED_NAMES]
    if not all(_plain_linear(m) for m in (gate, up, down)) or len(others) != 1:
        return None, "gate/up/down projections that are not three plain Linears and an activation"
    if not (gate.in_features == up.in_features == down.out_features
            and gate.out_features == up.out_features == down.in_features
            and (gate.bias is None) == (up.bias is None) == (down.bias is None)):
        return None, "gate/up/down projections of mismatched shapes"
    act = _activation_argument(others[0])
    if act is None:
        return None, f"its activation {type(others[0]).__name__} has no row"
    if _has_hooks(module):
        return None, "has hooks (a replacement would drop them)"
    mlp = GatedMLP.from_projections(gate, up, down, act)
    if not _computes_the_same(module, mlp, gate.in_features, lambda m: m):
        return None, "gate/up/down structure, but its forward computes something else"
    return mlp, act


# Modules whose forward applies `activation` right after `linear` and uses the linear's output
# nowhere else: the pair fuses into the linear (the activation becomes nn.Identity). Verified on
# a probe input before it is kept, like the gated MLPs.
_FUSIBLE_PAIRS: dict[str, tuple[str, str]] = {
    "transformers.models.gpt2.modeling_gpt2.GPT2MLP": ("c_fc", "act"),
    "transformers.models.bert.modeling_bert.BertIntermediate": ("dense", "intermediate_act_fn"),
    "transformers.models.vit.modeling_vit.ViTIntermediate": ("dense", "intermediate_act_fn"),
    "timm.layers.mlp.Mlp": ("fc1", "act"),
}


def _fuse_pair(module, names, path, report) -> None:
    lin_name, act_name = names
    lin, act = getattr(module, lin_name, None), getattr(module, act_name, None)
    if type(lin) not in (Linear, Conv1D) or lin.activation is not None:
        return
    if not isinstance(act, torch.nn.Module) or _has_hooks(lin) or _has_hooks(act):
        return
    spec = _activation_argument(act)
    if spec is None:
        return
    in_features = lin.in_features if type(lin) is Linear else lin.nx
    fused = copy.copy(module)  # shallow: shares every child and Parameter
    fused._modules = dict(module._modules)
    fused._modules[lin_name] = copy.copy(lin)
    fused._modules[lin_name].activation = spec
    fused._modules[act_name] = torch.nn.Identity()
    if not _computes_the_same(module, fused, in_features, lambda m: m):
        report._leave(path, module, f"{lin_name} -> {act_name} fusion computes something else")
        return
    lin.activation = spec
    module._modules[act_name] = torch.nn.Identity()
    report.fused.append((path, f"{lin_name} + {act_name} -> {type(lin).__name__}(activation="
                               f"{spec!r})"))


def _fuse_sequential(seq: torch.nn.Sequential, path: str, report: ConversionReport) -> None:
    names = list(seq._modules)
    for first, second in itertools.pairwise(names):
        lin, act = seq._modules[first], seq._modules[second]
        if type(lin) is not Linear or lin.activation is not None:
            continue
        spec = _activation_of(act) if act is not None else None
        # A hook on either module would observe a different tensor once they are fused.
        if spec is None or _has_hooks(lin) or _has_hooks(act):
            continue
        lin.activation = spec
        seq._modules[second] = torch.nn.Identity()
        report.fused.append((f"{path}.{first}" if path else first,
                             f"+ [{second}] -> Linear(activation={spec!r})"))


def _set_child(parents, module, replacement) -> None:
    for parent, name in parents:
        parent._modules[name] = replacement


@public_function("nn.convert")
def convert(model: torch.nn.Module, *, fuse: bool = False, report: bool = False,
            memory_budget: int | float | None = None, lm_loss: bool | str = True):
    """Swaps every supported layer in `model` for backprop_ext's, in place, and returns the model
    (with report=True: (model, ConversionReport), whose str() lists what was replaced, fused and
    left alone, and why). Parameters and state_dict keys are unchanged; Parameters are never
    copied, so an optimizer built before keeps working.

    What is replaced is what computes the same function (the conversion table, see
    register_conversion): torch.nn's activations, Linear, Softmax, LogSoftmax and
    CrossEntropyLoss; transformers' and timm's activation classes; GPT-2's Conv1D (onto our
    linear, on its own (in, out) weight); and any module built like a Llama MLP (gate_proj,
    up_proj and down_proj Linears with an activation, as in Llama, Mistral, Qwen2 and Gemma),
    which becomes a GatedMLP on the same three Linears once a probe input confirms it computes
    down_proj(act(gate_proj(x)) * up_proj(x)).

    fuse=True also folds an activation into the Linear before it: the pairs of an nn.Sequential,
    and the known MLP classes of transformers and timm (GPT-2, BERT, ViT, timm's Mlp), each
    checked on a probe input; the activation becomes nn.Identity so that indices and state_dict
    keys stay. Modules with hooks are left apart.

    lm_loss=True (the default) also takes over a transformers causal LM's training loss
    (backprop_ext.nn.causal_lm; Llama, Mistral, Qwen2, Gemma, GPT-2, ...: an `lm_head` Linear
    and transformers' ForCausalLMLoss, confirmed on a probe batch): in training, with autograd on
    and labels given, model(input_ids, labels=labels).loss is computed by linear_cross_entropy
    from the final hidden states inside lm_head's forward, the N x V logits never built, and the
    output's logits are None. Honoured as transformers does: the label shift (or shift_labels),
    ignore_index, num_items_in_batch (a sum divided by it), logits_to_keep, tied embeddings.
    Without labels, under no_grad or in eval mode the model returns its logits as before.
    lm_loss="keep_logits": the same, and the output's logits are computed too (without autograd:
    detached). lm_loss=False: the loss is left to transformers. Models whose loss this does not
    compute exactly (Gemma 2's final_logit_softcapping, a custom loss_function, ...) are left
    alone with the reason in the report.

    memory_budget: also checkpoint the model's repeated blocks (transformers' decoder layers, any
    nn.ModuleList of alike blocks) under this budget: bytes (an int), or a fraction in (0, 1] of
    the blocks' plain step peak (their forward and backward with the gradients they make). Each
    block is wrapped in a Checkpoint (state_dict keys unchanged) whose level the planner chooses
    on the first training forward (backprop_ext.checkpoint.blocks); a budget that cannot be met
    warns and runs the least-memory plan.

    Under FSDP2, convert before fully_shard: a sharded unit gets a class of its own, which
    convert leaves alone (said in the report); the plain layers inside it are still converted.
    """
    if lm_loss not in (True, False, "keep_logits"):
        raise ValueError("backprop_ext.nn.convert: lm_loss must be True, False or "
                         f"'keep_logits', got {lm_loss!r}")
    if memory_budget is not None:
        _check_budget(memory_budget, "nn.convert")
    summary = ConversionReport()

    def record(theirs: type, ours) -> None:
        key = (theirs.__name__, ours if isinstance(ours, str) else type(ours).__name__)
        summary.replaced[key] = summary.replaced.get(key, 0) + 1

    def walk():
        """(path, module, [(parent, name), ...]) for every module once, parents first."""
        parents: dict[int, list] = {}
        paths, order = {}, []
        for path, module in model.named_modules(remove_duplicate=False):
            if id(module) not in paths:
                paths[id(module)] = path
                order.append(module)
            for name, child in module._modules.items():
                if child is not None:
                    parents.setdefault(id(child), []).append((module, name))
        return [(paths[id(m)], m, parents.get(id(m), [])) for m in order]

    # 1. Structure: gated MLPs, before their children are re-badged.
    for path, module, parents in walk():
        mlp, why = _gated_mlp_of(module)
        if mlp is not None and not parents:  # the model itself: it cannot be replaced in place
            summary._leave(path, module, "a gated MLP, but the model itself (convert its parent)")
        elif mlp is not None:
            _set_child(parents, module, mlp)
            record(type(module), f"GatedMLP(activation={why!r})")
            summary.fused.append((path, f"{type(module).__name__} -> GatedMLP, activation and "
                                        "product in one pass"))
        elif why is not None:
            summary._leave(path, module, why)

    # 2. Classes: the conversion table.
    for path, module, parents in walk():
        cls = type(module)
        factory = _CONVERSIONS.get(_qualname(cls))
        if factory is None:
            if module._modules or cls.__module__ == __name__ or cls is torch.nn.Identity:
                continue  # containers, ours, and nothing to compute
            reason = ("FSDP2 unit (fully_shard gives it a class of its own): convert before "
                      "sharding") if _is_fsdp_unit(module) else "unsupported type"
            summary._leave(path, module, reason)
            continue
        result = factory(module)
        if isinstance(result, str):
            summary._leave(path, module, result)
        elif result is not module:
            if not parents:
                summary._leave(path, module, "the model itself (convert its parent instead)")
                continue
            if _has_hooks(module):
                summary._leave(path, module, "has hooks (a new module would drop them)")
                continue
            result.train(module.training)
            _set_child(parents, module, result)
            record(cls, result)
        elif type(module) is not cls:
            record(cls, result)

    # 3. Fusion.
    if fuse:
        for path, module, _ in walk():
            if isinstance(module, torch.nn.Sequential):
                _fuse_sequential(module, path, summary)
            pair = _FUSIBLE_PAIRS.get(_qualname(type(module)))
            if pair is not None:
                _fuse_pair(module, pair, path, summary)

    # 4. A causal LM's loss, from the hidden states (after step 2: lm_head is our Linear).
    if lm_loss:
        for path, module, _ in walk():
            why = _causal_lm.causal_lm_reason(module)
            if why is None:
                _causal_lm.patch(module, keep_logits=lm_loss == "keep_logits")
                why = _causal_lm.probe(module)
                if why is not None:
                    _causal_lm.unpatch(module)
            if why is None:
                summary.fused.append((path, "lm_head + loss_function -> linear_cross_entropy "
                                            "on the hidden states (no logits in training)"))
            elif why:
                summary._leave(path, module, f"causal LM loss left to the model: {why}")

    # 5. Checkpointing the repeated blocks under a budget.
    if memory_budget is not None:
        from ..checkpoint.blocks import checkpoint_blocks

        for path in checkpoint_blocks(model, memory_budget):
            summary.fused.append((path, f"blocks checkpointed, memory_budget={memory_budget!r}"))
    return (model, summary) if report else model
