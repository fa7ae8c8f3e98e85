"""``ranface demo``: every stage of RAN on the bundled real data, with a report."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: "argparse._SubParsersAction") -> None:
    from ..cli import _add_config_args

    p = sub.add_parser("demo", help="run the whole pipeline on the bundled data and write a report")
    p.add_argument("--profile", choices=("quick", "default"),
                   help="quick: CI-sized (about 4 min on 2 cores); default: about 33 min on 2 AVX-512 cores, 43-46 on 2 AVX2 cores")
    p.add_argument("--out", "-o", help="output folder (default runs/demo-<profile>)")
    _add_config_args(p, "probe_sizes=[16,12]")
    p.set_defaults(func=run)


def recipe_config(args: argparse.Namespace, default_out: str):
    """The demo recipe (:class:`ranface.demo.DemoConfig`) of ``demo`` and ``table1``: config
    file, ``--set``, ``--profile``, and ``--out`` (else ``default_out``, ``{profile}`` filled)."""
    from ..config import load_config
    from ..demo import DemoConfig

    over = list(args.overrides)
    if args.profile:
        over.append(f"profile={args.profile}")
    cfg = load_config(DemoConfig, args.config, over)
    if args.out:
        cfg.out = args.out
    elif cfg.out == DemoConfig.out:
        cfg.out = default_out.format(profile=cfg.profile)
    return cfg


def run(args: argparse.Namespace) -> int:
    from ..config import dump_yaml
    from ..demo import resolve, run_demo

    cfg = recipe_config(args, "runs/demo-{profile}")
    if args.dry_run:
        sys.stdout.write(dump_yaml(resolve(cfg)))
        return 0
    res = run_demo(cfg)
    print(json.dumps({"report": res["report"], "total_s": res["total_s"]}))
    return 0
