"""``ranface synthesize``: write the LR twin of a face dataset (folder or .rec) through a
registered degrader (``mrgan``, ``bicubic``, ``random-degrade``, or a user's)."""
from __future__ import annotations

import argparse
import json
import sys


def cmd_synthesize(args: argparse.Namespace) -> int:
    from ..config import dump_yaml, load_config
    from ..gan.config import SynthConfig

    cfg = load_config(SynthConfig, args.config, args.overrides)
    # command-line arguments win over the config file (set directly: paths are not YAML)
    for key, value in (("input", args.input), ("output", args.output), ("degrader", args.degrader),
                       ("seed", args.seed)):
        if value is not None:
            setattr(cfg, key, value)
    if args.no_progress:
        cfg.progress = False
    if args.checkpoint:
        cfg.options = {**(cfg.options or {}), "checkpoint": args.checkpoint}
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    from ..gan.degraders import synthesize

    summary = synthesize(cfg)
    counts = summary.get("counts", {})
    print(f"synthesized {counts.get('written', 0)} faces ({counts.get('existing', 0)} already there) "
          f"with {summary['degrader']} at {summary.get('faces_per_s', 0)} faces/s -> {summary.get('output')}",
          file=sys.stderr)
    print(json.dumps({k: summary.get(k) for k in ("output", "status", "counts", "faces_per_s",
                                                  "elapsed_s")}, default=str))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..cli import _add_config_args

    p = sub.add_parser("synthesize", help="write the LR twin of a dataset (same labels and layout)",
                       description="Stream an aligned-face dataset (image folder or insightface "
                       ".rec) through a degrader. Degrader options go in --set options.KEY=VALUE "
                       "(e.g. options.size_range=[12,32]); an interrupted folder run resumes.")
    p.add_argument("input", nargs="?", help="HR dataset: image folder, train.rec folder or .rec file")
    p.add_argument("output", nargs="?", help="output folder: the LR twins in the input's layout, "
                   "a manifest and the degrader's settings")
    p.add_argument("--degrader", "-d", help="mrgan | bicubic | random-degrade | a registered name")
    p.add_argument("--checkpoint", help="mrgan: generator.pt or train-gan run dir (options.checkpoint)")
    p.add_argument("--seed", type=int, help="random seed of the degradations (reproducible twins)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (same as --set progress=false)")
    _add_config_args(p, "'options={\"eye_mouth_range\": [10, 30]}'")
    p.set_defaults(func=cmd_synthesize)
