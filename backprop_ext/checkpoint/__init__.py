"""Activation checkpointing: keep less for backward, recompute the rest there.

    api.py        checkpoint(), Checkpoint, CheckpointedSequential, the recompute levels
    recompute.py  the "selective" level: activations rebuilt from the tensors kept before them
    memory.py     measuring a step's memory on the CPU (allocator peak, saved tensors)
    planner.py    choosing each block's level under a memory budget from one measured step
"""

from .api import (
    POLICIES,
    Checkpoint,
    CheckpointedSequential,
    CheckpointPlan,
    checkpoint,
    selective_policy,
)

__all__ = ["Checkpoint", "CheckpointedSequential", "CheckpointPlan", "checkpoint",
           "selective_policy", "POLICIES"]
