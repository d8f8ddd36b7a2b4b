"""Clipping sharded gradients across processes: ours vs torch.nn.utils on the same FSDP2 gradients.

Ops clip_grad_norm_ (clipping on every call), clip_grad_norm_unclipped (norm within max_norm),
get_total_norm, clip_grad_value_, and clip_grad_norm_floor: what no implementation can beat, our
fused norm and scale kernels called bare on the local shards with one blocking all-reduce between
them (no argument handling, no DTensor bookkeeping), timed against torch's clip_grad_norm_ like
the others, so that its "x torch" is the most any clip_grad_norm_ could gain on the machine.

A world of `ranks` processes (gloo on the CPU over loopback, each rank with cpu_count // ranks
threads, as torchrun would give it; NCCL with one GPU a rank) holds one model-like set of
parameters (bench_utils.model_like_sizes: every third a large matrix, the rest small vectors; CPU
default 200 tensors, 5e7 float32 elements in all; GPU default 288 tensors, 1.21e9) sharded by
fully_shard over all ranks, with random gradients (Shard(0) DTensors, as FSDP2 leaves them after
backward). Both sides get the same gradients; torch's is torch.nn.utils' function (foreach where
torch has it).

Timing: before each call a barrier, so that the ranks start together; a call's time is that of
the slowest rank (the step cannot go on before); the median over 3 x reps calls of each, ours and
torch's alternating call by call. GB/s counts one rank's ideal traffic (its shards: clip_grad_norm_
3 passes, get_total_norm 1, clip_grad_value_ 2). `--ranks` and `--tensors` sweep the world size
and the number of tensors (at a fixed total, `--sizes`).
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import statistics
import tempfile
import time
import traceback

import torch

from .. import utils as BU
from .bench_utils import PASSES, clip_fns, model_like_sizes
from .common import Row, sync

FAMILY = "distributed"
SIZES_HELP = "distributed: total gradient elements across the tensors (sharded over --ranks)"
OPS = ("clip_grad_norm_", "clip_grad_norm_floor", "clip_grad_norm_unclipped", "get_total_norm",
       "clip_grad_value_")
EXTRA_ARGS = ("ranks", "tensors")  # run.py passes these options to run()
DEFAULT_CLIP = {"cpu": (200, 50_000_000), "cuda": (288, 1_210_000_000)}  # tensors, elements
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["float32"]}
DEFAULT_RANKS = 2
WORLD_TIMEOUT = 1800  # seconds for one world's whole benchmark
ROUNDS = 3  # reps x ROUNDS calls of each side


# --- on each rank


def _sharded_params(sizes, device, dtype):
    """Parameters of the given sizes sharded by fully_shard (Shard(0)), with random gradients."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    with torch.device("meta"):
        module = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.empty(n, dtype=dtype)) for n in sizes])
    fully_shard(module)
    module.to_empty(device=device)
    for p in module:
        local = torch.randn(p.to_local().shape, device=device, dtype=dtype)
        p.grad = DTensor.from_local(local, p.device_mesh, p.placements, shape=p.shape,
                                    stride=p.stride())
    return list(module)



def _floor_fns(params, foreach):
    """(the floor, torch's clip_grad_norm_) on FSDP2 gradients, clipping on every call as
    bench_utils.clip_fns' clip_grad_norm_ does: the norm pass over the local shards, the p-th
    power summed over the ranks, the scale pass; nothing else."""
    import torch.distributed as dist

    ops = torch.ops.backprop_ext
    shards = [p.grad._local_tensor for p in params]
    _, theirs = clip_fns("clip_grad_norm_", params, foreach)
    limit = [float(BU.get_total_norm([p.grad for p in params]).full_tensor())]

    def floor():
        square = ops.multi_tensor_norm(shards, 2.0).double().square()
        dist.all_reduce(square)
        limit[0] *= 0.9
        ops.multi_tensor_scale_(shards, square.sqrt(), limit[0])
    return floor, theirs


def _paired_ms(ours, theirs, device, reps, warmup=3):
    """Median milliseconds of ours and of theirs, each call the slowest rank's. The two alternate
    call by call (which goes first alternating too), so that a neighbour's load on this shared
    machine falls on both alike."""
    import torch.distributed as dist

    for _ in range(warmup):
        ours()
        theirs()
    samples = {ours: [], theirs: []}
    for i in range(2 * reps):
        fn = (ours, theirs)[i % 2] if (i // 2) % 2 == 0 else (theirs, ours)[i % 2]
        dist.barrier()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples[fn].append((time.perf_counter() - t0) * 1e3)
    # A call is done when every rank is done: take the slowest rank's time of each call.
    slowest = torch.tensor([samples[ours], samples[theirs]], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return statistics.median(slowest[0].tolist()), statistics.median(slowest[1].tolist())


def _rank_main(rank, ranks, device_kind, cases, reps, out_dir):
    import torch.distributed as dist

    try:
        if device_kind == "cuda":
            torch.cuda.set_device(rank)
            device, backend = f"cuda:{rank}", "nccl"
        else:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks))
            device, backend = "cpu", "gloo"
        store = dist.FileStore(os.path.join(out_dir, "store"), ranks)
        dist.init_process_group(backend, store=store, rank=rank, world_size=ranks,
                                timeout=datetime.timedelta(seconds=WORLD_TIMEOUT))
        rows = []
        for n_tensors, total, dtype_name, names in cases:
            params = _sharded_params(model_like_sizes(n_tensors, total), device,
                                     getattr(torch, dtype_name))
            grads = [p.grad for p in params]
            # Validate before timing: the same norm as torch's.
            ours = BU.get_total_norm(grads).full_tensor()
            theirs = torch.nn.utils.get_total_norm(grads).full_tensor()
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=0)
            local_bytes = sum(p.grad.to_local().numel() for p in params) * grads[0].element_size()
            foreach = True if device_kind == "cuda" else None
            for name in names:
                fns = (_floor_fns(params, foreach) if name == "clip_grad_norm_floor"
                       else clip_fns(name, params, foreach))
                ms, torch_ms = _paired_ms(*fns, device, ROUNDS * reps)
                rows.append(dict(
                    op=name, shape=f"{n_tensors} tensors, {total:.3g} elems, {ranks} ranks",
                    dtype=dtype_name, ms=ms, torch_ms=torch_ms, bytes=PASSES[name] * local_bytes))
            del params, grads
        if rank == 0:
            with open(os.path.join(out_dir, "rows.json"), "w") as f:
                json.dump(rows, f)
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        os._exit(1)  # at once: peers waiting on this rank fail instead of waiting


# --- the launcher


def _context():
    """A fork server with torch and backprop_ext imported (ranks start in a tenth of a second,
    not seconds each), or plain spawn where there is none."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "backprop_ext", "torch.distributed.fsdp"])  # if new
    return ctx


def _run_world(ranks, device_kind, cases, reps) -> list[dict]:
    ctx = _context()
    with tempfile.TemporaryDirectory() as out_dir:
        procs = [ctx.Process(target=_rank_main, args=(r, ranks, device_kind, cases, reps, out_dir))
                 for r in range(ranks)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + WORLD_TIMEOUT
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        errors = [f for f in sorted(os.listdir(out_dir)) if f.endswith(".err")]
        if errors:
            with open(os.path.join(out_dir, errors[0])) as f:
                raise RuntimeError(f"bench_distributed: {errors[0][:-4]} failed:\n{f.read()}")
        rows_path = os.path.join(out_dir, "rows.json")
        if not os.path.exists(rows_path):
            raise RuntimeError(f"bench_distributed: the world of {ranks} did not finish within "
                               f"{WORLD_TIMEOUT} s (exit codes {[p.exitcode for p in procs]})")
        with open(rows_path) as f:
            return json.load(f)


def run(device: str, dtypes=None, sizes=None, ops=None, reps: int = 20, compiled: bool = False,
        ranks=None, tensors=None):
    kind = device.split(":")[0]
    if kind == "cuda" and torch.cuda.device_count() < max(ranks or [DEFAULT_RANKS]):
        print(f"# {FAMILY}: skipped, needs {max(ranks or [DEFAULT_RANKS])} GPUs")
        return []
    names = [o for o in (ops or OPS) if o in OPS]
    cases = [(n, total, dtype_name, names)
             for dtype_name in dtypes or DEFAULT_DTYPES[kind]
             for total in sizes or [DEFAULT_CLIP[kind][1]]
             for n in tensors or [DEFAULT_CLIP[kind][0]]]
    rows = []
    for world_size in ranks or [DEFAULT_RANKS]:
        for r in _run_world(world_size, kind, cases, reps):
            rows.append(Row(family=FAMILY, direction="clip", device=device, **r))
    return rows
