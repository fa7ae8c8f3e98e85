"""``ranface identify``: every face in photos or video -> top-k identities of a gallery.

    ranface identify INPUT [INPUT ...] --gallery G.npz [--model MODEL] [--every N]
                     [--out results.json|.csv] [--annotate DIR] [--threshold T | --calibration DIR]

INPUT: photos, videos (PyAV; every N-th frame) or folders of them. Faces whose
eye-to-mouth distance is under ``min_eye_mouth`` px (default 8) are reported as
``too_small``. Other settings: ``--set key=value`` on :class:`ranface.api.IdentifyConfig`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def add_parser(sub: "argparse._SubParsersAction") -> None:
    from ..cli import _add_config_args

    p = sub.add_parser("identify", help="detect, align and identify every face in photos / video")
    p.add_argument("inputs", nargs="*", help="photos, videos, or folders of them")
    p.add_argument("--gallery", "-g", help="gallery file (ranface gallery enrol)")
    p.add_argument("--model", "-m", help="model (default: the gallery's)")
    p.add_argument("--every", type=int, help="video: identify every N-th frame (default 1)")
    p.add_argument("--max-frames", type=int, help="video: at most this many sampled frames (default 0: all)")
    p.add_argument("--top-k", "-k", type=int, help="identities listed per face (default 5)")
    p.add_argument("--threshold", type=float, help="accept when top-1 cosine > threshold "
                   "(default: the gallery's stored calibration)")
    p.add_argument("--calibration", help="faces of non-enrolled people: threshold at --fpir")
    p.add_argument("--fpir", type=float, help="false-positive identification rate for "
                   "--calibration (default 0.1)")
    p.add_argument("--min-eye-mouth", type=float, help="smaller faces are reported as too small "
                   "(px, default 8)")
    p.add_argument("--out", "-o", help="also write every face of every frame to this .json or .csv file")
    p.add_argument("--annotate", help="folder for annotated photos / videos (boxes and names drawn)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table on stdout")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (bars go to stderr and only to a terminal)")
    _add_config_args(p, "upscales=[1,2,3]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import FaceRecognizer, IdentifyConfig, resolve_threshold
    from ..config import dump_yaml, load_config
    from ..deploy.gallery import Gallery
    from ..deploy.identify import summarise_frames, write_results
    from ..errors import ConfigError

    flags = {key: getattr(args, key) or None for key in ("gallery", "model", "calibration", "annotate")}
    flags.update({key: getattr(args, key) for key in ("every", "max_frames", "top_k", "threshold", "fpir",
                                                      "min_eye_mouth")})
    cfg = load_config(IdentifyConfig, args.config, args.overrides, flags=flags)
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    if not args.inputs:
        raise ConfigError("identify: give photos, videos or folders to search")
    if not cfg.gallery:
        raise ConfigError("identify: give the gallery (--gallery G.npz)")
    g = Gallery.load(cfg.gallery)
    rec = FaceRecognizer.from_config(cfg, g)
    threshold, how = resolve_threshold(rec, g, cfg.threshold, cfg.calibration, cfg.fpir,
                                       cfg.calibration_aligned, "", cfg.on_error)
    from ..io_utils import progress_bar

    t0 = time.perf_counter()
    bar = progress_bar(None, "identify", not args.no_progress, unit="frame")
    frames = []
    for fr in rec.identify(g, args.inputs, cfg.top_k, threshold, every=cfg.every,
                           max_frames=cfg.max_frames, annotate=cfg.annotate, index=cfg.index,
                           faiss_above=cfg.faiss_above, on_error=cfg.on_error):
        frames.append(fr)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    header = {"gallery": cfg.gallery, "identities": len(g), "fingerprint": g.fingerprint,
              "threshold": how, "min_eye_mouth": cfg.min_eye_mouth, "upscales": cfg.upscales,
              "every": cfg.every, "elapsed_s": round(elapsed, 2)}
    if args.out:
        write_results(args.out, frames, header)
    summary = summarise_frames(frames)
    if args.json:
        print(json.dumps(dict(header, summary=summary, out=args.out or None,
                              annotate=cfg.annotate or None)))
    else:
        sys.stdout.write(identify_table(frames, header, summary))
    return 0


def identify_table(frames, header, summary) -> str:
    """One row per face (photo / frame, box, status, identity, score) and a summary line."""
    import os

    from ..io_utils import text_table

    rows = []
    for fr in frames:
        where = os.path.basename(fr.source) + ("" if fr.frame is None else f"#{fr.frame}")
        if fr.error:
            rows.append([where, "", "unreadable", "", "", fr.error[:60]])
        for f in fr.faces:
            box = ",".join(str(int(round(v))) for v in f.box)
            rows.append([where, box, f.status, f.identity or "", "" if f.score is None else f"{f.score:.4f}",
                         f"{f.eye_mouth_px:.0f}"])
    thr = header.get("threshold") or {}
    line = (f"{len(frames)} photo(s)/frame(s), {len(rows)} face(s) against {header['identities']} identities; "
            f"threshold {thr.get('threshold', 'none')} ({thr.get('source', 'no calibration')}); "
            f"{header['elapsed_s']} s")
    return text_table(["photo/frame", "box x1,y1,x2,y2", "status", "identity", "score", "eye-mouth px"],
                      rows) + line + "\n"
