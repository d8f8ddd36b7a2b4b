"""convert()'s causal-LM loss (backprop_ext.nn.causal_lm): transformers' own loss, in value and
in every parameter's gradient, without the logits; eval / no-labels paths unchanged."""

import copy

import pytest
import torch

import backprop_ext.nn as bnn

T = pytest.importorskip("transformers")

V = 200


def _llama():
    return T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, vocab_size=V))


def _gpt2():  # tied input/output embeddings
    return T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=V,
                                          n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                                          attn_pdrop=0.0))


def _mistral():
    return T.MistralForCausalLM(T.MistralConfig(hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4,
                                                num_key_value_heads=2, vocab_size=V))


def _qwen2():  # biased q/k/v projections
    return T.Qwen2ForCausalLM(T.Qwen2Config(hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, vocab_size=V))


def _gemma():  # tied embeddings scaled by sqrt(hidden); no final-logit softcapping (Gemma 2 has)
    return T.GemmaForCausalLM(T.GemmaConfig(hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, head_dim=8, vocab_size=V))


MODELS = {"llama": _llama, "gpt2": _gpt2, "mistral": _mistral, "qwen2": _qwen2, "gemma": _gemma}


def _pair(name, dtype):
    torch.manual_seed(0)
    ref = MODELS[name]().to(dtype).train()
    ours, report = bnn.convert(copy.deepcopy(ref), report=True)
    assert any("linear_cross_entropy" in what for _, what in report.fused), str(report)
    return ref, ours


def _batch(b=2, t=9):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (b, t), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100  # padding
    return ids, labels


def _assert_same(ref, ours, tol):
    for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(MODELS))
def test_loss_and_gradients_equal_transformers(name, dtype):
    ref, ours = _pair(name, dtype)
    ids, labels = _batch()
    a, b = ref(input_ids=ids, labels=labels), ours(input_ids=ids, labels=labels)
    assert b.logits is None and a.logits is not None
    # transformers upcasts (or, from float64, casts) its logits to float32: its loss is float32.
    torch.testing.assert_close(b.loss, a.loss, rtol=2e-6, atol=2e-6)
    a.loss.backward()
    b.loss.backward()
    _assert_same(ref, ours, 1e-5)
    if name == "gpt2":
        assert ours.lm_head.weight is ours.transformer.wte.weight


@pytest.mark.parametrize("name", list(MODELS))
def test_gradient_accumulation_with_num_items_in_batch(name):
    ref, ours = _pair(name, torch.float32)
    ids, labels = _batch(4, 8)
    n = (labels[:, 1:] != -100).sum()
    for model in (ref, ours):
        for half in (slice(0, 2), slice(2, 4)):
            out = model(input_ids=ids[half], labels=labels[half], num_items_in_batch=n)
            out.loss.backward()
    _assert_same(ref, ours, 1e-5)


def test_logits_to_keep_and_keep_logits():
    torch.manual_seed(0)
    ref = _llama().train()
    ours = bnn.convert(copy.deepcopy(ref), lm_loss="keep_logits")
    ids, labels = _batch()
    a = ref(input_ids=ids, labels=labels[:, -4:], logits_to_keep=4)
    b = ours(input_ids=ids, labels=labels[:, -4:], logits_to_keep=4)
    torch.testing.assert_close(b.loss, a.loss)
    torch.testing.assert_close(b.logits, a.logits.detach())
    assert not b.logits.requires_grad


@pytest.mark.parametrize("name", list(MODELS))
def test_eval_no_grad_and_no_labels_unchanged(name):
    # "as before": as the same conversion without the fused loss (our layers round as ours do)
    plain, ours = _pair(name, torch.float32)
    ref = bnn.convert(plain, lm_loss=False)
    ids, labels = _batch()
    out_ref, out = ref(input_ids=ids), ours(input_ids=ids)  # no labels, training
    assert torch.equal(out.logits, out_ref.logits) and out.loss is None
    with torch.no_grad():
        a, b = ref(input_ids=ids, labels=labels), ours(input_ids=ids, labels=labels)
    assert torch.equal(b.logits, a.logits) and torch.equal(b.loss, a.loss)
    ref.eval()
    ours.eval()
    a, b = ref(input_ids=ids, labels=labels), ours(input_ids=ids, labels=labels)
    assert torch.equal(b.logits, a.logits) and torch.equal(b.loss, a.loss)


def test_off_and_left_alone_with_reasons():
    torch.manual_seed(0)
    model, report = bnn.convert(_llama(), lm_loss=False, report=True)
    assert type(model.lm_head) is bnn.Linear
    assert not any("linear_cross_entropy" in what for _, what in report.fused)
    gemma2 = T.Gemma2ForCausalLM(T.Gemma2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, vocab_size=V))
    gemma2, report = bnn.convert(gemma2, report=True)
    assert "final_logit_softcapping" in str(report)
    ids, labels = _batch()
    assert gemma2(input_ids=ids, labels=labels).logits is not None


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_compiled_training_step_has_no_graph_break_and_runs_our_ops(name):
    # fullgraph=True fails on any graph break; the backend records what the graph calls (our
    # autograd Functions' bodies are subgraphs of it) and runs it as aot_eager would.
    ref, ours = _pair(name, torch.float32)
    ids, labels = _batch()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        from torch._dynamo.backends.debugging import aot_eager
        return aot_eager(gm, example_inputs)

    def step(model):
        return model(input_ids=ids, labels=labels).loss

    torch._dynamo.reset()
    loss = torch.compile(step, backend=backend, fullgraph=True)(ours)
    code = "\n".join(m.code for gm in graphs for m in gm.modules()
                     if isinstance(m, torch.fx.GraphModule))
    # the fused loss (its Function's body runs our cross-entropy kernel block by block) and
    # the converted layers are in the graph
    assert "autograd_function_apply" in code and "backprop_ext.cross_entropy_fwd" in code
    assert "backprop_ext.linear_fwd" in code
    expected = ref(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(loss, expected, rtol=2e-6, atol=2e-6)
    loss.backward()
    expected.backward()
    _assert_same(ref, ours, 1e-5)


def test_bad_targets_get_the_ops_errors():
    plain, ours = _pair("llama", torch.float32)
    ids, labels = _batch()
    bad = labels.clone()
    bad[1, 4] = V + 3
    for wrong, kind, message in ((bad, IndexError, "out of bounds"),
                                 (labels.int(), RuntimeError, "dtype int64")):
        with pytest.raises(kind, match=message):
            ours(input_ids=ids, labels=wrong)
        with pytest.raises(kind):  # the kind transformers' own loss raises
            plain(input_ids=ids, labels=wrong)
    # the model still works after the failed call
    ours(input_ids=ids, labels=labels).loss.backward()


# --- FSDP2 (lm_head its own unit) and DDP worlds on gloo equal one process


def _one_process_grads(ids, labels):
    torch.manual_seed(0)
    model = bnn.convert(_llama().train())
    model(input_ids=ids, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _distributed_scenario(rank, world_size, device, kind, out_path):
    import torch.distributed as dist

    ids, labels = _batch(4, 8)
    torch.manual_seed(0)
    model = bnn.convert(_llama().train())
    share = slice(rank * 2, rank * 2 + 2)
    n = (labels[:, 1:] != -100).sum()
    if kind == "ddp":
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        # each rank's share, summed over the world's tokens: DDP averages, so scale by the world
        (ddp(input_ids=ids[share], labels=labels[share], num_items_in_batch=n).loss
         * world_size).backward()
        grads = {k: p.grad for k, p in model.named_parameters()}
    else:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model.lm_head)
        fully_shard(model)
        (model(input_ids=ids[share], labels=labels[share], num_items_in_batch=n).loss
         * world_size).backward()
        grads = {k: p.grad.full_tensor() for k, p in model.named_parameters()}
    from backprop_ext.nn.causal_lm import CausalLMHead

    assert isinstance(model.lm_head, CausalLMHead)  # the fused loss ran inside lm_head
    if rank == 0:
        torch.save(grads, out_path)
    dist.barrier()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_distributed_worlds_equal_one_process(kind, tmp_path):
    from tests import test_distributed  # its gloo-world launcher

    run = test_distributed.world.__wrapped__(tmp_path)
    out = str(tmp_path / "grads.pt")
    run(_distributed_scenario, 2, kind, out)
    ids, labels = _batch(4, 8)
    expected = _one_process_grads(ids, labels)
    got = torch.load(out)
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g * 1.0, rtol=1e-4, atol=1e-5, msg=name)
