"""Measuring activation memory without a GPU, for the checkpoint tests and benchmarks.

Two measures, both device-agnostic:

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

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


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

    def __enter__(self) -> "SavedTensorBytes":
        super().__enter__()
        return self


def peak_training_step_bytes(step) -> int:
    """Peak live bytes that `step()` (a forward and a backward) allocates, by LiveTensorMemory."""
    with LiveTensorMemory() as mem:
        step()
    return mem.peak
