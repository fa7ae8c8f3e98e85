"""Preparation throughput: MTCNN detection + alignment faces/s on real LFW photos (one
process, and the `prepare` pool of worker processes), and the embedding throughput of
the imported ResNet-29 at batch 64 (fp32; reference ~175 faces/s on this machine kind).

    python benchmarks/prepare.py --photos 64
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from ranface.config import PrepareConfig, default_data_root


def lfw_photos(root: str, n: int):
    out = []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        for f in sorted(os.listdir(d)):
            out.append(os.path.join(name, f))
            if len(out) >= n:
                return out
    return out


def detect_single(root: str, rels, repeats: int) -> float:
    from ranface.align.pipeline import FaceAligner
    from ranface.data.image import read_image

    torch.set_num_threads(1)
    al = FaceAligner(template="dlib", size=(112, 112), policy="center")
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for r in rels:
            al.align(read_image(os.path.join(root, r)))
        rates.append(len(rels) / (time.perf_counter() - t))
    return statistics.median(rates), (max(rates) - min(rates)) / 2


def prepare_pool(root: str, rels, workers: int) -> float:
    from ranface.align.prepare import run_prepare

    with tempfile.TemporaryDirectory() as d:
        lst = os.path.join(d, "list.txt")
        with open(lst, "w") as fh:
            fh.write("\n".join(rels) + "\n")
        t = time.perf_counter()
        run_prepare(PrepareConfig(input=lst, root=root, out=os.path.join(d, "out"), template="dlib",
                                  workers=workers, progress=False, policy="center"))
        return len(rels) / (time.perf_counter() - t)


def embed_rate(model_dir: str, batch: int, repeats: int) -> float:
    from ranface.models import create_backbone

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    m = create_backbone("resnet29_dlib", pretrained=model_dir).eval()
    x = torch.randn(batch, 3, 150, 150)
    with torch.inference_mode():
        m(x)
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            m(x)
            rates.append(batch / (time.perf_counter() - t))
    return statistics.median(rates), (max(rates) - min(rates)) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=default_data_root())
    ap.add_argument("--photos", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    root = os.path.join(args.data, "lfw-gray", "images")
    rels = lfw_photos(root, args.photos)
    single, s_spread = detect_single(root, rels, args.repeats)
    pool = prepare_pool(root, rels, args.workers)
    emb, e_spread = embed_rate(os.path.join(args.data, "models", "faceapi-resnet29"), 64, args.repeats)
    print(f"{'measure':52s} {'value':>10s} {'±':>6s}")
    print(f"{'detect+align, 1 process, 1 thread (faces/s)':52s} {single:10.1f} {s_spread:6.1f}")
    print(f"{f'prepare pool, {args.workers} workers (photos/s, incl. start-up)':52s} {pool:10.1f}")
    print(f"{'ratio pool / single':52s} {pool / single:10.2f}")
    print(f"{'ResNet-29 embedding, batch 64, fp32 (faces/s)':52s} {emb:10.1f} {e_spread:6.1f}")


if __name__ == "__main__":
    main()
