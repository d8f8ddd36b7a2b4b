"""Issue 24's two accuracy cases over many seeds: ours vs torch, each against a higher-precision
run, as distributions (median, p90, max of the ratio ours/torch), to tell a less accurate path
from the rounding luck of one seed.

- efficientnet_b0 (torchvision, random init, eval), channels_last, float32: each weight
  gradient's max error against the float64 model; the ratio for features.6.3.block.0.1.weight
  and, per seed, the median ratio over all weight gradients.
- Llama (transformers, tiny config): the loss under CPU bfloat16 autocast against the float32 loss.

    python scripts/accuracy_seeds.py [--seeds 30] [--only llama|efficientnet]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

import backprop_ext.nn as bnn


def llama_model(seed: int):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=56,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).eval()


def llama_errors(seed: int) -> tuple[float, float]:
    """(ours, torch): |bfloat16-autocast loss - float32 loss| on one seed."""
    plain = llama_model(seed)
    ours = bnn.convert(copy.deepcopy(plain))
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        exact = plain(input_ids=ids, labels=ids).loss.double()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            theirs = plain(input_ids=ids, labels=ids).loss.double()
            mine = ours(input_ids=ids, labels=ids).loss.double()
    return abs(mine - exact).item(), abs(theirs - exact).item()


WATCHED = "features.6.3.block.0.1.weight"


def efficientnet_errors(seed: int) -> tuple[dict, dict]:
    """({param: ours' max grad error}, {param: torch's}) against the float64 model."""
    import torchvision

    torch.manual_seed(seed)
    plain = torchvision.models.efficientnet_b0(num_classes=10).eval()
    ref = copy.deepcopy(plain).double()
    ours = bnn.convert(copy.deepcopy(plain))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    g = torch.randn(2, 10, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grads = {}
    for name, model, dtype in (("ref", ref, torch.float64), ("torch", plain, torch.float32),
                               ("ours", ours, torch.float32)):
        model = model.to(memory_format=torch.channels_last)
        xi = x.to(dtype).contiguous(memory_format=torch.channels_last)
        out = model(xi)
        params = dict(model.named_parameters())
        gs = torch.autograd.grad(out, list(params.values()), g.to(dtype))
        grads[name] = dict(zip(params, gs))
    err = {k: {p: (grads[k][p].double() - grads["ref"][p]).abs().max().item()
               for p in grads["ref"] if p.endswith("weight")} for k in ("ours", "torch")}
    return err["ours"], err["torch"]


def _ratios_line(name: str, ratios: list[float]) -> str:
    r = sorted(ratios)
    p90 = r[min(len(r) - 1, int(0.9 * len(r)))]
    return (f"{name:<44} median {statistics.median(r):6.3f}  p90 {p90:6.3f}  max {r[-1]:6.3f}"
            f"  (> 1 on {sum(x > 1 for x in r)}/{len(r)} seeds)")


def _fmt(xs) -> str:
    return f"median {statistics.median(xs):.2e}  max {max(xs):.2e}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--only", choices=("llama", "efficientnet"))
    args = ap.parse_args(argv)
    seeds = range(args.seeds)
    if args.only in (None, "llama"):
        pairs = [llama_errors(s) for s in seeds]
        ours, theirs = [p[0] for p in pairs], [p[1] for p in pairs]
        print(f"Llama loss, CPU bfloat16 autocast vs float32, {len(pairs)} seeds")
        print(f"  ours  |error|: {_fmt(ours)}")
        print(f"  torch |error|: {_fmt(theirs)}")
        print("  " + _ratios_line("ratio ours/torch", [o / max(t, 1e-12)
                                                         for o, t in pairs]))
    if args.only in (None, "efficientnet"):
        watched, medians = [], []
        for s in seeds:
            o, t = efficientnet_errors(s)
            watched.append(o[WATCHED] / max(t[WATCHED], 1e-30))
            medians.append(statistics.median(o[p] / max(t[p], 1e-30) for p in o))
        print(f"efficientnet_b0 channels_last float32 weight grads vs float64, {len(watched)} "
              "seeds")
        print("  " + _ratios_line(f"{WATCHED} ours/torch", watched))
        print("  " + _ratios_line("per-seed median over all weights", medians))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
