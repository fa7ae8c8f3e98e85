"""torch.distributed helpers. Nothing happens at import: a process group is created only
by :func:`init_distributed`, called by the CLI when ``torchrun`` set ``WORLD_SIZE``.

NCCL on GPU, gloo on CPU. A collective timeout (``run.dist_timeout_s``) turns a dead peer
into an error in the survivors instead of a hang.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device, timeout_s: int = 600) -> DistInfo:
    """Join the process group set up by torchrun (env://), or run single-process."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build")
    backend = "nccl" if device.type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # gloo and NCCL both honour the timeout: a peer that died fails the collective.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=dist.get_rank(), local_rank=local_rank,
                    world_size=dist.get_world_size(), backend=backend)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(values: Dict[str, float], info: DistInfo, device: torch.device) -> Dict[str, float]:
    """Mean of scalar statistics over ranks (keys must match on all ranks)."""
    if not info.enabled or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= info.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def all_reduce_sum_int(value: int, info: DistInfo, device: torch.device) -> int:
    if not info.enabled:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item())


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (keeps ranks stepping in lockstep)."""
    if not info.enabled:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_objects(obj: Any, info: DistInfo) -> List[Any]:
    if not info.enabled:
        return [obj]
    out: List[Optional[Any]] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind DDP / torch.compile wrappers."""
    while True:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod  # type: ignore[attr-defined]
        else:
            return module
