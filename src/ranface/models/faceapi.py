"""Import of face-api.js's pretrained ``FaceRecognitionNet`` (dlib's ResNet-29) from its
TensorFlow.js files into :class:`~ranface.models.resnet29.ResNet29Dlib`.

A TF.js weights manifest is a JSON list of groups ``{"paths": [shard, ...], "weights":
[{"name", "shape", "dtype", "quantization": {"dtype", "scale", "min"}}, ...]}``; each
group's shards, concatenated, hold its tensors back to back in manifest order, C order.
A quantised tensor is stored as uint8/uint16 q and means ``q * scale + min`` (float16
quantisation stores half floats). Conv filters are HWIO (PyTorch: OIHW); ``fc`` is
(in, out) (PyTorch Linear: (out, in)).
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import CheckpointError, PathLike
from .registry import register_backbone
from .resnet29 import ResNet29Dlib

if TYPE_CHECKING:
    from .card import ModelCard

__all__ = ["MANIFEST_NAME", "read_tfjs_weights", "faceapi_to_torch_name",
           "load_faceapi_weights", "resnet29_dlib", "faceapi_card"]

MANIFEST_NAME = "face_recognition_model-weights_manifest.json"

# Stored element types: little-endian, as TF.js writes them.
_PLAIN_DTYPES = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4"), "bool": np.dtype("u1")}
_QUANT_DTYPES = {"uint8": np.dtype("u1"), "uint16": np.dtype("<u2"), "float16": np.dtype("<f2")}
_LEAF_NAMES = {"filters": "weight", "weights": "weight", "bias": "bias", "biases": "bias"}
_MAX_LISTED = 10
_MAX_MANIFEST_CHARS = 1 << 22  # face-api's manifest is ~30 kB


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def _parse_entry(entry: object, manifest: str, where: str
                 ) -> Tuple[str, Tuple[int, ...], np.dtype, Optional[Tuple[float, float]]]:
    """Validate one manifest weight entry -> (name, shape, stored dtype, (scale, min))."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise CheckpointError(manifest, "weight entry without a string 'name'", where)
    name = entry["name"]
    where = f"{where} {name!r}"
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CheckpointError(manifest, f"bad shape {shape!r}", where)
    dtype = entry.get("dtype")
    if dtype not in _PLAIN_DTYPES:
        raise CheckpointError(manifest, f"unsupported dtype {dtype!r} (known: "
                              f"{', '.join(_PLAIN_DTYPES)})", where)
    quant = entry.get("quantization")
    if quant is None:
        return name, tuple(shape), _PLAIN_DTYPES[dtype], None
    if not isinstance(quant, dict) or quant.get("dtype") not in _QUANT_DTYPES:
        raise CheckpointError(manifest, f"unsupported quantization {quant!r} (known dtypes: "
                              f"{', '.join(_QUANT_DTYPES)})", where)
    if quant["dtype"] == "float16":
        return name, tuple(shape), _QUANT_DTYPES["float16"], None
    scale, qmin = quant.get("scale"), quant.get("min")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (scale, qmin)):
        raise CheckpointError(manifest, "quantization needs finite 'scale' and 'min', got "
                              f"{scale!r}, {qmin!r}", where)
    return name, tuple(shape), _QUANT_DTYPES[quant["dtype"]], (float(scale), float(qmin))


def _shard_path(manifest: str, rel: str, gi: int) -> str:
    """The shard file ``rel`` of ``manifest``'s folder; refuses names that leave the
    folder (absolute, ``..``, a symlink pointing out) and anything but a regular file
    (``/dev/zero``, a FIFO would be read forever)."""
    base = os.path.dirname(os.path.abspath(manifest))
    if not rel or os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        raise CheckpointError(manifest, f"weights file name {rel[:80]!r} is not a file of the "
                              "model folder", f"group {gi}")
    shard = os.path.join(base, rel)
    real_base = os.path.realpath(base)
    if os.path.commonpath([real_base, os.path.realpath(shard)]) != real_base:
        raise CheckpointError(shard, f"weights file named in {manifest} lies outside the model "
                              "folder (symlink)")
    if os.path.exists(shard) and not os.path.isfile(shard):
        raise CheckpointError(shard, f"weights file named in {manifest} is not a regular file")
    return shard


def _read_group_bytes(manifest: str, group: dict, gi: int, expected: int) -> Tuple[bytes, str]:
    """The group's shards, concatenated; their sizes are checked against ``expected``
    (the manifest's tensors) before a byte is read."""
    paths = group.get("paths")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise CheckpointError(manifest, "group needs a non-empty list 'paths' of file names",
                              f"group {gi}")
    shards = [_shard_path(manifest, rel, gi) for rel in paths]
    label = " + ".join(shards)
    sizes = []
    for shard in shards:
        try:
            sizes.append(os.stat(shard).st_size)
        except OSError as exc:
            raise CheckpointError(shard, f"cannot read weights file named in {manifest} "
                                  f"({exc.strerror or exc})") from None
    if sum(sizes) != expected:
        raise CheckpointError(label, f"holds {sum(sizes)} bytes but {manifest} describes "
                              f"{expected} bytes of tensors")
    chunks = []
    for shard, size in zip(shards, sizes):
        try:
            with open(shard, "rb") as fh:
                data = fh.read(size + 1)  # never more than the size checked above
        except OSError as exc:
            raise CheckpointError(shard, f"cannot read weights file named in {manifest} "
                                  f"({exc.strerror or exc})") from None
        if len(data) != size:
            raise CheckpointError(shard, "changed size while being read")
        chunks.append(data)
    return b"".join(chunks), label


def read_tfjs_weights(manifest_path: PathLike) -> "OrderedDict[str, np.ndarray]":
    """Read a TF.js weights manifest and its shards -> name -> array (dequantised to
    float32 where quantised), in manifest order.

    Raises :class:`CheckpointError` naming the file for a missing or malformed manifest,
    a missing shard, a shard size that disagrees with the manifest, or duplicate names.
    """
    manifest = os.fspath(manifest_path)
    if os.path.exists(manifest) and not os.path.isfile(manifest):
        raise CheckpointError(manifest, "weights manifest is not a regular file")
    try:
        with open(manifest, "r", encoding="utf-8") as fh:
            text = fh.read(_MAX_MANIFEST_CHARS + 1)
        if len(text) > _MAX_MANIFEST_CHARS:
            raise CheckpointError(manifest, f"weights manifest larger than {_MAX_MANIFEST_CHARS} characters")
        groups = json.loads(text)
    except OSError as exc:
        raise CheckpointError(manifest, f"cannot read weights manifest "
                              f"({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else None
        raise CheckpointError(manifest, f"not a JSON weights manifest ({exc})", where) from None
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(manifest, "a weights manifest is a JSON list of groups")

    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for gi, group in enumerate(groups):
        entries = group.get("weights")
        if not isinstance(entries, list):
            raise CheckpointError(manifest, "group has no list 'weights'", f"group {gi}")
        parsed = [_parse_entry(e, manifest, f"group {gi} weight {i}")
                  for i, e in enumerate(entries)]
        expected = sum(int(np.prod(shape)) * dt.itemsize for _, shape, dt, _ in parsed)
        data, label = _read_group_bytes(manifest, group, gi, expected)
        offset = 0
        for name, shape, dt, quant in parsed:
            count = int(np.prod(shape))
            raw = np.frombuffer(data, dtype=dt, count=count, offset=offset)
            offset += count * dt.itemsize
            if quant is not None:
                scale, qmin = quant
                # TF.js computes q * scale + min in double and stores float32.
                arr = (raw.astype(np.float64) * scale + qmin).astype(np.float32)
            elif dt == _QUANT_DTYPES["float16"]:
                arr = raw.astype(np.float32)
            else:
                arr = raw.copy()
            if name in out:
                raise CheckpointError(manifest, f"tensor name {name!r} appears twice")
            out[name] = arr.reshape(shape)
    return out


def faceapi_to_torch_name(name: str) -> str:
    """face-api.js tensor name -> :class:`ResNet29Dlib` state_dict key, e.g.
    ``conv64_down/conv1/conv/filters`` -> ``conv64_down.conv1.conv.weight``;
    ``fc`` -> ``fc.weight``. Names that fit no rule are returned unchanged (and then
    reported as unknown)."""
    if name == "fc":
        return "fc.weight"
    parts = name.split("/")
    if parts[-1] in _LEAF_NAMES:
        parts[-1] = _LEAF_NAMES[parts[-1]]
        return ".".join(parts)
    return name


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:   # HWIO -> OIHW
        return array.transpose(3, 2, 0, 1)
    if array.ndim == 2:   # (in, out) -> (out, in)
        return array.T
    return array


def load_faceapi_weights(model_dir: PathLike) -> "OrderedDict[str, torch.Tensor]":
    """Read face-api.js's ``face_recognition_model`` files from ``model_dir`` and return a
    state_dict for :class:`ResNet29Dlib` (float32, PyTorch layouts).

    Raises :class:`CheckpointError` naming the file when files are missing or malformed,
    when tensors are unknown or missing (listed), of the wrong shape, or not finite.
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise CheckpointError(model_dir, "face-api model directory does not exist")
    manifest = os.path.join(model_dir, MANIFEST_NAME)
    raw = read_tfjs_weights(manifest)

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in ResNet29Dlib().state_dict().items()}
    mapped: Dict[str, Tuple[str, np.ndarray]] = {}
    unknown: List[str] = []
    for name, array in raw.items():
        key = faceapi_to_torch_name(name)
        if key in expected:
            mapped[key] = (name, array)
        else:
            unknown.append(name)
    missing = [k for k in expected if k not in mapped]
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"unknown tensors: {_listing(unknown)}")
        if missing:
            problems.append(f"missing tensors (PyTorch names): {_listing(missing)}")
        raise CheckpointError(manifest, "does not describe face-api.js's "
                              f"FaceRecognitionNet; {'; '.join(problems)}")

    state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, shape in expected.items():
        name, array = mapped[key]
        if array.dtype != np.float32:
            raise CheckpointError(manifest, f"tensor has dtype {array.dtype}, expected "
                                  "float32", name)
        tensor = torch.from_numpy(np.ascontiguousarray(_to_torch_layout(array)))
        if tuple(tensor.shape) != shape:
            raise CheckpointError(manifest, f"shape {list(array.shape)} does not fit "
                                  f"{key} of shape {list(shape)} (after HWIO->OIHW)", name)
        if not torch.isfinite(tensor).all():
            raise CheckpointError(manifest, "tensor holds NaN or infinite values", name)
        state[key] = tensor
    return state


@register_backbone("resnet29_dlib")
def resnet29_dlib(pretrained: Optional[PathLike] = None) -> ResNet29Dlib:
    """dlib's ResNet-29 (150x150 RGB -> 128-d); ``pretrained`` is a directory holding
    face-api.js's ``face_recognition_model`` manifest and weights."""
    model = ResNet29Dlib()
    if pretrained is not None:
        model.load_state_dict(load_faceapi_weights(pretrained))
    return model


# Calibrated on LFW View-2 by benchmarks/calibrate_faceapi.py (output recorded in
# docs/results.md): photos aligned as `compare` aligns them, flip-sum cosines.
FACEAPI_THRESHOLDS: Dict[str, object] = {
    "best_accuracy": 0.9126482307910919, "accuracy": 0.9909698996655518,
    "at_far": 0.9278337359428406, "far": 0.001, "tar": 0.9511215266153331, "pairs": 5980,
    "data": "LFW View-2 pairs.txt (5980 of 6000 pairs; grey photos, MTCNN + dlib template at 150x150)",
    "note": "20 pairs dropped: no face found in a photo",
}


def faceapi_card(model_dir: PathLike) -> "ModelCard":
    """The card of the imported face-api ResNet-29: dlib chips (150x150 RGB, template
    'dlib'), dlib's normalisation, 128-d flip-summed embeddings, and the thresholds
    calibrated on LFW pairs."""
    from .card import ModelCard, Provenance, Thresholds

    from .resnet29 import DLIB_MEAN_RGB, DLIB_STD

    return ModelCard(architecture="resnet29_dlib", arch_args={}, embedding_size=128,
                     input_size=(150, 150), color="rgb", mean=tuple(DLIB_MEAN_RGB),
                     std=tuple(DLIB_STD), template="dlib", flip=True,
                     thresholds=Thresholds(**FACEAPI_THRESHOLDS),
                     provenance=Provenance(stage="imported", kind="faceapi",
                                           training_data="dlib face recognition set (about 3M faces)",
                                           source=os.path.abspath(os.fspath(model_dir))))
