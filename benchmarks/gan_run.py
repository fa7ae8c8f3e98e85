"""Whole ``train-gan`` runs timed side by side: what a user waits for, data loading,
loader workers, logging and the optimizer included (``gan.py`` times the step alone, on
a repeated in-memory batch).

Each variant is one ``python -m ranface train-gan -c configs/gan_small.yaml`` process on
the same aligned HR faces and real LR pool, one after another (never two at once: on a
small machine they would share the cores); with ``--repeats`` the variants take turns.
A variant is ``EXPERT:PRECISION``: EXPERT ``resnet29`` (the imported face-api model, the
profile's default) or a path to a recognition ``model.pt`` / run directory (the 112-px
MobileFaceNet, e.g. the demo's distilled ``models/expert``); PRECISION fp32, bf16 or
auto. Per variant: the run's wall time as the trainer measured it, its steps/s (median of
the logged windows after the first) and both as ratios to the first variant.

    python benchmarks/gan_run.py --hr runs/demo-quick/faces_train \\
        --lr-pool runs/demo-quick/lr_pool \\
        --variants resnet29:fp32,runs/demo-quick/models/expert:auto --steps 300 \\
        --set "generator.level_widths=[25,76]" --set generator.level_band=[] \\
        --set generator.template=dlib --set discriminator.template=dlib
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse_variants(text: str) -> List[Tuple[str, str]]:
    out = []
    for item in text.split(","):
        expert, sep, precision = item.strip().rpartition(":")
        if not sep or not expert or precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"--variants: {item!r} is not EXPERT:PRECISION (precision fp32, bf16 or auto)")
        out.append((expert, precision))
    return out


def run_once(args, expert: str, precision: str, out_dir: str) -> Dict[str, float]:
    from ranface.train.stats import read_metrics

    cmd = [sys.executable, "-m", "ranface", "train-gan", "-c", os.path.join(ROOT, "configs", "gan_small.yaml"),
           "--hr", args.hr, "--lr-pool", args.lr_pool]
    if expert != "resnet29":
        cmd += ["--expert", expert]
    sets = [f"optim.max_steps={args.steps}", f"data.batch_size={args.batch}", f"run.precision={precision}",
            f"run.log_every={args.log_every}", f"run.ckpt_every={10 * args.steps}", "image_every=0",
            "run.progress=false", "run.tensorboard=false", f"run.out_dir={out_dir}", "run.name=bench",
            *args.set]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"train-gan failed for {expert}:{precision}: {tail[0]}")
    run = os.path.join(out_dir, "bench")
    with open(os.path.join(run, "summary.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    rates = [r["throughput/steps_per_s"] for r in read_metrics(run, "train") if "throughput/steps_per_s" in r]
    return {"run_s": float(summary["elapsed_s"]),
            "steps_per_s": statistics.median(rates[1:] or rates)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hr", required=True, help="aligned HR faces (folder or train.rec)")
    ap.add_argument("--lr-pool", required=True, help="real LR faces (folder)")
    ap.add_argument("--variants", default="resnet29:fp32,resnet29:auto")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a GanConfig field of every run (e.g. data.num_workers=0)")
    args = ap.parse_args()
    for p in (args.hr, args.lr_pool):
        if not os.path.exists(p):
            ap.error(f"{p}: not found")
    try:
        variants = parse_variants(args.variants)
    except ValueError as exc:
        ap.error(str(exc))
    results: Dict[int, List[Dict[str, float]]] = {i: [] for i in range(len(variants))}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for i, (expert, precision) in enumerate(variants):
                res = run_once(args, expert, precision, os.path.join(tmp, f"{i}-{r}"))
                results[i].append(res)
                print(f"  {expert}:{precision} repeat {r + 1}: {res['run_s']:.1f} s, "
                      f"{res['steps_per_s']:.2f} steps/s", flush=True)
    med = [{k: statistics.median(x[k] for x in results[i]) for k in ("run_s", "steps_per_s")}
           for i in range(len(variants))]
    print(f"\n{args.steps} steps, batch {args.batch}, {args.repeats} repeat(s); medians; ratios vs the first row")
    print("| expert | precision | run s | steps/s | time ratio | steps/s ratio |")
    print("|---|---|---|---|---|---|")
    for (expert, precision), m in zip(variants, med):
        print(f"| {expert} | {precision} | {m['run_s']:.1f} | {m['steps_per_s']:.2f} | "
              f"x{med[0]['run_s'] / m['run_s']:.2f} | x{m['steps_per_s'] / med[0]['steps_per_s']:.2f} |")


if __name__ == "__main__":
    main()
