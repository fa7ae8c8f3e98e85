"""``ranface train-expert``: distil the frozen expert of MR-GAN's perceptual loss (Eq. 2) —
the paper's 112-px MobileFaceNet — from a given face model onto the HR faces."""
from __future__ import annotations

import argparse
import json
import os
import sys


def cmd_train_expert(args: argparse.Namespace) -> int:
    from ..config import dump_yaml, load_config
    from ..train.distill import ExpertConfig, validate_expert_config

    cfg = load_config(ExpertConfig, args.config, args.overrides)
    if args.hr:  # command-line arguments win over the config file (paths are not YAML)
        cfg.data.train = args.hr
    if args.teacher:
        cfg.teacher = args.teacher
    validate_expert_config(cfg)
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    from ..train.distill import run_train_expert

    summary = run_train_expert(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({k: summary[k] for k in ("run_dir", "steps", "elapsed_s", "final_cosine_to_teacher")
                          if k in summary}, default=str))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..cli import _add_config_args

    p = sub.add_parser("train-expert", help="distil MR-GAN's frozen expert (MobileFaceNet, 112 px, Eq. 2)",
                       description="Distil a face model (default: the bundled ResNet-29) into a "
                       "MobileFaceNet on the HR faces; the run's model.pt is MR-GAN's perceptual "
                       "expert (train-gan --expert RUN_DIR).")
    p.add_argument("--hr", help="HR faces: image folder <id>/<file> or train.rec folder (data.train)")
    p.add_argument("--teacher", help="model to distil: face-api folder, model.pt or run dir (teacher)")
    _add_config_args(p, "optim.max_steps=600")
    p.set_defaults(func=cmd_train_expert)
