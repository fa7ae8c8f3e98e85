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

from ..config import read_yaml, save_config, to_dict
from ..errors import ConfigError
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
    from ..runtime import allocator_state

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
        record_config(cfg, run_dir)
        env = {"world_size": dist.world_size, "backend": dist.backend, "device": str(device),
               "precision": precision, "torch": torch.__version__,
               "allocator": allocator_state()}
        atomic_write_text(os.path.join(run_dir, "environment.json"), json.dumps(env, indent=1))
    device = torch.device(f"cuda:{dist.local_rank}") if device.type == "cuda" and dist.enabled else device
    return RunContext(run_dir=run_dir, device=device, precision=precision, dist=dist)


# Settings a resumed run may change: how it is run, logged and kept, not what it
# learns. optim.max_steps is here so that a finished run can be extended (with a cosine
# schedule that changes the learning rates of the remaining steps; recorded in history).
RESUME_MAY_CHANGE = frozenset({
    "run.resume", "run.force_resume", "run.progress", "run.tensorboard", "run.log_every",
    "run.ckpt_every", "run.val_every", "run.keep_last", "run.keep_best", "run.dist_timeout_s",
    "run.max_nonfinite", "run.device", "run.inject_nonfinite", "run.out_dir", "run.name",
    "data.num_workers", "optim.max_steps", "image_every", "num_samples"})


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def recipe_changes(recorded: Dict[str, Any], current: Dict[str, Any]) -> Dict[str, Any]:
    """Dotted keys whose value differs between two resolved configs -> (old, new), except
    :data:`RESUME_MAY_CHANGE`."""
    a, b = _flatten(recorded), _flatten(current)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in RESUME_MAY_CHANGE and a.get(k) != b.get(k)}


def _will_resume(cfg: Any, run_dir: str) -> bool:
    from .checkpoint import CheckpointManager

    spec = cfg.run.resume
    if not spec:
        return False
    return spec != "auto" or CheckpointManager(os.path.join(run_dir, "checkpoints")).latest() is not None


def record_config(cfg: Any, run_dir: str) -> None:
    """Write ``config.yaml`` of a new run. A resumed run is compared with it: a changed
    recipe (learning rate, batch size, head, ...) is refused unless ``run.force_resume``;
    ``config.yaml`` keeps describing the first part and each resumed part whose config
    differs is recorded beside it as ``config.resume-N.yaml``."""
    path = os.path.join(run_dir, "config.yaml")
    if not (_will_resume(cfg, run_dir) and os.path.isfile(path)):
        save_config(cfg, path)
        return
    recorded = read_yaml(path)
    current = to_dict(cfg)
    if not isinstance(recorded, dict):
        raise ConfigError(f"{path}: the run's recorded config is not a mapping")
    changes = recipe_changes(recorded, current)
    if changes and not cfg.run.force_resume:
        shown = "; ".join(f"{k}: {str(o)[:40]} -> {str(n)[:40]}" for k, (o, n) in list(changes.items())[:4])
        more = f" (+{len(changes) - 4} more)" if len(changes) > 4 else ""
        raise ConfigError(f"{path}: resuming with a changed recipe ({shown}{more}); start a new run, "
                          "or pass --force (run.force_resume=true) to continue with it")
    parts = [n for n in os.listdir(run_dir) if re.fullmatch(r"config\.resume-\d+\.yaml", n)]
    last = max((int(n.split("-")[1].split(".")[0]) for n in parts), default=0)
    previous = read_yaml(os.path.join(run_dir, f"config.resume-{last}.yaml")) if last else recorded
    if _flatten(previous) != _flatten(current):
        save_config(cfg, os.path.join(run_dir, f"config.resume-{last + 1}.yaml"))


def write_json(path: str, obj: Dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


__all__ = ["RunContext", "setup_run", "seed_everything", "write_json", "to_dict"]
