"""The recogniser behind the Python API (:mod:`ranface.api`, whose docstring shows its
use), ``ranface gallery``, ``identify`` and ``compare``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .gallery import Gallery, list_enrolment, list_probes, model_fingerprint
from .identify import FaceResult, FrameResult, align_detections, decide
from .search import Calibration, calibrate_threshold
from ..errors import ConfigError, DataError, RanfaceError

__all__ = ["FaceRecognizer", "Gallery", "RecognizerConfig", "GalleryConfig", "IdentifyConfig",
           "evaluate_search", "resolve_threshold", "stored_threshold", "list_probes"]

ImageLike = Union[str, np.ndarray]


# ------------------------------------------------------------------ configs
@dataclass
class RecognizerConfig:
    """How faces are found, aligned and embedded (shared by enrol, search, identify).

    ``template``/``face_size``/``flip`` left at auto (``auto`` / ``[]`` / null) take the
    gallery's settings when a gallery exists, else the model card's template (arcface
    when the card does not know it), input size and flip policy.
    """

    model: str = ""  # model.pt, checkpoint, run dir or face-api folder; "": the gallery's
    backbone: str = ""
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 32
    flip: Optional[bool] = None
    template: str = "auto"  # auto | arcface | dlib
    face_size: List[int] = field(default_factory=list)  # [H, W]; []: auto
    upscales: List[float] = field(default_factory=lambda: [1.0])  # MTCNN also at 2x, 3x: small faces
    pad_ratio: float = 0.5  # pad photos before detection (faces filling the frame)
    min_face_size: float = 20.0
    min_score: float = 0.9
    policy: str = "largest"  # the face of a one-face photo: largest | center | score
    min_eye_mouth: float = 8.0  # identify: smaller faces are reported as too_small


@dataclass
class GalleryConfig(RecognizerConfig):
    """``ranface gallery enrol|add|search|calibrate``."""

    aligned: bool = False  # inputs are aligned faces (no detection)
    force: bool = False  # aligned folder made with another template than the model's: warn, not refuse
    root: str = ""  # base folder of relative paths in list files ("" = the list's folder)
    on_error: str = "raise"  # unreadable image: raise | skip (counted and reported)
    on_exists: str = "error"  # add: identity already enrolled -> error | merge | replace
    top_k: int = 5
    threshold: Optional[float] = None  # open-set threshold (accept score > threshold)
    calibration: str = ""  # faces of non-enrolled identities: set the threshold at ``fpir``
    calibration_aligned: bool = False
    fpir: float = 0.1
    index: str = "auto"  # auto | exact | faiss | faiss-hnsw
    faiss_above: int = 50_000  # auto: faiss when the gallery is larger
    degrade: int = 0  # search/calibrate: shrink aligned faces to this many px and back (LR simulation)


@dataclass
class IdentifyConfig(RecognizerConfig):
    """``ranface identify``."""

    upscales: List[float] = field(default_factory=lambda: [1.0, 2.0])
    pad_ratio: float = 0.0  # crowd frames: faces rarely fill the frame
    gallery: str = ""
    every: int = 1  # video: every N-th frame
    max_frames: int = 0  # video: at most this many sampled frames (0: all)
    top_k: int = 5
    threshold: Optional[float] = None
    calibration: str = ""
    calibration_aligned: bool = False
    fpir: float = 0.1
    index: str = "auto"
    faiss_above: int = 50_000
    annotate: str = ""  # folder for annotated photos / videos ("" = none)
    on_error: str = "raise"


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


# ------------------------------------------------------------------ recogniser
class FaceRecognizer:
    """A model + a face aligner: photos -> aligned faces -> embeddings -> identities.

    ``model``: a path :func:`ranface.models.loader.load_model` understands, or a ranface
    backbone module (with ``.spec``; ``card`` then describes it). ``template``: 'auto'
    takes the model card's, else 'arcface'; ``face_size`` None the card's input size. Detection options go to
    :class:`ranface.align.pipeline.FaceAligner` (built on first use).
    """

    def __init__(self, model: Any, backbone: str = "", device: str = "auto", *,
                 flip: Optional[bool] = None, template: str = "auto",
                 face_size: Optional[Sequence[int]] = None, upscales: Sequence[float] = (1.0,),
                 pad_ratio: float = 0.5, min_face_size: float = 20.0, min_score: float = 0.9,
                 policy: str = "largest", min_eye_mouth: float = 8.0, batch_size: int = 32,
                 precision: str = "fp32", card: Any = None):
        import torch  # noqa: PLC0415

        from ..inference import Embedder  # noqa: PLC0415
        from ..models.loader import card_for_module, load_model  # noqa: PLC0415
        from ..train.precision import resolve_device  # noqa: PLC0415

        dev = resolve_device(device)
        if isinstance(model, torch.nn.Module):
            module = model.eval().to(dev)
            if card is None:
                card = card_for_module(module, type(model).__name__, {})
                card.provenance.source, card.provenance.kind = "<module>", "module"
        else:
            module, card = load_model(os.fspath(model), backbone, dev)
        if template == "auto":
            template = card.template or "arcface"
        _check_choice("template", template, ("arcface", "dlib"))
        # aligned straight to the model's input size unless told otherwise
        face_size = tuple(face_size) if face_size else tuple(card.input_size)
        if len(face_size) != 2 or min(face_size) < 1:
            raise ConfigError(f"face_size must be [height, width] > 0, got {list(face_size)}")
        if min_eye_mouth < 0:
            raise ConfigError(f"min_eye_mouth must be >= 0, got {min_eye_mouth}")
        self.card = card
        self.info = card.info()
        self.module = module
        self.device = dev
        self.template = template
        self.face_size = (int(face_size[0]), int(face_size[1]))
        self.flip = bool(card.flip if flip is None else flip)
        self.min_eye_mouth = float(min_eye_mouth)
        self.progress = False  # a progress bar over embedded items (CLI: on unless --no-progress)
        self.force = False  # aligned folders of another template: warn instead of refusing
        self._detect = dict(upscales=tuple(float(u) for u in upscales), pad_ratio=float(pad_ratio),
                            min_face_size=float(min_face_size), min_score=float(min_score),
                            policy=policy)
        self.embedder = Embedder(module, dev, flip=self.flip, precision=precision,
                                 batch_size=int(batch_size))
        self.fingerprint = model_fingerprint(module)
        self._aligner = None

    # -------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, cfg: RecognizerConfig, gallery: Optional[Gallery] = None,
                    module: Any = None) -> "FaceRecognizer":
        """Build from a config; unset template/face_size/flip/model come from ``gallery``
        (explicit values that contradict it are an error)."""
        emb = gallery.embedding if gallery is not None else {}
        model = module if module is not None else cfg.model
        if not model and gallery is not None:
            model = gallery.meta["model"].get("source") or ""
            if not model or model == "<module>" or not os.path.exists(model):
                raise ConfigError(f"no model given and the gallery's model ({model or 'unknown'}) "
                                  "is not available; give --model")
        if model is None or (isinstance(model, str) and not model):
            raise ConfigError("give the model (--model: model.pt, checkpoint, run dir or face-api folder)")
        template = cfg.template
        if template == "auto" and emb.get("template"):
            template = emb["template"]
        size = list(cfg.face_size) or list(emb.get("face_size") or [])
        flip = cfg.flip if cfg.flip is not None else emb.get("flip")
        rec = cls(model, cfg.backbone, cfg.device, flip=flip, template=template, face_size=size,
                  upscales=cfg.upscales, pad_ratio=cfg.pad_ratio, min_face_size=cfg.min_face_size,
                  min_score=cfg.min_score, policy=cfg.policy, min_eye_mouth=cfg.min_eye_mouth,
                  batch_size=cfg.batch_size, precision=cfg.precision)
        if gallery is not None:
            rec.check_gallery(gallery)
        rec.force = bool(getattr(cfg, "force", False))
        return rec

    @classmethod
    def for_gallery(cls, gallery: Gallery, model: Any = "", **options: Any) -> "FaceRecognizer":
        """A recogniser with the gallery's model (or ``model``) and its alignment and
        flip settings; other ``options`` as for :class:`RecognizerConfig`."""
        cfg = RecognizerConfig(**{k: v for k, v in options.items()
                                  if k in RecognizerConfig.__dataclass_fields__})
        unknown = set(options) - set(RecognizerConfig.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(unknown)}")
        if isinstance(model, str):
            cfg.model = model
            return cls.from_config(cfg, gallery)
        return cls.from_config(cfg, gallery, module=model)

    # -------------------------------------------------------------- metadata
    @property
    def dim(self) -> int:
        return int(self.module.spec.embedding_size)

    def model_meta(self) -> Dict[str, Any]:
        return {"fingerprint": self.fingerprint, "backbone": self.info.get("backbone"),
                "source": self.info.get("source"), "kind": self.info.get("kind"),
                "spec": self.info.get("spec"), "card": self.card.to_dict()}

    def embedding_meta(self, aligned_input: bool) -> Dict[str, Any]:
        return {"flip": self.flip, "template": self.template, "face_size": list(self.face_size),
                "aligned_input": bool(aligned_input)}

    def check_gallery(self, gallery: Gallery) -> None:
        """The gallery must come from this model with the same alignment and flip."""
        gallery.check_model(self.fingerprint)
        emb = gallery.embedding
        mine = {"flip": self.flip, "template": self.template, "face_size": list(self.face_size)}
        for key, val in mine.items():
            if key in emb and emb[key] != val:
                raise DataError(gallery.path or "<gallery>", (
                    f"gallery faces were embedded with {key}={emb[key]!r}, this recogniser uses "
                    f"{val!r}; use the gallery's setting (leave {key} unset)"))

    # -------------------------------------------------------------- faces
    @property
    def aligner(self):
        if self._aligner is None:
            from ..align.pipeline import FaceAligner  # noqa: PLC0415

            d = self._detect
            self._aligner = FaceAligner(self.template, self.face_size, policy=d["policy"],
                                        pad_ratio=d["pad_ratio"], upscales=d["upscales"],
                                        min_score=d["min_score"], min_face_size=d["min_face_size"],
                                        device=self.device)
        return self._aligner

    def embed_faces(self, faces: Sequence[np.ndarray], degrade: int = 0) -> np.ndarray:
        """(N, D) embeddings of aligned uint8 RGB faces; ``degrade`` > 0 first shrinks
        each face to that many pixels wide and back (bicubic, :func:`ranface.degrade.down_up`)."""
        if not len(faces):
            return np.zeros((0, self.dim), np.float32)
        if degrade:
            from ..degrade import down_up  # noqa: PLC0415

            faces = [down_up(f, int(degrade)) for f in faces]
        return self.embedder.embed_arrays(list(faces), "rgb").astype(np.float32)

    def face_of(self, image: ImageLike, aligned: bool = False) -> Tuple[Optional[np.ndarray], str]:
        """(aligned face or None, note) of a one-face photo (or an aligned face)."""
        from ..data.image import read_image  # noqa: PLC0415

        img = read_image(image) if isinstance(image, str) else np.asarray(image)
        if aligned:
            return _rgb(img), ""
        r = self.aligner.align(img)
        return (r.face, "") if r.ok else (None, r.reason or "no face detected")

    def verify(self, a: ImageLike, b: ImageLike, threshold: Optional[float] = None, *,
               aligned: bool = False) -> Dict[str, Any]:
        """Are ``a`` and ``b`` (photos, detected and aligned with the card's template, or
        aligned faces with ``aligned``) the same person? ``cosine`` of the two
        embeddings; ``same`` is ``cosine > threshold`` with ``threshold`` given, else the
        card's calibrated one (best accuracy on its calibration pairs, which
        ``threshold_source`` names); None when neither exists."""
        faces = []
        for item in (a, b):
            face, why = self.face_of(item, aligned)
            if face is None:
                raise DataError(_name(item), f"{why} (give an aligned face with aligned=True / --aligned)")
            faces.append(face)
        e = self.embed_faces(faces)
        score = float(np.dot(e[0], e[1]))
        if threshold is not None:
            thr, src = float(threshold), "given"
        else:
            thr = self.card.threshold
            src = (f"model card: best accuracy on {self.card.thresholds.data}" if thr is not None
                   else "none: the model card holds no calibrated threshold (give --threshold)")
        return {"image1": _name(a), "image2": _name(b), "cosine": score,
                "same": None if thr is None else bool(score > thr), "threshold": thr,
                "threshold_source": src, "template": None if aligned else self.template}

    def _embed_items(self, items: Sequence[ImageLike], aligned: bool, on_error: str,
                     degrade: int = 0) -> Tuple[np.ndarray, List[int], List[Tuple[int, str]]]:
        """Embeddings of the items whose face was found: (E, kept indices, [(index, why)])."""
        _check_choice("on_error", on_error, ("raise", "skip"))
        from ..io_utils import progress_bar  # noqa: PLC0415

        bar = progress_bar(len(items), "embed", self.progress)
        feats: List[np.ndarray] = []
        kept: List[int] = []
        failed: List[Tuple[int, str]] = []
        batch: List[np.ndarray] = []
        bidx: List[int] = []

        def flush() -> None:
            if batch:
                feats.append(self.embed_faces(batch, degrade))
                kept.extend(bidx)
                batch.clear()
                bidx.clear()

        for i, item in enumerate(items):
            if bar is not None:
                bar.update(1)
            try:
                face, why = self.face_of(item, aligned)
            except DataError as exc:
                if on_error == "raise":
                    raise
                failed.append((i, f"unreadable: {exc.problem}"))
                continue
            if face is None:
                failed.append((i, why))
                continue
            batch.append(face)
            bidx.append(i)
            if len(batch) >= self.embedder.batch_size:
                flush()
        flush()
        if bar is not None:
            bar.close()
        e = np.concatenate(feats) if feats else np.zeros((0, self.dim), np.float32)
        return e, kept, failed

    def check_aligned_source(self, source: Any) -> Optional[str]:
        """An aligned folder made by ``prepare`` must use this recogniser's template;
        returns the folder's template (None when unrecorded)."""
        if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
            from ..align.prepare import check_template  # noqa: PLC0415

            return check_template(os.fspath(source), self.template, self.force)
        return None

    # -------------------------------------------------------------- gallery
    def new_gallery(self, aligned_input: bool = False) -> Gallery:
        return Gallery.empty(self.model_meta(), self.embedding_meta(aligned_input), self.dim)

    def enrol(self, source: Union[str, Dict[str, Sequence[ImageLike]]], gallery: Optional[Gallery] = None,
              *, aligned: bool = False, root: str = "", on_error: str = "raise",
              on_exists: str = "error") -> Tuple[Gallery, Dict[str, Any]]:
        """Enrol identities into ``gallery`` (a new one when None).

        ``source``: a folder ``<identity>/<images>``, a list file of
        ``IDENTITY<TAB>PATH`` lines, or a dict identity -> images (paths or arrays).
        Photos with no detected face (and, with ``on_error='skip'``, unreadable ones)
        are skipped and reported; an identity left with no image is not enrolled.
        Returns (gallery, report).
        """
        _check_choice("on_exists", on_exists, ("error", "merge", "replace"))
        folder_template = self.check_aligned_source(source) if aligned else None
        if isinstance(source, dict):
            pairs = [(str(n), im) for n, ims in source.items() for im in ims]
        else:
            pairs = list_enrolment(os.fspath(source), root)
        g = gallery if gallery is not None else self.new_gallery(aligned)
        if gallery is None and folder_template:
            # record how the faces really were aligned (differs only with force)
            g.meta.setdefault("embedding", {})["template"] = folder_template
        if gallery is not None:
            self.check_gallery(g)
        if on_exists == "error":
            dup = sorted({n for n, _ in pairs if n in g})
            if dup:
                raise RanfaceError(f"already enrolled{' in ' + g.path if g.path else ''}: "
                                   f"{', '.join(dup[:10])}{' ...' if len(dup) > 10 else ''} "
                                   "(on_exists=merge adds the images, replace re-enrols)")
        items = [im for _, im in pairs]
        e, kept, failed = self._embed_items(items, aligned, on_error)
        by_id: Dict[str, List[int]] = {}
        for row, i in enumerate(kept):
            by_id.setdefault(pairs[i][0], []).append(row)
        actions = {"added": 0, "merged": 0, "replaced": 0}
        for name in dict.fromkeys(n for n, _ in pairs):
            rows = by_id.get(name)
            if not rows:
                continue
            srcs = [pairs[kept[r]][1] if isinstance(pairs[kept[r]][1], str) else "<array>"
                    for r in rows]
            actions[g.add_embeddings(name, e[rows], srcs, on_exists)] += 1
        names = list(dict.fromkeys(n for n, _ in pairs))
        report = {"identities": sum(actions.values()), **actions, "images": len(kept),
                  "skipped": len(failed),
                  "skipped_examples": [f"{_name(items[i])}: {why}" for i, why in failed[:10]],
                  "not_enrolled": [n for n in names if n not in by_id],
                  "gallery_size": len(g)}
        return g, report

    # -------------------------------------------------------------- search
    def search_embeddings(self, gallery: Gallery, embeddings: np.ndarray, k: int = 5,
                          threshold: Optional[float] = None, index: str = "auto",
                          faiss_above: int = 50_000) -> List[Dict[str, Any]]:
        """Top-k and the decision for each (L2-normalised) query embedding."""
        if len(gallery) == 0:
            raise RanfaceError(f"gallery {gallery.path or ''} holds no identities".replace("  ", " "))
        if not len(embeddings):
            return []
        scores, rows = gallery.search(embeddings, k, index, faiss_above)
        out = []
        for s, r in zip(scores, rows):
            status, ident, best, top = decide(s, r, gallery.names, threshold)
            out.append({"status": status, "identity": ident, "score": best,
                        "top_k": [{"identity": n, "score": v} for n, v in top]})
        return out

    def search(self, gallery: Gallery, probes: Sequence[ImageLike], k: int = 5,
               threshold: Optional[float] = None, *, aligned: bool = False, degrade: int = 0,
               index: str = "auto", faiss_above: int = 50_000, on_error: str = "raise",
               labels: Optional[Sequence[Optional[str]]] = None) -> List[Dict[str, Any]]:
        """One result per probe (a one-face photo or, with ``aligned``, an aligned face):
        ``probe``, ``label``, ``status`` (match | unknown | no_threshold | no_face |
        unreadable), ``identity``, ``score``, ``top_k``. ``threshold`` None uses the
        gallery's calibration, if any."""
        self.check_gallery(gallery)
        if len(gallery) == 0:
            raise RanfaceError(f"gallery {gallery.path or ''} holds no identities".replace("  ", " "))
        if threshold is None:
            threshold = stored_threshold(gallery)
        e, kept, failed = self._embed_items(probes, aligned, on_error, degrade)
        found = self.search_embeddings(gallery, e, k, threshold, index, faiss_above)
        out: List[Dict[str, Any]] = [{} for _ in probes]
        for i, res in zip(kept, found):
            out[i] = res
        for i, why in failed:
            out[i] = {"status": "unreadable" if why.startswith("unreadable") else "no_face",
                      "identity": None, "score": None, "top_k": [], "note": why}
        for i, p in enumerate(probes):
            out[i] = {"probe": _name(p), "label": labels[i] if labels is not None else None,
                      **out[i]}
        return out

    def calibrate(self, gallery: Gallery, source: Union[str, Sequence[ImageLike]],
                  fpir: float = 0.1, *, aligned: bool = False, root: str = "",
                  on_error: str = "raise", degrade: int = 0) -> Calibration:
        """Threshold at ``fpir`` from the top-1 scores of faces of non-enrolled people
        (a folder, list file or list of images); probes labelled with an enrolled
        identity are an error (they would be genuine, not impostor, scores). Calibrate on
        faces like the probes: ``degrade`` as in :meth:`search` (low-resolution faces
        score higher against everyone, so an HR threshold lets more LR strangers in)."""
        self.check_gallery(gallery)
        if aligned:
            self.check_aligned_source(source)
        if isinstance(source, str):
            pairs = list_probes([source], root)
        else:
            pairs = [(None, p) for p in source]
        enrolled = sorted({lab for lab, _ in pairs if lab is not None and lab in gallery})
        if enrolled:
            raise RanfaceError(f"calibration faces must be of non-enrolled people; enrolled: "
                               f"{', '.join(enrolled[:10])}")
        e, kept, failed = self._embed_items([p for _, p in pairs], aligned, on_error, degrade)
        if not len(e):
            raise RanfaceError(f"calibration: no face found in {len(pairs)} image(s)")
        scores, _ = gallery.search(e, 1)
        return calibrate_threshold(scores[:, 0], fpir)

    # -------------------------------------------------------------- identify
    def identify_image(self, gallery: Gallery, image: np.ndarray, k: int = 5,
                       threshold: Optional[float] = None, *, source: str = "<array>",
                       frame: Optional[int] = None, time_s: Optional[float] = None,
                       index: str = "auto", faiss_above: int = 50_000) -> FrameResult:
        """Every face of one photo / frame: detected, too-small ones flagged, the rest
        aligned, embedded and searched (``threshold`` None: the gallery's calibration)."""
        if len(gallery) == 0:
            raise RanfaceError(f"gallery {gallery.path or ''} holds no identities".replace("  ", " "))
        if threshold is None:
            threshold = stored_threshold(gallery)
        img = _rgb(np.asarray(image))
        det = self.aligner.detect(img)
        faces, em = align_detections(img, det, self.aligner.points, self.face_size,
                                     self.min_eye_mouth, self.aligner.border)
        todo = [i for i, f in enumerate(faces) if f is not None]
        found = self.search_embeddings(gallery, self.embed_faces([faces[i] for i in todo]), k,
                                       threshold, index, faiss_above) if todo else []
        res = dict(zip(todo, found))
        out: List[FaceResult] = []
        for i in range(len(faces)):
            base = dict(box=det.boxes[i].copy(), det_score=float(det.scores[i]),
                        landmarks=det.landmarks[i].copy(), eye_mouth_px=float(em[i]))
            if i not in res:
                out.append(FaceResult(status="too_small", **base))
            else:
                r = res[i]
                out.append(FaceResult(status=r["status"], identity=r["identity"], score=r["score"],
                                      top_k=[(t["identity"], t["score"]) for t in r["top_k"]],
                                      **base))
        return FrameResult(source, frame, time_s, int(img.shape[1]), int(img.shape[0]), out)

    def identify(self, gallery: Gallery, inputs: Sequence[ImageLike], k: int = 5,
                 threshold: Optional[float] = None, *, every: int = 1, max_frames: int = 0,
                 annotate: str = "", index: str = "auto", faiss_above: int = 50_000,
                 on_error: str = "raise") -> Iterator[FrameResult]:
        """:meth:`identify_image` over photos, folders of photos and videos (every
        ``every``-th frame, at most ``max_frames``); with ``annotate`` a folder, also
        writes each photo / video with boxes and names drawn. Yields one result per
        photo or sampled frame, in order; with ``on_error='skip'`` an unreadable photo or
        video yields one result whose ``error`` says why."""
        from ..data.image import read_image  # noqa: PLC0415
        from .video import annotate as draw  # noqa: PLC0415
        from .video import is_video, iter_video_frames, video_rate, VideoWriter  # noqa: PLC0415

        self.check_gallery(gallery)
        if len(gallery) == 0:
            raise RanfaceError(f"gallery {gallery.path or ''} holds no identities".replace("  ", " "))
        _check_choice("on_error", on_error, ("raise", "skip"))
        if threshold is None:
            threshold = stored_threshold(gallery)
        kw = dict(k=k, threshold=threshold, index=index, faiss_above=faiss_above)
        used_names: Dict[str, int] = {}
        for item in _expand_inputs(inputs):
            if isinstance(item, np.ndarray):
                fr = self.identify_image(gallery, item, **kw)
                yield fr
                continue
            if is_video(item):
                writer = None
                if annotate:
                    stem = _unique(os.path.splitext(os.path.basename(item))[0], used_names)
                    rate = video_rate(item) or 25.0
                    writer = VideoWriter(os.path.join(annotate, stem + ".annotated.mp4"),
                                         rate / max(1, every))
                try:
                    for vf in iter_video_frames(item, every, max_frames):
                        fr = self.identify_image(gallery, vf.image, source=item, frame=vf.index,
                                                 time_s=vf.time_s, **kw)
                        if writer is not None:
                            writer.write(draw(vf.image, fr.faces))
                        yield fr
                    if writer is not None:
                        writer.close()
                except DataError as exc:
                    if on_error == "raise":
                        raise
                    yield FrameResult(item, None, None, 0, 0, [], error=str(exc))
                finally:
                    if writer is not None:
                        writer._discard()
                continue
            try:
                img = read_image(item)
            except DataError as exc:
                if on_error == "raise":
                    raise
                yield FrameResult(item, None, None, 0, 0, [], error=str(exc))
                continue
            fr = self.identify_image(gallery, img, source=item, **kw)
            if annotate:
                from ..data.image import encode_image  # noqa: PLC0415
                from ..io_utils import atomic_write_bytes  # noqa: PLC0415

                stem = _unique(os.path.splitext(os.path.basename(item))[0], used_names)
                atomic_write_bytes(os.path.join(annotate, stem + ".annotated.jpg"),
                                   encode_image(draw(img, fr.faces), "jpeg", 90))
            yield fr


def stored_threshold(gallery: Gallery) -> Optional[float]:
    cal = gallery.calibration
    return None if not cal else float(cal["threshold"])


def _expand_inputs(inputs: Sequence[ImageLike]) -> Iterator[ImageLike]:
    """Photos and videos: files as given, folders searched (sorted) for both."""
    from .gallery import _image_exts  # noqa: PLC0415
    from .video import VIDEO_EXTS  # noqa: PLC0415

    if isinstance(inputs, (str, np.ndarray)):
        inputs = [inputs]
    for item in inputs:
        if isinstance(item, np.ndarray):
            yield item
            continue
        item = os.fspath(item)
        if os.path.isdir(item):
            exts = _image_exts() + VIDEO_EXTS
            found = []
            for dirpath, dirnames, files in os.walk(item):
                dirnames.sort()
                found.extend(os.path.join(dirpath, f) for f in sorted(files)
                             if f.lower().endswith(exts))
            if not found:
                raise DataError(item, "no photos or videos found")
            yield from found
        elif os.path.isfile(item):
            yield item
        else:
            raise DataError(item, "input not found")


def _unique(stem: str, used: Dict[str, int]) -> str:
    n = used.get(stem, 0)
    used[stem] = n + 1
    return stem if n == 0 else f"{stem}_{n}"


def _name(item: Any) -> str:
    return item if isinstance(item, str) else "<array>"


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {img.dtype} {img.shape}")
    return img


def evaluate_search(results: Sequence[Dict[str, Any]], gallery: Gallery,
                    threshold: Optional[float], fpirs: Sequence[float] = (0.3, 0.2, 0.1, 0.01)
                    ) -> Optional[Dict[str, Any]]:
    """Identification metrics of labelled search results (None when no probe has a label).

    Mated probes (label enrolled): rank-1 rate (no-face probes count as misses). Open
    set: TPIR@FPIR by :class:`ranface.eval.metrics.OpenSetScores` on the top-1 results
    (hits = top-1 scores of correctly ranked mated probes; unmated = top-1 scores of the
    probes whose label is not enrolled; unmated probes without a face are left out as
    they can never be falsely accepted). At ``threshold``: the TPIR and FPIR achieved.
    """
    from ..eval.metrics import OpenSetScores  # noqa: PLC0415

    labelled = [r for r in results if r.get("label") is not None]
    if not labelled:
        return None
    mated = [r for r in labelled if r["label"] in gallery]
    unmated = [r for r in labelled if r["label"] not in gallery]
    hits = np.array([r["score"] for r in mated if r["top_k"] and r["top_k"][0]["identity"] == r["label"]],
                    dtype=np.float64)
    un = np.array([r["score"] for r in unmated if r["top_k"]], dtype=np.float64)
    out: Dict[str, Any] = {"probes": len(labelled), "mated": len(mated), "unmated": len(unmated),
                           "no_face": sum(not r["top_k"] for r in labelled)}
    if mated:
        out["rank1"] = hits.size / len(mated)
        out["rank5"] = sum(any(t["identity"] == r["label"] for t in r["top_k"][:5])
                           for r in mated) / len(mated)
    if mated and un.size:
        ops = OpenSetScores(hits=hits, n_mated=len(mated), unmated=un, rank=1).tpir_at_fpir(fpirs)
        out["tpir_at_fpir"] = {str(f): (None if op.tar is None else
                                        {"tpir": op.tar, "threshold": op.threshold,
                                         "achieved_fpir": op.achieved_far}) for f, op in ops.items()}
    if threshold is not None:
        if mated:
            out["tpir_at_threshold"] = float(np.sum(hits > threshold)) / len(mated)
        if un.size:
            out["fpir_at_threshold"] = float(np.sum(un > threshold)) / un.size
    return out


def resolve_threshold(rec: FaceRecognizer, gallery: Gallery, threshold: Optional[float],
                      calibration: str, fpir: float, aligned: bool = False, root: str = "",
                      on_error: str = "raise", degrade: int = 0
                      ) -> Tuple[Optional[float], Optional[Dict[str, Any]]]:
    """The threshold to decide with: given > calibrated now on ``calibration`` (its faces
    degraded like the probes) > the gallery's stored calibration > None. Returns
    (threshold, how it was set)."""
    if threshold is not None:
        return float(threshold), {"source": "given", "threshold": float(threshold)}
    if calibration:
        cal = rec.calibrate(gallery, calibration, fpir, aligned=aligned, root=root,
                            on_error=on_error, degrade=degrade)
        return cal.threshold, dict(cal.to_dict(), source=os.path.abspath(calibration),
                                   degrade=degrade)
    stored = gallery.calibration
    if stored:
        return float(stored["threshold"]), dict(stored, source="gallery calibration")
    return None, None

