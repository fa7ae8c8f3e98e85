"""Inference forward pass alone (img/s): the layouts and the folded copy of each backbone.

For each backbone, four variants of the same eval-mode network, side by side in one
process with the timed windows interleaved (variant A, B, C, D, A, B, ...):

* ``eager``: the model as trained, NCHW (how every evaluation ran before issue 16);
* ``channels_last``: the same weights in NHWC;
* ``fused``: BN / scale layers folded into the convolutions (:mod:`ranface.models.fuse`);
* ``fused + channels_last``: both, what :class:`ranface.inference.Embedder` does on a CPU
  in fp32 (``precision.use_channels_last(..., inference=True)``).

The BN running statistics are set from a batch of random faces first, so folding does
real arithmetic; "max |d|" is the largest difference of an L2-normalised embedding from the eager one. The
figure this benchmark exists for is each ratio against ``eager`` on the CPU at hand:
whether NHWC pays depends on the CPU's oneDNN kernels (AVX2 vs AVX-512), and the
channels_last rule for fp32 inference rests on it.

    python benchmarks/forward.py                           # the three backbones, batch 64
    python benchmarks/forward.py --backbones resnet29_dlib --batch 16 --repeats 5
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

from ranface.models import create_backbone
from ranface.models.fuse import fuse_for_inference
from ranface.runtime import tune_allocator

VARIANTS = ("eager", "channels_last", "fused", "fused + channels_last")


def _calibrate_bn(model: torch.nn.Module, gen: torch.Generator) -> None:
    """BN running statistics from one batch of random faces (cumulative average), so the
    eval-mode network keeps activations at a realistic scale and folding does real work."""
    h, w = model.spec.input_size
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, h, w, generator=gen))
    model.eval()


def variants(name: str) -> Dict[str, torch.nn.Module]:
    gen = torch.Generator().manual_seed(0)
    base = create_backbone(name)
    _calibrate_bn(base, gen)  # leaves it in eval mode
    fused = copy.deepcopy(base)
    fuse_for_inference(fused)
    return {"eager": base, "channels_last": copy.deepcopy(base).to(memory_format=torch.channels_last),
            "fused": fused, "fused + channels_last": copy.deepcopy(fused).to(memory_format=torch.channels_last)}


def measure(name: str, batch: int, iters: int, repeats: int) -> List[Dict[str, object]]:
    models = variants(name)
    h, w = models["eager"].spec.input_size
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(1))
    inputs = {v: (x.contiguous(memory_format=torch.channels_last) if "channels_last" in v else x)
              for v in VARIANTS}
    times: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    with torch.inference_mode():
        ref = F.normalize(models["eager"](x).float(), dim=1)
        diff = {v: float((F.normalize(models[v](inputs[v]).float(), dim=1) - ref).abs().max())
                for v in VARIANTS}
        for _ in range(repeats):
            for v in VARIANTS:
                models[v](inputs[v])  # warm the allocator and oneDNN's kernel cache
                t = time.perf_counter()
                for _ in range(iters):
                    models[v](inputs[v])
                times[v].append(time.perf_counter() - t)
    base = batch * iters / statistics.median(times["eager"])
    rows = []
    for v in VARIANTS:
        rate = batch * iters / statistics.median(times[v])
        rows.append({"backbone": name, "variant": v, "img_s": rate, "ratio": rate / base,
                     "spread": [batch * iters / max(times[v]), batch * iters / min(times[v])],
                     "windows": [batch * iters / t for t in times[v]],
                     "max_abs_diff": diff[v]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["resnet29_dlib", "mobilefacenet", "iresnet50"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=3, help="forward passes per timed window")
    p.add_argument("--repeats", type=int, default=3, help="interleaved windows per variant")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--figures", action="store_true",
                   help="also print one JSON line of figures (for benchmarks/run_all.py)")
    a = p.parse_args(argv)
    tune_allocator()
    if a.threads:
        torch.set_num_threads(a.threads)
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {cap}, "
          f"batch {a.batch}, {a.iters} passes x {a.repeats} interleaved windows")
    print(f"{'backbone':<15} {'variant':<22} {'img/s':>8} {'ratio':>6} {'spread':>15} {'max |d|':>9}")
    rows = []
    for name in a.backbones:
        for r in measure(name, a.batch, a.iters, a.repeats):
            rows.append(r)
            lo, hi = r["spread"]
            print(f"{name:<15} {r['variant']:<22} {r['img_s']:8.1f} {r['ratio']:6.2f} "
                  f"{lo:7.1f}..{hi:<7.1f} {r['max_abs_diff']:9.1e}", flush=True)
    if a.figures:
        print(json.dumps({"figures": [
            {"name": f"{r['backbone']} forward b{a.batch}, {r['variant']}", "value": r["img_s"],
             "unit": "img/s", "windows": r["windows"],
             "ratio": f"x{r['ratio']:.2f} vs eager; max |d| {r['max_abs_diff']:.1e}"} for r in rows]}))
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"cpu_capability": cap, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
        os.replace(tmp, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
