"""Evaluation protocols (paper §4): a registry of named protocols, each a class with
typed options, a root check, a scorer and its report pieces.

A protocol class (registered with :func:`register_protocol`) provides

* ``Options``: a dataclass of its settings (so ``--config`` / ``--set key=value`` work
  through :func:`ranface.config.load_config`);
* ``validate_root(root, options)``: raises one :class:`~ranface.errors.ProtocolError`
  listing *every* missing file or folder, before any model work;
* ``run(ctx, root, options) -> dict``: the result (see :func:`base_result`): model,
  protocol, data root, counts (items scored, skipped), metrics, curves;
* ``markdown(result) -> str``: the table shaped like the paper's table for it;
* ``plots(result, out_dir) -> [png paths]``;
* ``summary(result) -> {column: value}``: one row of ``ranface report``'s comparison;
* ``provenance``: one line naming the public evaluation code (or benchmark definition)
  it follows and where it deliberately differs (``ranface evaluate --list``).

Built-in protocols: ``pairs`` (LFW ``pairs.txt`` on any aligned folder, probe-resolution
sweep), ``bin`` (insightface ``.bin`` sets, Fig. 6b), ``ijbc`` (IJB-C 1:1 templates),
``ijbc-tiny`` (IJB-C TinyFace as the paper built it, Tables 1-2), ``ijbc-tiny-templates``
(ranface's earlier template variant), ``tinyface``, ``scface`` (Table 3), ``survface``
(Table 4).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Optional, Type, TypeVar

from ...errors import ConfigError, ProtocolError

__all__ = ["EvalContext", "Protocol", "register_protocol", "get_protocol", "list_protocols",
           "base_result", "evaluate", "RESULT_FORMAT"]

if TYPE_CHECKING:  # torch is imported only where a model runs
    import torch

from ..report import RESULT_FORMAT  # the report owns the file format; protocols use it

# Modules defining the built-in protocols, imported on first registry use (never at
# import of this package, and never discovered by file name).
_BUILTIN_MODULES = ("pairs", "binset", "ijbc", "ijbc_tiny", "tinyface", "scface", "survface",
                    "realism")

# Filled only by @register_protocol; names are never reused, entries never replaced.
_PROTOCOLS: Dict[str, Type["Protocol"]] = {}

P = TypeVar("P", bound=Type["Protocol"])


def register_protocol(name: str) -> Callable[[P], P]:
    """Class decorator registering a :class:`Protocol` subclass under ``name``."""
    def decorate(cls: P) -> P:
        if name in _PROTOCOLS and _PROTOCOLS[name] is not cls:
            raise ConfigError(f"protocol name {name!r} is already registered")
        cls.name = name
        _PROTOCOLS[name] = cls
        return cls
    return decorate


def _load_builtin() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{mod}")


def list_protocols() -> List[str]:
    _load_builtin()
    return sorted(_PROTOCOLS)


def get_protocol(name: str) -> "Protocol":
    """An instance of the protocol registered as ``name``."""
    _load_builtin()
    try:
        return _PROTOCOLS[name]()
    except KeyError:
        raise ConfigError(f"unknown protocol {name!r}; known protocols: "
                          f"{', '.join(sorted(_PROTOCOLS))}") from None


@dataclass
class EvalContext:
    """What every protocol needs besides its data: the model and how to run it.

    ``model`` is a backbone in eval mode (``.spec`` gives input size and colour order);
    ``info`` is the model card :func:`ranface.models.loader.load_model` returns (or
    its ``info()`` dict). ``on_error``
    'raise' stops at the first unreadable image or dangling reference, 'skip' counts it
    and goes on (the result says how many).
    """

    model: "torch.nn.Module"
    info: Dict[str, Any] = field(default_factory=dict)
    device: Any = "cpu"
    precision: str = "fp32"
    batch_size: int = 64
    on_error: str = "raise"
    progress: bool = False
    # threads decoding/aligning/degrading images beside the forward pass (0: in the calling
    # thread; -1: one per usable core)
    workers: int = -1
    # embed with a copy whose BN/scale layers are folded into the convs (Embedder's fuse)
    fuse: bool = True
    channels_last: Optional[bool] = None  # None: the inference rule of precision.use_channels_last
    out_dir: Optional[str] = None  # set by evaluate(): where a protocol may write its lists
    allow_outside_root: bool = False  # read images a protocol list names outside its folder

    def __post_init__(self) -> None:
        if hasattr(self.info, "info") and hasattr(self.info, "provenance"):  # a ModelCard
            self.card = self.info
            self.info = self.info.info()
        else:
            self.card = None
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.batch_size < 1 or self.workers < -1:
            raise ConfigError(f"batch size must be >= 1 and workers >= -1 (-1: one per core), got {self.batch_size} "
                              f"and {self.workers}")

    def embedder(self, flip: bool = True):
        from ...inference import Embedder

        if self.card is not None and not self.card.flip:
            flip = False
        return Embedder(self.model, self.device, flip=flip, precision=self.precision,
                        batch_size=self.batch_size, channels_last=self.channels_last, fuse=self.fuse)

    @property
    def input_size(self) -> tuple:
        spec = getattr(self.model, "spec", None)
        return tuple(spec.input_size) if spec is not None else (112, 112)

    @property
    def color(self) -> str:
        spec = getattr(self.model, "spec", None)
        return spec.color if spec is not None else "rgb"

    @property
    def model_name(self) -> str:
        return str(self.info.get("source") or self.info.get("backbone")
                   or type(self.model).__name__)

    @property
    def backbone_name(self) -> str:
        return str(self.info.get("backbone", ""))


class Protocol:
    """Base class of a registered protocol (see the module docstring)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type]
    title: ClassVar[str] = ""
    provenance: ClassVar[str] = ""

    def validate_root(self, root: str, options: Any = None) -> None:
        raise NotImplementedError

    def run(self, ctx: EvalContext, root: str, options: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def markdown(self, result: Dict[str, Any]) -> str:
        raise NotImplementedError

    def plots(self, result: Dict[str, Any], out_dir: str) -> List[str]:
        return []

    def summary(self, result: Dict[str, Any]) -> Dict[str, str]:
        raise NotImplementedError

    def default_options(self) -> Any:
        return self.Options()


def base_result(protocol: str, ctx: EvalContext, root: str, options: Any) -> Dict[str, Any]:
    """The fields every result carries; the protocol adds counts, metrics and curves."""
    from ... import __version__

    info = {k: v for k, v in ctx.info.items() if k in ("source", "backbone", "kind", "spec", "template")}
    info.setdefault("source", ctx.model_name)
    return {"format": RESULT_FORMAT, "protocol": protocol, "model": info,
            "data_root": os.path.abspath(root),
            "options": dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {},
            "on_error": ctx.on_error, "ranface_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "counts": {"scored": 0, "skipped": 0}, "metrics": {}, "curves": {},
            "skipped_examples": []}


def evaluate(name: str, ctx: EvalContext, root: str, options: Any = None,
             out_dir: Optional[str] = None) -> Dict[str, Any]:
    """Validate ``root``, run protocol ``name`` and (with ``out_dir``) write
    ``result.json``, ``result.md`` and the plots there. Returns the result."""
    proto = get_protocol(name)
    opts = proto.default_options() if options is None else options
    if not os.path.isdir(root):
        raise ProtocolError(root, "data root is not a folder")
    proto.validate_root(root, opts)
    if out_dir:
        from ...io_utils import check_writable_dir

        check_writable_dir(out_dir)
        ctx = dataclasses.replace(ctx, out_dir=out_dir)
    t0 = time.perf_counter()
    result = proto.run(ctx, root, opts)
    result["elapsed_s"] = round(time.perf_counter() - t0, 3)
    if out_dir:
        from ..report import write_result  # one direction: protocols -> report

        result["files"] = write_result(proto, result, out_dir)
    return result
