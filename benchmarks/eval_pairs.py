"""Evaluation throughput of the ``pairs`` protocol (images/s through decode, probe
degradation, resize and the forward pass), before/after side by side in one process.

Variants, interleaved over ``--repeats`` rounds (median per variant):

* ``sequential fp32``: every image decoded, degraded and resized in the calling thread
  between forward passes (``workers=0``; what every evaluation did before issue 16);
* ``pipelined fp32``: decoding/degrading/resizing in one thread per core beside the
  forward pass (``workers=-1``, the default now);
* ``pipelined auto``: the same with ``precision=auto`` (bf16 autocast, channels_last for
  dense-convolution backbones, on CPUs with AMX or AVX512-BF16; fp32 elsewhere).

The fp32 variants must give identical metrics (checked and printed: the per-pair
correctness strings and accuracies); the auto variant's accuracy difference is printed.
images/s counts every embedded image variant (an image at full size plus one per probe
size it is degraded to).

    python benchmarks/eval_pairs.py                      # demo faces if present, else raw LFW
    python benchmarks/eval_pairs.py --images runs/demo-default/faces_test \\
        --pairs runs/demo-default/test_pairs.txt --per-fold 0
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from ranface.config import default_data_root
from ranface.eval.protocols import EvalContext, evaluate
from ranface.eval.protocols.pairs import PairsOptions
from ranface.inference import load_model
from ranface.train.precision import resolve_precision


def run_once(model, info, images, pairs, sizes, modes, per_fold, workers, precision, batch, flip):
    ctx = EvalContext(model, info, precision=precision, batch_size=batch, workers=workers)
    opts = PairsOptions(pairs=pairs, images=images, probe_sizes=sizes, modes=modes, flip=flip,
                        per_fold=per_fold)
    t = time.perf_counter()
    res = evaluate("pairs", ctx, os.path.dirname(pairs), opts)
    return res, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = default_data_root()
    demo = os.path.join("runs", "demo-default")
    have_demo = os.path.isfile(os.path.join(demo, "test_pairs.txt"))
    ap.add_argument("--model", default=os.path.join(data, "models", "faceapi-resnet29"))
    ap.add_argument("--images", default=os.path.join(demo, "faces_test") if have_demo
                    else os.path.join(data, "lfw-gray", "images"))
    ap.add_argument("--pairs", default=os.path.join(demo, "test_pairs.txt") if have_demo
                    else os.path.join(data, "lfw-gray", "pairs.txt"))
    ap.add_argument("--per-fold", type=int, default=15, help="first N matched + N mismatched pairs per fold (0: all)")
    ap.add_argument("--sizes", default="24,16,12,8")
    ap.add_argument("--modes", default="hr-lr,lr-lr")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--flip", action="store_true", help="flip-sum embeddings (the demo uses none)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    for p in (args.model, args.images, args.pairs):
        if not os.path.exists(p):
            print(f"eval_pairs.py: {p}: not found", file=sys.stderr)
            return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    model, info = load_model(args.model)
    auto = resolve_precision("auto", torch.device("cpu"))
    variants = [("sequential fp32", 0, "fp32"), ("pipelined fp32", -1, "fp32"),
                (f"pipelined auto ({auto})", -1, "auto")]
    print(f"model={args.model} images={args.images} pairs={args.pairs} per_fold={args.per_fold} "
          f"sizes={sizes} modes={modes} batch={args.batch} flip={args.flip} "
          f"torch_threads={torch.get_num_threads()} cpu_capability={torch.backends.cpu.get_cpu_capability()} "
          f"auto={auto}", flush=True)
    times = {v[0]: [] for v in variants}
    results = {}
    for _ in range(args.repeats):
        for name, workers, prec in variants:
            res, dt = run_once(model, info, args.images, args.pairs, sizes, modes, args.per_fold,
                               workers, resolve_precision(prec, torch.device("cpu")), args.batch, args.flip)
            times[name].append(dt)
            results[name] = res
    base_res = results[variants[0][0]]
    n = base_res["counts"]["images_embedded"]
    n_var = base_res["counts"]["embedded_variants"]
    base = statistics.median(times[variants[0][0]])
    print(f"{'variant':34s} {'s':>8s} {'images/s':>9s} {'ratio':>6s}  {'full acc':>9s}  same scores")
    for name, _, _ in variants:
        t = statistics.median(times[name])
        r = results[name]
        same = all(r["metrics"][md][s]["correct"] == base_res["metrics"][md][s]["correct"]
                   for md in modes for s in map(str, sizes)) and \
            r["metrics"]["full"]["correct"] == base_res["metrics"]["full"]["correct"]
        print(f"{name:34s} {t:8.2f} {n_var / t:9.1f} {base / t:6.2f}  "
              f"{100 * r['metrics']['full']['acc']:8.2f}%  {'yes' if same else 'NO'}", flush=True)
    print(f"({n} images, {n_var} embedded variants per run; windows s: "
          + "; ".join(f"{k}: {', '.join(f'{v:.2f}' for v in vs)}" for k, vs in times.items()) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
