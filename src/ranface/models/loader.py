"""The one loader of face models: a path -> (backbone in eval mode, :class:`ModelCard`).

Understood: a ``model.pt`` written by a trainer (:func:`model_package`, with its card),
a training checkpoint ``ckpt-*.pt`` (the config inside says how to rebuild the
backbone), a run directory (its ``model.pt``, else its latest checkpoint), a face-api
model folder (the imported dlib ResNet-29), and an exported ``.onnx`` (or an ``export``
folder) run on onnxruntime through the card in its ``model.json``. Files written before
cards existed get a card derived from what they hold. Anything else gets one line
saying what the file is and what was expected.

Reading goes through :mod:`ranface.train.checkpoint` (``weights_only=True``).
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Dict, Optional, Tuple

import torch

from ..errors import CheckpointError
from .card import ModelCard, Provenance, config_digest

__all__ = ["load_model", "read_card", "model_package", "card_for_module", "resolve_model_path", "backbone_kwargs",
           "MODEL_FORMAT", "OnnxBackbone", "init_state"]

MODEL_FORMAT = "ranface-model/1"
EXPECTED = ("a model.pt, a training checkpoint (ckpt-*.pt), a run folder, a face-api model "
            "folder or an exported model (.onnx / export folder)")


def backbone_kwargs(model_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Constructor arguments of a backbone from the ``model`` section of a config."""
    kw: Dict[str, Any] = {}
    if model_cfg.get("embedding_size"):
        kw["embedding_size"] = int(model_cfg["embedding_size"])
    if model_cfg.get("dropout"):
        kw["dropout"] = float(model_cfg["dropout"])
    return kw


def card_for_module(module: torch.nn.Module, architecture: str, arch_args: Dict[str, Any],
                    template: Optional[str] = None, flip: bool = True,
                    provenance: Optional[Provenance] = None, thresholds: Any = None) -> ModelCard:
    """A card from a built backbone's :class:`~ranface.models.registry.BackboneSpec`."""
    from .registry import get_spec

    spec = get_spec(module)
    card = ModelCard(architecture=architecture, arch_args=dict(arch_args),
                     embedding_size=int(spec.embedding_size), input_size=tuple(spec.input_size),
                     color=spec.color, mean=tuple(spec.mean), std=tuple(spec.std),
                     template=template, flip=flip, provenance=provenance or Provenance())
    if thresholds is not None:
        card.thresholds = thresholds
    return card


def training_card(backbone: torch.nn.Module, name: str, kwargs: Dict[str, Any],
                  config: Dict[str, Any]) -> ModelCard:
    """The card a trainer writes: template of its training faces (their
    ``prepare_config.yaml``), stage, data and config digest."""
    data = config.get("data", {}) if isinstance(config, dict) else {}
    train = str(data.get("train", "") or "")
    prov = Provenance(stage=str(config.get("stage", "")), training_data=train,
                      config_digest=config_digest(config), kind="ranface")
    return card_for_module(backbone, name, kwargs, template=_template_of_data(train, name),
                           provenance=prov)


def model_package(backbone: torch.nn.Module, name: str, kwargs: Dict[str, Any],
                  config: Optional[Dict[str, Any]] = None,
                  card: Optional[ModelCard] = None) -> Dict[str, Any]:
    """The deployable form of a trained backbone: weights, how to rebuild it, its card."""
    from ..train.distributed import unwrap

    bb = unwrap(backbone)
    config = config or {}
    card = card or training_card(bb, name, kwargs, config)
    return {"format": MODEL_FORMAT, "backbone": name, "backbone_kwargs": dict(kwargs),
            "card": card.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in bb.state_dict().items()},
            "config": config}


def _template_of_data(folder: str, architecture: str) -> Optional[str]:
    if architecture.startswith("resnet29_dlib"):
        return "dlib"
    if folder and os.path.isdir(folder):
        from ..align.prepare import prepared_template

        return prepared_template(folder)
    return None


def is_faceapi_dir(path: str) -> bool:
    from .faceapi import MANIFEST_NAME

    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST_NAME))


def resolve_model_path(path: str) -> str:
    """A run folder -> its ``model.pt`` (else its latest checkpoint); an export folder ->
    its ``model.onnx``; files and face-api folders unchanged."""
    if not os.path.isdir(path) or is_faceapi_dir(path):
        return path
    if os.path.isfile(os.path.join(path, "model.json")) and os.path.isfile(os.path.join(path, "model.onnx")):
        return os.path.join(path, "model.onnx")
    from ..train.checkpoint import CheckpointManager

    mp = os.path.join(path, "model.pt")
    if os.path.exists(mp):
        return mp
    ck = CheckpointManager(os.path.join(path, "checkpoints")).latest()
    if ck is None:
        raise CheckpointError(path, "folder holds no model.pt, no checkpoints/, no face-api manifest "
                              "and no export (model.json + model.onnx)")
    return ck


def init_state(path: str) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]], Optional[Dict[str, Any]], ModelCard]:
    """Weights to initialise training from: (backbone state, head state or None,
    the stored config or None, card). A run folder gives its latest checkpoint (which
    carries the head) before its model.pt."""
    if os.path.isdir(path) and not is_faceapi_dir(path):
        from ..train.checkpoint import CheckpointManager

        latest = CheckpointManager(os.path.join(path, "checkpoints")).latest()
        if latest is not None:
            path = latest
    if is_faceapi_dir(path):
        from .faceapi import faceapi_card, load_faceapi_weights

        card = faceapi_card(path)
        card.provenance.source = path
        return dict(load_faceapi_weights(path)), None, None, card
    path = resolve_model_path(path)
    _refuse_foreign(path)
    name, kw, sd, card, state = _read_ranface(path, "")
    head = state.get("modules", {}).get("head") if "modules" in state else None
    card.provenance.source = path
    return sd, head, state.get("config"), card


def read_card(path: str) -> ModelCard:
    """The card of the model at ``path`` without building it (e.g. ``prepare --model``)."""
    if not path or not os.path.exists(path):
        raise CheckpointError(path or None, "model not found")
    if is_faceapi_dir(path):
        from .faceapi import faceapi_card

        return faceapi_card(path)
    path = resolve_model_path(path)
    if path.lower().endswith(".onnx"):
        return _onnx_card(path)
    _refuse_foreign(path)
    card = _read_ranface(path, "")[3]
    card.provenance.source = os.path.abspath(path)
    return card


def load_model(path: str, backbone: str = "", device: Any = "cpu") -> Tuple[torch.nn.Module, ModelCard]:
    """Load a backbone for inference (eval mode, frozen) and its card."""
    if not path:
        raise CheckpointError(None, f"no model given (--model PATH: {EXPECTED})")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(path, "model not found")
    if is_faceapi_dir(path):
        from .faceapi import faceapi_card
        from .registry import create_backbone

        name = backbone or "resnet29_dlib"
        bb = create_backbone(name, pretrained=path)
        card = faceapi_card(path)
        card.architecture = name
    else:
        path = resolve_model_path(path)
        if path.lower().endswith(".onnx"):
            bb, card = _load_onnx(path)
            return bb, card
        _refuse_foreign(path)
        name, kw, sd, card, _ = _read_ranface(path, backbone)
        from ..train.checkpoint import load_state_strict
        from .registry import create_backbone

        bb = create_backbone(name, **kw)
        load_state_strict(bb, sd, path, what=f"{name} backbone")
    card.provenance.source = os.path.abspath(path)
    bb.eval().to(device)
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb, card


def _read_ranface(path: str, backbone: str) -> Tuple[str, Dict[str, Any], Dict[str, Any], ModelCard, Dict[str, Any]]:
    from ..train.checkpoint import check_model_checkpoint, load_checkpoint

    state = load_checkpoint(path)
    check_model_checkpoint(state, path, MODEL_FORMAT)  # malformed structure: one line
    if state.get("format") == MODEL_FORMAT:
        name, kw, sd = state["backbone"], dict(state.get("backbone_kwargs", {})), state["state_dict"]
        config = state.get("config") or {}
        kind = "ranface"
    elif "modules" in state and "config" in state:
        config = state["config"]
        model_cfg = config.get("model", {})
        name = model_cfg.get("backbone")
        kw = backbone_kwargs(model_cfg)
        if "backbone" not in state["modules"]:
            raise CheckpointError(path, "training checkpoint has no 'backbone' module")
        sd = state["modules"]["backbone"]
        kind = "checkpoint"
    else:
        raise CheckpointError(path, f"not a ranface model or training checkpoint (keys: {sorted(state)[:8]}); "
                              f"expected {EXPECTED}")
    if backbone and backbone != name:
        raise CheckpointError(path, f"holds a {name} backbone, not {backbone}")
    if isinstance(state.get("card"), dict):
        card = ModelCard.from_dict(state["card"], path)
    else:
        # Written before model cards: derive one from the architecture and the config.
        from .registry import create_backbone

        with torch.device("meta"):
            shell = create_backbone(name, **kw)
        card = training_card(shell, name, kw, config if isinstance(config, dict) else {})
    card.provenance.kind = kind
    return name, kw, sd, card, state


# ---------------------------------------------------------------------------- ONNX


class OnnxBackbone(torch.nn.Module):
    """An exported ``.onnx`` backbone on onnxruntime (CPU), usable wherever a ranface
    backbone is: ``forward`` maps normalised (N, 3, H, W) to (N, D); ``spec`` from the card."""

    def __init__(self, path: str, card: ModelCard, fingerprint: str = ""):
        super().__init__()
        from ..deploy.export import require_onnxruntime
        from .registry import BackboneSpec

        ort = require_onnxruntime()
        try:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own types)
            raise CheckpointError(path, f"onnxruntime cannot load it ({str(exc).splitlines()[0][:160]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.spec = BackboneSpec(input_size=tuple(card.input_size), embedding_size=card.embedding_size,
                                 mean=tuple(card.mean), std=tuple(card.std), color=card.color)
        import hashlib

        with open(path, "rb") as fh:
            self.digest = "sha256:" + hashlib.sha256(fh.read()).hexdigest()
        # the PyTorch model's fingerprint the export recorded, else the file's own digest
        self.fingerprint = fingerprint or self.digest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)


def _load_onnx(path: str) -> Tuple[torch.nn.Module, ModelCard]:
    card, meta = _onnx_sidecar(path)
    bb = OnnxBackbone(path, card, str(meta.get("fingerprint") or ""))
    return bb.eval(), card


def _onnx_card(path: str) -> ModelCard:
    return _onnx_sidecar(path)[0]


def _onnx_sidecar(path: str) -> Tuple[ModelCard, Dict[str, Any]]:
    sidecar = os.path.join(os.path.dirname(os.path.abspath(path)), "model.json")
    if not os.path.isfile(sidecar):
        raise CheckpointError(path, "an ONNX model needs its model.json (written by `ranface export`) "
                              "beside it: it holds the model card (input size, normalisation, template)")
    try:
        with open(sidecar, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CheckpointError(sidecar, f"unreadable export sidecar ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("card"), dict):
        raise CheckpointError(sidecar, "export sidecar without a model card (re-export with this ranface)")
    card = ModelCard.from_dict(meta["card"], sidecar)
    card.provenance.kind = "onnx"
    card.provenance.source = os.path.abspath(path)
    return card, meta


def _refuse_foreign(path: str) -> None:
    """One line for a file that is not a torch checkpoint (a gallery, an image, ...)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    what = None
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if names and all(n.endswith(".npy") for n in names):
            gallery = "meta.npy" in names and "templates.npy" in names
            what = ("a ranface gallery (.npz of embeddings)" if gallery
                    else "a NumPy .npz archive of arrays")
    elif head.startswith(b"\x93NUMPY"):
        what = "a NumPy .npy array"
    elif head[:3] == b"\xff\xd8\xff" or head.startswith(b"\x89PNG") or head[:2] in (b"BM", b"P5", b"P6"):
        what = "an image"
    elif head.lstrip()[:1] in (b"{", b"["):
        what = "a JSON/text file"
    elif path.lower().endswith((".yaml", ".yml", ".txt", ".csv")):
        what = "a text file"
    if what:
        raise CheckpointError(path, f"is {what}, not a model; --model expects {EXPECTED}")
