"""One autocast code path for fp32 / bf16 / fp16 on CPU and GPU."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Iterable, Optional

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
    """'auto' -> bf16 where the hardware has it (CPU with AMX or AVX512-BF16, Ampere+
    GPU), fp16 on older GPUs, else fp32."""
    if name not in PRECISIONS:
        raise ConfigError(f"run.precision must be one of {PRECISIONS}, got {name!r}")
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise ConfigError("run.precision=fp16 is not supported on CPU; use bf16 or fp32")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


# /proc/cpuinfo flags of native bf16 arithmetic: AMX tiles (Sapphire Rapids on) or the
# AVX512-BF16 dot-product instructions (Cooper Lake, Zen 4): oneDNN runs bf16
# convolutions on either; without them bf16 is emulated and slower than fp32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset:
    """The instruction-set flags of the first CPU listed in ``cpuinfo`` (empty when the
    file cannot be read, e.g. not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16(flags: Optional[Iterable[str]] = None) -> bool:
    """bf16 autocast pays off on CPUs with AMX or AVX512-BF16 (measured on AVX512-BF16:
    1.3-1.8x inference and 1.8-2.3x training; docs/performance.md), and only where
    torch's oneDNN backend is built in."""
    have = cpu_flags() if flags is None else frozenset(flags)
    return any(f in have for f in BF16_CPU_FLAGS) and bool(torch.backends.mkldnn.is_available())


def use_channels_last(device: torch.device, precision: str, setting: Optional[bool] = None,
                      inference: bool = False) -> bool:
    """Whether to run a model in channels_last (NHWC). ``setting`` True/False wins; None
    (auto): yes under bf16/fp16 (oneDNN's and cuDNN's reduced-precision convolution
    kernels are NHWC-native: ResNet-29 inference 1.3x over bf16 alone; MobileFaceNet, with
    its depthwise layers, 1.15x a bf16 training step and 1.57x bf16 inference on an
    AVX512-BF16 EPYC, once :mod:`ranface.models.depthwise` took the strided depthwise input
    gradients off oneDNN's slow bf16 kernel; docs/performance.md, issue 16 ninth round).
    ``inference`` (a no-grad forward pass, e.g. an :class:`~ranface.inference.Embedder`):
    also in fp32 on a CPU, where NHWC ran every backbone at least as fast (ResNet-29 1.29x,
    MobileFaceNet 1.38x, IResNet-50 1.07x on an AVX-512 Xeon; 1.43x, 1.13x, 1.20x on an
    AVX2 EPYC; docs/performance.md "The forward pass alone"). fp32 training stays NCHW:
    the layout changes the float rounding of the fp32 runs (the demo's) and has not been
    measured on every CPU."""
    if setting is not None:
        return bool(setting)
    if inference and device.type == "cpu":
        return True
    return precision in ("bf16", "fp16")


def use_compile(setting: Optional[bool], device: torch.device, steps: int, min_steps: int) -> bool:
    """Whether to ``torch.compile`` a training run. ``setting`` True/False wins; None
    (auto): on a CPU when the run has at least ``min_steps`` steps. Compiling costs one
    to two minutes per process on a 2-core CPU and gave 1.56x (fp32) to 1.6x (over bf16
    eager) per step, so it repays after a few hundred steps; on the H200 it was slower
    than eager AMP (docs/performance.md), so auto leaves it off on GPUs."""
    if setting is not None:
        return bool(setting)
    return device.type == "cpu" and min_steps > 0 and steps >= min_steps


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
