"""``ranface prepare``: detect (MTCNN), align (5-point similarity) and select faces."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: "argparse._SubParsersAction") -> None:
    from ..cli import _add_config_args

    p = sub.add_parser("prepare", help="raw photos -> aligned faces (+ manifest, failures, LR selection)")
    p.add_argument("input", nargs="?", help="folder of photos (recursive) or a list file")
    p.add_argument("--out", "-o", help="output folder: aligned faces <identity>/<photo>.jpg, manifest.csv, "
                   "failures.csv, summary.json and prepare_config.yaml (records the template)")
    p.add_argument("--lr-select", metavar="MIN:MAX",
                   help="keep only faces whose eye-to-mouth distance is MIN..MAX original pixels (paper: 10:30)")
    p.add_argument("--mode", choices=("one", "all"), help="one face per photo (default) or every face")
    p.add_argument("--format", choices=("folder", "rec"), help="output layout (rec also writes train.rec/idx)")
    p.add_argument("--model", "-m", help="align for this model: its card's template and input size "
                   "(model.pt, run dir, face-api folder, .onnx); --set template=/size= still win")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (same as --set progress=false)")
    _add_config_args(p, "template=dlib")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..align.prepare import run_prepare
    from ..config import PrepareConfig, dump_yaml, load_config

    flags = {"input": args.input, "out": args.out, "lr_select": args.lr_select, "mode": args.mode,
             "format": args.format, "progress": False if args.no_progress else None}
    if args.model:  # align the way the model expects (its card's template and input size)
        from ..models.loader import read_card

        card = read_card(args.model)
        if card.template:
            flags["template"] = card.template
        flags["size"] = [int(card.input_size[0]), int(card.input_size[1])]
    cfg = load_config(PrepareConfig, args.config, args.overrides, flags=flags)
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    summary = run_prepare(cfg)
    print(json.dumps(summary))
    return 0

