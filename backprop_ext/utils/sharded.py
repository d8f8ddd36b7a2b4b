"""Sharded tensors (DTensor: FSDP2, tensor and hybrid parallelism): their norms over all ranks
from the norms of their local parts, for backprop_ext.utils' clipping and the gradient-flow report.

A DTensor lays its elements over a DeviceMesh with one placement per mesh dimension: Shard (and
the strided shard FSDP2 uses on top of tensor parallelism) splits them into disjoint parts,
Replicate keeps a whole copy at every coordinate, Partial keeps addends of the values. For the
first two the norm over all ranks follows from the local ones,

    ||x||_p^p = sum over the mesh of ||local part||_p^p          ||x||_inf = max over the mesh

provided each replicated copy is counted once: a rank contributes its local part only if it sits
at coordinate 0 of every reduced mesh dimension the tensor is replicated over. Then the norms of
any number of DTensors on one mesh take one all-reduce (of one number; of one per tensor for the
gradient-flow report) per mesh dimension that some of them are sharded over: one for FSDP2,
whatever the number of tensors. A Partial placement's local norm says nothing about the whole;
such tensors are left to torch's DTensor ops.

The p-th powers are taken in float64: a float32 norm raised to p overflows above 1.8e19 for p = 2,
float64 only above 1.3e154. For the inf norm the all-reduce is a max, of each norm and a NaN flag:
a max all-reduce need not propagate NaN (gloo's keeps whichever operand comes first).

The collectives are torch's functional collectives, the ones DTensor itself runs: asynchronous,
waited for on the device stream when the result is first used (no host sync on CUDA).
"""

from __future__ import annotations

import dataclasses
import math
import sys

import torch

__all__ = ["Split", "split", "is_dtensor", "all_ranks_norms", "replicated"]


def _dtensor_type():
    """DTensor, or None while torch.distributed.tensor has not been imported (then nothing can be
    a DTensor, and importing it, 0.4 s, is not worth it)."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def is_dtensor(t: torch.Tensor) -> bool:
    if type(t) in (torch.Tensor, torch.nn.Parameter):  # the common case, decided without lookups
        return False
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def _splits(placement) -> bool:
    """Whether a placement spreads disjoint parts of the tensor over its mesh dimension."""
    if placement.is_shard():
        return True
    from torch.distributed.tensor.placement_types import _StridedShard

    return isinstance(placement, _StridedShard)


@dataclasses.dataclass
class MeshGroup:
    """The DTensors of one mesh whose norms follow from their local parts' (no Partial
    placement), and what this rank contributes to them."""

    mesh: object  # DeviceMesh
    dtensors: list = dataclasses.field(default_factory=list)
    placements: list = dataclasses.field(default_factory=list)  # each DTensor's, one object each
    dims: list[int] = dataclasses.field(default_factory=list)  # mesh dimensions to reduce over
    counts: list[bool] = dataclasses.field(default_factory=list)  # whether a local part counts

    def contributing(self) -> list[torch.Tensor]:
        """The local parts this rank counts: each element of the tensors once over the mesh."""
        return [t._local_tensor for t, c in zip(self.dtensors, self.counts) if c]


@dataclasses.dataclass
class Split:
    """A list of tensors of which some are DTensors, taken apart (each list in the given order)."""

    plain: list[torch.Tensor]  # counted as they are on this rank (whole, as under DDP)
    groups: dict  # DeviceMesh -> MeshGroup
    other: list  # DTensors with a Partial placement: left to torch's DTensor ops
    locals: list[torch.Tensor]  # every tensor's part on this rank, in order (plain ones as given)

    @property
    def mesh(self):
        """The mesh of the first DTensor: the one a result is replicated over."""
        return next(iter(self.groups.values())).mesh if self.groups else self.other[0].device_mesh


def split(tensors: list[torch.Tensor]) -> Split | None:
    """Takes `tensors` apart by placement, or returns None when none is a DTensor.

    Runs for every gradient of every clipping call, so it reads each DTensor's spec once (the
    public properties are Python) and hashes its placements once (Shard's hash is Python too):
    equal placements share one object from then on, and the mesh is looked up only when it
    changes from the previous tensor's."""
    if all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors):
        return None
    cls = _dtensor_type()
    if cls is None or not any(isinstance(t, cls) for t in tensors):
        return None
    plain, groups, other, locals_ = [], {}, [], []
    known: dict[tuple, tuple] = {}  # placements -> (that object, reducible); most share a few
    mesh = group = None
    for t in tensors:
        if not isinstance(t, cls):
            plain.append(t)
            locals_.append(t)
            continue
        # The local tensor itself (what to_local() returns without autograd), read directly:
        # to_local() costs ~2 us a call, a tenth of clipping hundreds of gradients.
        locals_.append(t._local_tensor)
        spec = t._spec
        entry = known.get(spec.placements)
        if entry is None:
            placements = spec.placements
            entry = known[placements] = (
                placements, all(pl.is_replicate() or _splits(pl) for pl in placements))
        placements, reducible = entry
        if not reducible:
            other.append(t)
            continue
        if spec.mesh is not mesh:
            mesh = spec.mesh
            group = groups.get(mesh)
            if group is None:
                group = groups[mesh] = MeshGroup(mesh)
        group.dtensors.append(t)
        group.placements.append(placements)
    for group in groups.values():
        group.dims, group.counts = _contributions(group.mesh, group.placements)
    return Split(plain, groups, other, locals_)


def _contributions(mesh, placements: list[tuple]) -> tuple[list[int], list[bool]]:
    """(mesh dimensions to reduce over, whether each tensor's local part counts on this rank),
    from each tensor's placements (equal ones one object, as split() leaves them).

    The dimensions are those some tensor is split over; a tensor replicated over one of them counts
    only at its coordinate 0 there, so that the sum over the mesh sees each element once.
    """
    distinct = {id(pl): pl for pl in placements}.values()
    dims = sorted({d for pls in distinct for d, pl in enumerate(pls) if _splits(pl)})
    coordinate = mesh.get_coordinate()
    if coordinate is None:  # this rank is not in the mesh: it holds nothing of these tensors
        return [], [False] * len(placements)
    counts_of = {id(pls): all(coordinate[d] == 0 or _splits(pls[d]) for d in dims)
                 for pls in distinct}
    return dims, [counts_of[id(pls)] for pls in placements]


def all_ranks_norms(local_norms: torch.Tensor, mesh, dims: list[int], p: float) -> torch.Tensor:
    """Norms over the mesh from this rank's norms of its local parts (zero where a part does not
    count, see MeshGroup.counts): a float64 tensor shaped like local_norms, the same on every rank.
    One all-reduce per dimension in dims; none when dims is empty."""
    import torch.distributed._functional_collectives as funcol

    x = local_norms.to(torch.float64)
    if not dims:
        return x
    if math.isinf(p):
        flat = torch.cat([x.reshape(-1), x.isnan().reshape(-1).to(torch.float64)])
        for d in dims:
            flat = funcol.all_reduce(flat, "max", (mesh, d))
        n = x.numel()
        return flat[:n].masked_fill(flat[n:] > 0, math.nan).reshape(x.shape)
    x = x.pow(p)
    for d in dims:
        x = funcol.all_reduce(x, "sum", (mesh, d))
    return x.pow(1.0 / p)


def replicated(value: torch.Tensor, mesh) -> torch.Tensor:
    """value (the same on every rank of mesh) as a DTensor replicated over the mesh."""
    from torch.distributed.tensor import DTensor, Replicate

    return DTensor.from_local(value, mesh, [Replicate()] * mesh.ndim, run_check=False)
