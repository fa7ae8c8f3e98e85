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
    p.add_argument("--every", type=int, help="video: identify every N-th frame")
    p.add_argument("--max-frames", type=int, help="video: at most this many sampled frames")
    p.add_argument("--top-k", "-k", type=int)
    p.add_argument("--threshold", type=float, help="accept when top-1 cosine > threshold")
    p.add_argument("--calibration", help="faces of non-enrolled people: threshold at --fpir")
    p.add_argument("--fpir", type=float)
    p.add_argument("--min-eye-mouth", type=float, help="smaller faces are reported as too small (px)")
    p.add_argument("--out", "-o", help="results .json or .csv")
    p.add_argument("--annotate", help="folder for annotated photos / videos")
    _add_config_args(p)
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
    t0 = time.perf_counter()
    frames = list(rec.identify(g, args.inputs, cfg.top_k, threshold, every=cfg.every,
                               max_frames=cfg.max_frames, annotate=cfg.annotate, index=cfg.index,
                               faiss_above=cfg.faiss_above, on_error=cfg.on_error))
    elapsed = time.perf_counter() - t0
    header = {"gallery": cfg.gallery, "identities": len(g), "fingerprint": g.fingerprint,
              "threshold": how, "min_eye_mouth": cfg.min_eye_mouth, "upscales": cfg.upscales,
              "every": cfg.every, "elapsed_s": round(elapsed, 2)}
    if args.out:
        write_results(args.out, frames, header)
    print(json.dumps(dict(header, summary=summarise_frames(frames), out=args.out or None,
                          annotate=cfg.annotate or None)))
    return 0
