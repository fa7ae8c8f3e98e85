"""Learning-rate schedules as pure functions of the step (exact resume for free).

Warm-up (linear from ``warmup_start_factor``) then the paper's step schedule (§4.2:
divide by 10 at the milestones), cosine to zero at ``max_steps``, or constant.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..errors import ConfigError

SCHEDULES = ("step", "cosine", "constant")


def lr_factor(step: int, *, schedule: str, max_steps: int, milestones: Sequence[int] = (),
              gamma: float = 0.1, warmup_steps: int = 0, warmup_start_factor: float = 0.1) -> float:
    if schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps
    if schedule == "step":
        return gamma ** sum(1 for m in milestones if step >= m)
    if schedule == "cosine":
        span = max(1, max_steps - warmup_steps)
        t = min(1.0, max(0.0, (step - warmup_steps) / span))
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, **kwargs) -> torch.optim.lr_scheduler.LambdaLR:
    fn: Callable[[int], float] = lambda s: lr_factor(s, **kwargs)  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
