"""``ranface evaluate``: run one evaluation protocol (paper §4) on a model.

    ranface evaluate --protocol pairs --root DATA --model RUN_DIR [--out DIR]
                     [--set probe_sizes=[32,16]] [-c options.yaml] [--on-error skip]

Protocol options are the fields of the protocol's options dataclass, set from a YAML
file (``-c``) and ``--set key=value``; ``--dry-run`` prints them. Writes ``result.json``,
``result.md`` and plots to ``--out`` (default ``<model run dir or cwd>/eval/<protocol>``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..cli import _add_config_args


def default_out_dir(model: str, protocol: str) -> str:
    """``<run dir>/eval/<protocol>`` for a ranface model, else ``./eval/<protocol>``.

    A run dir is the folder of ``model.pt``, the parent of ``checkpoints/`` for a
    checkpoint, or a folder given as the model itself. A face-api model folder is not a
    run (and usually read-only): the current directory is used then.
    """
    from ..models.loader import is_faceapi_dir

    p = os.path.abspath(model) if model else ""
    run = None
    if p and os.path.isfile(p):
        run = os.path.dirname(p)
        if os.path.basename(run) == "checkpoints":
            run = os.path.dirname(run)
    elif p and os.path.isdir(p) and not is_faceapi_dir(p):
        run = p
    return os.path.join(run or os.getcwd(), "eval", protocol)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..config import dump_yaml, load_config
    from ..eval.protocols import get_protocol, list_protocols

    if args.list:
        for name in list_protocols():  # one line each: name, title, what it follows
            proto = get_protocol(name)
            print(f"{name:<20} {proto.title}. Follows: {proto.provenance or 'ranface'}")
        return 0
    if not args.protocol:
        raise_usage("--protocol is required (ranface evaluate --list shows them)")
    proto = get_protocol(args.protocol)
    options = load_config(proto.Options, args.config, args.overrides)
    if args.dry_run:
        sys.stdout.write(dump_yaml(options))
        return 0
    if not args.root or not args.model:
        raise_usage("--root and --model are required")
    from ..errors import ProtocolError

    if not os.path.isdir(args.root):
        raise ProtocolError(args.root, "data root is not a folder")
    proto.validate_root(args.root, options)  # before loading the model: fail fast

    from ..eval.protocols import EvalContext, evaluate
    from ..align.prepare import check_template
    from ..models.loader import load_model
    from ..train.precision import resolve_device, resolve_precision

    device = resolve_device(args.device)
    model, info = load_model(args.model, args.backbone, device)
    for folder in _aligned_folders(args.root, options):
        check_template(folder, info.template, args.force)
    ctx = EvalContext(model, info, device=device,
                      precision=resolve_precision(args.precision, device),
                      batch_size=args.batch_size, on_error=args.on_error, workers=args.workers,
                      fuse=not args.no_fuse,
                      channels_last={"auto": None, "on": True, "off": False}[args.channels_last],
                      allow_outside_root=args.allow_outside_root,
                      progress=not args.no_progress and sys.stderr.isatty())
    out = args.out or default_out_dir(args.model, args.protocol)
    res = evaluate(args.protocol, ctx, args.root, options, out)
    print(json.dumps({"protocol": res["protocol"], "out": out, "counts": res["counts"],
                      "elapsed_s": res.get("elapsed_s"), "markdown": res["files"]["markdown"],
                      "html": res["files"]["html"]}))
    return 0


def _aligned_folders(root: str, options: object) -> list:
    """The root and the option folders (e.g. pairs' ``images``) that may hold aligned faces."""
    out = [root]
    for key in ("images", "hr", "lr", "gallery", "probes"):
        val = getattr(options, key, None)
        if isinstance(val, str) and val:
            path = val if os.path.isabs(val) else os.path.join(root, val)
            if os.path.isdir(path):
                out.append(path)
    return out


def raise_usage(msg: str) -> None:
    from ..errors import ConfigError

    raise ConfigError(msg)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model on a protocol (pairs, bin, ijbc, "
                       "ijbc-tiny, ijbc-tiny-templates, tinyface, scface, survface)")
    p.add_argument("--protocol", "-p", help="protocol name (see --list)")
    p.add_argument("--root", "-r", help="the protocol's data folder")
    p.add_argument("--model", "-m",
                   help="model.pt, training checkpoint/run dir, or face-api folder")
    p.add_argument("--backbone", default="", help="backbone name (only for a face-api folder)")
    p.add_argument("--out", "-o", help="output folder: result.json, result.md, result.html "
                   "(self-contained) and plots (default <run dir or cwd>/eval/<protocol>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 | auto")
    p.add_argument("--batch-size", type=int, default=64, help="faces per forward pass")
    p.add_argument("--no-fuse", action="store_true",
                   help="embed with the model as loaded (by default a copy with each BN / scale "
                        "folded into its conv: the same function up to float rounding, faster)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="memory format of the forward pass (auto: where it was measured faster)")
    p.add_argument("--workers", type=int, default=-1,
                   help="threads that decode, align and resize images and, on a CPU, run the "
                        "forward passes on their share of the cores (-1: one per usable core, "
                        "at most 8; 0: everything in the calling thread)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="unreadable image or dangling id: stop (default) or skip and count it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true",
                   help="use faces aligned with another template than the model card's (warn only)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read images that protocol lists name outside the dataset folder "
                        "(absolute or ../ paths; refused by default)")
    p.add_argument("--list", action="store_true", help="list the protocols and exit")
    _add_config_args(p, "probe_sizes=[24,16,12]")
    p.set_defaults(func=cmd_evaluate)
