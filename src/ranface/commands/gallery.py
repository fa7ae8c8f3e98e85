"""``ranface gallery``: build, edit, calibrate and search an enrolment gallery.

    ranface gallery enrol INPUT --model MODEL --out G.npz [--aligned] [--calibration DIR]
    ranface gallery add G.npz INPUT [--on-exists merge|replace] [--out G2.npz]
    ranface gallery remove G.npz NAME [NAME ...] [--out G2.npz]
    ranface gallery calibrate G.npz NON_ENROLLED [--fpir 0.1] [--out G2.npz]
    ranface gallery search G.npz PROBE [PROBE ...] [--top-k 5] [--threshold T | --calibration DIR]
                                      [--out results.json|.csv]
    ranface gallery info G.npz

INPUT is a folder ``<identity>/<images>`` or a list file of ``IDENTITY<TAB>PATH`` lines;
photos are detected and aligned (MTCNN), or taken as aligned faces with ``--aligned``.
Other settings: ``--set key=value`` on :class:`ranface.api.GalleryConfig`.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from typing import Any, Dict, List

from ..io_utils import check_output_file


def add_parser(sub: "argparse._SubParsersAction") -> None:
    from ..cli import _add_config_args

    g = sub.add_parser("gallery", help="enrol identities into a gallery; add, remove, calibrate, search")
    gsub = g.add_subparsers(dest="gallery_command", metavar="ACTION")
    gsub.required = True

    def common(p: argparse.ArgumentParser, model: bool = True, aligned: bool = True,
               example: str = "min_score=0.95") -> None:
        if model:
            p.add_argument("--model", "-m", help="model (default for add/search: the gallery's)")
        if aligned:
            p.add_argument("--aligned", action="store_true", default=None,
                           help="inputs are aligned faces (skip detection); a folder made by "
                           "`prepare` must use the model card's template")
            p.add_argument("--force", action="store_true",
                           help="with --aligned: accept faces aligned with another template (warn)")
        p.add_argument("--no-progress", action="store_true",
                       help="no progress bar (bars go to stderr and only to a terminal)")
        _add_config_args(p, example)

    p = gsub.add_parser("enrol", aliases=["enroll"], help="folder <identity>/<images> or IDENTITY<TAB>PATH list -> gallery")
    p.add_argument("input", help="folder <identity>/<images> or a list file of IDENTITY<TAB>PATH lines")
    p.add_argument("--out", "-o", required=False, help="gallery file to write (.npz: templates, "
                   "model fingerprint and card, alignment settings)")
    p.add_argument("--calibration", help="faces of non-enrolled people: store a threshold at --fpir")
    p.add_argument("--fpir", type=float, help="false-positive identification rate of the stored "
                   "threshold (default 0.1)")
    common(p, example="template=dlib")
    p.set_defaults(func=cmd_enrol)

    p = gsub.add_parser("add", help="add identities (or images of enrolled ones) to a gallery")
    p.add_argument("gallery", help="gallery file (.npz)")
    p.add_argument("input", help="folder <identity>/<images> or a list file of IDENTITY<TAB>PATH lines")
    p.add_argument("--on-exists", choices=("error", "merge", "replace"),
                   help="identity already enrolled: error (default), merge the images, or replace")
    p.add_argument("--out", "-o", help="gallery file to write (default: update the gallery in place)")
    common(p, example="on_error=skip")
    p.set_defaults(func=cmd_add)

    p = gsub.add_parser("remove", help="remove identities from a gallery")
    p.add_argument("gallery", help="gallery file (.npz)")
    p.add_argument("names", nargs="+", metavar="NAME", help="identities to remove")
    p.add_argument("--out", "-o", help="gallery file to write (default: update the gallery in place)")
    p.set_defaults(func=cmd_remove)

    p = gsub.add_parser("calibrate", help="store an open-set threshold set at an FPIR")
    p.add_argument("gallery", help="gallery file (.npz)")
    p.add_argument("calibration", help="faces of non-enrolled people (folder or list file)")
    p.add_argument("--fpir", type=float, help="false-positive identification rate to set the "
                   "threshold at (default 0.1)")
    p.add_argument("--degrade", type=int, metavar="PX",
                   help="calibrate on faces shrunk to PX wide and back, like low-resolution probes")
    p.add_argument("--out", "-o", help="gallery file to write (default: update the gallery in place)")
    common(p, example="fpir=0.01")
    p.set_defaults(func=cmd_calibrate)

    p = gsub.add_parser("search", help="probes -> top-k identities and an open-set decision")
    p.add_argument("gallery", help="gallery file (.npz)")
    p.add_argument("probes", nargs="+", help="photos, folders or list files (PATH or LABEL<TAB>PATH)")
    p.add_argument("--top-k", "-k", type=int, help="identities listed per probe (default 5)")
    p.add_argument("--threshold", type=float, help="accept when top-1 cosine > threshold "
                   "(default: the gallery's stored calibration)")
    p.add_argument("--calibration", help="faces of non-enrolled people: threshold at --fpir")
    p.add_argument("--fpir", type=float, help="false-positive identification rate for "
                   "--calibration (default 0.1)")
    p.add_argument("--degrade", type=int, metavar="PX",
                   help="simulate low resolution: shrink aligned probes to PX wide and back")
    p.add_argument("--out", "-o", help="also write every result to this .json or .csv file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table on stdout")
    common(p, example="index=exact")
    p.set_defaults(func=cmd_search)

    p = gsub.add_parser("info", help="what a gallery holds")
    p.add_argument("gallery", help="gallery file (.npz)")
    p.set_defaults(func=cmd_info)


def _config(args: argparse.Namespace):
    from ..api import GalleryConfig
    from ..config import load_config

    flags = {key: getattr(args, key, None) or None for key in ("model", "calibration", "on_exists")}
    flags.update({key: getattr(args, key, None) for key in ("fpir", "top_k", "threshold", "degrade")})
    flags["aligned"] = True if getattr(args, "aligned", None) else None
    flags["force"] = True if getattr(args, "force", None) else None
    return load_config(GalleryConfig, getattr(args, "config", None),
                       list(getattr(args, "overrides", [])), flags=flags)


def _dry(args: argparse.Namespace, cfg: Any) -> bool:
    if getattr(args, "dry_run", False):
        from ..config import dump_yaml

        sys.stdout.write(dump_yaml(cfg))
        return True
    return False


def _print(obj: Dict[str, Any]) -> None:
    print(json.dumps(obj, default=str))


def cmd_enrol(args: argparse.Namespace) -> int:
    from ..api import FaceRecognizer, resolve_threshold
    from ..errors import ConfigError, RanfaceError

    cfg = _config(args)
    if _dry(args, cfg):
        return 0
    if not args.out:
        raise ConfigError("gallery enrol: give the gallery file to write (--out G.npz)")
    check_output_file(args.out)  # before embedding every image
    rec = FaceRecognizer.from_config(cfg)
    rec.progress = not args.no_progress
    g, report = rec.enrol(args.input, aligned=cfg.aligned, root=cfg.root, on_error=cfg.on_error)
    if not len(g):
        raise RanfaceError(f"{args.input}: no identity could be enrolled "
                           f"({report['skipped']} image(s) skipped, e.g. {report['skipped_examples'][:2]})")
    _, how = resolve_threshold(rec, g, None, cfg.calibration, cfg.fpir, cfg.calibration_aligned,
                               cfg.root, cfg.on_error)
    if how is not None:
        g.set_calibration(how)
    g.save(args.out)
    _print({"gallery": args.out, **report, "calibration": g.calibration,
            "fingerprint": g.fingerprint})
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from ..api import FaceRecognizer
    from ..deploy.gallery import Gallery

    cfg = _config(args)
    if _dry(args, cfg):
        return 0
    check_output_file(args.out or args.gallery)
    g = Gallery.load(args.gallery)
    rec = FaceRecognizer.from_config(cfg, g)
    rec.progress = not args.no_progress
    had_cal = g.calibration is not None
    g, report = rec.enrol(args.input, g, aligned=cfg.aligned, root=cfg.root, on_error=cfg.on_error, on_exists=cfg.on_exists)
    out = g.save(args.out or args.gallery)
    _print({"gallery": out, **report,
            "calibration_cleared": had_cal and g.calibration is None and report["identities"] > 0})
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from ..deploy.gallery import Gallery

    check_output_file(args.out or args.gallery)
    g = Gallery.load(args.gallery)
    had_cal = g.calibration is not None
    removed = g.remove(args.names)
    out = g.save(args.out or args.gallery)
    _print({"gallery": out, "removed": removed, "gallery_size": len(g),
            "calibration_cleared": had_cal and g.calibration is None})
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..api import FaceRecognizer
    from ..deploy.gallery import Gallery

    cfg = _config(args)
    if _dry(args, cfg):
        return 0
    check_output_file(args.out or args.gallery)
    g = Gallery.load(args.gallery)
    rec = FaceRecognizer.from_config(cfg, g)
    rec.progress = not args.no_progress
    cal = rec.calibrate(g, args.calibration, cfg.fpir, aligned=cfg.aligned, root=cfg.root,
                        on_error=cfg.on_error, degrade=cfg.degrade)
    g.set_calibration(dict(cal.to_dict(), source=os.path.abspath(args.calibration),
                           degrade=cfg.degrade))
    out = g.save(args.out or args.gallery)
    _print({"gallery": out, "calibration": g.calibration})
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ..api import FaceRecognizer, evaluate_search, list_probes, resolve_threshold
    from ..deploy.gallery import Gallery
    from ..io_utils import atomic_write_text

    cfg = _config(args)
    if _dry(args, cfg):
        return 0
    if args.out:
        check_output_file(args.out)  # before searching every probe
    g = Gallery.load(args.gallery)
    rec = FaceRecognizer.from_config(cfg, g)
    rec.progress = not args.no_progress
    threshold, how = resolve_threshold(rec, g, cfg.threshold, cfg.calibration, cfg.fpir,
                                       cfg.calibration_aligned, cfg.root, cfg.on_error,
                                       cfg.degrade)
    if cfg.aligned:
        for src in args.probes:
            rec.check_aligned_source(src)
    items = list_probes(args.probes, cfg.root)
    results = rec.search(g, [p for _, p in items], cfg.top_k, threshold, aligned=cfg.aligned,
                         degrade=cfg.degrade, index=cfg.index, faiss_above=cfg.faiss_above,
                         on_error=cfg.on_error, labels=[lab for lab, _ in items])
    counts: Dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    head = {"gallery": args.gallery, "identities": len(g), "fingerprint": g.fingerprint,
            "threshold": how, "top_k": cfg.top_k, "degrade": cfg.degrade, "probes": len(results),
            "status": counts, "evaluation": evaluate_search(results, g, threshold)}
    if args.out:
        if args.out.lower().endswith(".csv"):
            atomic_write_text(args.out, _search_csv(results))
        else:
            atomic_write_text(args.out, json.dumps(dict(head, results=results), indent=1) + "\n")
    if args.json:
        _print(dict(head, out=args.out) if args.out else dict(head, results=results))
    else:
        sys.stdout.write(search_table(results, head))
    return 0


def search_table(results: List[Dict[str, Any]], head: Dict[str, Any]) -> str:
    """Search results as an aligned text table (one row per probe) and a summary line."""
    from ..io_utils import text_table

    rows = [[os.path.basename(str(r["probe"])), r.get("label") or "", r["status"], r["identity"] or "",
             "" if r["score"] is None else f"{r['score']:.4f}",
             ", ".join(f"{t['identity']} {t['score']:.3f}" for t in r["top_k"][1:3])] for r in results]
    thr = head.get("threshold") or {}
    summary = (f"{head['probes']} probe(s) against {head['identities']} identities; threshold "
               f"{thr.get('threshold', 'none')} ({thr.get('source', 'no calibration')}); "
               + ", ".join(f"{k}: {v}" for k, v in sorted(head["status"].items())))
    ev = head.get("evaluation") or {}
    if "rank1" in ev:
        summary += f"; rank-1 {ev['rank1']:.3f} over {ev['mated']} mated probe(s)"
    return text_table(["probe", "label", "status", "identity", "score", "next"], rows) + summary + "\n"


def _search_csv(results: List[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["probe", "label", "status", "identity", "score", "top_ids", "top_scores"])
    for r in results:
        w.writerow([r["probe"], r.get("label") or "", r["status"], r["identity"] or "",
                    "" if r["score"] is None else f"{r['score']:.6f}",
                    ";".join(t["identity"] for t in r["top_k"]),
                    ";".join(f"{t['score']:.6f}" for t in r["top_k"])])
    return buf.getvalue()


def cmd_info(args: argparse.Namespace) -> int:
    from ..deploy.gallery import Gallery

    _print(Gallery.load(args.gallery).describe())
    return 0
