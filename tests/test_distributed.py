"""Across processes: our layers, clipping, checkpointing and gradient-flow report under
DistributedDataParallel and FSDP2 (fully_shard), each against the same computation in one process.

Every test starts a world of 2 or 3 processes (gloo on the CPU, this machine's loopback only) from
a fork server that has torch and backprop_ext imported already, so that a world starts in a tenth
of a second rather than seconds. Each rank runs one scenario function of this file with the same
seed (every rank builds the same models and the same global batch, and takes its share of the
batch) and asserts in place; a failing rank's traceback fails the test. Nothing can hang:
collectives time out after COLLECTIVE_TIMEOUT seconds, a rank that fails exits at once (its peers'
collectives then fail too), and a world still running after WORLD_TIMEOUT seconds is killed.

The models are sized so that shards are uneven and some ranks hold nothing of some parameters:
out_features 7 and 2 over 2 and 3 ranks, a one-element parameter only rank 0 holds.
"""

from __future__ import annotations

import datetime
import functools
import math
import multiprocessing
import os
import time
import traceback

import pytest
import torch
import torch.distributed as dist

import backprop_ext.functional as BF
import backprop_ext.nn as bnn
import backprop_ext.utils as BU
from backprop_ext.testing import assert_matches

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend")

COLLECTIVE_TIMEOUT = 60  # seconds, for every collective (and the rendezvous)
WORLD_TIMEOUT = 180  # seconds, for a whole world to finish
INF = float("inf")
NORM_TYPES = [2.0, INF, 1.5]
IN_FEATURES, CLASSES, BATCH = 5, 2, 12  # BATCH: divisible by 2 and 3, an equal share each


# --- launching a world


@functools.cache
def _context():
    ctx = multiprocessing.get_context("forkserver")
    # Imported once in the server, inherited by every rank it forks.
    ctx.set_forkserver_preload(["torch", "backprop_ext", "torch.distributed.fsdp", __name__])
    return ctx


def _rank_main(scenario, rank, world_size, device, args, out_dir):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    torch.set_num_threads(1)  # the ranks share the machine's cores
    try:
        if device == "cuda":
            torch.cuda.set_device(rank)
        store = dist.FileStore(os.path.join(out_dir, "store"), world_size)
        dist.init_process_group("nccl" if device == "cuda" else "gloo", store=store, rank=rank,
                                world_size=world_size,
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT))
        torch.manual_seed(0)
        scenario(rank, world_size, device, *args)
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        os._exit(1)  # now, without a goodbye to peers that may wait on this rank


@pytest.fixture
def world(tmp_path):
    """world(scenario, world_size, *args, device="cpu") runs scenario(rank, world_size, device,
    *args) on every rank of a new world and fails the test with the ranks' tracebacks."""

    def run(scenario, world_size, *args, device="cpu"):
        ctx = _context()
        procs = [ctx.Process(target=_rank_main, daemon=True,
                             args=(scenario, rank, world_size, device, args, str(tmp_path)))
                 for rank in range(world_size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + WORLD_TIMEOUT
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [rank for rank, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
        errors = sorted(tmp_path.glob("rank*.err"), key=lambda f: f.stat().st_mtime)
        report = "".join(f"--- {f.stem} (the first to fail first):\n{f.read_text()}"
                         for f in errors)
        if hung:
            pytest.fail(f"ranks {hung} still running after {WORLD_TIMEOUT} s, killed\n{report}")
        if errors:
            pytest.fail(report, pytrace=False)
        codes = [p.exitcode for p in procs]
        assert codes == [0] * world_size, f"exit codes {codes} without a traceback"

    return run


# --- models and data (built the same on every rank: same seed)


class Net(torch.nn.Module):
    """Linear layers of 7, 6 and 2 outputs (7 splits unevenly over 2 and 3 ranks, 2 leaves a
    third rank without a shard) and a one-element temperature that only rank 0 holds a part of."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(IN_FEATURES, 7), torch.nn.GELU(), torch.nn.Linear(7, 6),
            torch.nn.Tanh(), torch.nn.Linear(6, CLASSES))
        self.temperature = torch.nn.Parameter(torch.full((1,), 1.5))

    def forward(self, x):
        return self.body(x) * self.temperature


def _net(device, fuse=False):
    torch.manual_seed(1)
    net = bnn.convert(Net(), fuse=fuse).to(device)
    assert type(net.body[0]) is bnn.Linear  # the layers under test are ours
    assert (net.body[0].activation == "gelu") == fuse
    return net


def _batch(device):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, IN_FEATURES, generator=g).to(device)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g).to(device)
    return x, y


def _share(t, rank, world_size):
    """This rank's rows of the global batch."""
    n = t.shape[0] // world_size
    return t[rank * n:(rank + 1) * n]


def _loss(model, x, y):
    return BF.cross_entropy(model(x), y)


def _fully_shard(model, wrap, reshard, unit=torch.nn.Linear):
    """fully_shard on each `unit` module (wrap="per_layer") and on the model."""
    from torch.distributed.fsdp import fully_shard

    if wrap == "per_layer":
        for m in [m for m in model.modules() if isinstance(m, unit)]:
            fully_shard(m, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    return model


def _full(t):
    """The whole tensor on every rank (a DTensor gathered; a plain tensor as it is)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _named(model):
    """{name: parameter}, without the "module." of DDP and Checkpoint wrappers."""
    return {name.replace("module.", ""): p for name, p in model.named_parameters()}


def _assert_same(ours, theirs, what, rtol=1e-5, atol=1e-6):
    """Equal dicts of tensors (ours may be sharded)."""
    assert ours.keys() == theirs.keys(), (list(ours), list(theirs))
    for name, t in ours.items():
        torch.testing.assert_close(_full(t), theirs[name], rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"{what} {name}: {m}")


def _grads(model):
    return {name: p.grad for name, p in _named(model).items()}


def _global_mean(value, world_size):
    """The mean over ranks of a rank's loss: the loss of the global batch (equal shares)."""
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world_size


def _train_side_by_side(model, ref, rank, world_size, device, steps=2):
    """Runs `steps` SGD steps of `model` (distributed, on this rank's share) and of `ref` (one
    process, the global batch), clipping both with our clip_grad_norm_, and checks loss,
    gradients, clipping norm and parameters after each step."""
    x, y = _batch(device)
    xs, ys = _share(x, rank, world_size), _share(y, rank, world_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    for step in range(steps):
        loss = _loss(model, xs, ys)
        loss.backward()
        loss_ref = _loss(ref, x, y)
        loss_ref.backward()
        torch.testing.assert_close(_global_mean(loss, world_size), loss_ref.detach())
        _assert_same(_grads(model), _grads(ref), f"step {step} gradient of")
        norm = BU.clip_grad_norm_(model.parameters(), 0.05)  # clips: the norm is ~0.5
        norm_ref = BU.clip_grad_norm_(ref.parameters(), 0.05)
        torch.testing.assert_close(_full(norm), norm_ref)
        assert norm_ref > 0.05
        opt.step()
        opt_ref.step()
        opt.zero_grad()
        opt_ref.zero_grad()
        _assert_same(_named(model), _named(ref), f"step {step}")


# --- DDP and FSDP2: loss, gradients and training equal one process on the global batch


def _ddp_scenario(rank, world_size, device):
    from torch.nn.parallel import DistributedDataParallel as DDP

    for fuse in (False, True):
        ref = _net(device, fuse)
        model = DDP(_net(device, fuse), device_ids=[rank] if device == "cuda" else None)
        _train_side_by_side(model, ref, rank, world_size, device)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_matches_one_process(world, world_size):
    world(_ddp_scenario, world_size)


def _fsdp_scenario(rank, world_size, device, wrap, reshard):
    from torch.distributed.tensor import DTensor

    for fuse in (False, True):
        ref = _net(device, fuse)
        model = _fully_shard(_net(device, fuse), wrap, reshard)
        assert all(isinstance(p, DTensor) for p in model.parameters())
        assert isinstance(model.body[0], bnn.Linear)  # still ours (FSDPLinear subclasses it)
        _train_side_by_side(model, ref, rank, world_size, device)


@pytest.mark.parametrize("reshard", [True, False], ids=["reshard", "no_reshard"])
@pytest.mark.parametrize("wrap", ["per_layer", "whole"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_fsdp2_matches_one_process(world, world_size, wrap, reshard):
    world(_fsdp_scenario, world_size, wrap, reshard)


# --- clipping on sharded gradients equals torch's on the same gradients and one process's


def _twin(params):
    """Parameters holding copies of params' gradients (torch's clipping runs on these)."""
    return _holding([p.grad for p in params])


def _holding(grads):
    """Parameters whose gradients are copies of `grads`."""
    out = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        out.append(p)
    return out


def _float64(params):
    return [torch.nn.Parameter(_full(p).detach().double()) for p in params]


def _sharded_grads(rank, world_size, device):
    """(FSDP2 per-layer model after a backward on this rank's share, float64 parameters of the
    one-process model with its gradients on the global batch)."""
    x, y = _batch(device)
    ref = _net(device)
    _loss(ref, x, y).backward()
    model = _fully_shard(_net(device), "per_layer", True)
    _loss(model, _share(x, rank, world_size), _share(y, rank, world_size)).backward()
    ref64 = _float64(ref.parameters())
    for q, p in zip(ref64, ref.parameters()):
        q.grad = p.grad.double()
    return model, ref64


def _held_everywhere(params, world_size):
    """Whether every rank holds a part of each parameter; asserts that the cases this file is
    about are there: some shard sizes differ, some shards are empty."""
    sizes = torch.tensor([p.to_local().numel() for p in params], device=params[0].device)
    everyone = [torch.empty_like(sizes) for _ in range(world_size)]
    dist.all_gather(everyone, sizes)
    everyone = torch.stack(everyone)
    assert (everyone == 0).any(), "no rank without a shard"
    assert (everyone.max(0).values != everyone.min(0).values).any(), "every split even"
    return (everyone > 0).all(0).tolist()


def _assert_replicated(value, world_size):
    """value is a replicated DTensor with the same local value on every rank."""
    from torch.distributed.tensor import DTensor, Replicate

    assert isinstance(value, DTensor) and all(isinstance(p, Replicate) for p in value.placements)
    local = value.to_local().reshape(1).double()
    everyone = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(everyone, local)
    assert all(torch.equal(e, local) or (e.isnan().all() and local.isnan().all())
               for e in everyone), everyone


def _assert_close(ours, expected):
    """ours (float32, sharded or not) against a float64 value, where torch gives no yardstick."""
    torch.testing.assert_close(_full(ours).double(), expected, rtol=1e-5, atol=1e-7)


def _clipping_scenario(rank, world_size, device, norm_type):
    from torch.distributed.tensor.debug import CommDebugMode

    model, ref64 = _sharded_grads(rank, world_size, device)
    params = list(model.parameters())
    held = _held_everywhere(params, world_size)
    # torch raises for the inf norm of an empty shard (torch._foreach_norm: a max has no
    # identity); ours counts it as no elements. Against torch: the parameters it can take.
    comparable = [i for i, h in enumerate(held) if h or norm_type != INF]

    def expect(indices):
        return torch.linalg.vector_norm(torch.cat([ref64[i].grad.flatten() for i in indices]),
                                        norm_type)

    expected = expect(range(len(params)))
    max_norm = 0.25 * expected.item()  # clipping happens

    # get_total_norm: one all-reduce for all the gradients, a replicated DTensor like torch's
    grads = [p.grad for p in params]
    with CommDebugMode() as comm:
        ours = BU.get_total_norm(grads, norm_type)
    assert comm.get_total_counts() == 1, comm.get_comm_counts()
    _assert_replicated(ours, world_size)
    _assert_close(ours, expected)
    subset = [grads[i] for i in comparable]
    ours, theirs = (BU.get_total_norm(subset, norm_type),
                    torch.nn.utils.get_total_norm(subset, norm_type))
    assert type(ours) is type(theirs) and ours.dtype == theirs.dtype
    assert ours.device == theirs.device and ours.device_mesh == theirs.device_mesh
    assert_matches(ours.full_tensor(), theirs.full_tensor(), expect(comparable))
    # A rank may hold nothing of every tensor it is given.
    temperature = list(_named(model)).index("temperature")
    _assert_close(BU.get_total_norm([model.temperature.grad], norm_type), expect([temperature]))

    # clip_grad_norm_ on every gradient: one process's norm and clipped gradients, one all-reduce
    mine, ref = _twin(params), _twin(ref64)
    with CommDebugMode() as comm:
        total = BU.clip_grad_norm_(mine, max_norm, norm_type)
    assert comm.get_total_counts() == 1, comm.get_comm_counts()
    _assert_replicated(total, world_size)
    _assert_close(total, expected)
    torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type)
    for p, r in zip(mine, ref):
        _assert_close(p.grad, r.grad)
    # ... and on the gradients torch takes: torch's norm and clipped gradients too
    mine, theirs = _twin([params[i] for i in comparable]), _twin([params[i] for i in comparable])
    ref = _twin([ref64[i] for i in comparable])
    total = BU.clip_grad_norm_(mine, max_norm, norm_type)
    total_theirs = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type)
    assert_matches(total.full_tensor(), total_theirs.full_tensor(), expect(comparable))
    for i, (p, q, r) in enumerate(zip(mine, theirs, ref)):
        assert p.grad.placements == q.grad.placements, i
        assert_matches(p.grad.full_tensor(), q.grad.full_tensor(), r.grad)

    # clip_grads_with_norm_ given a norm (ours, or torch's, for inf a pending max): torch's
    # coefficient, the same gradients bit for bit
    mine, theirs = _twin(params), _twin(params)
    for norm in (BU.get_total_norm([grads[i] for i in comparable], norm_type),
                 torch.nn.utils.get_total_norm([grads[i] for i in comparable], norm_type)):
        BU.clip_grads_with_norm_(mine, 0.5 * max_norm, norm)
        torch.nn.utils.clip_grads_with_norm_(theirs, 0.5 * max_norm, norm)
        for i, (p, q) in enumerate(zip(mine, theirs)):
            assert torch.equal(p.grad.to_local(), q.grad.to_local()), i

    # clip_grad_value_: clamps each rank's part, as torch does
    value = 0.2 * max(p.grad.full_tensor().abs().max().item() for p in params)
    BU.clip_grad_value_(mine, value)
    torch.nn.utils.clip_grad_value_(theirs, value)
    for i, (p, q) in enumerate(zip(mine, theirs)):
        assert torch.equal(p.grad.to_local(), q.grad.to_local()), i
        assert (p.grad.to_local().abs() <= value).all(), i


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=lambda p: f"p{p:g}")
@pytest.mark.parametrize("world_size", [2, 3])
def test_clipping_sharded_gradients_matches_torch_and_one_process(world, world_size, norm_type):
    world(_clipping_scenario, world_size, norm_type)


def _placements_scenario(rank, world_size, device):
    """Gradients laid out by hand: uneven Shard(0) and Shard(1), Replicate (counted once),
    bfloat16, a one-element shard, Partial (torch's path), and plain tensors beside them."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode

    mesh = init_device_mesh(device, (world_size,))
    g = torch.Generator().manual_seed(3)
    full = {"rows": torch.randn(7, 5, generator=g), "cols": torch.randn(4, 7, generator=g),
            "replicated": torch.randn(6, generator=g), "bf16": torch.randn(5, 3, generator=g),
            "one": torch.randn(1, generator=g) * 4}
    layout = {"rows": [Shard(0)], "cols": [Shard(1)], "replicated": [Replicate()],
              "bf16": [Shard(0)], "one": [Shard(0)]}
    dtypes = {"bf16": torch.bfloat16}
    sharded = {k: distribute_tensor(v.to(device, dtypes.get(k, torch.float32)), mesh, layout[k])
               for k, v in full.items()}
    parts = [torch.randn(3, 3, generator=g) for _ in range(world_size)]  # addends
    partial = DTensor.from_local(parts[rank].to(device), mesh, [Partial()], run_check=False)
    plain = torch.randn(4, generator=g).to(device)  # the same on every rank, as under DDP
    reference = {k: v.to(dtypes.get(k, torch.float32)).double() for k, v in full.items()}
    reference_partial = torch.stack(parts).double().sum(0)
    tensors = list(sharded.values())

    for p in NORM_TYPES:
        def expect(tensors, p=p):
            return torch.linalg.vector_norm(torch.cat([t.flatten() for t in tensors]), p)

        with CommDebugMode() as comm:
            ours = BU.get_total_norm(tensors, p)
        assert comm.get_total_counts() == 1, comm.get_comm_counts()  # however many tensors
        _assert_replicated(ours, world_size)
        assert ours.dtype == torch.float32  # torch's: float32 and bfloat16 promote to float32
        _assert_close(ours, expect(reference.values()))
        # Against torch, Partial included (for inf without the one-element tensor, whose empty
        # shards torch refuses).
        keep = [k for k in full if not (p == INF and k == "one")]
        subset = [sharded[k] for k in keep] + [partial]
        assert_matches(BU.get_total_norm(subset, p).full_tensor(),
                       torch.nn.utils.get_total_norm(subset, p).full_tensor(),
                       expect([reference[k] for k in keep] + [reference_partial]))
        # foreach=False: the same kernels a tensor per call
        torch.testing.assert_close(BU.get_total_norm(tensors, p, foreach=False).full_tensor(),
                                   ours.full_tensor())
        # torch refuses DTensors mixed with plain tensors; ours counts a plain tensor as whole
        mixed = BU.get_total_norm([plain] + tensors, p)
        assert mixed.device_mesh == mesh
        _assert_close(mixed, expect([plain.double()] + list(reference.values())))

    # A NaN or inf in the last rank's shard reaches every rank's norm, of every order (a max
    # all-reduce need not carry NaN: gloo's keeps the first operand's value).
    for bad in (math.nan, INF):
        t = distribute_tensor(torch.arange(2.0 * world_size, device=device), mesh, [Shard(0)])
        if rank == world_size - 1:
            t.to_local()[1] = bad
        for p in NORM_TYPES:
            norm = BU.get_total_norm([t], p)
            _assert_replicated(norm, world_size)
            assert norm.to_local().isnan() if math.isnan(bad) else norm.to_local() == INF, p
        with pytest.raises(RuntimeError, match="non-finite"):  # on every rank alike
            BU.clip_grad_norm_(_holding([t]), 1.0, error_if_nonfinite=True)

    # Scaling and clamping: each rank's parts (the Partial one through torch's DTensor ops), as
    # torch does on the same gradients and one process in float64.
    grads = tensors + [partial]
    ours, theirs = _holding(grads), _holding(grads)
    ref = _holding(list(reference.values()) + [reference_partial])
    total = BU.clip_grad_norm_(ours, 1.0)
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert torch.nn.utils.clip_grad_norm_(ref, 1.0) > 1.0  # clipping happens
    _assert_replicated(total, world_size)
    for clip_value in (None, 0.05):
        if clip_value is not None:  # all but the Partial one (see below)
            for holders in (ours, theirs, ref):
                (BU if holders is ours else torch.nn.utils).clip_grad_value_(holders[:-1],
                                                                             clip_value)
        for i, (a, b, r) in enumerate(zip(ours, theirs, ref)):
            assert a.grad.placements == b.grad.placements, i
            assert_matches(a.grad.full_tensor(), b.grad.full_tensor(), r.grad.to(device))
    # Clamping addends does not clamp their sum: we refuse, before touching anything, on every
    # torch; torch's DTensor clamp_ refuses too from 2.14 (2.11's clamps the addends).
    before = ours[-1].grad.to_local().clone()
    with pytest.raises(RuntimeError, match="clamping the addends of a Partial placement"):
        BU.clip_grad_value_(ours, 0.05)
    assert torch.equal(ours[-1].grad.to_local(), before)
    if torch.torch_version.TorchVersion(torch.__version__) >= (2, 14):
        with pytest.raises(RuntimeError, match="require placement changes"):
            torch.nn.utils.clip_grad_value_(theirs[-1:], 0.05)


@pytest.mark.parametrize("world_size", [2, 3])
def test_clipping_every_placement(world, world_size):
    world(_placements_scenario, world_size)


# --- checkpointing inside fully_shard units gives the same gradients


def _blocks(device, fuse):
    torch.manual_seed(1)
    blocks = [torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.GELU(), torch.nn.Linear(7, 6),
                                  torch.nn.Tanh()) for _ in range(3)]
    return [bnn.convert(b, fuse=fuse).to(device) for b in blocks]


def _checkpoint_scenario(rank, world_size, device, layout, policy):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, 6, generator=g).to(device)
    y = torch.randint(0, 6, (BATCH,), generator=g).to(device)
    for fuse in (False, True):
        ref = torch.nn.Sequential(*_blocks(device, fuse))
        if layout == "Checkpoint":  # each block a fully_shard unit checkpointing its forward
            model = _fully_shard(torch.nn.Sequential(
                *[bnn.Checkpoint(b, policy=policy) for b in _blocks(device, fuse)]),
                "per_layer", True, unit=bnn.Checkpoint)
        else:  # one fully_shard unit checkpointing two of its three segments
            model = _fully_shard(bnn.CheckpointedSequential(
                *_blocks(device, fuse), segments=3, policy=policy), "whole", True)
        loss = BF.cross_entropy(model(_share(x, rank, world_size)), _share(y, rank, world_size))
        loss.backward()
        loss_ref = BF.cross_entropy(ref(x), y)
        loss_ref.backward()
        torch.testing.assert_close(_global_mean(loss, world_size), loss_ref.detach())
        _assert_same(_grads(model), _grads(ref), f"fuse={fuse}: gradient of")


@pytest.mark.parametrize("policy", ["full", "selective"])
@pytest.mark.parametrize("layout", ["Checkpoint", "CheckpointedSequential"])
def test_checkpoint_inside_fsdp2_units(world, layout, policy):
    world(_checkpoint_scenario, 2, layout, policy)


# --- gradient_flow reports all-ranks norms


def _gradient_flow_scenario(rank, world_size, device):
    model, ref64 = _sharded_grads(rank, world_size, device)
    ref = _net(device)  # for the names; its parameters are ref64's values
    for p, q in zip(ref.parameters(), ref64):
        p.grad = q.grad.float()
    for kwargs in ({}, {"norm_type": INF}, {"by": "module"}):
        report, expected = BU.gradient_flow(model, **kwargs), BU.gradient_flow(ref, **kwargs)
        assert [(r.name, r.numel, r.status) for r in report.layers] == [
            (r.name, r.numel, r.status) for r in expected.layers]
        for r, e in zip(report.layers, expected.layers):
            assert r.grad_norm == pytest.approx(e.grad_norm, rel=1e-5), r.name
            assert r.weight_norm == pytest.approx(e.weight_norm, rel=1e-6), r.name
        assert report.total_grad_norm == pytest.approx(expected.total_grad_norm, rel=1e-5)
        everyone = [None] * world_size
        dist.all_gather_object(everyone, str(report))
        assert everyone == [str(report)] * world_size  # the same report on every rank


@pytest.mark.parametrize("world_size", [2, 3])
def test_gradient_flow_reports_all_ranks_norms(world, world_size):
    world(_gradient_flow_scenario, world_size)


# --- larger meshes and GPUs


def _hybrid_scenario(rank, world_size, device):
    """A 2 x 2 mesh of 4 ranks: HSDP (replicate over dim 0, shard over dim 1) trains like one
    process, and 2-d placements (tensors replicated over a dimension that others are sharded
    over, counted once) take one all-reduce per mesh dimension."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode

    mesh = init_device_mesh(device, (2, world_size // 2), mesh_dim_names=("replicate", "shard"))
    ref = _net(device)
    model = _net(device)
    for m in model.body:
        if isinstance(m, torch.nn.Linear):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    _train_side_by_side(model, ref, rank, world_size, device)

    g = torch.Generator().manual_seed(3)
    full = [torch.randn(7, 5, generator=g), torch.randn(5, 7, generator=g),
            torch.randn(6, generator=g), torch.randn(3, generator=g)]
    layouts = [[Shard(0), Shard(1)], [Replicate(), Shard(0)], [Shard(0), Replicate()],
               [Replicate(), Replicate()]]
    tensors = [distribute_tensor(t.to(device), mesh, pl) for t, pl in zip(full, layouts)]
    for p in NORM_TYPES:
        with CommDebugMode() as comm:
            ours = BU.get_total_norm(tensors, p)
        assert comm.get_total_counts() == 2, comm.get_comm_counts()  # one per mesh dimension
        _assert_replicated(ours, world_size)
        expected = torch.linalg.vector_norm(torch.cat([t.double().flatten() for t in full]), p)
        assert_matches(ours.full_tensor(), torch.nn.utils.get_total_norm(tensors, p).full_tensor(),
                       expected)


def test_hybrid_mesh_of_four(world):
    world(_hybrid_scenario, 4)


def _nccl_scenario(rank, world_size, device):
    _fsdp_scenario(rank, world_size, device, "per_layer", True)
    for p in NORM_TYPES:
        _clipping_scenario(rank, world_size, device, p)
    # Clipping sharded gradients never waits for the GPU: the all-reduce is waited for on the
    # stream.
    model, _ = _sharded_grads(rank, world_size, device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for p in NORM_TYPES:
            BU.clip_grad_norm_(model.parameters(), 0.1, p)
            BU.clip_grad_value_(model.parameters(), 0.01)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_nccl_fsdp2_and_clipping(world):
    world(_nccl_scenario, 2, device="cuda")


def test_distributed_benchmark_runs():
    # The benchmark's own world (spawned), on a small case: it validates ours against torch
    # before timing, so a wrong norm fails here.
    from backprop_ext.benchmarks import bench_distributed

    rows = bench_distributed.run("cpu", sizes=[20000], reps=1, tensors=[10], ranks=[2])
    assert [r.op for r in rows] == list(bench_distributed.OPS)
    assert all(r.ms > 0 and r.torch_ms > 0 and "2 ranks" in r.shape for r in rows)


def test_world_failures_are_reported_not_hung(world):
    # The harness itself: a rank that raises while its peer waits in a collective fails the test
    # promptly, with that rank's traceback.
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="rank 1 gives up"):
        world(_failing_scenario, 2)
    assert time.monotonic() - started < COLLECTIVE_TIMEOUT / 2


def _failing_scenario(rank, world_size, device):
    if rank == 1:
        raise RuntimeError("rank 1 gives up")
    dist.all_reduce(torch.ones(1))

