"""Backbone registry (timm-like) and the preprocessing contract of every backbone.

A backbone is a plain ``nn.Module`` mapping a batch of aligned, already normalised faces
(N, 3, H, W) to un-normalised embeddings (N, D). How a face must be prepared for it is
described by ``model.spec`` (a :class:`BackboneSpec`), so that data pipelines, evaluation
and export never hard-code a model's input size, mean, std or channel order.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple, TypeVar

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["BackboneSpec", "register_backbone", "create_backbone", "list_backbones",
           "get_spec"]

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class BackboneSpec:
    """Preprocessing a backbone expects.

    ``input_size`` is (H, W); ``mean`` and ``std`` are per channel in 0..255 pixel units
    and in the order given by ``color`` ("rgb" or "bgr"): the input is (pixel - mean) / std.
    """

    input_size: Tuple[int, int]
    embedding_size: int
    mean: Tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: Tuple[float, float, float] = (127.5, 127.5, 127.5)
    color: str = "rgb"

    def __post_init__(self) -> None:
        if self.color not in ("rgb", "bgr"):
            raise ValueError(f"color must be 'rgb' or 'bgr', got {self.color!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values, std > 0; got {self.mean}, {self.std}")

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) or (3, H, W) pixels in 0..255 (``color`` order) -> model input."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device)
        shape = (3, 1, 1)
        return (pixels.float() - mean.view(shape)) / std.view(shape)


# Filled only by @register_backbone on the factories of ranface.models' own modules
# (and a user's, explicitly); names are never reused, so entries are never replaced.
_BACKBONES: Dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(**kwargs) -> nn.Module`` under ``name``."""
    def decorate(factory: Factory) -> Factory:
        if name in _BACKBONES and _BACKBONES[name] is not factory:
            raise ConfigError(f"backbone name {name!r} is already registered")
        _BACKBONES[name] = factory
        return factory
    return decorate


def list_backbones() -> List[str]:
    """Sorted names of the registered backbones."""
    return sorted(_BACKBONES)


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name`` with the factory's keyword options.

    Unknown names and options raise :class:`ConfigError` listing what is allowed.
    """
    try:
        factory = _BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; known backbones: "
                          f"{', '.join(list_backbones())}") from None
    sig = inspect.signature(factory)
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        options = ", ".join(p for p in sig.parameters) or "none"
        raise ConfigError(f"bad options for backbone {name!r} ({exc}); "
                          f"its options: {options}") from None
    return factory(**kwargs)


def get_spec(model: nn.Module) -> BackboneSpec:
    """``model.spec``, also through wrappers that keep the backbone as ``.module``
    (DistributedDataParallel, torch.compile)."""
    seen = model
    for _ in range(4):
        spec = getattr(seen, "spec", None)
        if isinstance(spec, BackboneSpec):
            return spec
        seen = getattr(seen, "module", getattr(seen, "_orig_mod", None))
        if seen is None:
            break
    raise ConfigError(f"{type(model).__name__} has no BackboneSpec at .spec; "
                      "is it a ranface backbone?")
