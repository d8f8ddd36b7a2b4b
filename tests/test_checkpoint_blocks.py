"""convert(model, memory_budget=...): a model's repeated blocks (transformers' decoder layers,
any ModuleList of alike blocks) checkpointed under a budget, one level a block chosen by the
planner on the first training forward. The same loss and gradients as the unconverted model,
state_dict keys unchanged, and the blocks' measured step within the budget."""

import copy
import warnings

import pytest
import torch

import backprop_ext.nn as bnn
from backprop_ext.checkpoint.blocks import PlannedBlock, repeated_blocks

transformers = pytest.importorskip("transformers")


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256)
    return transformers.LlamaForCausalLM(cfg), "model.layers"


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=4, n_head=4, n_positions=256,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg), "transformer.h"


def _step(model, x):
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama", "gpt2"])
def test_convert_with_memory_budget(build):
    torch.manual_seed(0)
    model, path = build()
    keys = list(model.state_dict())
    reference = bnn.convert(copy.deepcopy(model))
    x = torch.randint(0, 96, (4, 128))
    budget = 0.6
    model, report = bnn.convert(model, memory_budget=budget, report=True)
    assert list(model.state_dict()) == keys  # Checkpoint adds no prefix
    model.load_state_dict(reference.state_dict())
    layers = model.get_submodule(path)
    assert all(isinstance(b, PlannedBlock) for b in layers) and path in str(report)
    assert repeated_blocks(model) == []  # converted once: not wrapped twice
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the budget can be met: no warning
        loss, grads = _step(model, x)
    plan = layers[0].plan()
    assert plan is not None and plan.fits
    assert plan.measured_bytes <= budget * plan.plain_bytes
    levels = {b.policy for b in layers}
    assert levels - {"none", "selective"}, str(plan)  # 0.6x needs a re-run
    expected_loss, expected = _step(reference, x)
    assert torch.equal(loss, expected_loss)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # Later steps run the plan (not planned again) and stay equal; eval/no-grad is plain.
    loss2, _ = _step(model, x)
    assert torch.equal(loss2, expected_loss) and layers[0].plan() is plan
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(input_ids=x).logits, reference.eval()(input_ids=x).logits)


def test_budget_that_cannot_be_met_warns():
    torch.manual_seed(0)
    model, path = _llama()
    bnn.convert(model, memory_budget=0.05)
    with pytest.warns(UserWarning, match="no plan of the 4 blocks fits"):
        _step(model, torch.randint(0, 96, (2, 64)))
    assert not model.get_submodule(path)[0].plan().fits


def test_repeated_blocks_finds_alike_lists_only():
    alike = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
    mixed = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 5)])
    model = torch.nn.Module()
    model.a, model.b = alike, mixed
    assert [p for p, _ in repeated_blocks(model)] == ["a"]
