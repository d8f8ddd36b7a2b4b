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


def train(model, x, y, epochs: int, batch: int, seed: int = 0, progress=None):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
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
            opt.step()
            if x.is_cuda:
                torch.cuda.synchronize()
            step_times.append(time.perf_counter() - t0)
            losses.append(loss.item())
            if progress is not None:
                progress.update(1)
    return losses, step_times


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
        plot: str | None = None) -> dict:
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
    for name, model in (("torch", reference), ("backprop_ext", ours)):
        bar = _progress(steps, f"training ({name})")
        losses, times = train(model, x_tr, y_tr, epochs, batch, progress=bar)
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
        from .check import all_cases, format_results, run_checks

        print("\ngradient checks (float64) of every op:")
        checks = [r for r in run_checks(all_cases(), [device], dtypes=()) if r.dtype == "float64"]
        print(format_results(checks))
        results["checks_ok"] = all(r.ok for r in checks)
    return results
