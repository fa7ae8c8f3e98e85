"""One autocast code path for fp32 / bf16 / fp16 on CPU and GPU."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

from ..errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {str(name)[:40]!r}: expected auto, cpu, cuda, cuda:N or mps") from None


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware has it (CPU with AMX, Ampere+ GPU),
    fp16 on older GPUs, else fp32."""
    if name not in PRECISIONS:
        raise ConfigError(f"run.precision must be one of {PRECISIONS}, got {name!r}")
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise ConfigError("run.precision=fp16 is not supported on CPU; use bf16 or fp32")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def cpu_has_fast_bf16() -> bool:
    """bf16 autocast pays off on CPUs with AMX tiles; with AVX512-BF16 alone the casts
    cost more than they save (measured: docs/performance.md)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "amx_bf16" in flags and bool(torch.backends.mkldnn.is_available())


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(device: torch.device, precision: str) -> ContextManager:
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 and fp32 need no loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
