"""The schemas (csrc/ops/schemas.cpp) are the one source of each op's signature: every other list
of the ops is held against them here, and a test names whatever is out of step.

The lists: the entry points' table in csrc/python/ops.cpp (backprop_ext._C._entry_points(), with
each entry point's parsed signature), the fake kernels (torch.library.register_fake in
backprop_ext/ops/*.py), the autograd rules (register(op, Function), which sets the rule the op's
Autograd kernel runs) and the vmap rules (FuncTorchBatched kernels).
"""

from __future__ import annotations

import copy

import torch
from torch._library import simple_registry

import backprop_ext  # noqa: F401  (registers the fakes and rules)
from backprop_ext import _C

NS = "backprop_ext"

# Ops that need no entry point, fake kernel, autograd rule or vmap rule, and why.
NOT_NEEDED = {
    "cross_entropy": {
        "fake": "composite (CompositeImplicitAutograd): traced through the ops it calls",
        "rule": "composite: its autograd is that of the ops it calls",
    },
    "cross_entropy_bwd_out": {
        "entry": "called as torch.ops.backprop_ext.cross_entropy_bwd_out (writes into out)",
        "rule": "writes a gradient into out; never differentiated (linear_cross_entropy's blocks)",
    },
    **{op: {"entry": "called as torch.ops.backprop_ext.<op> by backprop_ext.utils.clip",
            "rule": "works on gradients, which are not differentiated",
            "vmap": "takes lists of tensors: no batched form"}
       for op in ("multi_tensor_norm", "multi_tensor_norm_per_tensor", "multi_tensor_scale_",
                  "multi_tensor_clamp_")},
}


def schema_signature(schema) -> str:
    """A registered schema in the entry points' form: "(Tensor, int, bool) -> Tensor"."""

    def text(arg) -> str:
        name = arg.type.str()
        if arg.N is not None:  # a fixed-length list: bool[3]
            name = f"{name[:-2]}[{arg.N}]"
        if arg.alias_info is not None and arg.alias_info.is_write:
            name += "(a!)"
        return name

    args = ", ".join(text(a) for a in schema.arguments)
    returns = [text(r) for r in schema.returns]
    ret = returns[0] if len(returns) == 1 else "(" + ", ".join(returns) + ")"
    return f"({args}) -> {ret}"


def current_registry() -> dict:
    """What is registered now, in the form `out_of_step` compares."""
    names = sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names()
                   if n.startswith(f"{NS}::"))
    schemas = {n: schema_signature(getattr(torch.ops.backprop_ext, n).default._schema)
               for n in names}
    fakes = {k.split("::", 1)[1] for k, entry in simple_registry.singleton._data.items()
             if k.startswith(f"{NS}::") and entry.fake_impl.kernel is not None}
    vmaps = {n for n in names
             if torch._C._dispatch_has_kernel_for_dispatch_key(f"{NS}::{n}", "FuncTorchBatched")
             or torch._C._dispatch_has_kernel_for_dispatch_key(f"{NS}::{n}",
                                                               "FuncTorchBatchedDecomposition")}
    composite = {n for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(
        f"{NS}::{n}", "CompositeImplicitAutograd")}
    return {"schemas": schemas, "entries": dict(_C._entry_points()), "fakes": fakes,
            "vmaps": vmaps, "composite": composite}


def out_of_step(reg: dict, not_needed: dict = NOT_NEEDED) -> list[str]:
    """Every disagreement between the schemas and the other lists, one sentence each."""
    problems = []
    schemas, entries = reg["schemas"], reg["entries"]

    def needed(op, what):
        return what not in not_needed.get(op, {})

    for op in sorted(set(entries) - set(schemas)):
        problems.append(f"{op}: an entry point (csrc/python/ops.cpp) but no schema")
    for op in sorted(reg["fakes"] - set(schemas)):
        problems.append(f"{op}: a fake kernel but no schema")
    for op in sorted(set(not_needed) - set(schemas)):
        problems.append(f"{op}: listed in NOT_NEEDED but has no schema")
    for op, signature in sorted(schemas.items()):
        entry = entries.get(op)
        if entry is None:
            if needed(op, "entry"):
                problems.append(f"{op}: no entry point in csrc/python/ops.cpp's table")
        elif entry[0] != signature:
            problems.append(f"{op}: entry point parses {entry[0]}, the schema is {signature}")
        takes_rule = entry is not None and entry[1]
        if needed(op, "rule"):
            if not takes_rule:
                problems.append(f"{op}: its entry point takes no autograd rule")
            elif entry[2] is None:
                problems.append(f"{op}: no autograd rule registered (register(op, Function))")
        elif takes_rule:
            problems.append(f"{op}: takes an autograd rule, but NOT_NEEDED says it needs none")
        if op in reg["composite"]:
            continue  # traced and batched through the ops it calls
        if needed(op, "fake") and op not in reg["fakes"]:
            problems.append(f"{op}: no fake kernel (torch.library.register_fake)")
        if needed(op, "vmap") and op not in reg["vmaps"]:
            problems.append(f"{op}: no vmap rule")
    return problems


def test_every_list_agrees_with_the_schemas():
    assert out_of_step(current_registry()) == []


def test_entry_points_are_entry_py_ops():
    from backprop_ext.ops import entry

    assert entry.OPS == tuple(_C._entry_points())
    for op in entry.OPS:
        assert callable(getattr(entry, op))


def test_a_planted_mismatch_is_named():
    reg = current_registry()

    planted = copy.deepcopy(reg)
    sig, rule, fn = planted["entries"]["softmax_fwd"]
    planted["entries"]["softmax_fwd"] = (sig.replace("int, bool", "int, float"), rule, fn)
    assert out_of_step(planted) == [
        "softmax_fwd: entry point parses (Tensor, int, float) -> Tensor, the schema is "
        "(Tensor, int, bool) -> Tensor"]

    planted = copy.deepcopy(reg)
    planted["fakes"].discard("gated_bwd")
    assert out_of_step(planted) == ["gated_bwd: no fake kernel (torch.library.register_fake)"]

    planted = copy.deepcopy(reg)
    sig, rule, _ = planted["entries"]["linear_fwd"]
    planted["entries"]["linear_fwd"] = (sig, rule, None)
    assert out_of_step(planted) == [
        "linear_fwd: no autograd rule registered (register(op, Function))"]

    planted = copy.deepcopy(reg)
    planted["vmaps"].discard("logsumexp_bwd")
    assert out_of_step(planted) == ["logsumexp_bwd: no vmap rule"]

    planted = copy.deepcopy(reg)
    planted["entries"]["softmax_fwd_old"] = reg["entries"]["softmax_fwd"]
    planted["fakes"].add("softmax_fwd_old")
    assert out_of_step(planted) == [
        "softmax_fwd_old: an entry point (csrc/python/ops.cpp) but no schema",
        "softmax_fwd_old: a fake kernel but no schema"]

    planted = copy.deepcopy(reg)
    del planted["entries"]["activation_bwd"]
    assert "activation_bwd: no entry point in csrc/python/ops.cpp's table" in out_of_step(planted)


def test_schema_signature_reads_mutation_and_fixed_lists():
    schema = torch._C.parse_schema(
        "f(Tensor(a!) x, Tensor? w, str a, float p, int d, bool[3] m) -> (Tensor o, Tensor p)")
    assert schema_signature(schema) == "(Tensor(a!), Tensor?, str, float, int, bool[3]) -> " \
        "(Tensor, Tensor)"
    assert schema_signature(torch._C.parse_schema("g(Tensor(a!)[] t) -> ()")) == \
        "(Tensor[](a!)) -> ()"
