"""Typed configuration: dataclasses per stage, YAML files, dotted command-line overrides.

A config is a tree of dataclasses. :func:`load_config` builds it from defaults, then a
YAML file, then ``--set a.b=value`` overrides, in that order. Unknown keys and values of
the wrong type are a :class:`~ranface.errors.ConfigError` naming the dotted key (and the
file). The resolved config is written into every run directory (:func:`save_config`) and
stored inside every checkpoint, so a model can be rebuilt from the checkpoint alone.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

from .errors import ConfigError

T = TypeVar("T")


def default_data_root() -> str:
    """The bundled real data (``../shared/data`` from the repository root) unless
    ``RANFACE_DATA`` points elsewhere."""
    env = os.environ.get("RANFACE_DATA")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "..", "shared", "data"))


# ---------------------------------------------------------------------------- paths


def path_field(default: str = "", keywords: Sequence[str] = ()) -> Any:
    """A config field naming a file or folder that a user may give.

    Its default (when relative) is interpreted by the consumer against its own base
    (a protocol's data root, say). A value the user gives -- in a YAML file or with
    ``--set`` -- is a path as typed in the shell: :func:`load_config` resolves it once,
    against the current directory, to an absolute path, so no consumer can join it onto
    a second base. ``keywords`` are reserved values (e.g. ``auto``) left as they are.
    """
    return field(default=default, metadata={"path": True, "keywords": tuple(keywords)})


def _resolve_user_paths(cls: type, values: Dict[str, Any]) -> Dict[str, Any]:
    """``values`` with every user-given path field (see :func:`path_field`) made absolute."""
    out = dict(values)
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name not in out:
            continue
        v = out[f.name]
        if f.metadata.get("path") and isinstance(v, str) and v and v not in f.metadata.get("keywords", ()):
            out[f.name] = os.path.abspath(os.path.expanduser(v))
        elif dataclasses.is_dataclass(hints.get(f.name)) and isinstance(v, dict):
            out[f.name] = _resolve_user_paths(hints[f.name], v)
    return out


# ---------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    """Training data.

    ``train``: an image folder ``<identity>/<file>`` of aligned faces, a folder holding
    ``train.rec``/``train.idx``, or a ``.rec`` file. ``lr_train``: the synthesized LR twin
    of ``train`` (same layout and labels; LR and MR stages). ``val``: a verification set for
    periodic validation: an insightface ``.bin`` file or an aligned folder with a
    ``pairs.txt`` (LFW format).
    """

    train: str = ""
    format: str = "auto"  # auto | folder | rec
    lr_train: str = ""
    val: str = ""
    val_probe_size: int = 0  # pairs-folder validation: also HR-vs-LR at this probe width (px)
    color: str = "rgb"  # channel order the images are fed to the model in
    batch_size: int = 128  # per process
    num_workers: int = 2
    hflip: bool = True  # random horizontal flip augmentation
    resize: bool = False  # faces of another size are resized to the model input (else an error)
    on_error: str = "raise"  # raise | skip (counted and reported)
    drop_last: bool = True


@dataclass
class ModelConfig:
    """Backbone and margin head (kept apart, insightface arcface_torch style)."""

    backbone: str = "iresnet34"
    embedding_size: Optional[int] = None  # None: the backbone's default
    dropout: float = 0.0
    head: str = "arcface"  # arcface | cosface
    scale: float = 64.0  # s
    margin: Optional[float] = None  # m; None: 0.5 for arcface, 0.35 for cosface
    init: str = ""  # checkpoint (.pt) of a ranface run, or a face-api model folder
    head_init: str = "random"  # random | centres: a new head starts at the class-mean embeddings


@dataclass
class OptimConfig:
    """SGD with momentum and weight decay; warm-up then a step or cosine schedule.

    Paper §4.2, HR stage: lr 0.1 divided by 10 at 60k, 100k, 140k iterations, batch 256.
    """

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"  # step | cosine | constant
    milestones: List[int] = field(default_factory=lambda: [60000, 100000, 140000])
    gamma: float = 0.1
    warmup_steps: int = 0
    warmup_start_factor: float = 0.1
    max_steps: int = 160000
    clip_grad_norm: Optional[float] = 5.0  # None or 0: off
    head_lr_mult: float = 1.0


@dataclass
class RunConfig:
    """Where and how a run executes (shared by every training stage)."""

    out_dir: str = "runs"
    name: str = ""  # run directory name; "" -> <stage>-NNNN (numbered)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # auto: bf16 on CPUs with AMX/AVX512-BF16 and Ampere+ GPUs, fp16 on older GPUs, else fp32
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    # NHWC; null (auto): on under bf16/fp16 (precision.use_channels_last)
    channels_last: Optional[bool] = None
    # torch.compile; null (auto): on CPU runs of at least compile_min_steps steps
    compile: Optional[bool] = None
    compile_min_steps: int = 1000
    deterministic: bool = False
    log_every: int = 10
    ckpt_every: int = 500
    val_every: int = 1000
    keep_last: int = 2
    keep_best: int = 2
    resume: str = ""  # "" | auto | path to a checkpoint
    force_resume: bool = False  # resume although the recipe differs from the run's config.yaml
    max_nonfinite: int = 20  # stop after this many consecutive non-finite steps
    dist_timeout_s: int = 600  # collective timeout: a dead peer ends the job, no hang
    tensorboard: bool = True
    progress: bool = True
    inject_nonfinite: List[int] = field(default_factory=list)  # tests: NaN loss at these steps


@dataclass
class AdaptConfig:
    """Feature adaption network, MR stage (paper §3.4, Eq. 7-10, §4.2 step 3).

    L_c = L_c^HR + alpha L_feature^G + beta L_p + gamma L_f, (alpha, beta, gamma) =
    (0.05, 0.04, 10); the feature discriminator D is trained with Adam and L_feature^G
    is used once every ``feature_g_every`` (4) discriminator iterations.
    """

    lr_model: str = ""  # the frozen LR model (run dir or model.pt of `train --stage lr`)
    alpha: float = 0.05
    beta: float = 0.04
    gamma: float = 10.0
    translator: bool = True  # False: the "no translator" ablation (f_HR used directly)
    translator_hidden: int = 0  # 0: the embedding size
    disc_hidden: int = 256
    disc_spectral_norm: bool = True  # 1-Lipschitz D: it cannot simply win (see adapt/discriminator.py)
    disc_lr: float = 2e-4
    disc_betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    feature_g_every: int = 4
    gate_grad: bool = False  # whether W (Eq. 8) carries gradient back into D / T_LR
    lf_distance: str = "l2"  # l2 | l1 : the norm in L_f (Eq. 9)
    lf_reduction: str = "sample"  # sample: mean over the batch of the per-sample norm (Eq. 9) | element
    lr_blur: bool = False  # random Gaussian blur on the LR twins as in the LR stage
    # probability that a top-stream face is replaced by its synthesized LR twin (§3.4: "add
    # generated target samples to balance the multi-resolution representations"); 0 = the
    # top stream sees HR faces only, Fig. 4 read literally (docs/decisions.md, issue 11)
    twin_prob: float = 0.0
    log_grad_share: bool = True  # log each Eq. 10 term's share of the gradient at f_HR


@dataclass
class TrainConfig:
    """``ranface train --stage hr|lr|mr``."""

    stage: str = "hr"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)


@dataclass
class EmbedConfig:
    """``ranface embed`` / ``ranface compare``: photos are detected and aligned with the
    model card's template at its input size unless ``aligned``."""

    model: str = ""  # model.pt, run dir, checkpoint, face-api folder or exported .onnx
    backbone: str = ""  # needed only for a face-api folder (default resnet29_dlib)
    batch_size: int = 64
    flip: Optional[bool] = None  # flip-sum embeddings; None: the model card's policy
    device: str = "auto"
    aligned: bool = False  # inputs are aligned faces (any size): no detection
    template: str = "auto"  # alignment template; auto: the model card's
    force: bool = False  # aligned input made with another template than the card's: warn, not refuse
    threshold: Optional[float] = None  # compare: cosine threshold; None: the card's calibrated one


@dataclass
class PrepareConfig:
    """``ranface prepare``: raw photos -> aligned faces (paper §4.1).

    ``mode``: 'one' keeps one face per photo (the dataset convention: a labelled photo
    shows its subject; ``policy`` picks it), 'all' keeps every detected face (crowd photos
    -> a real LR pool). ``lr_select`` "MIN:MAX" keeps only faces whose eye-midpoint to
    mouth-midpoint distance lies in [MIN, MAX] original pixels (paper: 10..30).
    """

    input: str = ""  # folder of photos (searched recursively) or a list file (.txt/.lst)
    root: str = ""  # base folder of relative paths in a list file ("" = the list's folder)
    out: str = ""
    format: str = "folder"  # folder | rec
    template: str = "arcface"  # arcface | dlib
    size: List[int] = field(default_factory=lambda: [112, 112])  # height, width
    mode: str = "one"  # one | all
    policy: str = "largest"  # largest | center | score
    min_score: float = 0.9
    min_face_size: float = 20.0
    pad_ratio: float = 0.5  # pad before detection: removes MTCNN's landmark bias on tight crops
    upscales: List[float] = field(default_factory=lambda: [1.0])  # also detect at 2x, 3x for tiny faces
    # enlarged copies search only the scales the smaller ones did not: 1.5x faster on the
    # crowd photos, ~2% fewer faces (docs/performance.md); false: the same faces as before
    upscale_new_only: bool = False
    lr_select: str = ""  # "" or "MIN:MAX" eye-to-mouth pixels
    max_outside: float = 1.0  # drop faces whose box lies more than this fraction outside the photo
    center_crop_fallback: bool = False
    border: str = "constant"
    image_format: str = "jpg"  # jpg | png
    grey: bool = False  # write grey faces (e.g. a colour LR pool for a grey HR set like LFW)
    jpeg_quality: int = 95
    workers: int = 2
    chunk_size: int = 64
    limit: int = 0  # process at most this many photos (0: all)
    progress: bool = True


CONFIG_CLASSES: Dict[str, type] = {"train": TrainConfig, "embed": EmbedConfig, "prepare": PrepareConfig}

# ---------------------------------------------------------------------------- building


class RawValue(str):
    """A value typed on the command line (``--set k=v``, a CLI flag): text, typed by the
    field it is given to (see :func:`_from_text`), never parsed as YAML."""


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"", "null", "none", "~"}


def _from_text(text: str, tp: Any, key: str) -> Any:
    """Command-line text -> a value of the annotation ``tp``: a string stays the text as
    typed (no YAML: ``#`` is not a comment, ``007`` not an int), numbers are parsed as
    numbers, lists are comma separated (or a ``[a, b]`` flow list)."""
    text = str(text)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is str or tp is Any:
        return text
    if origin is Union:
        if type(None) in args and text.strip().lower() in _NONE:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _from_text(text, inner[0], key)
        for a in inner:
            try:
                return _coerce(_from_text(text, a, key), a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in inner)}, got {_short(text)}")
    if origin in (list, List, tuple, Tuple, Sequence) or tp in (list, tuple):
        body = text.strip()
        if body.startswith("[") and body.endswith("]"):
            body = body[1:-1]
        inner = args[0] if args else str
        return [_from_text(v, inner, f"{key}[{i}]")
                for i, v in enumerate(x for x in (s.strip() for s in body.split(",")) if x)]
    t = text.strip()
    if tp is bool:
        if t.lower() in _TRUE:
            return True
        if t.lower() in _FALSE:
            return False
        raise ConfigError(f"{key}: expected true/false, got {_short(text)}")
    if tp is int:
        try:
            return int(t, 10)
        except ValueError:
            try:
                f = float(t)
            except ValueError:
                raise ConfigError(f"{key}: expected an integer, got {_short(text)}") from None
            if not (math.isfinite(f) and f == int(f)):
                raise ConfigError(f"{key}: expected an integer, got {_short(text)}")
            return int(f)
    if tp is float:
        try:
            return float(t.replace(".nan", "nan").replace(".inf", "inf"))
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {_short(text)}") from None
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"{key}: is a section; set its keys one by one ({key}.NAME=VALUE)")
    return text


# Longest text of a value an error message echoes (a config value may be huge).
_ECHO_CHARS = 80


def _short(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters, without building the full repr."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 2, 4, 4, 4, 60, 60
    text = r.repr(value)
    return text if len(text) <= _ECHO_CHARS else text[:_ECHO_CHARS - 3] + "..."


def _untyped(value: Any) -> Any:
    """A field of type ``Any`` (a plug-in's own options) has no type to go by: its
    command-line text is read as one bounded YAML value (a string when it is not one)."""
    if isinstance(value, dict):
        return {k: _untyped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untyped(v) for v in value]
    if isinstance(value, RawValue):
        try:
            loaded = yaml.load(str(value), Loader=_BoundedLoader) if value.strip() else ""  # noqa: S506
        except (yaml.YAMLError, ConfigError, RecursionError):
            return str(value)
        return str(value) if _expanded_size(loaded, 1000) > 1000 else loaded
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return _untyped(value)
    if isinstance(value, RawValue):
        value = _from_text(value, tp, key)
        if tp is str:
            return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {_short(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {_short(value)}")
        return _build(tp, value, key + ".")
    if origin in (list, List, tuple, Tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_short(value)}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin in (tuple, Tuple) or tp is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {_short(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not math.isfinite(value)) or int(value) != value:
            raise ConfigError(f"{key}: expected an integer, got {_short(value)}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_short(value)}")
        return float(value)
    if tp is str:
        # YAML would have changed the text already (``007`` -> 7, ``10:30`` -> 630): refuse
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_short(value)}")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp}")


def _field_types(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: Type[T], values: Dict[str, Any], prefix: str = "") -> T:
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted((str(u) for u in set(values) - set(names)))  # YAML keys may be ints, null
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
                          f"valid keys of {prefix or 'the top level'}: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    obj = cls(**kwargs)
    _validate(obj, prefix)
    return obj


# ---------------------------------------------------------------------------- validation
# Every config is checked when it is built (file, --set, or a checkpoint's stored config),
# so a bad value is one line naming the key before any work, not a traceback (or a silent
# NaN model) later. Rules by field name hold for every config class (any module's);
# rules by (class, field) for the ones here. A class may add a ``validate()`` method.

def _between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    def ok(v: float) -> bool:
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return ok, f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _min(lo: float, strict: bool = False):
    return (lambda v: v > lo) if strict else (lambda v: v >= lo), f"{'>' if strict else '>='} {lo}"


def _one_of(*names: str):
    return (lambda v: v in names), "one of " + ", ".join(repr(n) for n in names)


def _device_ok(v: str) -> bool:
    import re

    return bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v))


_DEVICE = (_device_ok, "auto, cpu, cuda, cuda:N or mps")
_NAME_RULES: Dict[str, Tuple[Any, str]] = {
    "batch_size": _min(1), "num_workers": _min(0), "workers": _min(1), "chunk_size": _min(1),
    "max_steps": _min(1), "log_every": _min(1), "ckpt_every": _min(1), "val_every": _min(0),
    "image_every": _min(0), "pixel_every": _min(1), "feature_g_every": _min(1),
    "keep_last": _min(1), "keep_best": _min(0), "seed": _min(0), "max_nonfinite": _min(1),
    "dist_timeout_s": _min(1), "jpeg_quality": _between(1, 100), "device": _DEVICE,
    "on_error": _one_of("raise", "skip"), "lr": _min(0, strict=True), "d_lr": _min(0),
    "disc_lr": _min(0, strict=True), "head_lr_mult": _min(0), "weight_decay": _min(0),
    "warmup_steps": _min(0), "limit": _min(0), "face_size": _min(1), "top_k": _min(1),
    "fpir": _between(0, 1, lo_open=True), "every": _min(1), "max_frames": _min(0), "degrade": _min(0),
    "faiss_above": _min(0),
}


@functools.lru_cache(maxsize=None)
def _class_rules() -> Dict[Tuple[type, str], Tuple[Any, str]]:
    from .train.precision import PRECISIONS

    return {
        (TrainConfig, "stage"): _one_of("hr", "lr", "mr"),
        (DataConfig, "format"): _one_of("auto", "folder", "rec"),
        (DataConfig, "color"): _one_of("rgb", "bgr"),
        (DataConfig, "val_probe_size"): _min(0),
        (ModelConfig, "head"): _one_of("arcface", "cosface"),
        (ModelConfig, "scale"): _min(0, strict=True),
        (ModelConfig, "dropout"): _between(0, 1, hi_open=True),
        (ModelConfig, "margin"): _min(0),
        (ModelConfig, "embedding_size"): _min(1),
        (ModelConfig, "head_init"): _one_of("random", "centres"),
        (OptimConfig, "momentum"): _between(0, 1, hi_open=True),
        (OptimConfig, "schedule"): _one_of("step", "cosine", "constant"),
        (OptimConfig, "milestones"): _min(0),
        (OptimConfig, "gamma"): _min(0, strict=True),
        (OptimConfig, "warmup_start_factor"): _between(0, 1, lo_open=True),
        (OptimConfig, "clip_grad_norm"): _min(0),
        (RunConfig, "precision"): _one_of(*PRECISIONS),
        (AdaptConfig, "alpha"): _min(0), (AdaptConfig, "beta"): _min(0), (AdaptConfig, "gamma"): _min(0),
        (AdaptConfig, "translator_hidden"): _min(0), (AdaptConfig, "disc_hidden"): _min(1),
        (AdaptConfig, "disc_betas"): _between(0, 1, hi_open=True),
        (AdaptConfig, "lf_distance"): _one_of("l2", "l1"),
        (AdaptConfig, "lf_reduction"): _one_of("sample", "element"),
        (AdaptConfig, "twin_prob"): _between(0, 1),
        (EmbedConfig, "color"): _one_of("", "rgb", "bgr"),
        (EmbedConfig, "threshold"): _between(-1, 1),
        (PrepareConfig, "format"): _one_of("folder", "rec"),
        (PrepareConfig, "template"): _one_of("arcface", "dlib"),
        (PrepareConfig, "size"): _min(1),
        (PrepareConfig, "mode"): _one_of("one", "all"),
        (PrepareConfig, "policy"): _one_of("largest", "center", "score"),
        (PrepareConfig, "min_score"): _between(0, 1),
        (PrepareConfig, "min_face_size"): _min(0),
        (PrepareConfig, "pad_ratio"): _min(0),
        (PrepareConfig, "upscales"): _min(0, strict=True),
        (PrepareConfig, "max_outside"): _between(0, 1),
        (PrepareConfig, "image_format"): _one_of("jpg", "png"),
    }


def _validate(obj: Any, prefix: str = "") -> None:
    """Check one built section (not its subsections: they were checked when built)."""
    rules = _class_rules()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        items = value if isinstance(value, (list, tuple)) else [value]
        for i, v in enumerate(items):
            where = key if items is not value else f"{key}[{i}]"
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{where}: must be a finite number, got {v}")
            rule = rules.get((type(obj), f.name)) or _NAME_RULES.get(f.name)
            if rule is None or v is None or isinstance(v, bool) or dataclasses.is_dataclass(v):
                continue
            ok, what = rule
            try:
                good = ok(v)
            except TypeError:  # a rule by name meeting a field of another type
                continue
            if not good:
                raise ConfigError(f"{where}: must be {what}, got {_short(v)}")
    check = getattr(obj, "validate", None)
    if callable(check):
        check()


def to_dict(cfg: Any) -> Dict[str, Any]:
    """Plain nested dict (lists, not tuples) of a config, for YAML and checkpoints."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def from_dict(cls: Type[T], values: Dict[str, Any]) -> T:
    """Build a config of class ``cls`` from a nested dict (unknown keys are an error)."""
    return _build(cls, values or {})


def _deep_merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> Tuple[List[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], value as :class:`RawValue` text, typed later by
    the field it sets; never YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {_short(text)}: expected KEY=VALUE (e.g. optim.lr=0.01)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {_short(text)}: empty key")
    return key.split("."), RawValue(raw)


# Bounds on what a config file may hold or expand to (a YAML alias "billion laughs"
# file of a few hundred bytes otherwise expands to gigabytes downstream).
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_ALIASES = 64
MAX_CONFIG_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses more than :data:`MAX_CONFIG_ALIASES` aliases and more than
    :data:`MAX_CONFIG_NODES` composed nodes."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D401 - PyYAML hook
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_CONFIG_ALIASES:
                raise ConfigError(f"more than {MAX_CONFIG_ALIASES} YAML aliases")
        self._nodes += 1
        if self._nodes > MAX_CONFIG_NODES:
            raise ConfigError(f"more than {MAX_CONFIG_NODES} YAML nodes")
        return super().compose_node(parent, index)


def _expanded_size(obj: Any, limit: int) -> int:
    """Nodes of ``obj`` counted with every alias expanded; stops just past ``limit``."""
    count, stack = 0, [obj]
    while stack:
        v = stack.pop()
        count += 1
        if count > limit:
            break
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return count


def read_yaml(path: str) -> Any:
    """Parse a YAML config file with bounded size, aliases and expansion; every problem is
    a one-line :class:`ConfigError` naming the file. The single home of config YAML."""
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO or /dev/zero: no reading
        raise ConfigError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    try:
        loaded = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML") from None
    if _expanded_size(loaded, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
        raise ConfigError(f"{path}: config expands to more than {MAX_CONFIG_NODES} values "
                          "(YAML aliases)")
    return loaded


def load_config(cls: Type[T], path: Optional[str] = None, overrides: Sequence[str] = (),
                flags: Optional[Dict[str, Any]] = None) -> T:
    """Defaults <- YAML file ``path`` <- dotted ``overrides`` (``KEY=VALUE`` text) <-
    ``flags`` (dotted key -> value of a command-line option; ``None`` = not given);
    validated and typed. Text from the command line is typed by its field, never YAML."""
    values: Dict[str, Any] = {}
    if path:
        loaded = read_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        values = loaded
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        values = _deep_merge(values, nested)
    for dotted, value in (flags or {}).items():
        if value is None:
            continue
        nested = RawValue(value) if isinstance(value, str) else value
        for k in reversed(dotted.split(".")):
            nested = {k: nested}
        values = _deep_merge(values, nested)
    try:
        return _build(cls, _resolve_user_paths(cls, values))
    except ConfigError as exc:
        if path:
            raise ConfigError(f"{path}: {exc}") from None
        raise


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: Any, path: str) -> None:
    """Write the resolved config as YAML, atomically."""
    from .io_utils import atomic_write_text

    atomic_write_text(path, dump_yaml(cfg))
