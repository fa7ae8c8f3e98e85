"""Evaluation throughput of the ``pairs`` protocol (images/s through decode, probe
degradation, resize and the forward pass), before/after side by side in one process.

Variants, interleaved over ``--repeats`` rounds (median per variant), each in a fresh
child process (the allocator setting is process-wide and cannot be undone in-process):

* ``sequential fp32``: every image decoded, degraded and resized in the calling thread
  between forward passes (``workers=0``), glibc's allocator as it comes
  (``RANFACE_ALLOCATOR=system``), the model as loaded in NCHW: what every evaluation did
  before issue 16;
* ``pipelined fp32, system allocator``: decoding/degrading/resizing in one thread per core
  (``workers=-1``), the forward passes of the batches in the same threads, one intra-op
  thread each, glibc as it comes, the model as loaded;
* ``pipelined fp32, unfused``: the same with the allocator thresholds of
  :mod:`ranface.runtime`;
* ``pipelined fp32``: the same with the forward pass on a fused copy of the model (BN /
  scale layers folded into the convs, :mod:`ranface.models.fuse`) in channels_last: what
  ``ranface`` does now;
* ``pipelined auto``: the same with ``precision=auto`` (bf16 autocast, channels_last for
  dense-convolution backbones, on CPUs with AMX or AVX512-BF16; fp32 elsewhere).

"same decisions" compares the per-pair correctness strings at full size and every probe
size with the sequential run's; "max |dAUC|" the ROC AUCs (a fused forward pass changes
scores only by float rounding, ~3e-7; bit-identical scores need ``--no-fuse``). Timings
exclude process start and model loading.
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


def run_once(model, info, images, pairs, sizes, modes, per_fold, workers, precision, batch, flip, fuse=True):
    ctx = EvalContext(model, info, precision=precision, batch_size=batch, workers=workers, fuse=fuse,
                      channels_last=None if fuse else False)
    # absolute: the protocol resolves relative paths against its root (the pairs' folder)
    pairs, images = os.path.abspath(pairs), os.path.abspath(images)
    opts = PairsOptions(pairs=pairs, images=images, probe_sizes=sizes, modes=modes, flip=flip,
                        per_fold=per_fold)
    t = time.perf_counter()
    res = evaluate("pairs", ctx, os.path.dirname(pairs), opts)
    return res, time.perf_counter() - t


VARIANTS = [  # name, workers, precision, RANFACE_ALLOCATOR, fused copy (+ channels_last auto)
    ("sequential fp32", 0, "fp32", "system", False),
    ("pipelined fp32, system allocator", -1, "fp32", "system", False),
    ("pipelined fp32, unfused", -1, "fp32", "tuned", False),
    ("pipelined fp32", -1, "fp32", "tuned", True),
    ("pipelined auto", -1, "auto", "tuned", True),
]


def child(args) -> int:
    """One timed evaluation in this process; prints one JSON line."""
    import json

    from ranface.runtime import tune_allocator

    name, workers, prec, _, fuse = next(v for v in VARIANTS if v[0] == args.one)
    state = tune_allocator()  # honours RANFACE_ALLOCATOR set by the parent
    if args.threads:
        torch.set_num_threads(args.threads)
    model, info = load_model(args.model)
    precision = resolve_precision(prec, torch.device("cpu"))
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    res, dt = run_once(model, info, args.images, args.pairs, sizes, modes, args.per_fold, workers,
                       precision, args.batch, args.flip, fuse)
    keys = [("full", None)] + [(md, str(s)) for md in modes for s in sizes]
    metric = {f"{md}/{s}" if s else md: (res["metrics"][md][s] if s else res["metrics"][md]) for md, s in keys}
    correct = {k: m["correct"] for k, m in metric.items()}
    auc = {k: m["auc"] for k, m in metric.items()}
    print("RESULT " + json.dumps({"variant": name, "seconds": dt, "allocator": state, "precision": precision,
                                  "images": res["counts"]["images_embedded"],
                                  "variants": res["counts"]["embedded_variants"],
                                  "full_acc": res["metrics"]["full"]["acc"], "correct": correct,
                                  "auc": auc}), flush=True)
    return 0


def main() -> int:
    import json
    import subprocess

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
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--flip", action="store_true", help="flip-sum embeddings (the demo uses none)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # child mode: run one variant
    args = ap.parse_args()
    for p in (args.model, args.images, args.pairs):
        if not os.path.exists(p):
            print(f"eval_pairs.py: {p}: not found", file=sys.stderr)
            return 2
    if args.one:
        return child(args)
    auto = resolve_precision("auto", torch.device("cpu"))
    print(f"model={args.model} images={args.images} pairs={args.pairs} per_fold={args.per_fold} "
          f"sizes={args.sizes} modes={args.modes} batch={args.batch} flip={args.flip} "
          f"torch_threads={args.threads or torch.get_num_threads()} "
          f"cpu_capability={torch.backends.cpu.get_cpu_capability()} auto={auto}", flush=True)
    passthrough = [a for a in sys.argv[1:]]
    times = {v[0]: [] for v in VARIANTS}
    results = {}
    for _ in range(args.repeats):
        for name, _w, _p, alloc, _f in VARIANTS:  # interleaved: load changes hit all alike
            env = dict(os.environ, RANFACE_ALLOCATOR=alloc)
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), *passthrough, "--one", name],
                                  env=env, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"eval_pairs.py: variant {name!r} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}",
                      file=sys.stderr)
                return 1
            r = json.loads(line[len("RESULT "):])
            times[name].append(r["seconds"])
            results[name] = r
    base_name = VARIANTS[0][0]
    base_res = results[base_name]
    n, n_var = base_res["images"], base_res["variants"]
    base = statistics.median(times[base_name])
    print(f"{'variant':34s} {'s':>8s} {'images/s':>9s} {'ratio':>6s}  {'full acc':>9s}  same decisions  max |dAUC|")
    for name, _w, _p, _a, _f in VARIANTS:
        t = statistics.median(times[name])
        r = results[name]
        same = r["correct"] == base_res["correct"]
        dauc = max(abs(r["auc"][k] - base_res["auc"][k]) for k in base_res["auc"])
        label = name if _p == "fp32" else f"{name} ({r['precision']})"
        print(f"{label:34s} {t:8.2f} {n_var / t:9.1f} {base / t:6.2f}  "
              f"{100 * r['full_acc']:8.2f}%  {'yes' if same else 'NO':>14s}  {dauc:.1e}", flush=True)
    print(f"({n} images, {n_var} embedded variants per run; allocator per variant: "
          + "; ".join(f"{k}: {results[k]['allocator']}" for k in times) + "; windows s: "
          + "; ".join(f"{k}: {', '.join(f'{v:.2f}' for v in vs)}" for k, vs in times.items()) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
