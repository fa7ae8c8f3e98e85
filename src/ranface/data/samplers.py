"""Reproducible, resumable, DistributedSampler-aware sample order.

The order of an epoch is a permutation drawn from ``(seed, epoch)`` alone, so it is the
same on every rank and in every rerun. Ranks take interleaved slices of each *global*
batch. The position is kept in global samples consumed, so a run can resume mid-epoch,
also under a different number of processes (the remaining samples of the epoch are then
split among the new ranks).
"""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import numpy as np
import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler[Tuple[int, int]]):
    """Yields ``(epoch, index)`` tuples for this rank.

    The epoch travels with each index so per-sample augmentation can be a pure function
    of (seed, epoch, index): identical whatever the worker count or world size.
    ``drop_last`` drops the tail that does not fill a whole global batch; otherwise the
    tail is padded by wrapping around (like torch's DistributedSampler) so all ranks step
    together.
    """

    def __init__(self, num_samples: int, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True):
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside world of size {num_replicas}")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)  # per rank
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.consumed = 0  # global samples of this epoch already consumed
        if self.drop_last and self.num_samples < self.global_batch:
            raise ValueError(f"dataset of {self.num_samples} samples is smaller than one global "
                             f"batch ({self.global_batch}); lower data.batch_size")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_replicas

    def epoch_length(self) -> int:
        """Global samples per epoch (a multiple of the global batch)."""
        gb = self.global_batch
        if self.drop_last:
            return (self.num_samples // gb) * gb
        return -(-self.num_samples // gb) * gb

    def batches_per_epoch(self) -> int:
        return self.epoch_length() // self.global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            perm = np.arange(self.num_samples)
        else:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(self.num_samples)
        n = self.epoch_length()
        if n > len(perm):
            perm = np.concatenate([perm, perm[: n - len(perm)]])
        return perm[:n]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch, start = self.epoch, self.consumed
        perm = self.permutation(epoch)
        # global position p belongs to rank (p % global_batch) // batch_size: each global
        # batch is split into contiguous per-rank chunks.
        gb, bs = self.global_batch, self.batch_size
        for b0 in range(start - start % gb, len(perm), gb):
            lo = b0 + self.rank * bs
            for p in range(max(lo, start), lo + bs):
                yield epoch, int(perm[p])

    def __len__(self) -> int:
        remaining = self.epoch_length() - self.consumed
        return remaining // self.num_replicas

    # position -------------------------------------------------------------------
    def set_position(self, epoch: int, consumed: int) -> None:
        if consumed % self.global_batch:
            # a different world size: round down to a whole global batch of the new world
            consumed -= consumed % self.global_batch
        self.epoch, self.consumed = int(epoch), int(consumed)

    def advance(self, batches: int = 1) -> None:
        """Record that ``batches`` global batches were consumed; rolls over epochs."""
        self.consumed += batches * self.global_batch
        while self.consumed >= self.epoch_length():
            self.consumed -= self.epoch_length()
            self.epoch += 1

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "num_samples": self.num_samples}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if int(state.get("num_samples", self.num_samples)) != self.num_samples:
            raise ValueError(f"checkpoint was taken on a dataset of {state['num_samples']} "
                             f"samples, this one has {self.num_samples}")
        self.seed = int(state.get("seed", self.seed))
        self.set_position(int(state["epoch"]), int(state["consumed"]))


def sample_generator(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """Per-sample RNG for augmentation: a pure function of (seed, epoch, index, stream)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index), int(stream)])


def torch_sample_generator(seed: int, epoch: int, index: int, stream: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(sample_generator(seed, epoch, index, stream).integers(0, 2**63 - 1)))
    return g
