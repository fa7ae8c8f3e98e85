"""Run directories and the process setup shared by every training stage."""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..config import save_config, to_dict
from ..io_utils import atomic_write_text, check_writable_dir, remove_stale_temps
from .distributed import DistInfo, broadcast_object, init_distributed
from .precision import resolve_device, resolve_precision


@dataclass
class RunContext:
    run_dir: str
    device: torch.device
    precision: str
    dist: DistInfo


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _next_run_name(out_dir: str, prefix: str) -> str:
    pat = re.compile(rf"^{re.escape(prefix)}-(\d{{4}})$")
    nums = [int(m.group(1)) for n in (os.listdir(out_dir) if os.path.isdir(out_dir) else [])
            if (m := pat.match(n))]
    return f"{prefix}-{(max(nums) + 1 if nums else 0):04d}"


def _latest_run_name(out_dir: str, prefix: str) -> Optional[str]:
    pat = re.compile(rf"^{re.escape(prefix)}-(\d{{4}})$")
    names = sorted(n for n in (os.listdir(out_dir) if os.path.isdir(out_dir) else []) if pat.match(n))
    return names[-1] if names else None


def setup_run(cfg: Any, prefix: str) -> RunContext:
    """Resolve device/precision, join torchrun's process group, create (rank 0) or reuse
    the run directory and record the resolved config there.

    ``run.resume=auto`` with no ``run.name`` continues the newest ``<prefix>-NNNN`` run.
    The output directory is checked for writability before any work starts.
    """
    run = cfg.run
    device = resolve_device(run.device)
    dist = init_distributed(device, run.dist_timeout_s)
    precision = resolve_precision(run.precision, device)
    name = None
    if dist.is_main:
        check_writable_dir(run.out_dir)
        name = run.name
        if not name and run.resume == "auto":
            name = _latest_run_name(run.out_dir, prefix)
        if not name:
            name = _next_run_name(run.out_dir, prefix)
        os.makedirs(os.path.join(run.out_dir, name), exist_ok=True)
        for d in (os.path.join(run.out_dir, name), os.path.join(run.out_dir, name, "checkpoints")):
            remove_stale_temps(d)  # left by a run killed mid-write (a checkpoint's worth each)
    name = broadcast_object(name, dist)
    run_dir = os.path.join(run.out_dir, name)
    if dist.is_main:
        save_config(cfg, os.path.join(run_dir, "config.yaml"))
        env = {"world_size": dist.world_size, "backend": dist.backend, "device": str(device),
               "precision": precision, "torch": torch.__version__}
        atomic_write_text(os.path.join(run_dir, "environment.json"), json.dumps(env, indent=1))
    device = torch.device(f"cuda:{dist.local_rank}") if device.type == "cuda" and dist.enabled else device
    return RunContext(run_dir=run_dir, device=device, precision=precision, dist=dist)


def write_json(path: str, obj: Dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


__all__ = ["RunContext", "setup_run", "seed_everything", "write_json", "to_dict"]
