"""``ranface prepare``: raw photos -> aligned faces, a manifest and a failures list.

Work is cut into chunks of photos processed by a pool of worker processes (one MTCNN
each, one intra-op thread each, so both cores are used). Every aligned face is written
atomically, and a chunk's manifest rows are written (atomically) only after all its faces
are on disk, so a killed run leaves no half-written face and a rerun skips the finished
chunks. The final ``manifest.csv`` / ``failures.csv`` / ``summary.json`` are merged from
the chunk parts at the end.

Output layout: ``<out>/<identity>/<stem>.<ext>`` with ``identity`` the photo's parent
folder relative to the input root (``mode=all`` appends ``_<k>`` per face), or with
``format=rec`` additionally ``<out>/train.rec``/``train.idx`` (insightface layout).
"""
from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..config import PrepareConfig
from ..data.image import image_extensions, is_image_file
from ..errors import ConfigError, DataError, RanfaceError
from ..io_utils import atomic_write_bytes, atomic_write_text, check_writable_dir, remove_stale_temps

MANIFEST_FIELDS = ["output", "source", "face_index", "x1", "y1", "x2", "y2", "score",
                   *[f"{p}{c}" for p in ("leye_", "reye_", "nose_", "lmouth_", "rmouth_") for c in "xy"],
                   "eye_mouth_px", "note"]
FAILURE_FIELDS = ["source", "reason"]


def parse_lr_select(text: str) -> Optional[Tuple[float, float]]:
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise ConfigError(f"lr_select must be MIN:MAX (e.g. 10:30), got {text!r}") from None
    if lo < 0 or hi < lo:
        raise ConfigError(f"lr_select {text!r}: need 0 <= MIN <= MAX")
    return lo, hi


def list_photos(cfg: PrepareConfig) -> Tuple[str, List[str]]:
    """(root, relative paths) of the photos to process, sorted; list files may name
    paths relative to ``root``; a path escaping the root is refused."""
    src = cfg.input
    if not src:
        raise ConfigError("prepare: give the input photos (a folder or a list file)")
    if os.path.isdir(src):
        root = src
        rels = []
        for dirpath, dirnames, files in os.walk(src):
            dirnames.sort()
            for f in sorted(files):
                if is_image_file(f):
                    rels.append(os.path.relpath(os.path.join(dirpath, f), src))
    elif os.path.isfile(src):
        root = cfg.root or os.path.dirname(os.path.abspath(src))
        rels = []
        with open(src, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                rel = line.split()[0]
                root_abs = os.path.realpath(root)
                full = os.path.realpath(os.path.join(root_abs, rel))
                if os.path.isabs(rel) or os.path.commonpath([root_abs, full]) != root_abs:
                    raise DataError(src, f"path {rel!r} escapes the dataset root {root}", f"line {n}")
                rels.append(os.path.relpath(full, root_abs))
    else:
        raise DataError(src, "input not found")
    if not rels:
        raise DataError(src, f"no photos (any image format PIL reads: {', '.join(image_extensions()[:12])}, ...) to prepare")
    if cfg.limit > 0:
        rels = rels[: cfg.limit]
    return root, rels


# ---------------------------------------------------------------------- worker side

_WORKER: Dict[str, Any] = {}


def _init_worker(cfg_dict: Dict[str, Any], tune_allocator: bool = False) -> None:
    """One worker's aligner, on one torch thread. ``tune_allocator``: the parent process
    runs with ranface's glibc thresholds (the CLI's default, runtime.py); a spawned
    worker starts untuned and applies them itself (MTCNN's large pyramid tensors are
    otherwise page-faulted in again at every level: ~8% of the crowd photos' time)."""
    import torch

    from .pipeline import FaceAligner

    if tune_allocator:
        from ..runtime import tune_allocator as tune

        tune()
    torch.set_num_threads(1)
    cfg = PrepareConfig(**cfg_dict)
    _WORKER["cfg"] = cfg
    _WORKER["aligner"] = FaceAligner(
        template=cfg.template, size=(cfg.size[0], cfg.size[1]), policy=cfg.policy,
        pad_ratio=cfg.pad_ratio, upscales=tuple(cfg.upscales), min_score=cfg.min_score,
        center_crop_fallback=cfg.center_crop_fallback, border=cfg.border,
        min_face_size=cfg.min_face_size, upscale_new_only=cfg.upscale_new_only)


def _out_name(rel: str, k: Optional[int], ext: str) -> str:
    stem, _ = os.path.splitext(rel)
    return f"{stem}_{k}.{ext}" if k is not None else f"{stem}.{ext}"


def _encode(face: np.ndarray, cfg: PrepareConfig) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(face)
    if cfg.grey:
        img = img.convert("L")  # loaders replicate grey to 3 channels
    if cfg.image_format == "png":
        img.save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=cfg.jpeg_quality)
    return buf.getvalue()


def _row(out: str, rel: str, k: int, box, score, lm, d, note: str = "") -> Dict[str, Any]:
    row: Dict[str, Any] = {"output": out, "source": rel, "face_index": k, "note": note}
    for name, v in zip(("x1", "y1", "x2", "y2"), box if box is not None else [None] * 4):
        row[name] = "" if v is None else f"{float(v):.2f}"
    row["score"] = "" if score is None else f"{float(score):.4f}"
    pts = np.asarray(lm).reshape(-1) if lm is not None else [None] * 10
    for name, v in zip(MANIFEST_FIELDS[8:18], pts):
        row[name] = "" if v is None else f"{float(v):.2f}"
    row["eye_mouth_px"] = "" if d is None else f"{float(d):.2f}"
    return row


def _process_chunk(job: Tuple[int, str, str, List[str]]) -> Tuple[int, List[Dict[str, Any]], List[Dict[str, str]], int]:
    """Align the photos of one chunk; returns (chunk id, manifest rows, failures, filtered)."""
    from ..data.image import read_image
    from .select import fraction_outside

    chunk_id, root, out_dir, rels = job
    cfg: PrepareConfig = _WORKER["cfg"]
    aligner = _WORKER["aligner"]
    band = parse_lr_select(cfg.lr_select)
    rows: List[Dict[str, Any]] = []
    fails: List[Dict[str, str]] = []
    filtered = 0
    for rel in rels:
        try:
            img = read_image(os.path.join(root, rel), color="rgb")
        except DataError as exc:
            fails.append({"source": rel, "reason": exc.problem})
            continue
        try:
            if cfg.mode == "one":
                res = aligner.align(img)
                faces = [] if res.face is None else [(None, res.face, res.box, res.score, res.landmarks,
                                                      res.eye_mouth_px, res.reason or "")]
                if res.face is None:
                    fails.append({"source": rel, "reason": res.reason or "no face"})
                    continue
            else:
                found = aligner.detect_all(img)
                if not found:
                    fails.append({"source": rel, "reason": "no face detected"})
                    continue
                faces = [(k, f.face, f.box, f.score, f.landmarks, f.eye_mouth_px, "") for k, f in enumerate(found)]
        except Exception as exc:  # a photo that breaks the detector must not end the run
            fails.append({"source": rel, "reason": f"alignment failed ({type(exc).__name__}: {exc})"})
            continue
        for k, face, box, score, lm, d, note in faces:
            if band is not None and (d is None or not band[0] <= d <= band[1]):
                filtered += 1
                continue
            if box is not None and cfg.max_outside < 1.0 and fraction_outside(box, img.shape) > cfg.max_outside:
                filtered += 1
                continue
            name = _out_name(rel, k, cfg.image_format)
            atomic_write_bytes(os.path.join(out_dir, name), _encode(face, cfg))
            rows.append(_row(name, rel, 0 if k is None else k, box, score, lm, d, note))
    return chunk_id, rows, fails, filtered


# ---------------------------------------------------------------------- driver side


def _csv_text(fields: Sequence[str], rows: Sequence[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _read_csv(path: str) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def prepared_eye_mouth(folder: str) -> List[float]:
    """Eye-to-mouth distances (original px) of the faces ``prepare`` wrote to ``folder``,
    read from its ``manifest.csv`` (empty when there is none)."""
    path = os.path.join(folder, "manifest.csv")
    if not os.path.isfile(path):
        return []
    try:
        rows = _read_csv(path)
        return [float(r["eye_mouth_px"]) for r in rows if r.get("eye_mouth_px")]
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise DataError(path, f"unreadable manifest ({exc})") from None


def prepared_template(folder: str) -> Optional[str]:
    """The alignment template (arcface | dlib) ``prepare`` used for ``folder``, from its
    ``prepare_config.yaml``; None when the folder was not made by ``prepare``."""
    path = os.path.join(folder, "prepare_config.yaml")
    if not os.path.isfile(path):
        return None
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(path, f"unreadable prepare config ({str(exc).splitlines()[0]})") from None
    value = data.get("template") if isinstance(data, dict) else None
    return str(value) if value else None


def check_template(folder: str, expected: Optional[str], force: bool = False,
                   what: str = "the model") -> Optional[str]:
    """Refuse (``force``: warn on stderr) when the aligned faces in ``folder`` were made
    with another template than ``expected`` (the model card's). Faces aligned to the
    wrong template lose many points of accuracy silently (ArcFace chips fed to the dlib
    ResNet-29: 90% instead of 100% on 120 LFW pairs). Returns the folder's template."""
    have = prepared_template(folder)
    if have and expected and have != expected:
        msg = (f"faces aligned with the {have!r} template, but {what} expects {expected!r}: "
               f"re-run `ranface prepare --model MODEL` (or --set template={expected})")
        if not force:
            raise DataError(folder, msg + "; --force uses them anyway")
        import sys

        print(f"ranface: warning: {folder}: {msg}", file=sys.stderr)
    return have


def prepared_failures(folder: str) -> Dict[str, str]:
    """Faces that ``prepare`` could not produce in ``folder``: {output path relative to
    the folder: reason}, read from its ``failures.csv`` (empty when the folder was not made
    by ``prepare``). Consumers use it to tell "no face was detected in this photo" (a
    known, counted loss) from "this file is missing" (an error)."""
    path = os.path.join(folder, "failures.csv")
    if not os.path.isfile(path):
        return {}
    ext = "jpg"
    try:
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as fh:
            ext = str(json.load(fh).get("image_format") or ext)
    except (OSError, ValueError):
        pass
    try:
        rows = _read_csv(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"unreadable failures list ({exc})") from None
    return {_out_name(r.get("source") or "", None, ext): r.get("reason") or "" for r in rows if r.get("source")}


def _safe_init_worker(cfg_dict: Dict[str, Any], tune_allocator: bool = False) -> None:
    """Pool initializer that never raises (a raising initializer makes a pool start
    replacement workers forever): the error is kept and raised by the first chunk."""
    try:
        _init_worker(cfg_dict, tune_allocator)
    except BaseException as exc:  # noqa: BLE001 - reported by _safe_process_chunk
        _WORKER["error"] = exc


def _safe_process_chunk(job: Tuple[int, str, str, List[str]]):
    if "error" in _WORKER:
        raise _as_one_line(_WORKER["error"])
    try:
        return _process_chunk(job)
    except Exception as exc:
        raise _as_one_line(exc) from None


def _as_one_line(exc: BaseException) -> RanfaceError:
    """Worker errors cross the process boundary as one-line :class:`RanfaceError`s."""
    if isinstance(exc, RanfaceError):
        return RanfaceError(str(exc))
    return RanfaceError(f"prepare worker failed: {type(exc).__name__}: {str(exc).strip()[:200]}")


def _run_pool(workers: int, cfg_dict: Dict[str, Any], todo: List[Any], record: Any) -> None:
    """Chunks on ``workers`` processes. The first error (or a worker that dies) ends the
    whole command at once: the other workers are terminated, finished chunks are kept
    (a rerun redoes only the others)."""
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from ..runtime import allocator_state

    ctx = mp.get_context("spawn")  # fresh interpreters: no inherited torch thread pools
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_safe_init_worker,
                               initargs=(cfg_dict, allocator_state() == "tuned"))
    try:
        pending = {pool.submit(_safe_process_chunk, job) for job in todo}
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    raise RanfaceError("prepare: a worker process died (out of memory or killed); "
                                       "rerun to continue with the unfinished chunks") from None
                record(result)
    finally:
        procs = list(getattr(pool, "_processes", {}).values())  # not public: terminate at once
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=5)


def run_prepare(cfg: PrepareConfig) -> Dict[str, Any]:
    if cfg.mode not in ("one", "all"):
        raise ConfigError(f"prepare.mode must be 'one' or 'all', got {cfg.mode!r}")
    if cfg.format not in ("folder", "rec"):
        raise ConfigError(f"prepare.format must be 'folder' or 'rec', got {cfg.format!r}")
    if cfg.image_format not in ("jpg", "png"):
        raise ConfigError(f"prepare.image_format must be jpg or png, got {cfg.image_format!r}")
    if len(cfg.size) != 2:
        raise ConfigError(f"prepare.size must be [height, width], got {cfg.size}")
    parse_lr_select(cfg.lr_select)
    if not cfg.out:
        raise ConfigError("prepare: give the output folder (--out)")
    root, rels = list_photos(cfg)
    check_writable_dir(cfg.out)
    remove_stale_temps(cfg.out, recursive=True)  # half-written files of a killed run
    parts = os.path.join(cfg.out, ".parts")
    os.makedirs(parts, exist_ok=True)
    from ..config import save_config

    save_config(cfg, os.path.join(cfg.out, "prepare_config.yaml"))
    # small inputs (a few large crowd photos) still get one chunk per worker and more
    cs = max(1, min(cfg.chunk_size, -(-len(rels) // (4 * max(1, cfg.workers)))))
    chunks = [(i // cs, rels[i:i + cs]) for i in range(0, len(rels), cs)]
    # a chunk is done when its part file exists (written after all its faces)
    todo = [(cid, root, cfg.out, c) for cid, c in chunks
            if not os.path.exists(os.path.join(parts, f"chunk-{cid:06d}.json"))]
    done_before = len(chunks) - len(todo)
    t0 = time.time()
    n_photos_now = sum(len(j[3]) for j in todo)
    from ..io_utils import progress_bar

    bar = progress_bar(len(rels), "prepare", cfg.progress)
    if bar is not None:
        bar.update(len(rels) - n_photos_now)

    def record(result: Tuple[int, List[Dict[str, Any]], List[Dict[str, str]], int]) -> None:
        cid, rows, fails, filtered = result
        atomic_write_text(os.path.join(parts, f"chunk-{cid:06d}.json"),
                          json.dumps({"rows": rows, "failures": fails, "filtered": filtered}))
        if bar is not None:
            bar.update(len(chunks[cid][1]))

    cfg_dict = asdict(cfg)
    workers = max(1, min(cfg.workers, len(todo))) if todo else 0
    try:
        if workers <= 1:
            if todo:
                _init_worker(cfg_dict)
                for job in todo:
                    record(_process_chunk(job))
        else:
            from .mtcnn import load_mtcnn_nets

            load_mtcnn_nets()  # missing weights: one error here, not one per worker
            _run_pool(workers, cfg_dict, todo, record)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.time() - t0

    rows: List[Dict[str, Any]] = []
    fails: List[Dict[str, str]] = []
    filtered = 0
    for cid, _ in chunks:
        with open(os.path.join(parts, f"chunk-{cid:06d}.json"), encoding="utf-8") as fh:
            part = json.load(fh)
        rows.extend(part["rows"])
        fails.extend(part["failures"])
        filtered += int(part["filtered"])
    atomic_write_text(os.path.join(cfg.out, "manifest.csv"), _csv_text(MANIFEST_FIELDS, rows))
    atomic_write_text(os.path.join(cfg.out, "failures.csv"), _csv_text(FAILURE_FIELDS, fails))
    summary: Dict[str, Any] = {
        "input": cfg.input, "out": cfg.out, "photos": len(rels), "faces_written": len(rows),
        "failures": len(fails), "filtered_out": filtered, "lr_select": cfg.lr_select or None,
        "mode": cfg.mode, "template": cfg.template, "size": list(cfg.size), "image_format": cfg.image_format,
        "chunks_reused": done_before, "elapsed_s": round(elapsed, 2),
        "photos_per_s": round(n_photos_now / elapsed, 2) if elapsed > 0 and n_photos_now else None,
    }
    if rows:
        d = np.array([float(r["eye_mouth_px"]) for r in rows if r["eye_mouth_px"] != ""])
        if len(d):
            summary["eye_mouth_px"] = {"median": float(np.median(d)), "min": float(d.min()), "max": float(d.max())}
    if cfg.format == "rec":
        summary["rec"] = _pack_rec(cfg.out, rows)
    atomic_write_text(os.path.join(cfg.out, "summary.json"), json.dumps(summary, indent=1))
    return summary


def _pack_rec(out: str, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Pack the aligned faces into insightface ``train.rec/idx`` (identity = folder)."""
    from ..data.recordio import write_insightface_rec

    ids = sorted({os.path.dirname(r["output"]) for r in rows})
    label_of = {d: i for i, d in enumerate(ids)}
    ordered = sorted(rows, key=lambda r: (label_of[os.path.dirname(r["output"])], r["output"]))

    def samples() -> Iterator[Tuple[bytes, int]]:
        for r in ordered:
            with open(os.path.join(out, r["output"]), "rb") as fh:
                yield fh.read(), label_of[os.path.dirname(r["output"])]

    n_img, n_cls = write_insightface_rec(out, samples())
    atomic_write_text(os.path.join(out, "identities.txt"), "".join(f"{i}\t{d}\n" for d, i in label_of.items()))
    return {"images": n_img, "classes": n_cls}
