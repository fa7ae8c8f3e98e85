"""Checkpoints: only state_dicts and plain data, written atomically, read with
``weights_only=True``.

Layout of a training checkpoint (a dict):
``step``, ``config`` (resolved config as a plain dict), ``modules`` {name: state_dict},
``optimizers`` / ``schedulers`` / ``scalers`` {phase: state_dict}, ``rng`` (python, numpy,
torch, cuda), ``sampler`` (epoch, consumed samples), ``counters`` and ``metrics``.
:class:`CheckpointManager` keeps the last-k and the best-k of a run directory.
"""
from __future__ import annotations

import json
import os
import random
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, NonFiniteError
from ..io_utils import atomic_open, atomic_write_text

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")


def _weights(state: Mapping[str, Any]) -> Dict[str, Any]:
    """The model weights of a checkpoint: ``modules`` (training) and ``state_dict``
    (an exported model) -> {dotted name: tensor}."""
    out: Dict[str, Any] = {}
    for name, sd in (state.get("modules") or {}).items() if isinstance(state.get("modules"), Mapping) else ():
        if isinstance(sd, Mapping):
            out.update({f"{name}.{k}": v for k, v in sd.items()})
    if isinstance(state.get("state_dict"), Mapping):
        out.update(state["state_dict"])
    return out


def check_finite_weights(state: Mapping[str, Any], path: str) -> None:
    """Refuse to write a model whose weights hold NaN or inf (it would embed every face
    to NaN, and ``compare`` print ``"cosine": NaN``)."""
    bad = [k for k, v in _weights(state).items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:4]) + (f", ... ({len(bad)} in all)" if len(bad) > 4 else "")
        raise NonFiniteError(f"{path}: not written: weights hold NaN or inf ({shown}); "
                             "the run diverged (check optim.lr and the data)")


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """``torch.save`` to a temp file, fsync, rename: never a half-written checkpoint, and
    never one with non-finite weights."""
    check_finite_weights(state, path)
    try:
        with atomic_open(path, "wb") as fh:
            torch.save(dict(state), fh)
    except RuntimeError as exc:
        # torch's zip writer reports a full disk as "[enforce fail at inline_container.cc]"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"cannot write checkpoint (disk full? {first[:160]})") from None


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load with ``weights_only=True`` (tensors and plain containers only)."""
    if not os.path.isfile(path):
        raise CheckpointError(path, "checkpoint file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError/EOFError etc.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(path, "refused: the file holds objects other than tensors "
                                  "and plain data (only state_dict checkpoints are loaded; "
                                  f"{first[:160]})") from None
        raise CheckpointError(path, f"unreadable or truncated checkpoint ({first[:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def _fail(path: str, problem: str) -> CheckpointError:
    return CheckpointError(path, f"malformed checkpoint: {problem}")


def _check_state_dict(sd: Any, path: str, what: str) -> None:
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) for k in sd):
        raise _fail(path, f"{what} is not a mapping of tensor names to tensors")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise _fail(path, f"{what} entry {bad[0][:80]!r} is a {type(sd[bad[0]]).__name__}, not a tensor")


def check_model_config(cfg: Any, path: str) -> None:
    """The ``model`` section a checkpoint records (how to rebuild the backbone)."""
    if not isinstance(cfg, Mapping):
        raise _fail(path, f"'config' is a {type(cfg).__name__}, not a mapping")
    model = cfg.get("model", {})
    if not isinstance(model, Mapping):
        raise _fail(path, f"'config.model' is a {type(model).__name__}, not a mapping")
    if not isinstance(model.get("backbone"), str) or not model.get("backbone"):
        raise _fail(path, "'config.model.backbone' is not a backbone name")
    for key, kinds in (("embedding_size", (int, type(None))), ("dropout", (int, float, type(None)))):
        v = model.get(key)
        if isinstance(v, bool) or not isinstance(v, kinds):
            raise _fail(path, f"'config.model.{key}' is {type(v).__name__} {str(v)[:40]!r}")


def check_model_checkpoint(state: Mapping[str, Any], path: str, model_format: str) -> None:
    """Structure of a checkpoint loaded for inference: an exported model (``format`` ==
    ``model_format``: backbone name, kwargs, state_dict) or a training checkpoint
    (``config`` + ``modules.backbone``). One-line :class:`CheckpointError` on anything
    else (no keys, a list as the backbone name, the config as a string, ...)."""
    if state.get("format") == model_format:
        if not isinstance(state.get("backbone"), str) or not state["backbone"]:
            raise _fail(path, f"'backbone' is {type(state.get('backbone')).__name__}, not a backbone name")
        kw = state.get("backbone_kwargs", {})
        if not isinstance(kw, Mapping) or not all(isinstance(k, str) for k in kw):
            raise _fail(path, "'backbone_kwargs' is not a mapping of option names")
        if "state_dict" not in state:
            raise _fail(path, "no 'state_dict'")
        _check_state_dict(state["state_dict"], path, "'state_dict'")
        if not isinstance(state.get("config", {}), Mapping):
            raise _fail(path, f"'config' is a {type(state.get('config')).__name__}, not a mapping")
        return
    if "modules" in state and "config" in state:
        check_model_config(state["config"], path)
        modules = state["modules"]
        if not isinstance(modules, Mapping):
            raise _fail(path, f"'modules' is a {type(modules).__name__}, not a mapping")
        if "backbone" not in modules:
            raise CheckpointError(path, "training checkpoint has no 'backbone' module")
        _check_state_dict(modules["backbone"], path, "'modules.backbone'")
        return
    keys = sorted(str(k)[:40] for k in state)[:8]
    raise CheckpointError(path, "not a ranface model or training checkpoint "
                          f"(keys: {keys if keys else 'none'})")


def check_training_checkpoint(state: Mapping[str, Any], path: str) -> None:
    """Structure of a checkpoint a run resumes from (types only; fit is checked when
    loaded into the modules)."""
    for key, kind in (("step", int), ("modules", Mapping), ("optimizers", Mapping),
                      ("phase_runs", Mapping), ("rng", Mapping), ("sampler", Mapping)):
        if key not in state:
            raise CheckpointError(path, f"not a ranface training checkpoint (missing '{key}')")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise _fail(path, f"'{key}' is a {type(state[key]).__name__}")
    for name, sd in state["modules"].items():
        _check_state_dict(sd, path, f"'modules.{name}'")
    if not isinstance(state.get("config", {}), Mapping):
        raise _fail(path, f"'config' is a {type(state.get('config')).__name__}, not a mapping")


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str,
                      what: str = "model") -> None:
    """``load_state_dict`` with a one-line error listing missing / unexpected / misshapen
    tensors (e.g. a checkpoint of another architecture)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shape)):
            if items:
                shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(source, f"does not fit the {what} ({type(module).__name__}): "
                              + "; ".join(parts))
    module.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------- RNG


def capture_rng() -> Dict[str, Any]:
    """All RNG states as tensors / plain data (loadable with weights_only)."""
    np_state = np.random.get_state()
    state: Dict[str, Any] = {
        "python": list(_py_state_to_list(random.getstate())),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    random.setstate(_py_state_from_list(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["gauss"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _py_state_to_list(st: Any) -> List[Any]:
    version, internal, gauss = st
    return [version, list(internal), gauss]


def _py_state_from_list(lst: Sequence[Any]) -> Any:
    return (int(lst[0]), tuple(int(x) for x in lst[1]), lst[2])


# ---------------------------------------------------------------------------- manager


class CheckpointManager:
    """Keeps ``ckpt-<step>.pt`` files of a run directory: the last ``keep_last`` and the
    best ``keep_best`` by a metric (higher is better). ``index.json`` records metrics."""

    def __init__(self, directory: str, keep_last: int = 2, keep_best: int = 2):
        self.directory = directory
        self.keep_last = max(1, int(keep_last))
        self.keep_best = max(0, int(keep_best))
        self.index_path = os.path.join(directory, "index.json")

    def path_for(self, step: int) -> str:
        return os.path.join(self.directory, f"ckpt-{step:08d}.pt")

    def _read_index(self) -> Dict[str, Any]:
        try:
            with open(self.index_path, "r", encoding="utf-8") as fh:
                data = json.load(fh)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def steps(self) -> List[int]:
        if not os.path.isdir(self.directory):
            return []
        out = []
        for name in os.listdir(self.directory):
            m = CKPT_RE.match(name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def save(self, step: int, state: Mapping[str, Any], metric: Optional[float] = None) -> str:
        os.makedirs(self.directory, exist_ok=True)
        path = self.path_for(step)
        save_checkpoint(path, state)
        index = self._read_index()
        metrics = index.get("metrics", {})
        if metric is not None:
            metrics[str(step)] = float(metric)
        self._prune(metrics)
        index = {"metrics": {k: v for k, v in metrics.items() if int(k) in self.steps()},
                 "latest": step}
        atomic_write_text(self.index_path, json.dumps(index, indent=1, sort_keys=True))
        return path

    def _prune(self, metrics: Dict[str, float]) -> None:
        steps = self.steps()
        keep = set(steps[-self.keep_last:])
        ranked = sorted((s for s in steps if str(s) in metrics), key=lambda s: -metrics[str(s)])
        keep.update(ranked[: self.keep_best])
        for s in steps:
            if s not in keep:
                try:
                    os.unlink(self.path_for(s))
                except OSError:
                    pass

    def latest(self) -> Optional[str]:
        steps = self.steps()
        return self.path_for(steps[-1]) if steps else None

    def best(self) -> Optional[str]:
        metrics = self._read_index().get("metrics", {})
        existing = [s for s in self.steps() if str(s) in metrics]
        if not existing:
            return None
        return self.path_for(max(existing, key=lambda s: metrics[str(s)]))
