"""MTCNN on the crowd photos (the real LR pool's source, data README): photos/s and the
agreement of the faces found, the cascade of before issue 16 and after it, side by side
in one process.

Variants (the settings of the demo's ``lr_pool`` stage: ``pad_ratio`` 0.5, upscales
1x and 2x, ``min_face_size`` 20, one torch thread as in a ``prepare`` worker):

* ``before``: the cascade as issue 16 found it (commit 41c7ddc, read from this clone's
  git history): P-Net over every whole pyramid level, every enlarged copy with its full
  pyramid, black margins materialised;
* ``zero-skip``: the default of issue 16's first three rounds (commit 968d2e7): P-Net
  only over the non-black part of each level;
* ``now``: the default now: the black margin never materialised (pyramid levels, the 2x
  copy and the crops made from the photo's block), R/O-Net in chunks of 128/64, P-Net
  in stripes on wide levels, NMS windows per box (fourth round); crops resized per size
  group, P-Net's max pooling and the 2x copy written out (fifth round); shrinking crops
  straight from the NHWC column sums in width-sorted batches, levels' edge rows read as
  whole rows (seventh round);
* ``new-only``: ``now`` + enlarged copies search only the scales the 1x image did not
  (``upscale_new_only``, prepare's ``upscale_new_only=true``).

Agreement of a variant with ``before``: faces matched one-to-one by box IoU >= 0.5
(greedy, best first); for matched faces the landmark error (mean over the five points,
px and relative to the eye-to-mouth distance) and the score difference; faces only in
one of them are counted, with how many fall in the LR band (eye-to-mouth 10-30 px, the
faces the demo keeps). "identical": the same boxes and landmarks to the bit.

``--allocator`` picks glibc's thresholds for every variant alike (``tuned``: ranface's, as
``prepare``'s workers run now; ``system``: glibc's own) or, with ``as-run``, each variant
as a ``prepare`` worker ran it: ``before`` and ``zero-skip`` under glibc's defaults,
``now`` and ``new-only`` under the tuned thresholds (which came with issue 16's
evaluation work and reached ``prepare``'s workers in its fifth round). mallopt settings are
per process, so ``as-run`` runs the two groups in two child processes and hands them
the photos in turn (which child goes first alternates), timing each detection in its
child: the speed-up a ``prepare`` user sees, where the same-allocator runs isolate the
cascade's own.

    python benchmarks/mtcnn_crowd.py --photos 8
    python benchmarks/mtcnn_crowd.py                 # all 32 photos (minutes)
    python benchmarks/mtcnn_crowd.py --allocator system   # glibc's own thresholds
    python benchmarks/mtcnn_crowd.py --allocator as-run   # each variant as prepare ran it
"""
from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from ranface.align.mtcnn import MTCNN, Detections
from ranface.align.select import LR_BAND, eye_mouth_distance
from ranface.config import default_data_root
from ranface.data.image import read_image

BEFORE, ZERO_SKIP = "41c7ddc", "968d2e7"


@functools.lru_cache(maxsize=None)  # main's early check and make_variants read history once
def cascade_at(commit: str) -> type:
    """The MTCNN class of ``commit`` (its mtcnn.py and nms.py from git history)."""
    root = Path(__file__).resolve().parents[1]

    def show(path: str) -> str:
        return subprocess.run(["git", "-C", str(root), "show", f"{commit}:src/ranface/align/{path}"],
                              check=True, capture_output=True, text=True).stdout

    nms = types.ModuleType(f"_mtcnn_crowd_nms_{commit}")
    exec(compile(show("nms.py"), f"{commit}:nms.py", "exec"), nms.__dict__)
    mod = types.ModuleType(f"_mtcnn_crowd_mtcnn_{commit}")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    mod.__dict__["nms"] = nms.nms
    code = show("mtcnn.py").replace("from ..errors import", "from ranface.errors import") \
        .replace("from .nms import nms\n", "")
    exec(compile(code, f"{commit}:mtcnn.py", "exec"), mod.__dict__)
    return mod.MTCNN


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def agreement(ref: Detections, new: Detections) -> Dict[str, List[float]]:
    """Greedy one-to-one matching by IoU >= 0.5; per-face landmark errors of the pairs."""
    out: Dict[str, List[float]] = {"lm_px": [], "lm_rel": [], "dscore": [], "only_ref": [],
                                   "only_new": []}
    if len(ref) and len(new):
        iou = _iou(ref.boxes, new.boxes)
        pairs = []
        while True:
            i, j = np.unravel_index(np.argmax(iou), iou.shape)
            if iou[i, j] < 0.5:
                break
            pairs.append((i, j))
            iou[i, :] = -1
            iou[:, j] = -1
    else:
        pairs = []
    mi = {i for i, _ in pairs}
    mj = {j for _, j in pairs}
    for i, j in pairs:
        err = np.linalg.norm(ref.landmarks[i] - new.landmarks[j], axis=1).mean()
        out["lm_px"].append(float(err))
        out["lm_rel"].append(float(err / max(eye_mouth_distance(ref.landmarks[i]), 1e-6)))
        out["dscore"].append(float(abs(ref.scores[i] - new.scores[j])))
    out["only_ref"] = [float(eye_mouth_distance(ref.landmarks[i])) for i in range(len(ref)) if i not in mi]
    out["only_new"] = [float(eye_mouth_distance(new.landmarks[j])) for j in range(len(new)) if j not in mj]
    return out


def in_band(d: Detections) -> int:
    return int(sum(LR_BAND[0] <= eye_mouth_distance(lm) <= LR_BAND[1] for lm in d.landmarks))


VARIANTS = ("before", "zero-skip", "now", "new-only")
# the variants prepare ran under glibc's defaults (as-run), the rest under the tuned thresholds
AS_RUN_SYSTEM = ("before", "zero-skip")


def make_variants(names: Tuple[str, ...], kw: dict) -> Dict[str, object]:
    """Detectors by variant name (the earlier cascades from git history)."""
    out: Dict[str, object] = {}
    for v in names:
        if v in ("before", "zero-skip"):
            out[v] = cascade_at(BEFORE if v == "before" else ZERO_SKIP)(**kw)
        else:
            out[v] = MTCNN(upscale_new_only=v == "new-only", **kw)
    return out


def _detect_timed(variants: Dict[str, object], img: np.ndarray) -> List[Tuple[str, float, Detections]]:
    out = []
    for v, det in variants.items():
        t = time.perf_counter()
        d = det.detect(img)
        out.append((v, time.perf_counter() - t, d))
    return out


def _child(conn, allocator: str, names: Tuple[str, ...], kw: dict, threads: int, paths: List[str]) -> None:
    """as-run: one group of variants under one allocator setting; detects photo i when told."""
    from ranface.runtime import ENV_VAR, tune_allocator

    tune_allocator({**os.environ, ENV_VAR: allocator})
    torch.set_num_threads(threads)
    variants = make_variants(names, kw)
    conn.send("ready")
    while True:
        i = conn.recv()
        if i is None:
            break
        conn.send([(v, sec, (d.boxes, d.scores, d.landmarks)) for v, sec, d in
                   _detect_timed(variants, read_image(paths[i]))])
    conn.close()


def run_as_run(paths: List[str], kw: dict, threads: int) -> Tuple[Dict[str, float], Dict[str, List[Detections]]]:
    """Each group in its own child (spawned: a fresh allocator), photos handed out in turn."""
    ctx = multiprocessing.get_context("spawn")
    groups = ((AS_RUN_SYSTEM, "system"), (tuple(v for v in VARIANTS if v not in AS_RUN_SYSTEM), "tuned"))
    kids = []
    for names, alloc in groups:
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(there, alloc, names, kw, threads, paths), daemon=True)
        proc.start()
        kids.append((here, proc))
    for here, _ in kids:
        if here.recv() != "ready":
            raise RuntimeError("a child did not start")
    times: Dict[str, float] = {v: 0.0 for g, _ in groups for v in g}
    dets: Dict[str, List[Detections]] = {v: [] for v in times}
    try:
        for i in range(len(paths)):
            order = kids if i % 2 == 0 else kids[::-1]  # which group goes first alternates
            for here, _ in order:
                here.send(i)
                for v, sec, (b, sc, lm) in here.recv():
                    times[v] += sec
                    dets[v].append(Detections(b, sc, lm))
    finally:
        for here, proc in kids:
            try:
                here.send(None)
            except OSError:  # a child that died (its error is on stderr)
                pass
            proc.join(timeout=60)
    return times, dets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=default_data_root())
    ap.add_argument("--photos", type=int, default=0, help="first N photos (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pad-ratio", type=float, default=0.5)
    ap.add_argument("--upscales", default="1,2")
    ap.add_argument("--allocator", choices=("tuned", "system", "as-run"), default="tuned",
                    help="glibc thresholds of ranface.runtime (as `ranface prepare`'s workers "
                         "run) or glibc's defaults for every variant alike; as-run: each "
                         "variant as prepare's workers ran it (see above)")
    args = ap.parse_args()
    from ranface.runtime import ENV_VAR, allocator_state, tune_allocator

    folder = os.path.join(args.data, "crowd-photos", "images")
    if not os.path.isdir(folder):
        print(f"mtcnn_crowd.py: {folder}: not found", file=sys.stderr)
        return 2
    names = sorted(os.listdir(folder))
    names = names[:args.photos] if args.photos > 0 else names
    ups = tuple(float(u) for u in args.upscales.split(","))
    kw = dict(pad_ratio=args.pad_ratio, upscales=ups, min_face_size=20.0)
    try:  # read the earlier cascades here first: a clone without history fails at once
        cascade_at(BEFORE), cascade_at(ZERO_SKIP)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"mtcnn_crowd.py: cannot read the earlier cascades from git history "
              f"(a clone with history is needed): {exc}", file=sys.stderr)
        return 2
    paths = [os.path.join(folder, n) for n in names]
    if args.allocator == "as-run":
        times, dets = run_as_run(paths, kw, args.threads)
        alloc = (f"as each ran in prepare: {', '.join(AS_RUN_SYSTEM)} under glibc's defaults, "
                 f"the rest tuned (two processes)")
    else:
        tune_allocator({**os.environ, ENV_VAR: args.allocator})  # "system": glibc left as it is
        torch.set_num_threads(args.threads)
        variants = make_variants(VARIANTS, kw)
        times = {v: 0.0 for v in variants}
        dets = {v: [] for v in variants}
        for p in paths:  # interleaved: load changes hit all alike
            for v, sec, d in _detect_timed(variants, read_image(p)):
                times[v] += sec
                dets[v].append(d)
        alloc = allocator_state()
    print(f"{len(names)} crowd photos, pad_ratio={args.pad_ratio}, upscales={ups}, "
          f"threads={args.threads}, allocator: {alloc}, "
          f"LR band {LR_BAND[0]:g}-{LR_BAND[1]:g} px eye-to-mouth")
    print(f"{'variant':10s} {'photos/s':>9s} {'ratio':>6s} {'faces':>6s} {'in band':>8s} "
          f"{'matched':>8s} {'only before':>12s} {'only new':>9s} {'lm err px med/p95':>18s} "
          f"{'lm err/eye-mouth med':>21s} {'identical':>9s}")
    base = len(names) / times["before"]
    for v in times:
        agg: Dict[str, List[float]] = {"lm_px": [], "lm_rel": [], "dscore": [], "only_ref": [], "only_new": []}
        identical = True
        for a, b in zip(dets["before"], dets[v]):
            for k, vals in agreement(a, b).items():
                agg[k].extend(vals)
            identical &= (len(a) == len(b) and np.array_equal(a.boxes, b.boxes)
                          and np.array_equal(a.landmarks, b.landmarks))
        rate = len(names) / times[v]
        faces = sum(len(d) for d in dets[v])
        band = sum(in_band(d) for d in dets[v])
        only_ref_band = sum(LR_BAND[0] <= x <= LR_BAND[1] for x in agg["only_ref"])
        only_new_band = sum(LR_BAND[0] <= x <= LR_BAND[1] for x in agg["only_new"])
        lm = agg["lm_px"] or [0.0]
        print(f"{v:10s} {rate:9.3f} {rate / base:6.2f} {faces:6d} {band:8d} {len(agg['lm_px']):8d} "
              f"{len(agg['only_ref']):5d} ({only_ref_band:2d} b) {len(agg['only_new']):4d} ({only_new_band:2d} b) "
              f"{statistics.median(lm):8.3f} / {float(np.percentile(lm, 95)):6.3f} "
              f"{statistics.median(agg['lm_rel'] or [0.0]):21.4f} {'yes' if identical else 'no':>9s}",
              flush=True)
    print("(b): of them in the LR band; lm err: mean landmark distance of matched faces")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
