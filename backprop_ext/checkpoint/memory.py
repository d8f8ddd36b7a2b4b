"""Measuring activation memory without a GPU, for the checkpoint tests, planner and benchmarks.

Three measures:

* AllocatorPeak: the peak of the bytes PyTorch's CPU allocator holds above what it held at the
  start, every allocation counted, those that kernels make and free inside themselves included
  (csrc/profiling/allocation_meter.cpp: the allocator's reports to the profiler, without a
  profiler). The CPU analogue of torch.cuda.max_memory_allocated(); what cpu_peak_bytes()
  measures, and so the benchmarks and the memory-budget planner on the CPU. Not available while
  a profiler is active on the thread (there is one profiler state per thread): cpu_peak_bytes()
  then falls back to
* LiveTensorMemory: the peak of the bytes held by tensor storages that ops created inside the
  context and that are still alive. A TorchDispatchMode sees every op's outputs (forward,
  recomputation and backward alike, on the calling thread, which is where autograd runs CPU work),
  counts each new storage once (views, in-place and out= results share an input's and are not
  new, even where that input was allocated before the context) and a weakref finalizer on the
  storage subtracts it when it is freed. On CPU this is the honest analogue of
  torch.cuda.max_memory_allocated() minus what existed before (parameters, inputs); it does not
  see allocator caching or scratch buffers internal to a kernel.
* SavedTensorBytes: the bytes autograd saves for backward, counted once per storage through
  torch.autograd.graph.saved_tensors_hooks. It sees what the graph outside any checkpointed region
  keeps; inside a region torch.utils.checkpoint installs its own hooks (and selective
  checkpointing caches its outputs outside autograd), so a checkpointed region shows up as the
  tensors it keeps rather than as its activations: exactly the saving checkpointing is for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .. import _C


class LiveTensorMemory(TorchDispatchMode):
    """with LiveTensorMemory() as mem: ...  then mem.peak (bytes), mem.live (bytes still held)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # storage key -> bytes, for storages alive now

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # An output sharing an input's storage (a view, an in-place or out= result) is no new
        # memory, even when the input was allocated before the context (a parameter's .t()).
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage._cdata  # the StorageImpl's address: one per live storage
            if key in self._sizes or key in inputs:
                continue
            nbytes = storage.nbytes()
            self._sizes[key] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            # The Python storage object lives exactly as long as the C++ storage does.
            weakref.finalize(storage, self._free, key)
        return out


class AllocatorPeak:
    """with AllocatorPeak() as mem: ...  then mem.peak, mem.live: bytes of PyTorch's CPU allocator
    at the peak and at the end, above what it held at the start (see the module docstring).
    RuntimeError on entry while a profiler is active on this thread."""

    def __init__(self):
        self.peak = 0
        self.live = 0

    def __enter__(self) -> AllocatorPeak:
        _C._allocation_meter_start()
        return self

    def __exit__(self, *exc) -> None:
        self.peak, self.live = _C._allocation_meter_stop()


def cpu_peak_bytes(step) -> int:
    """Peak CPU memory that step() allocates above what existed before: AllocatorPeak's, or,
    where the thread's profiler state is taken (torch's profiler, or a meter already running
    around this call), LiveTensorMemory's (which sees no kernel's internal buffers)."""
    meter = AllocatorPeak()
    try:
        meter.__enter__()
    except RuntimeError:
        with LiveTensorMemory() as live:
            step()
        return live.peak
    try:
        step()
    finally:
        meter.__exit__()
    return meter.peak


class SavedTensorBytes(torch.autograd.graph.saved_tensors_hooks):
    """with SavedTensorBytes() as saved: <forward>  then saved.bytes, saved.count."""

    def __init__(self):
        self.bytes = 0
        self.count = 0
        self._seen: set[int] = set()

        def pack(t: torch.Tensor):
            storage = t.untyped_storage()
            key = storage._cdata
            if key not in self._seen:
                self._seen.add(key)
                self.bytes += storage.nbytes()
                self.count += 1
            return t

        super().__init__(pack, lambda t: t)

    def __enter__(self) -> SavedTensorBytes:
        super().__enter__()
        return self


# --- one measured plain step, module by module (for CheckpointedSequential's memory budget)


@dataclasses.dataclass
class StepProfile:
    """A plain forward (and on CUDA, backward) of a sequence of modules, module by module.

    records: every storage saved for backward that the step created (parameters and the input
        excluded), with the index of the module that created it (`producer`), of those that saved
        it (`savers`) and, for an activation output a rebuild scope would rebuild, its kept
        source and the measured time to rebuild it (`rebuild_s`).
    output_bytes[i]: bytes of module i's output, when the step created it (0 when it is the
        input, or a view of it, passed through).
    forward_s[i]: module i's forward time (what recomputing it costs).
    saved_bytes: bytes saved for backward by the plain step.
    peak_bytes: the plain forward + backward's peak memory, what the budget is a fraction of: on
        CUDA torch.cuda.max_memory_allocated() above what was allocated before, elsewhere
        cpu_peak_bytes(); the parameters' gradients the step makes included (see step_peak_bytes).
    grad_bytes[i]: bytes of the gradients module i's parameters get (gradient_bytes()).
    """

    records: list
    rebuild_s: dict  # id(record) -> seconds
    output_bytes: list
    forward_s: list
    saved_bytes: int
    peak_bytes: int | None
    device: str
    grad_bytes: list | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _leaving_no_trace(modules, device: torch.device):
    """A measured step must leave no trace: the modules' buffers (batch-norm statistics) and the
    RNG (dropout) are as they were before it."""
    buffers = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def profile_sequential(modules, input: torch.Tensor) -> StepProfile:
    """Runs `modules` in order on `input` plainly (twice: the first run warms up) and measures
    what each saves, creates and costs (see StepProfile). The graph is discarded; parameters'
    .grad, the modules' buffers and the RNG state are left as they were; on CUDA the peak-memory
    statistics are reset (torch.cuda.reset_peak_memory_stats)."""
    modules = list(modules)
    # Detached: the step's backward must stop at the input, not run on into the caller's graph.
    input = input.detach().requires_grad_(input.requires_grad)
    with _leaving_no_trace(modules, input.device):
        return _profile(modules, input, input.device)


def step_peak_bytes(forward, modules, input: torch.Tensor) -> int:
    """Peak memory of one training step of forward(input) (a function running `modules`): the
    forward, the sum of its output and the backward, the parameters' gradients allocated afresh
    (optimizer.zero_grad() sets them to None) and counted from their module's backward on. On
    CUDA the allocator's peak above what was allocated before, elsewhere cpu_peak_bytes().
    Leaves no trace: the RNG, the modules' buffers and .grad, and the caller's graph (the input
    is detached) are as they were."""
    modules = list(modules)
    device = input.device
    input = input.detach().requires_grad_(input.requires_grad)

    def step():
        x = forward(input)
        if isinstance(x, torch.Tensor) and x.requires_grad:
            x = x.sum()  # the output goes, as in a training step
            _backward_with_fresh_gradients(x, modules)

    with _leaving_no_trace(modules, device), torch.enable_grad():
        if device.type != "cuda":
            return cpu_peak_bytes(step)
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base


def _run(modules, x):
    for m in modules:
        x = m(x)
    return x


def step_clock(device) -> tuple:
    """(clock, its name) for timing work on `device`. With one CPU thread every op of a step runs
    on the calling thread (autograd runs CPU backward there too), so that thread's CPU time
    measures the step and, unlike wall time, not the other jobs sharing the machine."""
    if torch.device(device).type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time, "thread CPU time"
    return time.perf_counter, "wall time"


def _backward_with_fresh_gradients(loss: torch.Tensor, modules) -> None:
    """loss.backward() for the sum of the step's output (the caller holds the sum only, so the
    output is freed as in a training step), with every parameter's gradient made afresh, as in a
    training loop whose optimizer.zero_grad() sets them to None: the gradients the step allocates
    count in its peak (they are alive from their module's backward on, and the step's peak is
    often late in backward where they are). Every .grad is left as it was."""
    params = list({id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values())
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        loss.backward()
    finally:
        for p, g in zip(params, grads):
            p.grad = g


def gradient_bytes(modules) -> list:
    """gradient_bytes(modules)[i]: bytes of the gradients module i's parameters get in backward,
    each parameter counted once, at the last module that uses it (backward reaches it first)."""
    out, seen = [0] * len(modules), set()
    for i in reversed(range(len(modules))):
        for p in modules[i].parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out[i] += p.numel() * p.element_size()
    return out


def _profile(modules, input, device) -> StepProfile:
    from .recompute import Observation, rebuild_scope

    clock = step_clock(device)[0]
    with torch.enable_grad(), rebuild_scope(Observation()):  # first-call costs out of the timings
        x = input
        for m in modules:
            x = m(x)
    del x
    cuda = device.type == "cuda"
    if cuda:
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    observe = Observation()
    output_bytes, forward_s = [], []
    x = input
    with torch.enable_grad(), rebuild_scope(observe):
        for i, m in enumerate(modules):
            observe.tag = i
            _sync(device)
            t0 = clock()
            x = m(x)
            _sync(device)
            forward_s.append(clock() - t0)
            made_here = isinstance(x, torch.Tensor) and observe.producer(x) is not None
            output_bytes.append(x.untyped_storage().nbytes() if made_here else 0)
    forward_peak = torch.cuda.max_memory_allocated(device) - base if cuda else None
    records = [r for r in observe.records if r.producer is not None]
    rebuild_s, z = {}, None
    for r in records:
        if r.rebuilt is not None:
            z = r.rebuilt.source.unpack()
            _sync(device)
            t0 = clock()
            r.rebuilt.rebuild(z)
            _sync(device)
            rebuild_s[id(r)] = clock() - t0
            r.rebuilt = None
    del z
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        if isinstance(x, torch.Tensor) and x.requires_grad:
            x = x.sum()
            _backward_with_fresh_gradients(x, modules)
        _sync(device)
        peak = max(forward_peak, torch.cuda.max_memory_allocated(device) - base)
    else:  # one more plain step, metered (not timed)
        del x
        peak = step_peak_bytes(functools.partial(_run, modules), modules, input)
    return StepProfile(records=records, rebuild_s=rebuild_s, output_bytes=output_bytes,
                       forward_s=forward_s, saved_bytes=sum(r.nbytes for r in records),
                       peak_bytes=peak, device=str(device), grad_bytes=gradient_bytes(modules))
