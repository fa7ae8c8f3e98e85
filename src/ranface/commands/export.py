"""``ranface export``: a trained model -> ONNX + TorchScript + preprocessing sidecar.

    ranface export MODEL --out DIR [--formats onnx,torchscript] [--check-images IMG ...]

Writes ``DIR/model.onnx``, ``DIR/model.torchscript.pt`` and ``DIR/model.json`` only after
onnxruntime and TorchScript reproduce PyTorch's embeddings (cosine >= 1 - tolerance).
"""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: "argparse._SubParsersAction") -> None:
    from ..cli import _add_config_args

    p = sub.add_parser("export", help="export a model to ONNX and TorchScript (self-checked)")
    p.add_argument("model", nargs="?", help="model.pt, training checkpoint / run dir, or face-api folder")
    p.add_argument("--out", "-o", help="output folder")
    p.add_argument("--backbone", help="backbone of a face-api folder (default resnet29_dlib)")
    p.add_argument("--formats", help="comma-separated: onnx,torchscript (default both)")
    p.add_argument("--check-images", nargs="+", metavar="IMG",
                   help="faces (files or folders) for the parity check (default: LFW centre crops)")
    _add_config_args(p, "tolerance=0.001")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import dump_yaml, load_config
    from ..deploy.export import ExportConfig, export_model

    flags = {"model": args.model or None, "out": args.out or None, "backbone": args.backbone or None,
             "formats": args.formats.split(",") if args.formats else None,
             "check_images": list(args.check_images) if args.check_images else None}
    cfg = load_config(ExportConfig, args.config, args.overrides, flags=flags)
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    side = export_model(cfg)
    print(json.dumps({"out": cfg.out, "fingerprint": side["fingerprint"],
                      "files": {k: v["path"] for k, v in side["files"].items()},
                      "check": {k: v for k, v in side["check"].items() if k in ("onnx", "torchscript")}}))
    return 0
