"""Benchmark: gallery search throughput (exact vs faiss) and ``identify`` frames/s.

Part 1 (``search``): galleries of random L2-normalised 512-d templates (1k, 100k; 1M
with ``--large``), queried by random unit vectors. For each size: the exact back end
(blocked matrix product + partial sort), faiss ``IndexFlatIP`` (exact) and faiss HNSW
(approximate; built up to ``--hnsw-max`` templates, as its build is the slow part), each
batched (all queries in one call) and one query per call (the median call's rate);
top-10; the rows returned are compared with the exact back end's (flat: identical; HNSW:
recall@1). Random vectors in 512-d have no cluster structure: a hard case for HNSW, an
easy one for nobody.

Part 2 (``identify``): one large crowd photo (default the 2048x1150 selfie of the shared
crowd-photos) through :meth:`ranface.api.FaceRecognizer.identify_image` with the
pretrained ResNet-29 and a gallery of 1,000 random templates, at each ``--upscales``
setting; reports frames/s and where the time goes (MTCNN, alignment, embedding, search).

    python benchmarks/search.py                     # 1k + 100k, identify at 1x and 1x+2x
    python benchmarks/search.py --part search --large
    python benchmarks/search.py --part identify --upscales 1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List

import numpy as np


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    out = np.empty((n, d), np.float32)
    step = 100_000
    for s in range(0, n, step):
        x = rng.standard_normal((min(step, n - s), d), dtype=np.float32)
        out[s:s + step] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _time_search(index: Any, q: np.ndarray, k: int, singles: int) -> Dict[str, Any]:
    index.search(q[:2], k)  # warm-up (thread pools, first-touch of the templates)
    t0 = time.perf_counter()
    scores, rows = index.search(q, k)
    batched = time.perf_counter() - t0
    per_call = []
    for i in range(singles):  # the median call: one stall (seen: 20x in one of ten calls) is not the rate
        t0 = time.perf_counter()
        index.search(q[i:i + 1], k)
        per_call.append(time.perf_counter() - t0)
    single = statistics.median(per_call)
    return {"batched_qps": round(len(q) / batched, 1), "single_qps": round(1.0 / single, 1),
            "single_ms": round(1000 * single, 2), "rows": rows, "scores": scores}


def bench_search(args: argparse.Namespace) -> List[Dict[str, Any]]:
    from ranface.deploy.search import ExactIndex, FaissIndex

    import importlib.util

    have_faiss = importlib.util.find_spec("faiss") is not None
    sizes = [1_000, 100_000] + ([1_000_000] if args.large else [])
    rng = np.random.default_rng(0)
    out = []
    for n in sizes:
        t = _unit(rng, n, args.dim)
        nq = args.queries if n < 1_000_000 else max(50, args.queries // 5)
        q = _unit(rng, nq, args.dim)
        rows: Dict[str, Any] = {"templates": n, "dim": args.dim, "queries": nq, "k": args.k}
        t0 = time.perf_counter()
        exact = ExactIndex(t)
        rows["exact_build_s"] = round(time.perf_counter() - t0, 3)
        ex = _time_search(exact, q, args.k, args.singles)
        rows["exact"] = {k: v for k, v in ex.items() if k not in ("rows", "scores")}
        if have_faiss:
            t0 = time.perf_counter()
            flat = FaissIndex(t, "flat")
            build = time.perf_counter() - t0
            fl = _time_search(flat, q, args.k, args.singles)
            rows["faiss_flat"] = {k: v for k, v in fl.items() if k not in ("rows", "scores")}
            rows["faiss_flat"]["build_s"] = round(build, 3)
            rows["faiss_flat"]["same_rows_as_exact"] = bool(np.array_equal(fl["rows"], ex["rows"]))
            rows["faiss_flat"]["max_score_diff"] = float(np.abs(fl["scores"] - ex["scores"]).max())
            del flat
            if n <= args.hnsw_max:
                t0 = time.perf_counter()
                hnsw = FaissIndex(t, "hnsw", ef_search=args.ef_search)
                build = time.perf_counter() - t0
                hn = _time_search(hnsw, q, args.k, args.singles)
                rows["faiss_hnsw"] = {k: v for k, v in hn.items() if k not in ("rows", "scores")}
                rows["faiss_hnsw"]["build_s"] = round(build, 1)
                rows["faiss_hnsw"]["recall_at_1"] = float(np.mean(hn["rows"][:, 0] == ex["rows"][:, 0]))
                del hnsw
        out.append(rows)
        print(json.dumps(rows), flush=True)
        del t, exact
    return out


def bench_identify(args: argparse.Namespace) -> List[Dict[str, Any]]:
    import torch

    from ranface.api import FaceRecognizer
    from ranface.config import default_data_root
    from ranface.data.image import read_image
    from ranface.deploy.identify import align_detections

    root = default_data_root()
    photo = args.photo or os.path.join(root, "crowd-photos", "images", "peiyunh_tiny__selfie.jpg")
    model = args.model or os.path.join(root, "models", "faceapi-resnet29")
    img = read_image(photo)
    out = []
    for ups in args.upscales:
        factors = tuple(float(u) for u in ups.split(","))
        rec = FaceRecognizer(model, device="cpu", upscales=factors, pad_ratio=0.0)
        g = rec.new_gallery()
        rng = np.random.default_rng(0)
        for i, e in enumerate(_unit(rng, 1000, rec.dim)):
            g.add_embeddings(f"id{i:04d}", e[None])
        rec.identify_image(g, img[:200, :200])  # warm-up: loads MTCNN weights
        t0 = time.perf_counter()
        det = rec.aligner.detect(img)
        t_det = time.perf_counter() - t0
        t0 = time.perf_counter()
        faces, em = align_detections(img, det, rec.aligner.points, rec.face_size, rec.min_eye_mouth)
        t_align = time.perf_counter() - t0
        todo = [f for f in faces if f is not None]
        t0 = time.perf_counter()
        emb = rec.embed_faces(todo)
        t_embed = time.perf_counter() - t0
        t0 = time.perf_counter()
        rec.search_embeddings(g, emb, 5)
        t_search = time.perf_counter() - t0
        # identify_image is exactly these four steps; timing them separately avoids running
        # the (dominant) detection twice.
        t_total = t_det + t_align + t_embed + t_search
        row = {"photo": os.path.basename(photo), "size": f"{img.shape[1]}x{img.shape[0]}",
               "upscales": list(factors), "threads": torch.get_num_threads(),
               "faces": len(faces), "too_small": len(faces) - len(todo),
               "identified": len(todo), "frames_per_s": round(1.0 / t_total, 4),
               "total_s": round(t_total, 2), "detect_s": round(t_det, 2),
               "align_s": round(t_align, 2), "embed_s": round(t_embed, 2),
               "search_s": round(t_search, 4)}
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("all", "search", "identify"), default="all")
    p.add_argument("--large", action="store_true", help="also a 1M-template gallery (~2 GB)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--singles", type=int, default=50, help="queries timed one per call")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--hnsw-max", type=int, default=100_000, help="largest gallery to build HNSW for")
    p.add_argument("--ef-search", type=int, default=128)
    p.add_argument("--upscales", nargs="+", default=["1", "1,2"],
                   help="MTCNN scale sets for identify, e.g. 1 1,2")
    p.add_argument("--photo", default="")
    p.add_argument("--model", default="")
    args = p.parse_args(argv)
    if args.part in ("all", "search"):
        bench_search(args)
    if args.part in ("all", "identify"):
        bench_identify(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
