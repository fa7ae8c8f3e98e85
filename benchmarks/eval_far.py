"""Benchmark: exact TAR@FAR over IJB-C-sized score sets, and template-pair scoring.

Part 1 scores 40M impostor + 160k genuine seeded random float32 scores (IJB-C 1:1
size), generated in blocks, three ways, each in its own subprocess so that peak RSS is
that method's alone:

* ``stream``  ranface's :class:`StreamingTarAtFar`, blocks fed as they are generated;
* ``batch``   ranface's :func:`tar_at_far` on the concatenated arrays;
* ``sklearn`` ``sklearn.metrics.roc_curve`` on the concatenated arrays, then TAR@FAR
  read off the curve exactly (max TPR with FPR <= FAR) and by ``np.interp``.

It checks that the three exact answers are identical and prints time and peak memory.

Part 2 times cosine scoring of template pairs (23k templates x 512-d, 15.6M pairs):
gathered rows multiplied and summed in blocks of 100k pairs (insightface style),
gathered rows with einsum in cache-sized blocks, and a blocked matrix product (1024
templates against all) whose entries are picked out per pair.

    python benchmarks/eval_far.py            # full size (a few minutes, ~3 GB RAM)
    python benchmarks/eval_far.py --small    # quick check
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Dict, Iterator, Tuple

import numpy as np

FARS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _blocks(n_imp: int, n_gen: int, block: int, seed: int
            ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Mixed (scores, labels) blocks, the same in every process for a given seed."""
    n_blocks = max(1, -(-n_imp // block))
    imp_edges = np.linspace(0, n_imp, n_blocks + 1).astype(np.int64)
    gen_edges = np.linspace(0, n_gen, n_blocks + 1).astype(np.int64)
    for b in range(n_blocks):
        rng = np.random.default_rng([seed, b])
        ni = int(imp_edges[b + 1] - imp_edges[b])
        ng = int(gen_edges[b + 1] - gen_edges[b])
        scores = np.empty(ni + ng, np.float32)
        scores[:ng] = rng.normal(0.45, 0.15, ng)
        scores[ng:] = rng.normal(0.0, 0.1, ni)
        labels = np.zeros(ni + ng, np.bool_)
        labels[:ng] = True
        yield scores, labels


def _all_scores(args) -> Tuple[np.ndarray, np.ndarray, float]:
    t0 = time.perf_counter()
    parts = list(_blocks(args.n_impostor, args.n_genuine, args.block, args.seed))
    scores = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    del parts
    return scores, labels, time.perf_counter() - t0


def _worker_far(method: str, args) -> Dict:
    from ranface.eval import metrics as M

    if method == "sklearn":
        from sklearn.metrics import roc_curve
    base = _peak_rss_mib()
    out: Dict = {"method": method}
    if method == "generate":
        t0 = time.perf_counter()
        for _ in _blocks(args.n_impostor, args.n_genuine, args.block, args.seed):
            pass
        out["gen_s"], out["compute_s"] = time.perf_counter() - t0, 0.0
    elif method == "stream":
        st = M.StreamingTarAtFar(FARS, max_impostors=args.n_impostor)
        gen_s = compute_s = 0.0
        t0 = time.perf_counter()
        for scores, labels in _blocks(args.n_impostor, args.n_genuine, args.block, args.seed):
            t1 = time.perf_counter()
            gen_s += t1 - t0
            st.add(scores, labels)
            t0 = time.perf_counter()
            compute_s += t0 - t1
        t1 = time.perf_counter()
        res = st.result()
        compute_s += time.perf_counter() - t1
        out.update(gen_s=gen_s, compute_s=compute_s, kept=st.n_kept_impostors,
                   tar={str(f): p.tar for f, p in res.items()},
                   thr={str(f): p.threshold for f, p in res.items()})
    elif method == "batch":
        scores, labels, gen_s = _all_scores(args)
        t0 = time.perf_counter()
        res = M.tar_at_far(scores[labels], scores[~labels], FARS)
        out.update(gen_s=gen_s, compute_s=time.perf_counter() - t0,
                   tar={str(f): p.tar for f, p in res.items()},
                   thr={str(f): p.threshold for f, p in res.items()})
    elif method == "sklearn":
        scores, labels, gen_s = _all_scores(args)
        t0 = time.perf_counter()
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
        n_imp = int((~labels).sum())
        fps = np.rint(fpr * n_imp)
        tar, interp = {}, {}
        for f in FARS:
            k = M.allowed_false_accepts(f, n_imp)
            tar[str(f)] = float(tpr[fps <= k].max()) if k >= 1 else None
            interp[str(f)] = float(np.interp(f, fpr, tpr))
        out.update(gen_s=gen_s, compute_s=time.perf_counter() - t0, tar=tar, interp=interp)
    else:
        raise SystemExit(f"unknown method {method}")
    out["base_rss_mib"] = base
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


def _templates(args) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    feats = rng.standard_normal((args.n_templates, 512), dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    p1 = rng.integers(0, args.n_templates, args.n_pairs, dtype=np.int32)
    p2 = rng.integers(0, args.n_templates, args.n_pairs, dtype=np.int32)
    return feats, p1, p2, time.perf_counter() - t0


def _worker_pairs(method: str, args) -> Dict:
    base = _peak_rss_mib()
    feats, p1, p2, gen_s = _templates(args)
    out = np.empty(p1.size, np.float32)
    t0 = time.perf_counter()
    if method == "pairs-mulsum":  # insightface's IJB-C scorer: blocks of 100k pairs
        for s in range(0, p1.size, 100_000):
            e = s + 100_000
            out[s:e] = (feats[p1[s:e]] * feats[p2[s:e]]).sum(axis=1)
    elif method == "pairs-einsum":
        for s in range(0, p1.size, 16_384):  # small blocks stay in cache
            e = s + 16_384
            out[s:e] = np.einsum("ij,ij->i", feats[p1[s:e]], feats[p2[s:e]])
    elif method == "pairs-gemm":
        rows = 1024
        order = np.argsort(p1 // rows, kind="stable")
        bucket = p1[order] // rows
        n_buckets = -(-feats.shape[0] // rows)
        edges = np.searchsorted(bucket, np.arange(n_buckets + 1))
        for b in range(edges.size - 1):
            sel = order[edges[b]:edges[b + 1]]
            if sel.size == 0:
                continue
            r0 = b * rows
            block = feats[r0:r0 + rows] @ feats.T
            out[sel] = block[p1[sel] - r0, p2[sel]]
    else:
        raise SystemExit(f"unknown method {method}")
    elapsed = time.perf_counter() - t0
    check = np.random.default_rng(1).integers(0, p1.size, 1000)
    ref = np.einsum("ij,ij->i", feats[p1[check]].astype(np.float64),
                    feats[p2[check]].astype(np.float64))
    return {"method": method, "gen_s": gen_s, "compute_s": elapsed,
            "pairs_per_s": p1.size / elapsed,
            "max_err": float(np.abs(out[check] - ref).max()),
            "base_rss_mib": base, "peak_rss_mib": _peak_rss_mib()}


def _run(method: str, args) -> Dict:
    cmd = [sys.executable, __file__, "--worker", method, "--n-impostor", str(args.n_impostor),
           "--n-genuine", str(args.n_genuine), "--block", str(args.block), "--seed",
           str(args.seed), "--n-templates", str(args.n_templates), "--n-pairs",
           str(args.n_pairs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {method} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="1M impostors, 2k templates")
    ap.add_argument("--n-impostor", type=int, default=40_000_000)
    ap.add_argument("--n-genuine", type=int, default=160_000)
    ap.add_argument("--block", type=int, default=1_000_000)
    ap.add_argument("--n-templates", type=int, default=23_000)
    ap.add_argument("--n-pairs", type=int, default=15_600_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-pairs", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        fn = _worker_pairs if args.worker.startswith("pairs-") else _worker_far
        print(json.dumps(fn(args.worker, args)))
        return 0
    if args.small:
        args.n_impostor, args.n_genuine = 1_000_000, 10_000
        args.n_templates, args.n_pairs = 2_000, 200_000
        args.block = 100_000

    print(f"TAR@FAR: {args.n_impostor:,} impostor + {args.n_genuine:,} genuine float32 "
          f"scores in blocks of {args.block:,}")
    res = {m: _run(m, args) for m in ("generate", "stream", "batch", "sklearn")}
    gen_rss = res["generate"]["peak_rss_mib"]
    print(f"{'method':<9}{'compute s':>11}{'(+gen s)':>10}{'peak RSS MiB':>14}"
          f"{'over gen-only':>15}")
    for m, r in res.items():
        print(f"{m:<9}{r['compute_s']:>11.2f}{r['gen_s']:>10.2f}{r['peak_rss_mib']:>14.0f}"
              f"{r['peak_rss_mib'] - gen_rss:>15.0f}")
    sk, st, ba = res["sklearn"], res["stream"], res["batch"]
    print(f"sklearn / stream: time x{sk['compute_s'] / st['compute_s']:.1f}, "
          f"extra memory x{(sk['peak_rss_mib'] - gen_rss) / max(st['peak_rss_mib'] - gen_rss, 1):.1f}"
          f"; sklearn / batch: time x{sk['compute_s'] / ba['compute_s']:.1f}")
    print(f"stream kept {st['kept']:,} of {args.n_impostor:,} impostor scores")
    print(f"{'FAR':>8}{'TAR stream':>12}{'batch':>10}{'sklearn':>10}{'interp':>10}{'threshold':>12}")
    same = True
    for f in FARS:
        k = str(f)
        a, b, c = st["tar"][k], ba["tar"][k], sk["tar"][k]
        same &= a == b == c
        fmt = lambda v: "n/m" if v is None else f"{v:.6f}"  # noqa: E731
        thr = st["thr"][k]
        print(f"{f:>8.0e}{fmt(a):>12}{fmt(b):>10}{fmt(c):>10}{fmt(sk['interp'][k]):>10}"
              f"{'n/m' if thr is None else f'{thr:.6f}':>12}")
    print("exact TARs identical (stream == batch == sklearn):", same)

    if not args.skip_pairs:
        print(f"\ntemplate-pair scoring: {args.n_templates:,} templates x 512, "
              f"{args.n_pairs:,} pairs")
        print(f"{'method':<14}{'s':>8}{'Mpairs/s':>10}{'peak RSS MiB':>14}{'max err':>10}")
        for m in ("pairs-mulsum", "pairs-einsum", "pairs-gemm"):
            r = _run(m, args)
            print(f"{m:<14}{r['compute_s']:>8.2f}{r['pairs_per_s'] / 1e6:>10.2f}"
                  f"{r['peak_rss_mib']:>14.0f}{r['max_err']:>10.1e}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
