"""The model card: everything a consumer must know to use a face model correctly.

One :class:`ModelCard` travels with the weights: inside every ``model.pt`` the trainers
write, in ``export``'s JSON sidecar, and derived for the face-api folder and for older
files that predate it (:func:`ranface.models.loader.load_model` is the only reader). It
says which architecture to build, how a face must be aligned (template), sized,
coloured and normalised, whether embeddings are flip-summed, which cosine thresholds
were calibrated on which data, and where the model came from.

Pure data: no torch, no I/O, so every layer may import it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import CheckpointError

__all__ = ["ModelCard", "Thresholds", "Provenance", "CARD_FORMAT", "TEMPLATES",
           "config_digest"]

CARD_FORMAT = "ranface-card/1"
TEMPLATES = ("arcface", "dlib")


@dataclass
class Thresholds:
    """Cosine thresholds calibrated on verification pairs (accept ``cosine > t``).

    ``best_accuracy``: the threshold of the best pair accuracy on ``data``;
    ``at_far``: the smallest threshold whose false-accept rate is <= ``far`` (1e-3 by
    default). ``data`` names the pairs and images; ``accuracy`` / ``tar`` are what was
    achieved there, so a user can see how far to trust them.
    """

    best_accuracy: Optional[float] = None
    at_far: Optional[float] = None
    far: float = 1e-3
    accuracy: Optional[float] = None
    tar: Optional[float] = None
    pairs: int = 0
    data: str = ""
    note: str = ""


@dataclass
class Provenance:
    """Where a model came from: training stage (hr | lr | mr | imported), its training
    data, the SHA-256 of its resolved config, and the file it was loaded from."""

    stage: str = ""
    training_data: str = ""
    config_digest: str = ""
    source: str = ""
    kind: str = ""  # ranface | checkpoint | faceapi | onnx | module


@dataclass
class ModelCard:
    """What a face model is and how to feed it (see the module docstring)."""

    architecture: str
    arch_args: Dict[str, Any] = field(default_factory=dict)
    embedding_size: int = 0
    input_size: Tuple[int, int] = (112, 112)  # (H, W)
    color: str = "rgb"
    mean: Tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: Tuple[float, float, float] = (127.5, 127.5, 127.5)
    template: Optional[str] = None  # arcface | dlib | None (unknown)
    flip: bool = True  # embeddings are L2-normalised f(x) + f(mirror(x))
    thresholds: Thresholds = field(default_factory=Thresholds)
    provenance: Provenance = field(default_factory=Provenance)
    format: str = CARD_FORMAT

    # ---------------------------------------------------------------- (de)serialise
    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        for k in ("input_size", "mean", "std"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: Optional[str] = None) -> "ModelCard":
        """Validated card from its dict; a malformed card is a :class:`CheckpointError`
        naming ``source``."""
        def bad(problem: str) -> CheckpointError:
            return CheckpointError(source, f"malformed model card: {problem}")

        if not isinstance(d, Mapping):
            raise bad(f"expected a mapping, got {type(d).__name__}")
        if not isinstance(d.get("architecture"), str) or not d["architecture"]:
            raise bad("no 'architecture'")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise bad(f"unknown keys {unknown}")
        try:
            kw = dict(d)
            kw["arch_args"] = dict(kw.get("arch_args") or {})
            kw["embedding_size"] = int(kw.get("embedding_size", 0))
            kw["input_size"] = _pair(kw.get("input_size", (112, 112)), int)
            kw["mean"] = _triple(kw.get("mean", (127.5,) * 3))
            kw["std"] = _triple(kw.get("std", (127.5,) * 3))
            kw["flip"] = bool(kw.get("flip", True))
            kw["thresholds"] = Thresholds(**dict(kw.get("thresholds") or {}))
            kw["provenance"] = Provenance(**dict(kw.get("provenance") or {}))
        except (TypeError, ValueError) as exc:
            raise bad(str(exc).splitlines()[0][:200]) from None
        card = cls(**kw)
        if card.color not in ("rgb", "bgr"):
            raise bad(f"color must be rgb or bgr, got {card.color!r}")
        if card.template is not None and card.template not in TEMPLATES:
            raise bad(f"template must be one of {TEMPLATES} or null, got {card.template!r}")
        if min(card.std) <= 0 or min(card.input_size) < 1:
            raise bad("std must be > 0 and input_size positive")
        return card

    # ---------------------------------------------------------------- views
    @property
    def threshold(self) -> Optional[float]:
        """The default decision threshold: best accuracy on the calibration pairs."""
        return self.thresholds.best_accuracy

    def info(self) -> Dict[str, Any]:
        """The short description results and galleries record about a model."""
        return {"source": self.provenance.source, "backbone": self.architecture,
                "kind": self.provenance.kind, "kwargs": dict(self.arch_args),
                "template": self.template,
                "spec": {"input_size": list(self.input_size), "embedding_size": self.embedding_size,
                         "mean": list(self.mean), "std": list(self.std), "color": self.color}}

    def summary_line(self) -> str:
        t = self.thresholds
        thr = (f"threshold {t.best_accuracy:.4f} (best accuracy on {t.data})"
               if t.best_accuracy is not None else "no calibrated threshold")
        return (f"{self.architecture} {self.input_size[0]}x{self.input_size[1]} {self.color} "
                f"-> {self.embedding_size}-d, template {self.template or 'unknown'}, {thr}")


def config_digest(config: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of a resolved config as sorted JSON (stable across runs)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pair(v: Any, typ: type) -> Tuple[Any, Any]:
    vals: List[Any] = [typ(x) for x in v]
    if len(vals) != 2:
        raise ValueError(f"expected 2 values, got {list(v)}")
    return vals[0], vals[1]


def _triple(v: Any) -> Tuple[float, float, float]:
    vals = [float(x) for x in v]
    if len(vals) != 3:
        raise ValueError(f"expected 3 values, got {list(v)}")
    return vals[0], vals[1], vals[2]
