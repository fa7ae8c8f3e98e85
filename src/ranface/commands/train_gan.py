"""``ranface train-gan``: train MR-GAN (paper §3.2-3.3) on HR faces and a pool of real LR
faces; writes checkpoints, sample grids and ``generator.pt`` into a run directory."""
from __future__ import annotations

import argparse
import json
import os
import sys


def cmd_train_gan(args: argparse.Namespace) -> int:
    from ..config import dump_yaml, load_config
    from ..gan.config import GanConfig, validate_gan_config

    cfg = load_config(GanConfig, args.config, args.overrides)
    # command-line arguments win over the config file (set directly: paths are not YAML)
    if args.hr:
        cfg.data.hr = args.hr
    if args.lr_pool:
        cfg.data.lr_pool = args.lr_pool
    if args.expert:
        cfg.expert = args.expert
    validate_gan_config(cfg)
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    from ..gan.trainer import run_train_gan

    summary = run_train_gan(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({k: summary[k] for k in ("run_dir", "steps", "elapsed_s", "counters")
                          if k in summary}, default=str))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..cli import _add_config_args

    p = sub.add_parser("train-gan", help="train MR-GAN (LR face synthesis, paper §3.2-3.3)",
                       description="Train MR-GAN on aligned HR faces (folder or .rec) and an "
                       "unpaired folder of real LR faces. Profiles: configs/gan_small.yaml (CPU), "
                       "configs/gan_paper.yaml (GPU).")
    p.add_argument("--hr", help="HR faces: image folder <id>/<file> or train.rec folder (data.hr)")
    p.add_argument("--lr-pool", help="folder of real LR faces, flat or <id>/<file> (data.lr_pool)")
    p.add_argument("--expert", help="frozen expert for the perceptual loss: face-api folder, "
                   "model.pt or run dir of `ranface train` (expert)")
    _add_config_args(p, "optim.max_steps=200")
    p.set_defaults(func=cmd_train_gan)
