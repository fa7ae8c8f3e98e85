"""``ranface table1``: the paper's Table 1 on your data — every LR synthesis method
(bicubic, second-order, random-degrade, MR-GAN) under one budget: realism against a real
LR pool, and the LR / MR models trained on each method's twins, evaluated on held-out pairs."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: "argparse._SubParsersAction") -> None:
    from ..cli import _add_config_args

    p = sub.add_parser("table1", help="compare LR synthesis methods under one budget (paper Table 1)",
                       description="Train MR-GAN and synthesize LR twins of the HR faces with every chosen "
                       "degrader; train one LR model per degrader (and MR models for mr_degraders) with the "
                       "same steps, batch and learning rate; score realism against the real LR pool and "
                       "verification on the held-out pairs. Writes <out>/table1/table1.md, table1.json and "
                       "degraders.png. The recipe settings are the demo's (--set degraders=[bicubic,mrgan,"
                       "second-order] --set lr_steps=120 ...; --profile quick|default).")
    p.add_argument("--faces", required=True, help="aligned HR training faces, <identity>/<file>")
    p.add_argument("--lr-pool", required=True, help="aligned real LR faces (flat or nested)")
    p.add_argument("--test-faces", required=True, help="aligned faces the pairs file refers to")
    p.add_argument("--pairs", required=True, help="held-out pairs in LFW pairs.txt format")
    p.add_argument("--hr-model", help="the HR model (default: the bundled face-api ResNet-29)")
    p.add_argument("--profile", choices=("quick", "default"), help="recipe size (as the demo's)")
    p.add_argument("--out", "-o", help="output folder (default runs/table1)")
    _add_config_args(p, "gan_steps=1000")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from ..config import default_data_root, dump_yaml
    from ..demo import resolve
    from .demo import recipe_config
    from ..pipelines.table1 import run_table1

    cfg = recipe_config(args, "runs/table1")
    if args.dry_run:
        sys.stdout.write(dump_yaml(resolve(cfg)))
        return 0
    hr = args.hr_model or os.path.join(cfg.data_root or default_data_root(), "models", "faceapi-resnet29")
    res = run_table1(cfg, args.faces, args.lr_pool, args.test_faces, args.pairs, hr)
    print(json.dumps({"table": res["table"], "grid": res["grid"]}))
    return 0
