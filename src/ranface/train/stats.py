"""Training statistics: report scalars from anywhere in a step, reduce across ranks at
log time, write to TensorBoard and ``metrics.jsonl`` on rank 0 (stylegan3-like)."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, Dict, Optional

import torch

from .distributed import DistInfo, all_reduce_mean


class StatsAccumulator:
    """Running means of named scalars since the last :meth:`flush`."""

    def __init__(self) -> None:
        self._sum: Dict[str, float] = defaultdict(float)
        self._n: Dict[str, int] = defaultdict(int)

    def add(self, name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().float().mean().item()
        self._sum[name] += float(value)
        self._n[name] += 1

    def add_dict(self, values: Dict[str, Any], prefix: str = "") -> None:
        for k, v in values.items():
            self.add(prefix + k, v)

    def flush(self, info: DistInfo, device: torch.device) -> Dict[str, float]:
        local = {k: self._sum[k] / self._n[k] for k in self._sum if self._n[k]}
        self._sum.clear()
        self._n.clear()
        return all_reduce_mean(local, info, device)


class MetricsWriter:
    """Rank-0 sink: TensorBoard scalars/images (if installed and enabled) + JSON lines."""

    def __init__(self, run_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except Exception:  # tensorboard missing: JSON lines still written
                self._tb = None

    def scalars(self, step: int, values: Dict[str, float], kind: str = "train") -> None:
        if not self.enabled or not values:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, "kind": kind, **values}, sort_keys=True) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{kind}/{k}", v, step)

    def image(self, step: int, tag: str, img_chw: torch.Tensor) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_image(tag, img_chw, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(run_dir: str, kind: Optional[str] = None):
    path = os.path.join(run_dir, "metrics.jsonl")
    out = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    rec = json.loads(line)
                    if kind is None or rec.get("kind") == kind:
                        out.append(rec)
    return out
