"""Call overhead: the time per call of every op on tiny tensors, where the kernels cost next to
nothing and what is measured is everything around them (Python, argument parsing, dispatch,
autograd bookkeeping), ours vs torch's own function on the same tensors; and one real model, a
transformers Llama training step, converted vs plain.

Tiny cases: activations and swiglu on 64 elements, the softmax family and cross-entropy on 8 x 8,
linear on an 8 x 8 input with an 8 x 8 weight and a bias; float32, one thread. Directions:
    fwd       the call with autograd off (torch.no_grad() around the timing loop): inference
    fwd+bwd   a call that records the graph, then torch.autograd.grad to every input
Times are per call, the minimum over rounds of the mean of a loop of calls (noise only ever adds),
the two sides alternating which goes first. On the CPU a time is the thread's CPU time, which a
loaded machine does not inflate; on a GPU it is wall time, the loop ending with a synchronize, so
what the host needs to issue the work when the device keeps up.

Llama step (op llama_step): a transformers LlamaForCausalLM built from a config (random
initialization, nothing downloaded; 2 layers, hidden 128 and 512, 4 heads, intermediate size 4 x
hidden, batch 4 x 64 tokens, float32), one training step (forward, next-token loss: our
cross_entropy for the converted model, torch's for the plain one; backward), after
backprop_ext.nn.convert() vs the same model unconverted, one thread. convert() swaps the Linear
layers and each LlamaMLP for a GatedMLP on the same Linears (SwiGLU in one pass each way); the
norm and rotary-embedding modules stay. Two vocabularies: Llama's 32000,
where the loss is a large share of the step, and 512, where the layers are nearly all of it and
both sides run the same BLAS calls: there a ratio within about 1% of 1 is run-to-run noise (the
plain model against a copy of itself spreads as much). Needs the transformers package; without
it the rows are skipped.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable

import torch
import torch.nn.functional as TF

from .. import functional as BF
from .. import nn as bnn
from ..ops.activation import ACTIVATIONS
from ..testing import REFERENCES, activation_case
from .common import Row, sync

FAMILY = "overhead"
SIZES_HELP = "overhead: ignored (tiny tensors by design)"
LLAMA_CONFIGS = ((128, 32000), (512, 32000), (128, 512), (512, 512))  # (hidden, vocabulary)


def _tiny_cases(device: str) -> dict[str, tuple[Callable, Callable, tuple]]:
    """op -> (ours, torch's, inputs); floating inputs get gradients in fwd+bwd."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(shape, generator=g).to(device)

    x, logits = rand(64), rand(8, 8)
    target = torch.randint(0, 8, (8,), generator=g).to(device)
    inp, w, b = rand(8, 8), rand(8, 8), rand(8)
    cases = {}
    for name in ACTIVATIONS:
        # The functions themselves, with the row's arguments bound: nothing else in the call.
        # (torch's reference where torch.nn.functional has no such function: quick_gelu).
        case = activation_case(name)
        cases[name] = (functools.partial(getattr(BF, case.name), **dict(case.kwargs)),
                       functools.partial(getattr(TF, case.name, None) or REFERENCES[case.name],
                                         **dict(case.kwargs)), (x,))
    cases.update({
        "softmax": (lambda t: BF.softmax(t, -1), lambda t: TF.softmax(t, -1), (logits,)),
        "log_softmax": (lambda t: BF.log_softmax(t, -1), lambda t: TF.log_softmax(t, -1),
                        (logits,)),
        "logsumexp": (lambda t: BF.logsumexp(t, -1), lambda t: torch.logsumexp(t, -1),
                      (logits,)),
        "cross_entropy": (lambda t: BF.cross_entropy(t, target),
                          lambda t: TF.cross_entropy(t, target), (logits,)),
        "swiglu": (BF.swiglu, lambda g, u: TF.silu(g) * u, (x, rand(64))),
        "linear": (BF.linear, TF.linear, (inp, w, b)),
        "linear+gelu": (lambda *a: BF.linear(*a, activation="gelu"),
                        lambda *a: TF.gelu(TF.linear(*a)), (inp, w, b)),
        "linear+relu": (lambda *a: BF.linear(*a, activation="relu"),
                        lambda *a: TF.relu(TF.linear(*a)), (inp, w, b)),
    })
    return cases



def _per_call_us(fn: Callable, device: str, calls: int) -> float:
    if not device.startswith("cuda"):
        # The CPU time of this thread: what a call costs the host, not counting the time another
        # process holds the core (a shared machine's noise). With one thread and the autograd
        # engine running CPU work on the calling thread, that is all the work of the call.
        t0 = time.thread_time_ns()
        for _ in range(calls):
            fn()
        return (time.thread_time_ns() - t0) / calls / 1e3
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / calls * 1e6


def time_pair_us(ours: Callable, theirs: Callable, device: str, calls: int = 500,
                 rounds: int = 15) -> tuple[float, float]:
    """Microseconds per call of ours and theirs: each side's minimum over `rounds` rounds of
    `calls` calls, the side going first alternating from round to round."""
    for fn in (ours, theirs):  # warm up: caches, lazy initialization
        for _ in range(calls // 10 + 1):
            fn()
    a, b = [], []
    for r in range(rounds):
        for fn, out in ((ours, a), (theirs, b)) if r % 2 == 0 else ((theirs, b), (ours, a)):
            out.append(_per_call_us(fn, device, calls))
    return min(a), min(b)


def _tiny_rows(device: str, ops, reps: int) -> list[Row]:
    rows = []
    calls = 100 * max(1, reps // 4)
    for name, (ours, theirs, inputs) in _tiny_cases(device).items():
        if name not in ops:
            continue
        leaves = [t.detach().requires_grad_() for t in inputs]
        grad = torch.ones_like(theirs(*inputs))

        def fwd(fn, inputs=inputs):
            return lambda: fn(*inputs)

        def fwd_bwd(fn, leaves=leaves, grad=grad):
            return lambda: torch.autograd.grad(fn(*leaves), leaves, grad)

        shape = "x".join(str(s) for s in inputs[0].shape)
        for direction, make, grad_mode in (("fwd", fwd, False), ("fwd+bwd", fwd_bwd, True)):
            with torch.set_grad_enabled(grad_mode):  # around the loop, not in it
                us, tus = time_pair_us(make(ours), make(theirs), device, calls)
            rows.append(Row(family=FAMILY, op=name, shape=shape, dtype="float32",
                            direction=direction, device=device, ms=us / 1e3, torch_ms=tus / 1e3))
    return rows


# --- a real model: a transformers Llama training step


def llama_model(hidden: int, device: str = "cpu", seed: int = 0,
                vocab: int = 32000) -> torch.nn.Module:
    """A small LlamaForCausalLM with random weights, built from a config (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, attn_implementation="sdpa")
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(device)


def llama_step(model: torch.nn.Module, ids: torch.Tensor, loss_fn: Callable) -> Callable:
    """One training step: forward, next-token loss with `loss_fn` (cross_entropy's signature),
    backward; gradients set to None first. Returns the step as a function returning the loss."""
    vocab = model.config.vocab_size

    def step():
        for p in model.parameters():
            p.grad = None
        logits = model(input_ids=ids).logits
        loss = loss_fn(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
        loss.backward()
        return loss
    return step


def llama_pair(hidden: int, device: str = "cpu", batch: int = 4, seq: int = 64,
               vocab: int = 32000):
    """(converted step, plain step) on the same weights and tokens."""
    plain = llama_model(hidden, device, vocab=vocab)
    ours = bnn.convert(copy.deepcopy(plain))
    ids = torch.randint(0, plain.config.vocab_size, (batch, seq),
                        generator=torch.Generator().manual_seed(1)).to(device)
    return llama_step(ours, ids, BF.cross_entropy), llama_step(plain, ids, TF.cross_entropy)


def _llama_rows(device: str, reps: int) -> list[Row]:
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("# overhead: transformers is not installed; llama_step rows skipped")
        return []
    rows = []
    for hidden, vocab in LLAMA_CONFIGS:
        ours, theirs = llama_pair(hidden, device, vocab=vocab)
        # A step takes 0.1 s or more: one call per round, more rounds.
        us, tus = time_pair_us(ours, theirs, device, calls=1, rounds=max(10, reps))
        rows.append(Row(family=FAMILY, op="llama_step",
                        shape=f"hidden {hidden}, vocab {vocab}, 4x64 tokens",
                        dtype="float32", direction="fwd+bwd", device=device, ms=us / 1e3,
                        torch_ms=tus / 1e3, vs="torch (unconverted)"))
    return rows


OPS = (*ACTIVATIONS, "swiglu", "softmax", "log_softmax", "logsumexp", "cross_entropy", "linear",
       "linear+gelu", "linear+relu", "llama_step")


def run(device: str, dtypes=None, sizes=None, ops=None, reps: int = 20, compiled: bool = False):
    """One thread: what a call costs, not how well the kernels parallelize."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny = [o for o in ops or OPS if o != "llama_step"]
        rows = _tiny_rows(device, tiny, reps) if tiny else []
        if not ops or "llama_step" in ops:
            rows += _llama_rows(device, reps)
    finally:
        torch.set_num_threads(threads)
    return rows
