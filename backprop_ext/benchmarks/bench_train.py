"""Training a real language model: transformers' Llama and GPT-2, trained with a user's loop as
it is, with torch alone and with what this library offers, step time, peak step memory and loss
agreement side by side.

Workload (CPU default; the GPU runs the same models in bfloat16): LlamaForCausalLM and
GPT2LMHeadModel built from configs with random initialization (nothing downloaded): 4 layers,
hidden 256, 4 heads, vocabulary 32000 (Llama's MLP intermediate 1024; GPT-2 with its dropout
off, so that every row computes the same function), float32, AdamW (lr 1e-3), batches of
4 x 256 tokens of real text: the sources of Python's own standard library, split into words and
punctuation, each mapped to its frequency rank in the vocabulary (id 0 for the rare rest). The
loop of every row: `opt.zero_grad(); loss = <loss>(x); loss.backward(); opt.step()`, 12 steps
from the same initialization on the same batches.

Rows (op), each the whole model trained one way:
    eager              torch eager: `model(input_ids=x, labels=x).loss`
    converted          `bnn.convert(model)`, the loop unchanged
    converted_budget   `bnn.convert(model, memory_budget=f)` (f = --budget, a fraction of the
                       plain step's peak), where convert() takes the argument; skipped otherwise
    compile            `torch.compile(model)`
    compile_converted  `torch.compile(bnn.convert(model))`
    torch_lce          torch's chunked `F.linear_cross_entropy(h, lm_head.weight, t,
                       options=LinearCrossEntropyOptions())` wired by hand on the plain model's
                       final hidden states h (labels shifted as transformers does); skipped on a
                       torch without it (before 2.14)
    ours_lce           `BF.linear_cross_entropy(h, lm_head.weight, target=t, ...)` wired the same
                       way: the same body as torch_lce, only the head and its loss differ

Measures, per row: the median time of a step (wall clock, CUDA synchronized; with one CPU thread
that thread's CPU time, which other jobs on a shared machine do not inflate), steps after the
first two (compilation, optimizer state) and other than the metered one; the peak memory of one
step (the third) above its start, twice: the allocator's (CPU: checkpoint.memory.cpu_peak_bytes,
every allocation counted; CUDA: torch.cuda.max_memory_allocated) and the resident one, what a job
that runs out of memory sees (CPU: the process's resident-set high-water mark, reset by
/proc/self/clear_refs before the step, above the resident size at its start, with glibc's malloc
told to mmap every block from 128 KiB up so that freed memory leaves the process at once; CUDA:
torch.cuda.max_memory_reserved); and the loss agreement: the largest relative difference from
torch eager's loss over the steps. Every row runs in a fresh process (memory, allocator state and
torch.compile's in-process caches start clean; the compiled code cache on disk is one fresh
directory per run), the rows in turn within a round and in reverse order every other round
(A B C, C B A, ...), several rounds: times, memory and ratios are medians over the rounds (a
ratio per round against eager's run in that round), the loss difference the largest over them.
On the CPU each row runs in two fresh processes: the steps are timed (and the losses taken) under
malloc's defaults, as a user's job runs; the memory is metered in a second process, with malloc
told to mmap large blocks from its start, which runs the steps up to the metered one. (The mmap
threshold is no setting to time under: every large allocation then faults in fresh pages, which
on a virtual machine costs about as much as the arithmetic of a small model's step.)

`--quick` runs a tiny configuration in seconds (2 layers, hidden 32, vocabulary 512, 2 x 32
tokens, 4 steps, one round), for tests; `--sizes` sets the hidden size, `--models` the models,
`--rounds` the rounds, `--budget` the budget row's fraction.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import importlib
import inspect
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import torch

from ..checkpoint.memory import step_clock
from .common import Row, peak_bytes, sync

FAMILY = "train"
SIZES_HELP = "train: the models' hidden size (default 256)"
OPS = ("eager", "converted", "converted_budget", "compile", "compile_converted", "torch_lce",
       "ours_lce")
LABELS = {"eager": "torch eager", "converted": "bnn.convert(model)",
          "converted_budget": "bnn.convert(model, memory_budget)",
          "compile": "torch.compile(model)", "compile_converted": "torch.compile(convert(model))",
          "torch_lce": "torch F.linear_cross_entropy by hand",
          "ours_lce": "BF.linear_cross_entropy by hand"}
MODELS = ("llama", "gpt2")
EXTRA_ARGS = ("quick", "rounds", "models", "budget")  # run.py passes these options to run()
DEFAULT = dict(layers=4, hidden=256, heads=4, vocab=32000, batch=4, seq=256, steps=12, rounds=3)
QUICK = dict(layers=2, hidden=32, heads=2, vocab=512, batch=2, seq=32, steps=4, rounds=1)
DEFAULT_DTYPE = {"cpu": "float32", "cuda": "bfloat16"}
DEFAULT_BUDGET = 0.2  # of the plain step's peak: the issue's target for the budget row
WARMUP = 2  # steps before any measurement: compilation, the optimizer's state
MMAP_THRESHOLD = 128 * 1024  # bytes: glibc's malloc mmaps blocks from this size up
WORKER_TIMEOUT = 3600  # seconds for one configuration's process
STDLIB_MODULES = ("argparse", "inspect", "typing", "dataclasses", "functools", "subprocess",
                  "threading", "textwrap", "statistics", "enum", "ast", "tarfile", "zipfile",
                  "logging", "unittest.case", "json.decoder", "email.message", "http.client",
                  "pydoc", "difflib", "calendar", "configparser", "csv", "shutil", "tempfile")


@dataclasses.dataclass
class TrainRow(Row):
    """A Row with what a training run measures beyond time and the allocator's peak."""

    rss_peak_bytes: int = 0  # resident peak of the step above its start (CUDA: reserved)
    torch_rss_peak_bytes: int = 0  # eager's
    loss_max_rel_diff: float | None = None  # max over steps (and rounds) of |loss / eager's - 1|
    losses: list = dataclasses.field(default_factory=list)  # first round's, per step
    loss_rel_diffs: list = dataclasses.field(default_factory=list)  # first round's, per step
    first_step_ms: float | None = None  # the first step (compilation included), median
    rounds: int = 0  # rounds that ran
    skipped: str = ""  # why the row did not run (then its measures are NaN / 0)

    @property
    def memory_ratio(self) -> float | None:
        if self.skipped or not self.torch_peak_bytes:
            return None
        return self.peak_bytes / self.torch_peak_bytes

    @property
    def rss_ratio(self) -> float | None:
        """our resident peak / eager's: below 1 means we use less."""
        if self.skipped or not self.torch_rss_peak_bytes:
            return None
        return self.rss_peak_bytes / self.torch_rss_peak_bytes

    def as_dict(self, copy_gbps: float | None = None) -> dict:
        d = super().as_dict(copy_gbps)
        d["rss_ratio"] = self.rss_ratio
        return d


# --- the data: real text that ships with Python


def _stdlib_words():
    """Words, numbers and punctuation of the standard library's sources, in order, endlessly."""
    for name in STDLIB_MODULES:
        try:
            text = inspect.getsource(importlib.import_module(name))
        except (ImportError, OSError, TypeError):  # a stripped install: skip the module
            continue
        yield from re.findall(r"\w+|[^\w\s]|\n", text)


def text_tokens(vocab: int, count: int) -> torch.Tensor:
    """`count` token ids (int64, in [0, vocab)) of the standard library's sources: each word its
    frequency rank among the words read (1 the most frequent; 0 for those beyond vocab - 1).
    Deterministic for a given Python installation; the text repeats when `count` exceeds it."""
    words = []
    for w in _stdlib_words():
        words.append(w)
        if len(words) >= count:
            break
    if not words:
        raise RuntimeError("train benchmark: no standard-library source found to read text from")
    while len(words) < count:
        words += words[: count - len(words)]
    freq = collections.Counter(words)
    ranked = sorted(freq, key=lambda w: (-freq[w], w))[: vocab - 1]
    ids = {w: i + 1 for i, w in enumerate(ranked)}
    return torch.tensor([ids.get(w, 0) for w in words], dtype=torch.int64)


def batches(cfg: dict) -> list[torch.Tensor]:
    """One (batch, seq) batch of token ids per step, consecutive text."""
    b, t, n = cfg["batch"], cfg["seq"], cfg["steps"]
    return list(text_tokens(cfg["vocab"], b * t * n).view(n, b, t))


# --- the models


def build_model(name: str, cfg: dict, device: str, dtype: torch.dtype, seed: int = 0):
    """A transformers causal LM from a config, random initialization (seeded), in train mode."""
    import transformers

    h, common = cfg["hidden"], dict(vocab_size=cfg["vocab"], use_cache=False,
                                    bos_token_id=0, eos_token_id=0, loss_type="ForCausalLM")
    if name == "llama":
        config = transformers.LlamaConfig(
            hidden_size=h, intermediate_size=4 * h, num_hidden_layers=cfg["layers"],
            num_attention_heads=cfg["heads"], num_key_value_heads=cfg["heads"],
            max_position_embeddings=cfg["seq"], attn_implementation="sdpa", **common)
        cls = transformers.LlamaForCausalLM
    elif name == "gpt2":
        config = transformers.GPT2Config(
            n_embd=h, n_layer=cfg["layers"], n_head=cfg["heads"], n_positions=cfg["seq"],
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa",
            **common)
        cls = transformers.GPT2LMHeadModel
    else:
        raise ValueError(f"train benchmark: unknown model {name!r}; expected one of {MODELS}")
    torch.manual_seed(seed)
    return cls(config).to(device=device, dtype=dtype).train()


def skip_reason(row: str) -> str:
    """Why `row` cannot run with this torch and backprop_ext ("" when it can)."""
    if row == "converted_budget":
        from .. import nn as bnn

        if "memory_budget" not in inspect.signature(bnn.convert).parameters:
            return "bnn.convert() takes no memory_budget argument in this version"
    if row == "torch_lce" and not hasattr(torch.nn.functional, "linear_cross_entropy"):
        return f"torch {torch.__version__} has no F.linear_cross_entropy (torch 2.14 added it)"
    return ""


def _hidden_and_target(model, x):
    """The final hidden states and next-token targets, shifted as transformers' loss does:
    position i predicts token i + 1, the last position nothing."""
    h = model.base_model(input_ids=x).last_hidden_state
    return h[:, :-1].reshape(-1, h.shape[-1]), x[:, 1:].reshape(-1)


def loss_fn(row: str, model, budget: float, seen: dict | None = None):
    """(the model the optimizer trains, a function of a batch returning the output's loss) for
    `row`: the model built one way and the loss read one way, as a user would write it. Where the
    loss comes from the model's output, seen["logits_built"] records whether it held logits."""
    seen = {} if seen is None else seen
    from .. import functional as BF
    from .. import nn as bnn

    if row in ("converted", "converted_budget", "compile_converted"):
        kwargs = {"memory_budget": budget} if row == "converted_budget" else {}
        model = bnn.convert(model, **kwargs)
    if row in ("eager", "converted", "converted_budget", "compile", "compile_converted"):
        run = torch.compile(model) if row.startswith("compile") else model

        def loss(x):
            out = run(input_ids=x, labels=x)
            seen["logits_built"] = out.logits is not None
            return out.loss
        return model, loss
    head = model.lm_head
    if row == "torch_lce":
        options = torch.nn.LinearCrossEntropyOptions()

        def loss(x):
            h, t = _hidden_and_target(model, x)
            return torch.nn.functional.linear_cross_entropy(h, head.weight, t, options=options)
        return model, loss
    if row == "ours_lce":
        # The weight positional, everything else by keyword, no bias (lm_head has none): the
        # call means the same with our old signature and with torch's.
        def loss(x):
            h, t = _hidden_and_target(model, x)
            return BF.linear_cross_entropy(h, head.weight, target=t, ignore_index=-100,
                                           reduction="mean")
        return model, loss
    raise ValueError(f"train benchmark: unknown row {row!r}; expected one of {OPS}")


# --- one configuration, in its own process


def _proc_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@contextlib.contextmanager
def resident_peak(device: str):
    """with resident_peak(device) as peak: <step>  then peak["bytes"]: the step's resident peak
    above its start (None where it cannot be measured). CPU: the resident-set high-water mark
    (VmHWM), reset first through /proc/self/clear_refs, minus the resident size (VmRSS) at the
    start; CUDA: torch.cuda.max_memory_reserved() above memory_reserved() at the start (the
    peak statistics reset by the caller, as common.peak_bytes does)."""
    out = {"bytes": None}
    if device.startswith("cuda"):
        sync(device)
        start = torch.cuda.memory_reserved()
        yield out
        sync(device)
        out["bytes"] = torch.cuda.max_memory_reserved() - start
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the high-water mark to the current resident size
        start = _proc_kib("VmRSS")
    except OSError:
        start = None
    yield out
    hwm = _proc_kib("VmHWM")
    if start is not None and hwm is not None:
        out["bytes"] = max(0, hwm - start) * 1024


PHASES = ("all", "time", "memory")  # what one process of a configuration measures


def train(spec: dict) -> dict:
    """Trains one configuration (spec: model, row, device, dtype, the sizes, budget, threads,
    phase) and returns its measures: losses per step, step times (ms), the first step's time, the
    metered step's allocator and resident peaks (bytes), and notes. spec["phase"]: "all" measures
    everything; "time" meters no step; "memory" runs only the steps up to the metered one and
    times none."""
    torch.set_num_threads(spec["threads"])
    device, dtype = spec["device"], getattr(torch, spec["dtype"])
    phase = spec.get("phase", "all")
    if phase not in PHASES:
        raise ValueError(f"train benchmark: unknown phase {phase!r}; expected one of {PHASES}")
    data = [x.to(device) for x in batches(spec)]
    metered = min(WARMUP, len(data) - 1) if phase != "time" else None
    if phase == "memory":
        data = data[:metered + 1]
    seen = {}
    model, loss = loss_fn(spec["row"], build_model(spec["model"], spec, device, dtype),
                          spec["budget"], seen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    clock = step_clock(device)[0]
    notes = []
    state = {}

    def step(x):
        opt.zero_grad(set_to_none=True)
        value = loss(x)
        value.backward()
        opt.step()
        state["loss"] = value.detach()

    losses, times = [], []
    out = {"first_step_ms": None, "peak_bytes": None, "rss_peak_bytes": None}
    for i, x in enumerate(data):
        if i == metered:
            gc.collect()
            with resident_peak(device) as rss:
                out["peak_bytes"] = peak_bytes(lambda x=x: step(x), device)
            out["rss_peak_bytes"] = rss["bytes"]
        else:
            sync(device)
            t0 = clock()
            step(x)
            sync(device)
            ms = (clock() - t0) * 1e3
            if i == 0:
                out["first_step_ms"] = ms
            elif i >= WARMUP:
                times.append(ms)
        losses.append(state["loss"].item())
    if phase != "time" and out["rss_peak_bytes"] is None:
        notes.append("resident peak not measurable here (no /proc/self/clear_refs)")
    if spec["row"].startswith(("converted", "compile_converted")):
        notes.append("logits built: the loss is transformers'" if seen.get("logits_built")
                     else "no logits: the loss from the hidden states")
    out.update(losses=losses, times_ms=times, notes=notes,
               malloc_mmap_threshold=os.environ.get("MALLOC_MMAP_THRESHOLD_"))
    return out


def _spawn(spec: dict, cache_dir: str) -> dict:
    """train(spec) in a fresh Python process, malloc told to mmap large blocks where spec meters
    memory; {"error": ...} when it fails."""
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if spec.get("phase", "all") != "time":
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)  # fixed: no dynamic threshold either
    env["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "backprop_ext.benchmarks.bench_train", "--worker",
               json.dumps(spec), result]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=WORKER_TIMEOUT)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {WORKER_TIMEOUT} s"}
        if proc.returncode != 0 or not os.path.exists(result):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
        with open(result) as f:
            return json.load(f)


def _measure(spec: dict, cache_dir: str) -> dict:
    """One configuration's measures: on CUDA from one process; on the CPU the times and losses
    from a process under malloc's defaults and the memory from one that mmaps large blocks."""
    if not spec["device"].startswith("cpu"):
        return _spawn(dict(spec, phase="all"), cache_dir)
    timed = _spawn(dict(spec, phase="time"), cache_dir)
    if "error" in timed:
        return timed
    metered = _spawn(dict(spec, phase="memory"), cache_dir)
    if "error" in metered:
        return {"error": "memory process: " + metered["error"]}
    notes = list(dict.fromkeys(timed["notes"] + metered["notes"]))
    return dict(timed, peak_bytes=metered["peak_bytes"], rss_peak_bytes=metered["rss_peak_bytes"],
                malloc_mmap_threshold=metered["malloc_mmap_threshold"], notes=notes)


# --- the runs, the rows


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _rel_diffs(losses, reference):
    return [abs(a - b) / abs(b) if b else abs(a - b) for a, b in zip(losses, reference)]


def _rows(model: str, cfg: dict, device: str, results: dict, skipped: dict) -> list[TrainRow]:
    """One TrainRow per row of one model, from every round's results."""
    shape = (f"{model} {cfg['layers']}L h{cfg['hidden']} V{cfg['vocab']} "
             f"{cfg['batch']}x{cfg['seq']} tokens, {cfg['steps']} steps")
    base = results["eager"]
    ok_base = [r for r in base if "error" not in r]
    if not ok_base:
        raise RuntimeError(f"train benchmark: torch eager failed on {model}: "
                           + "; ".join(r["error"] for r in base))
    eager_ms = _median([_median(r["times_ms"]) for r in ok_base])
    eager_peak = _median([r["peak_bytes"] for r in ok_base]) or 0
    eager_rss = _median([r["rss_peak_bytes"] for r in ok_base]) or 0
    rows = []
    for row in OPS:
        common = dict(family=FAMILY, op=row, shape=shape, dtype=cfg["dtype"],
                      direction="train step", device=device, torch_ms=eager_ms,
                      vs="torch eager", torch_peak_bytes=int(eager_peak),
                      torch_rss_peak_bytes=int(eager_rss))
        if row in skipped:
            rows.append(TrainRow(ms=math.nan, skipped=skipped[row], note=skipped[row], **common))
            continue
        if row not in results:
            continue
        runs = results[row]
        ok = [(r, b) for r, b in zip(runs, base) if "error" not in r and "error" not in b]
        errors = [r["error"] for r in runs if "error" in r]
        if not ok:
            rows.append(TrainRow(ms=math.nan, skipped="failed: " + errors[0],
                                 note="failed: " + errors[0], **common))
            continue
        diffs = [_rel_diffs(r["losses"], b["losses"]) for r, b in ok]
        ratios = [_median(r["times_ms"]) / _median(b["times_ms"]) for r, b in ok]
        notes = sorted({n for r, _ in ok for n in r["notes"]})
        if errors:
            notes.append(f"{len(errors)} of {len(runs)} rounds failed: {errors[0]}")
        rows.append(TrainRow(
            ms=_median([_median(r["times_ms"]) for r, _ in ok]),
            peak_bytes=int(_median([r["peak_bytes"] for r, _ in ok]) or 0),
            rss_peak_bytes=int(_median([r["rss_peak_bytes"] for r, _ in ok]) or 0),
            time_ratio=statistics.median(ratios),
            loss_max_rel_diff=max(max(d) for d in diffs), losses=ok[0][0]["losses"],
            loss_rel_diffs=diffs[0], first_step_ms=_median([r["first_step_ms"] for r, _ in ok]),
            rounds=len(ok), note="; ".join(notes), **common))
    return rows


def run(device: str, dtypes=None, sizes=None, ops=None, reps: int = 20, compiled: bool = False,
        quick: bool = False, rounds: int | None = None, models=None, budget: float | None = None):
    """Every (model, row) in fresh processes over the rounds; returns the TrainRows (eager's
    included, the baseline of every ratio) and prints the table."""
    kind = device.split(":")[0]
    base_cfg = dict(QUICK if quick else DEFAULT)
    if sizes:
        base_cfg["hidden"] = sizes[0]
    rounds = rounds or base_cfg["rounds"]
    budget = DEFAULT_BUDGET if budget is None else budget
    wanted = ["eager"] + [o for o in (ops or OPS) if o != "eager"]
    skipped = {row: why for row in wanted if (why := skip_reason(row))}
    order = [row for row in wanted if row not in skipped]
    configs = [(m, d) for m in models or MODELS for d in dtypes or [DEFAULT_DTYPE[kind]]]
    results = {c: {row: [] for row in order} for c in configs}
    print(f"# train family: {rounds} round(s) of {len(order)} configurations x "
          f"{len(configs)} model(s), each in a fresh process; step time by "
          f"{step_clock(device)[1]}")
    for why in dict.fromkeys(skipped.values()):
        print(f"# train: skipped: {why}")
    cache_dir = tempfile.mkdtemp(prefix="backprop_ext_train_inductor_")
    try:
        for r in range(rounds):
            for model, dtype in configs:
                for row in order if r % 2 == 0 else order[::-1]:
                    spec = dict(base_cfg, model=model, row=row, device=device, dtype=dtype,
                                budget=budget, threads=torch.get_num_threads())
                    t0 = time.perf_counter()
                    res = _measure(spec, cache_dir)
                    results[(model, dtype)][row].append(res)
                    what = (res["error"] if "error" in res else
                            f"{_median(res['times_ms']):.1f} ms/step, loss {res['losses'][-1]:.4f}")
                    print(f"# train: round {r + 1}/{rounds} {model} {dtype} {row}: {what} "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    rows = []
    for model, dtype in configs:
        rows += _rows(model, dict(base_cfg, dtype=dtype), device, results[(model, dtype)],
                      skipped)
    print(format_summary(rows))
    return rows


def _fmt(value, spec, none="-"):
    return none if value is None or (isinstance(value, float) and math.isnan(value)) else \
        format(value, spec)


def format_summary(rows: list[TrainRow]) -> str:
    """Per model: each row's step time, speed, memory and loss agreement against torch eager."""
    lines = []
    for shape in dict.fromkeys(r.shape for r in rows):
        group = [r for r in rows if r.shape == shape]
        lines.append(f"\n{shape}, {group[0].dtype}, {group[0].device}")
        lines.append(f"{'configuration':<38}{'ms/step':>9}{'speed':>8}{'alloc MiB':>11}"
                     f"{'x mem':>7}{'RSS MiB':>9}{'x RSS':>7}{'loss rel diff':>15}")
        for r in group:
            speed = None if r.skipped or not r.time_ratio else 1 / r.time_ratio
            lines.append(
                f"{LABELS.get(r.op, r.op):<38}{_fmt(r.ms, '.1f'):>9}{_fmt(speed, '.2f'):>7}x"
                f"{_fmt(r.peak_bytes / 2 ** 20 if not r.skipped else None, '.1f'):>11}"
                f"{_fmt(r.memory_ratio, '.2f'):>7}"
                f"{_fmt(r.rss_peak_bytes / 2 ** 20 if not r.skipped else None, '.1f'):>9}"
                f"{_fmt(r.rss_ratio, '.2f'):>7}{_fmt(r.loss_max_rel_diff, '.2e'):>15}"
                + (f"   {r.note}" if r.note else ""))
    return "\n".join(lines)


def plot(path: str, rows: list[TrainRow]) -> None:
    """Per model: the loss curves, each row's relative difference from torch eager's loss per
    step, and the peak step memory (allocator and resident) and step time as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r.shape for r in rows))
    fig, axes = plt.subplots(len(shapes), 4, figsize=(22, 4.8 * len(shapes)), squeeze=False)
    for ax_row, shape in zip(axes, shapes):
        group = [r for r in rows if r.shape == shape and not r.skipped]
        loss_ax, diff_ax, mem_ax, time_ax = ax_row
        for r in group:
            steps = range(1, len(r.losses) + 1)
            eager = r.op == "eager"
            loss_ax.plot(steps, r.losses, label=LABELS.get(r.op, r.op),
                         linewidth=3 if eager else 1.2, alpha=0.5 if eager else 1.0,
                         marker=None if eager else ".")
            if not eager:
                # A relative difference of 0 has no place on a log axis: drawn at 1e-9.
                diff_ax.semilogy(steps, [max(d, 1e-9) for d in r.loss_rel_diffs], marker=".",
                                 label=LABELS.get(r.op, r.op))
        loss_ax.set(title=f"loss, {shape}", xlabel="step", ylabel="loss")
        loss_ax.legend(fontsize=7)
        diff_ax.set(title="|loss / torch eager's - 1| (0 drawn at 1e-9)", xlabel="step")
        if len(group) > 1:
            diff_ax.legend(fontsize=7)
        names = [LABELS.get(r.op, r.op).replace(" by hand", "\nby hand")
                 .replace("(convert", "(\nconvert") for r in group]
        xs = range(len(group))
        mem_ax.bar([x - 0.2 for x in xs], [r.peak_bytes / 2 ** 20 for r in group], 0.4,
                   label="allocator peak")
        mem_ax.bar([x + 0.2 for x in xs], [r.rss_peak_bytes / 2 ** 20 for r in group], 0.4,
                   label="resident peak")
        mem_ax.set(title="peak step memory above its start", ylabel="MiB")
        mem_ax.set_xticks(list(xs))
        mem_ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        mem_ax.legend(fontsize=7)
        time_ax.bar(list(xs), [r.ms for r in group], 0.6, color="tab:green")
        time_ax.set(title="median step time", ylabel="ms")
        time_ax.set_xticks(list(xs))
        time_ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    first = rows[0]
    fig.suptitle(f"training step, {first.device}, {first.dtype}, torch {torch.__version__}",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _worker_main(argv) -> int:
    spec, out_path = json.loads(argv[0]), argv[1]
    try:
        result = train(spec)
    except Exception:
        traceback.print_exc()
        return 1
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2:]))
    sys.exit("usage: python -m backprop_ext bench --family train [--quick] ...")
