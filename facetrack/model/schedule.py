"""What each optimizer step does: the data order, the learning-rate schedule, the per-step seeds.

The data order is a pure function of (seed, epoch, step, rank), so a run resumed from a checkpoint sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DataOrder:
    """Which examples each rank sees at each optimizer step: a function of (seed, epoch, step, rank).

    Each epoch is a fresh permutation of all examples (seeded by ``seed`` and the epoch); a step takes the
    next ``global_batch`` of it; rank ``r`` gets micro-batch ``k`` from slot ``k * world_size + r``. The
    last incomplete global batch of an epoch is dropped so that all ranks always do the same work.
    """

    n_examples: int
    world_size: int
    micro_batch: int
    grad_accum: int
    seed: int

    def __post_init__(self) -> None:
        if min(self.world_size, self.micro_batch, self.grad_accum) < 1:
            raise ValueError("world_size, micro_batch and grad_accum must be >= 1")
        if self.n_examples < self.global_batch:
            raise ValueError(
                f"{self.n_examples} examples are fewer than one global batch "
                f"({self.world_size} workers x {self.micro_batch} per micro-batch x {self.grad_accum} "
                "accumulation steps): use fewer workers or a smaller batch"
            )

    @property
    def global_batch(self) -> int:
        return self.world_size * self.micro_batch * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return self.n_examples // self.global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_examples)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """The ``grad_accum`` micro-batches (example indices) of rank ``rank`` at optimizer step ``step``."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        chunk = self.permutation(epoch)[pos * self.global_batch : (pos + 1) * self.global_batch]
        out = []
        for k in range(self.grad_accum):
            slot = k * self.world_size + rank
            out.append([int(i) for i in chunk[slot * self.micro_batch : (slot + 1) * self.micro_batch]])
        return out


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning-rate factor: linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup: int, min_ratio: float = 0.0):
    """A ``LambdaLR`` following :func:`cosine_with_warmup` (stepped once per optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, total, warmup, min_ratio)
    )


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one rank at one step (dropout), so a resumed run draws the same masks."""
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63 - 1)
