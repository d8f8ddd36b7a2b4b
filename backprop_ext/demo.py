"""`python -m backprop_ext demo`: train one small MLP twice, with torch's layers and with ours,
from the same initialization on the same batches, and show that they agree; then validate every
op with gradcheck (the `check` command's float64 tests).

Data: scikit-learn's handwritten digits (1797 8x8 images, shipped inside the package: no download).
"""

from __future__ import annotations

import copy
import time

import torch

from . import nn as bnn
from . import utils as BU
from .checkpoint.memory import cpu_peak_bytes


def load_digits(device: str):
    from sklearn.datasets import load_digits as sk_load

    data = sk_load()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    cut = int(0.8 * len(x))
    tr, te = perm[:cut], perm[cut:]
    return x[tr].to(device), y[tr].to(device), x[te].to(device), y[te].to(device)


def make_model(width: int = 256) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(64, width), torch.nn.GELU(),
        torch.nn.Linear(width, width), torch.nn.SiLU(),
        torch.nn.Linear(width, width), torch.nn.GELU(approximate="tanh"),
        torch.nn.Linear(width, 10),
    )


def train(model, x, y, epochs: int, batch: int, loss_fn, clip, seed: int = 0, progress=None):
    """Adam steps over shuffled batches; gradients clipped to norm 1 with `clip`."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    losses, step_times = [], []
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g).to(x.device)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            clip(model.parameters(), 1.0)
            opt.step()
            if x.is_cuda:
                torch.cuda.synchronize()
            step_times.append(time.perf_counter() - t0)
            losses.append(loss.item())
            if progress is not None:
                progress.update(1)
    return losses, step_times


def activation_memory(model: torch.nn.Sequential, x, y) -> dict[str, int]:
    """Peak bytes the allocator holds during one forward + backward above what it held before
    (parameters and data excluded): the model as it is, and its layers in a CheckpointedSequential
    under each recompute policy."""
    variants = {"plain": model}
    for policy in ("selective", "full", "full+selective"):
        variants[f"checkpointed ({policy})"] = bnn.CheckpointedSequential(*model, policy=policy)
    loss_fn = bnn.CrossEntropyLoss()
    peaks = {}
    for name, m in variants.items():
        m.zero_grad(set_to_none=True)
        if x.is_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            loss_fn(m(x), y).backward()
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() - base
        else:
            peaks[name] = cpu_peak_bytes(lambda m=m: loss_fn(m(x), y).backward())
    model.zero_grad(set_to_none=True)
    return peaks


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False)
    except ImportError:  # tqdm is optional
        return None


def run(device: str = "cpu", epochs: int = 5, batch: int = 64, check: bool = True,
        plot: str | None = None, full: bool = False) -> dict:
    """Trains, measures and checks (see the module docstring); `full` prints the gradient
    checks as the whole table (op x check) instead of one line per op."""
    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = load_digits(device)
    reference = make_model().to(device)
    # Every layer swapped for ours, each activation fused into the Linear before it.
    ours = bnn.convert(copy.deepcopy(reference), fuse=True)
    swapped = sum(type(m).__module__ == bnn.__name__ for m in ours.modules())
    fused = sum(getattr(m, "activation", None) is not None for m in ours.modules())
    steps = epochs * ((len(x_tr) + batch - 1) // batch)
    print(f"digits: {len(x_tr)} train / {len(x_te)} test images; device {device}; "
          f"{swapped} layers swapped for backprop_ext's, {fused} activations fused into them")

    results = {}
    runs = (
        ("torch", reference, torch.nn.CrossEntropyLoss(), torch.nn.utils.clip_grad_norm_),
        ("backprop_ext", ours, bnn.CrossEntropyLoss(), BU.clip_grad_norm_),
    )
    for name, model, loss_fn, clip in runs:
        bar = _progress(steps, f"training ({name})")
        losses, times = train(model, x_tr, y_tr, epochs, batch, loss_fn, clip, progress=bar)
        if bar is not None:
            bar.close()
        results[name] = dict(losses=losses, ms_per_step=1e3 * sorted(times)[len(times) // 2],
                             accuracy=accuracy(model, x_te, y_te))
    t, o = results["torch"], results["backprop_ext"]
    diff = max(abs(a - b) for a, b in zip(t["losses"], o["losses"]))
    results["max_loss_diff"] = diff
    print(f"{'':14}{'final loss':>12}{'test acc':>10}{'ms/step':>10}")
    for name in ("torch", "backprop_ext"):
        r = results[name]
        print(f"{name:14}{r['losses'][-1]:>12.4f}{r['accuracy']:>10.3f}{r['ms_per_step']:>10.3f}")
    print(f"loss curves agree: max |difference| over {len(t['losses'])} steps = {diff:.2e}")

    # Memory is measured on the unfused layers (Linear, activation, ...), which is what a user's
    # nn.Sequential holds and what the checkpoint policies choose among.
    results["memory"] = activation_memory(bnn.convert(copy.deepcopy(reference)), x_tr, y_tr)
    print("\nactivation memory of one training step on the whole training set "
          f"({len(x_tr)} images; CheckpointedSequential, sqrt(len) segments):")
    plain = results["memory"]["plain"]
    for policy, nbytes in results["memory"].items():
        print(f"  {policy:<32}{nbytes / 2**20:>8.2f} MiB  ({nbytes / plain:.2f}x plain)")

    ours.zero_grad(set_to_none=True)
    bnn.CrossEntropyLoss()(ours(x_tr), y_tr).backward()
    report = BU.gradient_flow(ours, by="module")
    print("\ngradient flow after one backward (backprop_ext model):")
    print(report)

    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(t["losses"], label="torch.nn")
        ax.plot(o["losses"], "--", label="backprop_ext")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("digits MLP: same init, same batches")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
        print(f"loss curves written to {plot}")

    if check:
        from .check import all_cases, format_results, format_summary, run_checks

        print("\ngradient checks (float64) of every op:")
        checks = [r for r in run_checks(all_cases(), [device], dtypes=()) if r.dtype == "float64"]
        print(format_results(checks) if full else format_summary(checks))
        results["checks_ok"] = all(r.ok for r in checks)
    return results
