"""LR synthesis methods behind ``ranface synthesize --degrader NAME`` and their registry.

A degrader turns a batch of aligned HR faces, a float tensor (N, 3, H, W) in [-1, 1],
into LR faces of the same shape and range, drawing all its randomness from the
``torch.Generator`` it is given. Registered here:

* ``mrgan``: an MR-GAN generator (``generator.pt`` / train-gan run dir); z random per
  image. Options: ``checkpoint``.
* ``bicubic``: the paper's "Down-Sampling" row of Table 1: per image a face size drawn
  uniformly from ``size_range`` (default [12, 32] px), bicubic shrink and bicubic
  enlargement back (:func:`ranface.degrade.down_up`). Options: ``size_range``,
  ``down``, ``up``.
* ``random-degrade``: :class:`ranface.degrade.RandomDegradation` (blur, shrink, noise,
  JPEG, enlarge); options are :class:`ranface.degrade.DegradeConfig`'s fields.

Adding a method is one class::

    @register_degrader("my-gan")
    class MyGan(Degrader):
        defaults = {"checkpoint": ""}
        def __init__(self, options): super().__init__(options); ...
        def __call__(self, batch, generator): ...

:func:`synthesize` streams a dataset (image folder or insightface ``.rec``) through a
degrader into an LR twin with the same labels and layout.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .. import degrade as _degrade
from ..errors import ConfigError, DataError, RanfaceError

__all__ = ["Degrader", "register_degrader", "create_degrader", "create_at_width", "degrade_image",
           "list_degraders", "synthesize", "MANIFEST_NAME", "LEVELS_NAME", "BicubicDegrader", "RandomDegrader",
           "SecondOrderDegrader", "MRGANDegrader"]

MANIFEST_NAME = "synth_manifest.json"
LEVELS_NAME = "synth_levels.tsv"  # face -> width (px) it was synthesized at, and its eye-to-mouth px

# Filled by @register_degrader at import of this module (and by users, explicitly);
# a name is never re-bound to another class.
_DEGRADERS: Dict[str, Type["Degrader"]] = {}


def register_degrader(name: str) -> Callable[[Type["Degrader"]], Type["Degrader"]]:
    """Class decorator: make ``cls`` available as ``--degrader name``."""
    def decorate(cls: Type["Degrader"]) -> Type["Degrader"]:
        if name in _DEGRADERS and _DEGRADERS[name] is not cls:
            raise ConfigError(f"degrader name {name!r} is already registered")
        cls.name = name
        _DEGRADERS[name] = cls
        return cls
    return decorate


def list_degraders() -> List[str]:
    return sorted(_DEGRADERS)


def create_degrader(name: str, options: Optional[Mapping[str, Any]] = None) -> "Degrader":
    if name not in _DEGRADERS:
        raise ConfigError(f"unknown degrader {name!r}; choose from {', '.join(list_degraders())}")
    return _DEGRADERS[name](dict(options or {}))


class Degrader:
    """Base class. ``defaults`` lists the accepted options and their default values;
    ``self.options`` holds the resolved ones (recorded in the synthesis manifest).
    ``face_size``: the input size the method requires (None: any, but one per batch)."""

    name: str = ""
    defaults: Dict[str, Any] = {}
    face_size: Optional[int] = None
    width_option: Optional[str] = "size_range"  # [low, high] px each face is brought to (None: no such option)

    def __init__(self, options: Mapping[str, Any]):
        if not isinstance(options, Mapping):
            raise ConfigError(f"degrader {self.name}: options must be a mapping, got {options!r}")
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ConfigError(f"degrader {self.name}: unknown option(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(sorted(self.defaults)) or '(none)'}")
        self.options: Dict[str, Any] = {**self.defaults, **dict(options)}
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> "Degrader":
        self.device = torch.device(device)
        return self

    def info(self) -> Dict[str, Any]:
        """Extra facts for the manifest (e.g. the checkpoint's training step)."""
        return {}

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


def create_at_width(name: str, options: Optional[Mapping[str, Any]], width: int) -> "Degrader":
    """``name`` with every face brought to ``width`` px (its :attr:`Degrader.width_option`
    pinned to [width, width]; an ``eye_mouth_range`` given in ``options`` is dropped): a
    probe of one resolution made by any degrader (the ``pairs`` protocol's ``probe_degrader``)."""
    cls = _DEGRADERS.get(name)
    if cls is None:
        return create_degrader(name, options)  # the unknown-name error
    opts = {k: v for k, v in dict(options or {}).items() if k != "eye_mouth_range"}
    if cls.width_option is None:
        raise ConfigError(f"degrader {name}: has no width option, cannot make probes of a chosen width")
    opts[cls.width_option] = [int(width), int(width)]
    return create_degrader(name, opts)


def degrade_image(degrader: "Degrader", img: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """One H x W x 3 uint8 face through ``degrader``, with the value mapping of :func:`synthesize`."""
    t = _to_float(torch.from_numpy(np.ascontiguousarray(img))[None])
    return _to_uint8(degrader(t, generator))[0]


def _size_range(name: str, v: Any) -> Tuple[int, int]:
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in v)
            or not 1 <= v[0] <= v[1]):
        raise ConfigError(f"degrader {name}: size_range must be [low, high] pixels with "
                          f"1 <= low <= high, got {v!r}")
    return int(v[0]), int(v[1])


def _band_option(name: str, band: Any) -> Optional[Tuple[float, float]]:
    """A degrader's ``eye_mouth_range`` option: None, or [low, high] px with 0 < low <= high."""
    if band is None:
        return None
    if (not isinstance(band, (list, tuple)) or len(band) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in band)
            or not 0 < band[0] <= band[1]):
        raise ConfigError(f"degrader {name}: eye_mouth_range must be [low, high] pixels "
                          f"with 0 < low <= high, got {band!r}")
    return float(band[0]), float(band[1])


def check_codec(p: Any, quality: Any, where: str = "") -> Tuple[float, Tuple[int, int]]:
    """Validate a codec's probability ``p`` and JPEG ``quality`` range [low, high]: the one
    check of the ``codec_p`` / ``codec_quality`` options, wherever they are set (a degrader's
    options, the demo's ``mrgan_codec_*``). ``where`` prefixes the error message."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise ConfigError(f"{where}codec_p must be a probability in [0, 1], got {p!r}")
    if not (isinstance(quality, (list, tuple)) and len(quality) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in quality)
            and 1 <= quality[0] <= quality[1] <= 100):
        raise ConfigError(f"{where}codec_quality must be [low, high] JPEG qualities with "
                          f"1 <= low <= high <= 100, got {quality!r}")
    return float(p), (int(quality[0]), int(quality[1]))


class _Codec:
    """The ``codec_p`` / ``codec_quality`` options of a degrader whose faces have a width
    (px) per face: with probability ``codec_p`` a face goes through a JPEG at its own width
    (:func:`ranface.degrade.lr_jpeg`, quality drawn uniformly from ``codec_quality``) after
    the degrader made it. The draws follow the degrader's own, so ``codec_p`` 0 changes no
    face. Default off."""

    codec_defaults = {"codec_p": 0.0, "codec_quality": [30, 90]}

    def _init_codec(self) -> None:
        self.codec_p, self.codec_quality = check_codec(
            self.options["codec_p"], self.options["codec_quality"], f"degrader {self.name}: ")

    def _codec_info(self) -> Dict[str, Any]:
        return {"codec": {"p": self.codec_p, "quality": list(self.codec_quality),
                          "at": "each face's level width (degrade.lr_jpeg)"}}

    def _apply_codec(self, out: torch.Tensor, widths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = out.shape[0]
        use = torch.rand(n, generator=generator) < self.codec_p
        quality = torch.randint(self.codec_quality[0], self.codec_quality[1] + 1, (n,), generator=generator)
        if use.any():
            from ..degrade import lr_jpeg

            idx = torch.nonzero(use).flatten()
            out[idx] = lr_jpeg(out[idx], widths[idx].tolist(), quality[idx].tolist())
        return out


@register_degrader("bicubic")
class BicubicDegrader(_Codec, Degrader):
    """Table 1's "Down-Sampling": face shrunk to S px wide, S ~ U{size_range} per image,
    bicubic both ways (antialiased shrink), back at the input size.

    ``eye_mouth_range`` [lo, hi] (px), when set, replaces ``size_range``: the widths whose
    eye-to-mouth distances span that band for faces aligned with ``template``
    (:func:`ranface.align.select.band_to_widths`; the paper's real LR band is 10..30 px).
    The band actually produced (widths and eye-to-mouth px) is in :meth:`info`, so the
    twin's ``synth_manifest.json`` records it.
    """

    defaults = {"size_range": [12, 32], "eye_mouth_range": None, "template": "arcface",
                "down": "bicubic", "up": "bicubic", **_Codec.codec_defaults}

    def __init__(self, options: Mapping[str, Any]):
        from ..align.select import band_to_widths
        from ..align.templates import TEMPLATES
        from ..degrade import KERNELS

        super().__init__(options)
        if self.options["template"] not in TEMPLATES:
            raise ConfigError(f"degrader {self.name}: template must be one of {sorted(TEMPLATES)}, "
                              f"got {self.options['template']!r}")
        band = _band_option(self.name, self.options["eye_mouth_range"])
        if band is not None:
            self.size_range = band_to_widths(band, self.options["template"])
        else:
            self.size_range = _size_range(self.name, self.options["size_range"])
        for key in ("down", "up"):
            if self.options[key] not in KERNELS:
                raise ConfigError(f"degrader {self.name}: {key} must be one of {list(KERNELS)}, "
                                  f"got {self.options[key]!r}")
        self._init_codec()

    def info(self) -> Dict[str, Any]:
        from ..align.select import widths_to_band

        e2m = widths_to_band(self.size_range, self.options["template"])
        return {"band": {"widths_px": list(self.size_range), "eye_mouth_px": [round(v, 2) for v in e2m],
                         "template": self.options["template"]}, **self._codec_info()}

    def levels(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The width (px) each of ``n`` faces is shrunk to: the first draw from the batch's
        generator, so :func:`synthesize` can record it without degrading again."""
        from ..degrade import sample_widths

        return sample_widths(n, *self.size_range, generator=generator)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from ..degrade import down_up

        widths = self.levels(batch.shape[0], generator)
        out = torch.empty_like(batch)
        for i, s in enumerate(widths.tolist()):
            out[i] = down_up(batch[i:i + 1], int(s), self.options["down"], self.options["up"])[0]
        return self._apply_codec(out, widths, generator)


class _PipelineDegrader(Degrader):
    """A degrader whose options are the fields of a config dataclass (``config_cls``) of a
    pipeline class (``pipeline_cls(config)`` called as ``pipeline(batch, generator)``)."""

    config_cls: Any = None
    pipeline_cls: Any = None

    def __init__(self, options: Mapping[str, Any]):
        cls = self.config_cls
        self.defaults = {f.name: _plain(getattr(cls(), f.name)) for f in fields(cls)}
        super().__init__(options)
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in self.options.items()}
        try:
            self.pipeline = self.pipeline_cls(cls(**kw))
        except (TypeError, ValueError, ConfigError) as exc:
            raise ConfigError(f"degrader {self.name}: {exc}") from None

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.pipeline(batch, generator)


@register_degrader("random-degrade")
class RandomDegrader(_PipelineDegrader):
    """:class:`ranface.degrade.RandomDegradation`; options = DegradeConfig fields."""

    config_cls, pipeline_cls = _degrade.DegradeConfig, _degrade.RandomDegradation


@register_degrader("second-order")
class SecondOrderDegrader(_PipelineDegrader):
    """:class:`ranface.degrade.SecondOrderDegradation` (blur, resize, noise and JPEG, two
    passes in random order, as blind super-resolution trains on); options =
    SecondOrderConfig fields. Each face's final width is recorded."""

    config_cls, pipeline_cls = _degrade.SecondOrderConfig, _degrade.SecondOrderDegradation

    def info(self) -> Dict[str, Any]:
        from ..align.select import widths_to_band

        lo, hi = self.pipeline.config.size_range
        return {"band": {"widths_px": [lo, hi], "eye_mouth_px": [round(v, 2) for v in widths_to_band((lo, hi))],
                         "template": "arcface"}}

    def levels(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.pipeline.widths(n, generator)


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


@register_degrader("mrgan")
class MRGANDegrader(_Codec, Degrader):
    """An MR-GAN generator: G(x, z) with z ~ N(0, I) drawn per image from the generator.
    ``checkpoint``: generator.pt, a train-gan run directory or a train-gan checkpoint.

    A generator trained with levels (``generator.level_widths`` / ``level_band``) draws
    each face's x_r3 width (by its ``level_law``) from ``level_widths`` or from the widths of
    ``eye_mouth_range`` (px, :func:`ranface.align.select.band_to_widths`), default its
    trained range; a chosen range must lie inside the trained one (G never saw other
    levels) unless ``extrapolate`` is true: then G's level code runs past the ends it was
    trained on (e.g. a generator trained at the real pool's band asked for smaller faces;
    recorded in the manifest). The width of each face is recorded by :func:`synthesize`.

    ``codec_p`` / ``codec_quality``: with probability ``codec_p`` per face, G(x) goes through
    a JPEG at the face's own level width (:func:`ranface.degrade.lr_jpeg`, quality drawn
    uniformly from ``codec_quality``): the camera codec real LR faces went through, which a
    convolutional generator does not reproduce (docs/decisions.md, issue 12 round 6).
    Default 0: G(x) as trained (the paper's MR-GAN)."""

    defaults = {"checkpoint": "", "level_widths": None, "eye_mouth_range": None, "extrapolate": False,
                **_Codec.codec_defaults}
    width_option = "level_widths"

    def __init__(self, options: Mapping[str, Any]):
        from ..align.select import band_to_widths
        from .generator import load_generator

        super().__init__(options)
        self.G, self._info = load_generator(str(self.options["checkpoint"]))
        self.face_size = int(self._info["face_size"])
        trained = self.G.levels
        want, band = self.options["level_widths"], self.options["eye_mouth_range"]
        if want is not None and band is not None:
            raise ConfigError(f"degrader {self.name}: level_widths and eye_mouth_range are alternatives")
        band = _band_option(self.name, band)
        if band is not None:
            want = list(band_to_widths(band, self.G.cfg.template))
        if want is not None:
            lo, hi = _size_range(self.name, list(want))
            extrapolate = self.options["extrapolate"]
            if not isinstance(extrapolate, bool):
                raise ConfigError(f"degrader {self.name}: extrapolate must be true or false, got {extrapolate!r}")
            if trained is None or (not extrapolate and (lo < trained[0] or hi > trained[1])):
                raise ConfigError(f"degrader {self.name}: widths {[lo, hi]} px lie outside the levels "
                                  f"the generator was trained on ({list(trained) if trained else 'one fixed level'})"
                                  + ("" if trained is None else "; set extrapolate=true to go past them"))
            self.range: Optional[Tuple[int, int]] = (lo, hi)
        else:
            self.range = trained
        self._init_codec()

    def to(self, device: torch.device) -> "MRGANDegrader":
        super().to(device)
        self.G.to(self.device)
        return self

    def info(self) -> Dict[str, Any]:
        from ..align.select import widths_to_band

        gen = self._info.get("generator") or {}
        out = {"checkpoint_step": self._info.get("step"), "face_size": self.face_size, "generator": gen,
               **self._codec_info()}
        scales = gen.get("scales") if isinstance(gen, Mapping) else None
        tpl = gen.get("template", "arcface") if isinstance(gen, Mapping) else "arcface"
        if self.range is not None:
            e2m = widths_to_band(self.range, tpl)
            out["band"] = {"widths_px": list(self.range), "eye_mouth_px": [round(v, 2) for v in e2m],
                           "template": tpl, "source": "z's level (width of x_r3 per face)",
                           "trained_widths_px": list(self.G.levels),
                           "extrapolated": bool(self.range[0] < self.G.levels[0] or self.range[1] > self.G.levels[1])}
        elif scales:
            # the lowest stream x_r3 (Eq. 1, 4) sets the resolution G's faces are pulled to
            w = max(1, round(self.face_size * float(scales[-1])))
            e2m = widths_to_band((w, w), tpl)
            out["band"] = {"widths_px": [w, w], "eye_mouth_px": [round(v, 2) for v in e2m], "template": tpl,
                           "source": "x_r3 (generator.scales[-1])"}
        return out

    def levels(self, n: int, generator: torch.Generator) -> Optional[torch.Tensor]:
        """x_r3's width per face (in the chosen range, by the law G was trained with), drawn
        first from the batch's generator; None for a generator with one fixed level."""
        if self.range is None:
            return None
        from ..degrade import sample_widths

        return sample_widths(n, *self.range, generator=generator, law=self.G.cfg.level_law)

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = batch.shape[0]
        widths = self.levels(n, generator)
        z = self.G.sample_z(n, generator)
        out = self.G(batch.to(self.device), z.to(self.device), widths=widths).fake.float().cpu()
        if widths is None:  # one fixed level: x_r3's width
            widths = torch.full((n,), max(1, round(self.face_size * self.G.scales[-1])))
        return self._apply_codec(out, widths, generator)


# --------------------------------------------------------------------------- synthesis
class _Items(Dataset):
    """Index -> (index, uint8 HxWx3 or None, message) for the images being converted."""

    def __init__(self, load: Callable[[int], np.ndarray], count: int, on_error: str):
        self.load = load
        self.count = count
        self.on_error = on_error

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        try:
            return index, self.load(index), ""
        except DataError as exc:
            if self.on_error == "skip":
                return index, None, str(exc)
            raise


class _FolderLoad:
    """Picklable loader of image ``i`` of a folder job (DataLoader workers)."""

    def __init__(self, root: str, files: List[str], expect: Tuple[int, int]):
        self.root, self.files, self.expect = root, files, expect

    def __call__(self, i: int) -> np.ndarray:
        from ..data.image import read_image

        return read_image(os.path.join(self.root, self.files[i]), "rgb", self.expect)


class _RecLoad:
    """Picklable loader of image ``i`` of a RecordDataset, at the expected size."""

    def __init__(self, ds: Any, expect: Tuple[int, int]):
        self.ds, self.expect = ds, expect

    def __call__(self, i: int) -> np.ndarray:
        from ..data.image import decode_image
        from ..data.recordio import unpack

        key = int(self.ds.keys[i])
        src = f"{self.ds.root} (key {key})"
        return decode_image(unpack(self.ds.reader.read_idx(key), src)[1], src, "rgb", self.expect)


def _collate(items: Sequence[Tuple[int, Optional[np.ndarray], str]]):
    good = [(i, a) for i, a, _ in items if a is not None]
    bad = [(i, m) for i, a, m in items if a is None]
    arrs = torch.from_numpy(np.stack([a for _, a in good])) if good else None
    return [i for i, _ in good], arrs, bad


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """The generator batch ``batch_index`` is degraded with: a pure function of its args,
    so a resumed run recomputes a batch exactly."""
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(batch_index), 0x5E7])
    return torch.Generator().manual_seed(int(s.generate_state(1, dtype=np.uint64)[0] >> 1))


def _to_float(arrs: torch.Tensor) -> torch.Tensor:
    return arrs.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return ((t.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _image_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    from PIL import Image

    Image.init()
    return Image.registered_extensions().get(ext, "PNG").lower()  # PGM/PPM/... kept as they came


def _list_images(root: str) -> List[str]:
    from ..data.image import is_image_file

    out: List[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and is_image_file(f):
                out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(out)


def _manifest_key(m: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: m.get(k) for k in ("degrader", "options", "seed", "batch_size", "format",
                                   "num_images")}


class _Progress:
    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        import sys

        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="synthesize", unit="face",
                            dynamic_ncols=True, file=sys.stderr, mininterval=1.0)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def synthesize(cfg: Any, degrader: Optional[Degrader] = None,
               stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Write the LR twin of ``cfg.input`` into ``cfg.output`` (a :class:`SynthConfig`).

    * folder input: every image below it (any depth) -> the same relative path under
      the output, same format (by extension); images whose output exists are skipped, so
      an interrupted run resumes (outputs are written atomically: an existing file is
      complete). A batch with some outputs missing is recomputed whole with its own
      generator (seed, batch index) and only the missing files are written: a resumed
      run writes the same pixels as an uninterrupted one.
    * ``.rec`` input: a new ``train.rec`` / ``train.idx`` (plus ``property`` if present)
      with the same keys and headers (labels, ids); identity / header records copied
      verbatim. Written through temporary files renamed at the end, so an interrupted
      run leaves no partial output and starts over.
    * an unreadable input (``on_error=skip``) is copied byte for byte: it stays
      unreadable in the twin (skipped there too) and the layouts stay identical.

    ``synth_manifest.json`` records the degrader, its options, the seed, the batch size
    and the counts; resuming with different settings is an error (or ``overwrite``).
    ``stop_after``: stop after that many batches (tests of interruption).
    """
    from ..data.loader import detect_format
    from ..io_utils import check_writable_dir, remove_stale_temps
    from ..train.precision import resolve_device

    if not cfg.input:
        raise ConfigError("input is empty: give an image folder or a train.rec folder / .rec file")
    if not os.path.exists(cfg.input):
        raise DataError(cfg.input, "input dataset not found")
    if not cfg.output:
        raise ConfigError("output is empty: give the folder to write the LR twin into")
    in_dir = os.path.realpath(cfg.input if os.path.isdir(cfg.input) else os.path.dirname(cfg.input))
    out_dir = os.path.realpath(cfg.output)
    if os.path.commonpath([in_dir, out_dir]) == in_dir:
        # inside the input, the twin would be read as part of the dataset by the next run
        raise ConfigError(f"output {cfg.output} is inside the input's folder {in_dir}: write the "
                          "LR twin elsewhere")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {cfg.on_error!r}")
    if not 1 <= cfg.jpeg_quality <= 100:
        raise ConfigError(f"jpeg_quality must be 1..100, got {cfg.jpeg_quality}")
    fmt = detect_format(cfg.input) if cfg.format == "auto" else cfg.format
    if fmt not in ("folder", "rec"):
        raise ConfigError(f"format must be auto, folder or rec, got {cfg.format!r}")
    if degrader is None:
        degrader = create_degrader(cfg.degrader, cfg.options)
    device = resolve_device(cfg.device)
    degrader.to(device)
    check_writable_dir(cfg.output)

    job = _FolderJob(cfg) if fmt == "folder" else _RecJob(cfg)
    manifest = {"degrader": degrader.name, "options": degrader.options, "seed": int(cfg.seed),
                "batch_size": int(cfg.batch_size), "format": fmt, "num_images": job.count,
                "input": os.path.abspath(cfg.input), "degrader_info": degrader.info()}
    mpath = os.path.join(cfg.output, MANIFEST_NAME)
    previous = read_synth_manifest(mpath)
    if previous is not None and not cfg.overwrite:
        before = _manifest_key(previous)
        now = _manifest_key(json.loads(json.dumps(manifest, default=str)))
        if isinstance(before["options"], dict) and isinstance(now["options"], dict):
            # an option added to the degrader since (at its default) did not change that output
            added = json.loads(json.dumps(type(degrader).defaults, default=str))
            before["options"] = {**{k: v for k, v in added.items() if k in now["options"]}, **before["options"]}
        diff = [f"{k} {before[k]!r} (now {now[k]!r})" for k in before if before[k] != now[k]]
        if diff:
            raise ConfigError(f"{mpath}: this output was made with other settings: "
                              f"{'; '.join(diff)}; resume with the same settings, write to "
                              "another folder or set overwrite=true")
        if previous.get("status") == "complete" and fmt == "rec":
            return {**previous, "resumed": True, "written": 0}
    if previous is None and not cfg.overwrite and job.has_outputs():
        raise ConfigError(f"{cfg.output}: holds outputs but no {MANIFEST_NAME} (not written by "
                          "synthesize, or by an older run): use another folder or overwrite=true")
    if cfg.overwrite:
        job.clear()
    remove_stale_temps(cfg.output, recursive=True)  # half-written files of a killed run
    _write_manifest(mpath, {**manifest, "status": "running"})

    expect = (degrader.face_size, degrader.face_size) if degrader.face_size else job.first_size()
    t0 = time.time()
    counts = job.run(degrader, expect, stop_after)
    elapsed = time.time() - t0
    if job.levels:  # the level (width) of every synthesized face (issue 12)
        _write_levels(os.path.join(cfg.output, LEVELS_NAME), job.levels, degrader.info())
        manifest["levels_file"] = LEVELS_NAME
    done = counts["written"] + counts["existing"] + counts["copied_unreadable"]
    status = "complete" if done == job.count else "partial"
    summary = {**manifest, "status": status, "counts": counts, "elapsed_s": round(elapsed, 3),
               "faces_per_s": round(counts["degraded"] / max(elapsed, 1e-9), 2),
               "output": os.path.abspath(cfg.output), "device": str(device)}
    _write_manifest(mpath, summary)
    return summary


def _batch_levels(degrader: "Degrader", seed: int, k: int, names: List[str]) -> Dict[str, int]:
    """Widths of the faces of batch ``k`` (its generator's first draws), by name; {} for a
    degrader without levels."""
    fn = getattr(degrader, "levels", None)
    w = fn(len(names), batch_generator(seed, k)) if fn is not None and names else None
    return {} if w is None else {nm: int(v) for nm, v in zip(names, w.tolist())}


def _write_levels(path: str, levels: Mapping[str, int], info: Mapping[str, Any]) -> None:
    from ..align.select import eye_mouth_fraction
    from ..io_utils import atomic_write_text

    r = eye_mouth_fraction((info.get("band") or {}).get("template", "arcface"))
    rows = ["face\twidth_px\teye_mouth_px"] + [f"{k}\t{w}\t{w * r:.2f}" for k, w in sorted(levels.items())]
    atomic_write_text(path, "\n".join(rows) + "\n")


def read_synth_manifest(path: str) -> Optional[Dict[str, Any]]:
    """``synth_manifest.json`` of a synthesized twin (None when absent)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        raise DataError(path, "unreadable synthesis manifest; remove it or set overwrite=true") from None
    return data if isinstance(data, dict) else None


def _write_manifest(path: str, data: Dict[str, Any]) -> None:
    from ..io_utils import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str))


def _loader(items: Dataset, batches: List[List[int]], num_workers: int) -> DataLoader:
    return DataLoader(items, batch_sampler=batches, num_workers=num_workers, collate_fn=_collate,
                      prefetch_factor=2 if num_workers > 0 else None)


class _FolderJob:
    def __init__(self, cfg: Any):
        self.cfg = cfg
        if not os.path.isdir(cfg.input):
            raise DataError(cfg.input, "expected an image folder (or a .rec dataset)")
        self.files = _list_images(cfg.input)
        if not self.files:
            raise DataError(cfg.input, "no images (any format PIL reads) in the folder")
        self.count = len(self.files)
        self.levels: Dict[str, int] = {}  # relative path -> width (px) it was shrunk to

    def out_path(self, i: int) -> str:
        return os.path.join(self.cfg.output, self.files[i])

    def has_outputs(self) -> bool:
        return any(os.path.exists(self.out_path(i)) for i in range(self.count))

    def clear(self) -> None:
        for i in range(self.count):
            p = self.out_path(i)
            if os.path.exists(p):
                os.remove(p)

    def first_size(self) -> Tuple[int, int]:
        from ..data.image import read_image

        for f in self.files:
            try:
                return tuple(read_image(os.path.join(self.cfg.input, f)).shape[:2])  # type: ignore
            except DataError:
                if self.cfg.on_error == "raise":
                    raise
        raise DataError(self.cfg.input, "no readable image in the folder")

    def run(self, degrader: Degrader, expect: Tuple[int, int], stop_after: Optional[int]) -> Dict[str, int]:
        from ..data.image import encode_image
        from ..io_utils import atomic_write_bytes

        cfg, bs = self.cfg, self.cfg.batch_size
        exists = [os.path.exists(self.out_path(i)) for i in range(self.count)]
        all_batches = [list(range(b, min(b + bs, self.count))) for b in range(0, self.count, bs)]
        todo = [(k, b) for k, b in enumerate(all_batches) if not all(exists[i] for i in b)]
        counts = {"written": 0, "existing": sum(exists), "degraded": 0, "copied_unreadable": 0}
        # batches whose outputs all exist: their levels are the batch generator's first draws
        done_batches = [(k, b) for k, b in enumerate(all_batches) if all(exists[i] for i in b)]
        for k, b in done_batches:
            self.levels.update(_batch_levels(degrader, cfg.seed, k, [self.files[i] for i in b]))
        items = _Items(_FolderLoad(cfg.input, self.files, expect), self.count, cfg.on_error)
        bar = _Progress(self.count, counts["existing"], cfg.progress)
        try:
            for n, ((k, _), (idx, arrs, bad)) in enumerate(
                    zip(todo, _loader(items, [b for _, b in todo], cfg.num_workers))):
                if stop_after is not None and n >= stop_after:
                    break
                for i, _msg in bad:
                    if not exists[i]:
                        with open(os.path.join(cfg.input, self.files[i]), "rb") as fh:
                            atomic_write_bytes(self.out_path(i), fh.read())
                        counts["copied_unreadable"] += 1
                        bar.update(1)
                if arrs is None:
                    continue
                lr = _to_uint8(degrader(_to_float(arrs), batch_generator(cfg.seed, k)))
                counts["degraded"] += len(idx)
                self.levels.update(_batch_levels(degrader, cfg.seed, k, [self.files[i] for i in idx]))
                for j, i in enumerate(idx):
                    if exists[i]:
                        continue
                    path = self.out_path(i)
                    atomic_write_bytes(path, encode_image(lr[j], _image_format(path), cfg.jpeg_quality))
                    counts["written"] += 1
                    bar.update(1)
        finally:
            bar.close()
        return counts


class _RecJob:
    def __init__(self, cfg: Any):
        from ..data.datasets import RecordDataset

        self.cfg = cfg
        self.ds = RecordDataset(cfg.input, on_error=cfg.on_error)
        self.count = len(self.ds)
        self.levels: Dict[str, int] = {}  # record key -> width (px) it was shrunk to
        self.rec_out = os.path.join(cfg.output, "train.rec")
        self.idx_out = os.path.join(cfg.output, "train.idx")

    def has_outputs(self) -> bool:
        return os.path.exists(self.rec_out) or os.path.exists(self.idx_out)

    def clear(self) -> None:
        for p in (self.rec_out, self.idx_out):
            if os.path.exists(p):
                os.remove(p)

    def first_size(self) -> Tuple[int, int]:
        for i in range(self.count):
            item = self.ds[i]
            if not isinstance(item, tuple):
                continue
            return tuple(item[0].shape[:2])  # type: ignore
        raise DataError(self.ds.root, "no readable image record")

    def run(self, degrader: Degrader, expect: Tuple[int, int], stop_after: Optional[int]) -> Dict[str, int]:
        from ..data.image import encode_image
        from ..data.recordio import RecordWriter, pack
        from ..io_utils import atomic_write_bytes

        cfg, ds, bs = self.cfg, self.ds, self.cfg.batch_size
        reader = ds.reader
        keys = ds.keys

        file_keys = reader.keys
        image_set = set(int(k) for k in keys)
        first_pos = next(p for p, k in enumerate(file_keys) if k in image_set)
        lead = [k for k in file_keys[:first_pos] if k not in image_set]
        tail = [k for k in file_keys[first_pos:] if k not in image_set]
        batches = [list(range(b, min(b + bs, self.count))) for b in range(0, self.count, bs)]
        counts = {"written": 0, "existing": 0, "degraded": 0, "copied_unreadable": 0,
                  "copied_records": len(lead) + len(tail)}
        bar = _Progress(self.count, 0, cfg.progress)
        writer = RecordWriter(self.rec_out, self.idx_out)
        try:
            for k in lead:
                writer.write_idx(k, reader.read_idx(k))
            for n, (idx, arrs, bad) in enumerate(_loader(_Items(_RecLoad(ds, expect), self.count, cfg.on_error), batches,
                                                         cfg.num_workers)):
                if stop_after is not None and n >= stop_after:
                    raise _Interrupted()
                lr = None
                if arrs is not None:
                    lr = _to_uint8(degrader(_to_float(arrs), batch_generator(cfg.seed, n)))
                    counts["degraded"] += len(idx)
                    self.levels.update(_batch_levels(degrader, cfg.seed, n, [str(int(keys[i])) for i in idx]))
                good = {i: j for j, i in enumerate(idx)}
                # keep the dataset's key order inside the batch (bad and good interleaved)
                for i in sorted(list(good) + [i for i, _ in bad]):
                    key = int(keys[i])
                    if i in good:
                        header = reader.read_header(key)
                        writer.write_idx(key, pack(header, encode_image(lr[good[i]], "jpeg",
                                                                        cfg.jpeg_quality)))
                        counts["written"] += 1
                    else:
                        writer.write_idx(key, reader.read_idx(key))
                        counts["copied_unreadable"] += 1
                    bar.update(1)
            for k in tail:
                writer.write_idx(k, reader.read_idx(k))
        except _Interrupted:
            writer.abort()
            self.levels.clear()  # nothing of this run is kept
            return {**counts, "written": 0, "copied_unreadable": 0}
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()
        writer.close()
        prop = os.path.join(os.path.dirname(ds.root), "property")
        if os.path.isfile(prop):  # insightface's "num_classes,H,W": the twin has the same
            with open(prop, "rb") as fh:
                atomic_write_bytes(os.path.join(cfg.output, "property"), fh.read())
        return counts


class _Interrupted(RanfaceError):
    """Internal: ``stop_after`` reached in a .rec job (nothing is kept)."""
