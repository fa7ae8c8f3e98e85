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

    over = list(args.overrides)
    if args.no_progress:
        over.append("progress=false")
    if args.model:
        from ..models.loader import read_card

        card = read_card(args.model)
        if card.template:
            over.insert(0, f"template={card.template}")
        over.insert(0, f"size=[{card.input_size[0]},{card.input_size[1]}]")
    for key, val in (("input", args.input), ("out", args.out), ("lr_select", args.lr_select),
                     ("mode", args.mode), ("format", args.format)):
        if val is not None:
            over.append(f"{key}={val}")
    cfg = load_config(PrepareConfig, args.config, _quote(over))
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    summary = run_prepare(cfg)
    print(json.dumps(summary))
    return 0


def _quote(overrides):
    """Paths and MIN:MAX must stay strings when parsed as YAML values."""
    out = []
    for o in overrides:
        k, _, v = o.partition("=")
        if k in ("input", "out", "lr_select", "root") and v and not v.startswith(("'", '"')):
            v = json.dumps(v)
        out.append(f"{k}={v}")
    return out
