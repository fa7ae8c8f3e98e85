"""The enrolment gallery: one template per identity, tied to the model that made it.

A template is the L2-normalised mean of an identity's per-image embeddings, each itself
the L2-normalised flip-sum embedding of :class:`ranface.inference.Embedder`. The gallery
keeps the un-normalised means and image counts too, so images can be merged into an
identity, and identities added or removed, without re-embedding anything else.

File format (``.npz``, read with ``allow_pickle=False``; no pickle anywhere):

* ``templates`` (K, D) float32, L2-normalised rows (what search uses);
* ``means`` (K, D) float32, the un-normalised mean embeddings;
* ``counts`` (K,) int64, images per identity;
* ``meta`` (B,) uint8, UTF-8 JSON: ``format``, ``model`` (``fingerprint``, backbone,
  source, spec), ``embedding`` (flip, alignment template and face size, aligned input),
  ``identities`` (K names, row order), ``sources`` (K lists of image paths),
  ``calibration`` (open-set threshold, or null), ``history``.

The model fingerprint (:func:`model_fingerprint`) hashes the weights and the
preprocessing spec; a gallery refuses embeddings from any other model.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
import zlib
from dataclasses import asdict, is_dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError, RanfaceError
from ..io_utils import atomic_open
from .search import INDEX_KINDS, build_index

__all__ = ["Gallery", "GALLERY_FORMAT", "model_fingerprint", "short_fingerprint"]

GALLERY_FORMAT = "ranface-gallery/1"
_ARRAYS = ("templates", "means", "counts", "meta")
# Largest history kept in the file (each add/remove appends one entry).
_HISTORY = 100


def _spec_of(model: Any) -> Dict[str, Any]:
    spec = getattr(model, "spec", None)
    if spec is None:
        return {}
    d = asdict(spec) if is_dataclass(spec) else dict(spec)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(d.items())}


def model_fingerprint(model: Any) -> str:
    """``sha256:<hex>`` of a backbone's weights and preprocessing.

    Hashes, in name order, each state-dict entry's name, dtype, shape and bytes, then the
    ``spec`` (input size, mean, std, colour order, embedding size) as sorted JSON. Two
    models give the same fingerprint iff they compute the same embedding from the same
    aligned face. Weights are hashed as float32 CPU tensors, so the device does not
    matter. An exported ONNX model (:class:`ranface.models.loader.OnnxBackbone`) carries
    the fingerprint of the PyTorch model it was exported from (its parity was checked),
    so a gallery enrolled with one can be searched with the other.
    """
    import torch  # noqa: PLC0415

    given = getattr(model, "fingerprint", None)
    if isinstance(given, str) and given.startswith("sha256:"):
        return given
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach()
        if t.is_floating_point():
            t = t.float()
        t = t.cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    h.update(json.dumps(_spec_of(model), sort_keys=True).encode())
    return "sha256:" + h.hexdigest()


def short_fingerprint(fp: str) -> str:
    return fp.split(":", 1)[-1][:12]


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


class Gallery:
    """Templates of enrolled identities plus the model and settings that made them.

    Build one with :meth:`empty` (or ``FaceRecognizer.enrol``), fill it with
    :meth:`add_embeddings`, save with :meth:`save`, open with :meth:`load`.
    ``meta['model']['fingerprint']`` is checked by :meth:`check_model` before any
    embedding is added or searched.
    """

    def __init__(self, names: Sequence[str], means: np.ndarray, counts: np.ndarray,
                 meta: Dict[str, Any], sources: Optional[Sequence[Sequence[str]]] = None,
                 path: Optional[str] = None):
        means = np.asarray(means, dtype=np.float32)
        counts = np.asarray(counts, dtype=np.int64)
        if means.ndim != 2 or counts.shape != (means.shape[0],) or len(names) != means.shape[0]:
            raise ValueError(f"inconsistent gallery: {len(names)} names, means {means.shape}, "
                             f"counts {counts.shape}")
        self.names: List[str] = [str(n) for n in names]
        self.means = means  # property: rows [0, len) of a buffer that grows geometrically
        self.counts = counts
        self.sources: List[List[str]] = [list(s) for s in sources] if sources is not None \
            else [[] for _ in self.names]
        self.meta = dict(meta)
        self.path = path
        self._rows = {n: i for i, n in enumerate(self.names)}
        if len(self._rows) != len(self.names):
            raise ValueError("gallery identity names must be unique")
        self._templates: Optional[np.ndarray] = None
        self._index: Optional[Tuple[Tuple[str, int], Any]] = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def empty(cls, model_meta: Dict[str, Any], embedding: Dict[str, Any], dim: int) -> "Gallery":
        """A gallery with no identity yet. ``model_meta`` must hold ``fingerprint``;
        ``embedding`` records how faces were embedded (flip, template, face size)."""
        if not model_meta.get("fingerprint"):
            raise ValueError("model_meta needs a 'fingerprint'")
        meta = {"format": GALLERY_FORMAT, "model": dict(model_meta),
                "embedding": dict(embedding, dim=int(dim)), "calibration": None,
                "created": _now(), "history": []}
        return cls([], np.zeros((0, dim), np.float32), np.zeros(0, np.int64), meta)

    # ---------------------------------------------------------------- properties
    @property
    def means(self) -> np.ndarray:
        """(K, D) float32 un-normalised mean embeddings (a view: do not resize)."""
        return self._means[:len(self.names)]

    @means.setter
    def means(self, value: np.ndarray) -> None:
        self._means = np.asarray(value, dtype=np.float32)

    @property
    def counts(self) -> np.ndarray:
        """(K,) int64 images per identity."""
        return self._counts[:len(self.names)]

    @counts.setter
    def counts(self, value: np.ndarray) -> None:
        self._counts = np.asarray(value, dtype=np.int64)

    def _append_row(self, mean: np.ndarray, count: int) -> None:
        # Amortised O(D) per identity: enrolling K identities one by one stays O(K D).
        k = len(self.names)
        if k >= self._means.shape[0]:
            cap = max(16, 2 * self._means.shape[0])
            grown = np.zeros((cap, self._means.shape[1]), np.float32)
            grown[:k] = self._means[:k]
            counts = np.zeros(cap, np.int64)
            counts[:k] = self._counts[:k]
            self._means, self._counts = grown, counts
        self._means[k] = mean
        self._counts[k] = count

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def fingerprint(self) -> str:
        return str(self.meta["model"]["fingerprint"])

    @property
    def embedding(self) -> Dict[str, Any]:
        return dict(self.meta.get("embedding", {}))

    @property
    def calibration(self) -> Optional[Dict[str, Any]]:
        return self.meta.get("calibration")

    @property
    def templates(self) -> np.ndarray:
        """(K, D) float32 L2-normalised templates, row order of :attr:`names`."""
        if self._templates is None:
            self._templates = _normalise(self.means) if len(self) else self.means.copy()
        return self._templates

    def row(self, name: str) -> int:
        try:
            return self._rows[name]
        except KeyError:
            raise RanfaceError(f"identity {name!r} is not in the gallery"
                               f"{' ' + self.path if self.path else ''}") from None

    def describe(self) -> Dict[str, Any]:
        """A short JSON-able summary (``ranface gallery info``)."""
        m = self.meta["model"]
        return {"path": self.path, "identities": len(self), "images": int(self.counts.sum()),
                "dim": self.dim, "model": {k: m.get(k) for k in ("fingerprint", "backbone", "source")},
                "embedding": self.embedding, "calibration": self.calibration,
                "created": self.meta.get("created"), "updated": self.meta.get("updated")}

    # ---------------------------------------------------------------- model check
    def check_model(self, fingerprint: str, what: str = "the current model") -> None:
        """Refuse a model whose fingerprint differs from the gallery's."""
        if fingerprint != self.fingerprint:
            m = self.meta["model"]
            raise DataError(self.path or "<gallery>", (
                f"gallery was built with model {short_fingerprint(self.fingerprint)} "
                f"({m.get('backbone', '?')} from {m.get('source', '?')}) but {what} is "
                f"{short_fingerprint(fingerprint)}; embeddings of different models cannot be "
                "compared: use the gallery's model or re-enrol with this one"))

    # ---------------------------------------------------------------- editing
    def _changed(self, event: Dict[str, Any]) -> None:
        self._templates = None
        self._index = None
        if self.meta.get("calibration") is not None:
            # The top-1 score of a non-enrolled probe depends on every template.
            event["calibration_cleared"] = True
            self.meta["calibration"] = None
        self.meta["updated"] = _now()
        hist = list(self.meta.get("history", [])) + [dict(event, time=self.meta["updated"])]
        self.meta["history"] = hist[-_HISTORY:]

    def add_embeddings(self, name: str, embeddings: np.ndarray, sources: Sequence[str] = (),
                       on_exists: str = "error") -> str:
        """Enrol ``name`` from its (n, D) per-image embeddings (each L2-normalised).

        ``on_exists``: 'error' (default), 'merge' (the new images join the identity's
        mean) or 'replace'. Returns what happened: 'added', 'merged' or 'replaced'.
        """
        e = np.asarray(embeddings, dtype=np.float32)
        if e.ndim != 2 or e.shape[0] == 0 or e.shape[1] != self.dim:
            raise ValueError(f"{name}: expected (n >= 1, {self.dim}) embeddings, got {e.shape}")
        if not np.isfinite(e).all():
            raise ValueError(f"{name}: embeddings contain NaN or infinite values")
        if on_exists not in ("error", "merge", "replace"):
            raise ValueError(f"on_exists must be error, merge or replace, got {on_exists!r}")
        n_new = e.shape[0]
        mean_new = e.astype(np.float64).mean(axis=0)
        if name in self._rows:
            i = self._rows[name]
            if on_exists == "error":
                raise RanfaceError(f"identity {name!r} is already enrolled"
                                   f"{' in ' + self.path if self.path else ''} (choose "
                                   "on_exists=merge to add these images, or replace)")
            if on_exists == "merge":
                n_old = int(self.counts[i])
                self.means[i] = ((self.means[i].astype(np.float64) * n_old + mean_new * n_new)
                                 / (n_old + n_new)).astype(np.float32)
                self.counts[i] = n_old + n_new
                self.sources[i].extend(sources)
                action = "merged"
            else:
                self.means[i] = mean_new.astype(np.float32)
                self.counts[i] = n_new
                self.sources[i] = list(sources)
                action = "replaced"
        else:
            self._append_row(mean_new.astype(np.float32), n_new)
            self.names.append(str(name))
            self._rows[str(name)] = len(self.names) - 1
            self.sources.append(list(sources))
            action = "added"
        self._changed({"event": action, "identity": str(name), "images": n_new})
        return action

    def remove(self, names: Iterable[str], missing_ok: bool = False) -> List[str]:
        """Drop identities (nothing is re-embedded). Returns the names removed."""
        names = list(dict.fromkeys(names))
        absent = [n for n in names if n not in self._rows]
        if absent and not missing_ok:
            raise RanfaceError(f"not in the gallery{' ' + self.path if self.path else ''}: "
                               f"{', '.join(map(repr, absent[:10]))}")
        drop = {self._rows[n] for n in names if n in self._rows}
        if not drop:
            return []
        keep = [i for i in range(len(self)) if i not in drop]
        removed = [self.names[i] for i in sorted(drop)]
        means, counts = self.means[keep], self.counts[keep]
        self.names = [self.names[i] for i in keep]
        self.means, self.counts = means, counts
        self.sources = [self.sources[i] for i in keep]
        self._rows = {n: i for i, n in enumerate(self.names)}
        self._changed({"event": "removed", "identities": removed[:20], "count": len(removed)})
        return removed

    def set_calibration(self, calibration: Optional[Dict[str, Any]]) -> None:
        """Store (or clear) the open-set threshold; it is cleared again by any edit."""
        self.meta["calibration"] = None if calibration is None else dict(calibration)

    # ---------------------------------------------------------------- search
    def index(self, kind: str = "auto", faiss_above: int = 50_000, **faiss_options: Any):
        """A search index over the templates (built once per kind until the next edit)."""
        key = (kind, faiss_above)
        if self._index is None or self._index[0] != key:
            self._index = (key, build_index(self.templates, kind, faiss_above, **faiss_options))
        return self._index[1]

    def search(self, queries: np.ndarray, k: int = 5, index: str = "auto",
               faiss_above: int = 50_000) -> Tuple[np.ndarray, np.ndarray]:
        """Top-``k`` templates for each (L2-normalised) query: (scores, rows)."""
        if len(self) == 0:
            raise RanfaceError(f"gallery {self.path or ''} holds no identities: nothing to "
                               "search".replace("  ", " "))
        if index not in INDEX_KINDS:
            raise ValueError(f"index must be one of {INDEX_KINDS}")
        return self.index(index, faiss_above).search(queries, k)

    # ---------------------------------------------------------------- file I/O
    def save(self, path: Optional[str] = None) -> str:
        """Write the gallery atomically (``.npz``); returns the path."""
        path = os.fspath(path or self.path or "")
        if not path:
            raise ValueError("no path to save the gallery to")
        meta = dict(self.meta, format=GALLERY_FORMAT, identities=self.names,
                    sources=self.sources)
        meta["embedding"] = dict(meta.get("embedding", {}), dim=self.dim)
        blob = np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, templates=self.templates, means=self.means, counts=self.counts, meta=blob)
        with atomic_open(path, "wb") as fh:
            fh.write(buf.getvalue())
        self.path = path
        return path

    @classmethod
    def load(cls, path: str) -> "Gallery":
        """Open a gallery file; anything malformed is a :class:`DataError` naming it."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise DataError(path, "gallery file not found")
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise DataError(path, "not a gallery file (a single .npy array, not an .npz archive)")
            with z:
                missing = [a for a in _ARRAYS if a not in z.files]
                if missing:
                    raise DataError(path, f"not a ranface gallery (missing {', '.join(missing)})")
                arrays = {a: z[a] for a in _ARRAYS}
        except DataError:
            raise
        except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as exc:
            raise DataError(path, f"not a readable gallery file ({type(exc).__name__}: "
                            f"{str(exc)[:120] or 'corrupt'})") from None
        try:
            meta = json.loads(arrays["meta"].astype(np.uint8).tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise DataError(path, f"corrupt gallery metadata ({exc})", where="meta") from None
        return cls._from_arrays(path, arrays, meta)

    @classmethod
    def _from_arrays(cls, path: str, arrays: Dict[str, np.ndarray], meta: Any) -> "Gallery":
        if not isinstance(meta, dict) or meta.get("format") != GALLERY_FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise DataError(path, f"not a {GALLERY_FORMAT} file (format {got!r})", where="meta")
        for key in ("model", "identities"):
            if key not in meta:
                raise DataError(path, f"gallery metadata has no {key!r}", where="meta")
        if not isinstance(meta["model"], dict) or not meta["model"].get("fingerprint"):
            raise DataError(path, "gallery metadata has no model fingerprint", where="meta.model")
        names = meta.pop("identities")
        sources = meta.pop("sources", None)
        means, templates, counts = arrays["means"], arrays["templates"], arrays["counts"]
        k = len(names) if isinstance(names, list) else -1
        if (means.ndim != 2 or templates.shape != means.shape or counts.shape != (k,)
                or means.shape[0] != k or means.dtype.kind != "f" or counts.dtype.kind not in "iu"):
            raise DataError(path, f"inconsistent gallery arrays: {k} identities, means "
                            f"{means.shape}, templates {templates.shape}, counts {counts.shape}")
        if sources is not None and (not isinstance(sources, list) or len(sources) != k):
            raise DataError(path, "gallery sources do not match the identities", where="meta.sources")
        if not (np.isfinite(means).all() and np.isfinite(templates).all()):
            raise DataError(path, "gallery templates contain NaN or infinite values")
        if k and (counts < 1).any():
            raise DataError(path, "gallery has an identity with no images", where="counts")
        if k and not np.allclose(_normalise(means), templates, atol=1e-4):
            raise DataError(path, "gallery templates do not match their means (file edited or corrupt)")
        if len(set(map(str, names))) != k:
            raise DataError(path, "gallery identity names are not unique", where="meta.identities")
        g = cls(names, means, counts, meta, sources, path)
        g._templates = templates.astype(np.float32)
        return g


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ------------------------------------------------------------------ input listing
LIST_EXTS = (".tsv", ".txt", ".lst", ".list")


def _read_list(path: str, root: str = "") -> List[Tuple[Optional[str], str]]:
    """Lines ``PATH`` or ``LABEL<TAB>PATH`` (blank lines and ``#`` comments skipped);
    relative paths are taken from ``root`` (default: the list file's folder)."""
    base = root or os.path.dirname(os.path.abspath(path))
    try:
        with open(path, "r", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read list file ({getattr(exc, 'strerror', None) or exc})") from None
    out: List[Tuple[Optional[str], str]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) > 2 or not parts[-1].strip() or (len(parts) == 2 and not parts[0].strip()):
            raise DataError(path, "expected PATH or LABEL<TAB>PATH", where=f"line {n}")
        label = parts[0].strip() if len(parts) == 2 else None
        p = parts[-1].strip()
        out.append((label, p if os.path.isabs(p) else os.path.join(base, p)))
    if not out:
        raise DataError(path, "list file names no image")
    return out


def _images_under(folder: str) -> List[str]:
    from ..data.image import is_image_file  # noqa: PLC0415

    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                   if is_image_file(f))
    return out


def list_enrolment(source: str, root: str = "") -> List[Tuple[str, str]]:
    """(identity, image path) pairs to enrol, in a stable order.

    ``source`` is a folder ``<identity>/<images>`` (images searched recursively under
    each identity folder; images lying directly in ``source`` are an error) or a list
    file of ``IDENTITY<TAB>PATH`` lines.
    """
    if os.path.isfile(source):
        items = _read_list(source, root)
        unlabeled = [p for lab, p in items if lab is None]
        if unlabeled:
            raise DataError(source, f"{len(unlabeled)} line(s) without an identity; enrolment "
                            "lists need IDENTITY<TAB>PATH lines")
        return [(str(lab), p) for lab, p in items]
    if not os.path.isdir(source):
        raise DataError(source, "enrolment input not found (a folder <identity>/<images> or a "
                        "list file of IDENTITY<TAB>PATH lines)")
    out: List[Tuple[str, str]] = []
    loose = []
    for entry in sorted(os.listdir(source)):
        p = os.path.join(source, entry)
        if os.path.isdir(p):
            out.extend((entry, f) for f in _images_under(p))
        elif entry.lower().endswith(_image_exts()):
            loose.append(entry)
    if loose:
        raise DataError(source, f"{len(loose)} image(s) directly in the folder (e.g. {loose[0]}); "
                        "put each identity's images in a subfolder named after it")
    if not out:
        raise DataError(source, "no images found in identity subfolders")
    return out


def list_probes(inputs: Sequence[str], root: str = "") -> List[Tuple[Optional[str], str]]:
    """(label or None, image path) of probe images: image files, folders (searched
    recursively; an image in a subfolder is labelled with its first folder's name, the
    ``<identity>/<images>`` layout) or list files (``PATH`` or ``LABEL<TAB>PATH``)."""
    out: List[Tuple[Optional[str], str]] = []
    for src in inputs:
        if os.path.isdir(src):
            files = _images_under(src)
            if not files:
                raise DataError(src, "no images found")
            for f in files:
                rel = os.path.relpath(f, src).split(os.sep)
                out.append((rel[0] if len(rel) > 1 else None, f))
        elif os.path.isfile(src) and src.lower().endswith(LIST_EXTS):
            out.extend(_read_list(src, root))
        elif os.path.isfile(src):
            out.append((None, src))
        else:
            raise DataError(src, "probe input not found")
    return out


def _image_exts() -> Tuple[str, ...]:
    from ..data.image import image_extensions  # noqa: PLC0415

    return image_extensions()
