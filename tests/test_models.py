"""convert() on the models people train, built from tiny configs (no downloads): Hugging Face
transformers' Llama, BERT and GPT-2, torchvision's resnet18, ViT, efficientnet_b0 and
mobilenet_v3_small, and a timm ViT.

For each: every module convert() should replace is replaced (nothing the conversion table maps is
left of its original class, and the model's own expectations below hold), the converted model's
outputs and parameter gradients are as close to the float64 model's as torch's own float32 model
is (testing.compare's rule), and state_dicts round-trip both ways with the same keys and shapes.
"""

import copy

import pytest
import torch

import backprop_ext.nn as bnn
from backprop_ext.nn.convert import _CONVERSIONS, _qualname
from backprop_ext.testing import compare


def _lib(name):
    """An optional dependency, imported when a test needs it: without it that test skips, the
    others run."""
    return pytest.importorskip(name)


# --- the models: (builder, input maker, output getter, expectations)


def _llama():
    transformers = _lib("transformers")
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=56,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg)


def _bert():
    transformers = _lib("transformers")
    cfg = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=48,
                                  max_position_embeddings=32)
    return transformers.BertModel(cfg)


def _gpt2():
    transformers = _lib("transformers")
    cfg = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _tv():
    return _lib("torchvision.models")


def _tv_vit():
    _lib("torchvision")
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                             hidden_dim=16, mlp_dim=32, num_classes=10)


def _timm_vit():
    _lib("timm")
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2,
                             num_classes=10)


def _tokens():
    return (torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(0)),)


def _image():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 3, 32, 32, generator=g),)


def _output(out):
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


# name -> (builder, inputs, {class name after convert: count at least}, fuse-time fusions)
MODELS = {
    "llama": (_llama, _tokens, {"GatedMLP": 2, "Linear": 15}, 0),
    "bert": (_bert, _tokens, {"GELU": 2, "Linear": 13, "Tanh": 1}, 2),
    "gpt2": (_gpt2, _tokens, {"Conv1D": 8, "GELU": 2, "Linear": 1}, 2),
    "resnet18": (lambda: _tv().resnet18(num_classes=10), _image,
                 {"ReLU": 9, "Linear": 1}, 0),
    # (nn.MultiheadAttention's out_proj is a Linear subclass: left alone, said in the report)
    "vit": (_tv_vit, _image, {"GELU": 2, "Linear": 5}, 2),
    "efficientnet_b0": (lambda: _tv().efficientnet_b0(num_classes=10), _image,
                        {"SiLU": 49, "Sigmoid": 16, "Linear": 1}, 0),
    "mobilenet_v3_small": (lambda: _tv().mobilenet_v3_small(num_classes=10), _image,
                           {"Hardswish": 19, "Hardsigmoid": 9, "ReLU": 14, "Linear": 2}, 1),
    "timm_vit": (_timm_vit, _image, {"GELU": 2, "Linear": 9}, 2),
}
SLOW = {"efficientnet_b0", "resnet18"}
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS]


def _build(name):
    torch.manual_seed(0)
    return MODELS[name][0]().eval()  # eval: no dropout, batch norm on its running statistics


def _step(model, inputs, grad_seed=1):
    dtype = next(model.parameters()).dtype  # the float64 reference takes float64 images
    inputs = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
    out = _output(model(*inputs))
    grad = torch.randn(out.shape, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(grad_seed)).to(out.dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, params, grad, allow_unused=True)
    return out.detach(), dict(zip([n for n, p in model.named_parameters() if p.requires_grad],
                                  grads))


def _left_convertible(model, report):
    """Modules of a class the conversion table converts that are still of that class and that
    the report does not list as left alone."""
    left_classes = {cls for cls, _ in report.left}
    return [(path, type(m).__name__) for path, m in model.named_modules()
            if getattr(_CONVERSIONS.get(_qualname(type(m))), "target", None) is not None
            and not type(m).__module__.startswith("backprop_ext.nn.")
            and type(m).__name__ not in left_classes]


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("name", PARAMS)
def test_convert_replaces_and_matches(name, fuse):
    _, make_inputs, expected, fusions = MODELS[name]
    theirs = _build(name)
    reference = copy.deepcopy(theirs).double()
    ours = copy.deepcopy(theirs)
    params_before = {n: p for n, p in ours.named_parameters()}
    keys = {k: v.shape for k, v in theirs.state_dict().items()}

    converted, report = bnn.convert(ours, fuse=fuse, report=True)
    assert converted is ours
    text = str(report)
    assert "replaced:" in text and "left alone:" in text
    # Every module convert should replace is replaced.
    assert _left_convertible(ours, report) == []
    counts = {}
    for m in ours.modules():
        if type(m).__module__.startswith("backprop_ext.nn."):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    # convert() makes a causal LM's lm_head a CausalLMHead, a Linear computing the loss too.
    counts["Linear"] = counts.get("Linear", 0) + counts.pop("CausalLMHead", 0)
    for cls, n in expected.items():
        if fuse and cls in bnn.ACTIVATION_MODULES:
            continue  # some are folded into their Linear: the fusion count below says how many
        assert counts.get(cls, 0) >= n, (cls, counts)
    assert len(report.fused) >= (fusions if fuse else 0) + expected.get("GatedMLP", 0)
    # The same Parameters (no copies: an optimizer built before keeps working), same state_dict.
    assert all(p is params_before[n] for n, p in ours.named_parameters())
    assert {k: v.shape for k, v in ours.state_dict().items()} == keys

    inputs = make_inputs()
    out_o, grads_o = _step(ours, inputs)
    out_t, grads_t = _step(theirs, inputs)
    out_r, grads_r = _step(reference, inputs)
    c = compare(out_o, out_t, out_r)
    assert c.ok, f"output: {c.message}"
    for k, r in grads_r.items():
        if r is None:
            assert grads_o[k] is None and grads_t[k] is None
            continue
        c = compare(grads_o[k], grads_t[k], r)
        assert c.ok, f"grad of {k}: {c.message}"


@pytest.mark.parametrize("name", ["llama", "gpt2", "mobilenet_v3_small"])
def test_state_dict_round_trips(name):
    _, make_inputs, _, _ = MODELS[name]
    ours = bnn.convert(_build(name), fuse=True)
    theirs = _build(name)
    torch.manual_seed(1)
    with torch.no_grad():  # new values, so that loading is seen
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    theirs.load_state_dict(ours.state_dict())
    inputs = make_inputs()
    torch.testing.assert_close(_output(theirs(*inputs)), _output(ours(*inputs)))
    fresh = bnn.convert(_build(name), fuse=True)
    fresh.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(_output(fresh(*inputs)), _output(ours(*inputs)))


def test_optimizer_built_before_convert_keeps_training_gpt2():
    model = _build("gpt2")
    twin = copy.deepcopy(model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin)]
    bnn.convert(model, fuse=True)
    inputs = _tokens()
    for m, opt in zip((model, twin), opts):
        _output(m(*inputs)).square().mean().backward()
        opt.step()
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)


def test_report_for_llama():
    model, report = bnn.convert(_build("llama"), report=True)
    text = str(report)
    assert "2 x LlamaMLP -> GatedMLP(activation='silu')" in text
    assert "LlamaRMSNorm (unsupported type" in text
    assert isinstance(model.model.layers[0].mlp, bnn.GatedMLP)
    assert type(model.model.layers[0].mlp.gate_proj) is bnn.Linear


def test_transformers_activation_classes():
    A = _lib("transformers.activations")

    x = torch.linspace(-6, 6, 97, dtype=torch.float64)
    cases = [A.GELUActivation(), A.GELUActivation(use_gelu_python=True), A.GELUTanh(),
             A.NewGELUActivation(), A.FastGELUActivation(), A.QuickGELUActivation(),
             A.SiLUActivation(), A.MishActivation(), A.AccurateGELUActivation()]
    for theirs in cases:
        holder = torch.nn.Sequential(copy.deepcopy(theirs))
        bnn.convert(holder)
        ours = holder[0]
        assert type(ours).__module__.startswith("backprop_ext.nn."), type(theirs).__name__
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)
    left = torch.nn.Sequential(A.ClippedGELUActivation(-1.0, 1.0), A.LaplaceActivation())
    _, report = bnn.convert(left, report=True)
    assert type(left[0]) is A.ClippedGELUActivation and type(left[1]) is A.LaplaceActivation
    assert "clip(gelu(x), min, max)" in str(report)


def test_timm_activation_classes():
    _lib("timm")
    from timm.layers import activations as T
    from timm.layers import activations_me as M

    x = torch.linspace(-6, 6, 97, dtype=torch.float64)
    for theirs in (T.GELU(), T.GELUTanh(), T.QuickGELU(), T.Swish(), T.Mish(), T.HardSwish(),
                   T.HardSigmoid(), T.Sigmoid(), T.Tanh(), M.SwishMe(), M.MishMe()):
        holder = torch.nn.Sequential(copy.deepcopy(theirs))
        bnn.convert(holder)
        assert type(holder[0]).__module__.startswith("backprop_ext.nn."), type(theirs).__name__
        xs = [x.clone().requires_grad_() for _ in range(2)]
        ys = holder[0](xs[0]), theirs(xs[1])
        torch.testing.assert_close(*ys, rtol=1e-10, atol=1e-10)
        g = [torch.autograd.grad(y.sum(), t)[0] for y, t in zip(ys, xs)]
        # timm's HardSigmoid is relu6(x + 3) / 6, whose gradient autograd takes as 1/6; ours is
        # torch's hardsigmoid, whose kernels use 1/6 rounded to float32, in float64 too.
        tol = 1e-7 if isinstance(theirs, T.HardSigmoid) else 1e-10
        torch.testing.assert_close(*g, rtol=tol, atol=tol)
    kept = torch.nn.Sequential(M.HardSwishMe(), T.Sigmoid(inplace=True), T.HardMish())
    _, report = bnn.convert(kept, report=True)
    assert [type(m) for m in kept] == [M.HardSwishMe, T.Sigmoid, T.HardMish]
    assert "differs from hardswish's" in str(report)


def test_register_conversion_and_behaviour_checks():
    class Doubler(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    class MyGELU(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.gelu(x, approximate="tanh")

    model = torch.nn.Sequential(MyGELU(), Doubler(), torch.nn.Hardtanh(0.0, 6.0),
                                torch.nn.Hardtanh(-1.0, 1.0))
    bnn.register_conversion(MyGELU, lambda m: bnn.GELU(approximate="tanh"))
    bnn.register_conversion(f"{Doubler.__module__}.{Doubler.__qualname__}",
                            lambda m: "doubles: no row computes it")
    try:
        _, report = bnn.convert(model, report=True)
    finally:
        del _CONVERSIONS[_qualname(MyGELU)], _CONVERSIONS[_qualname(Doubler)]
    assert type(model[0]) is bnn.GELU and model[0].approximate == "tanh"
    assert type(model[1]) is Doubler and "doubles: no row computes it" in str(report)
    assert type(model[2]) is bnn.ReLU6 and type(model[3]) is torch.nn.Hardtanh
    with pytest.raises(TypeError, match="argument 'factory' .*must be callable"):
        bnn.register_conversion(MyGELU, "not callable")


def test_gated_mlp_needs_the_llama_wiring():
    class Swapped(torch.nn.Module):  # the gate_proj/up_proj/down_proj names, other wiring
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj = torch.nn.Linear(8, 12), torch.nn.Linear(8, 12)
            self.down_proj, self.act = torch.nn.Linear(12, 8), torch.nn.SiLU()

        def forward(self, x):
            return self.down_proj(self.gate_proj(x) * self.act(self.up_proj(x)))

    model = torch.nn.Sequential(Swapped())
    _, report = bnn.convert(model, report=True)
    assert type(model[0]) is Swapped
    assert "its forward computes something else" in str(report)


def test_fusion_probe_in_train_mode_keeps_the_mode_and_draws_nothing():
    model = _build("gpt2").train()  # dropout on: the probe must not see it
    state = torch.get_rng_state()
    _, report = bnn.convert(model, fuse=True, report=True)
    fused = ["c_fc + act -> Conv1D(activation='gelu_tanh')"] * 2
    assert [what for _, what in report.fused if "lm_head" not in what] == fused
    assert all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), state)


# --- accuracy over seeds (scripts/accuracy_seeds.py is the study: over 30 seeds ours' error of
# the bfloat16-autocast Llama loss has median 4.6e-5 against torch's 5.6e-5, max 1.9e-4 vs 1.8e-4;
# the ratio on one seed ranges from ~0 to 59, so a single seed says nothing)


def _study():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "scripts" / "accuracy_seeds.py"
    spec = importlib.util.spec_from_file_location("accuracy_seeds", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    return study


def _seeds_ratio(n):
    study = _study()
    _lib("transformers")
    pairs = [study.llama_errors(s) for s in range(n)]
    ours = sorted(p[0] for p in pairs)
    theirs = sorted(p[1] for p in pairs)
    return ours[len(ours) // 2] / theirs[len(theirs) // 2]


def test_llama_bf16_autocast_loss_error_distribution():
    # median over seeds of ours' error within 2x torch's median (0.82x in the 30-seed study)
    assert _seeds_ratio(4) <= 2.0


@pytest.mark.slow
def test_llama_bf16_autocast_loss_error_distribution_30_seeds():
    assert _seeds_ratio(30) <= 1.5


# efficientnet_b0, channels_last, float32: each weight gradient's max error against the float64
# model, ours over torch's. The 30-seed study: at most 1.000 on every seed, for the weight of the
# issue's single-seed 2.1x (features.6.3.block.0.1.weight) and as each seed's median over all
# weights; that one seed's 2.1x was rounding, not a less accurate path.
@pytest.mark.parametrize("seed", [0, 1])
def test_efficientnet_channels_last_weight_grad_errors_within_torchs(seed):
    study = _study()
    _lib("torchvision")
    ours, theirs = study.efficientnet_errors(seed)
    ratios = sorted(ours[p] / max(theirs[p], 1e-30) for p in ours)
    assert ratios[len(ratios) // 2] <= 1.2, ratios[len(ratios) // 2]
    assert ours[study.WATCHED] <= 1.5 * theirs[study.WATCHED]
