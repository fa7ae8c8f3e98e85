"""``ranface`` command line: one entry, thin subcommands (parse, load config, call the
library). Errors from bad input print one line and exit with status 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from typing import Callable, Dict, Optional, Sequence

from . import __version__
from .errors import RanfaceError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set optim.lr=0.01 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


# ------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig, dump_yaml, load_config

    cfg = load_config(TrainConfig, args.config, args.overrides, flags={"stage": args.stage,
                                                                       "run.force_resume": args.force or None})
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    if cfg.stage in ("hr", "lr"):
        from .train.recognition import run_recognition

        summary = run_recognition(cfg)
    elif cfg.stage == "mr":
        try:
            from .adapt.trainer import run_adaption
        except ImportError:
            raise RanfaceError("stage mr (feature adaption network) is not available in this build") from None
        summary = run_adaption(cfg)
    else:
        raise RanfaceError(f"stage must be hr, lr or mr, got {cfg.stage!r}")
    if _is_main():
        print(json.dumps({k: summary[k] for k in ("run_dir", "steps", "elapsed_s", "counters", "validation")
                          if k in summary}, default=str))
    return 0


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


# ------------------------------------------------------------------------- embed / compare


def cmd_embed(args: argparse.Namespace) -> int:
    from .config import EmbedConfig, dump_yaml, load_config
    from .embed import embed_folder

    cfg = load_config(EmbedConfig, args.config, args.overrides, flags={"model": args.model or None})
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    res = embed_folder(cfg, args.input, args.out, on_error=args.on_error)
    print(json.dumps(res))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .config import EmbedConfig, dump_yaml, load_config
    from .embed import compare_images

    cfg = load_config(EmbedConfig, args.config, args.overrides,
                      flags={"model": args.model or None, "threshold": args.threshold})
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    print(json.dumps(compare_images(cfg, args.image1, args.image2)))
    return 0


# ------------------------------------------------------------------------- parser

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line on stderr, exit 2 (the
    usage text is one ``--help`` away, not printed with every mistake)."""

    def error(self, message: str) -> "typing.NoReturn":  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0] if message else ''} "
                     f"(see {self.prog} --help)\n")


def build_parser(extra: Optional[Dict[str, Callable[[argparse._SubParsersAction], None]]] = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="ranface", description=(
        "Low-resolution face recognition: Resolution Adaption Network (Fang et al., ECCV 2020)."))
    parser.add_argument("--version", action="version", version=f"ranface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train a recognition model (stage hr, lr or mr)")
    p.add_argument("--stage", choices=("hr", "lr", "mr"), help="overrides the config's stage")
    p.add_argument("--force", action="store_true",
                   help="resume although the recipe differs from the run's config.yaml (run.force_resume)")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("embed", help="embed a folder of aligned faces to .npy + index")
    p.add_argument("input", help="folder of aligned face images (searched recursively)")
    p.add_argument("--model", "-m", help="model.pt, training checkpoint/run dir, or face-api folder")
    p.add_argument("--out", "-o", required=True, help="output prefix: writes PREFIX.npy and PREFIX.tsv")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="unreadable image: stop (default) or skip it and report the count")
    _add_config_args(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("compare", help="cosine similarity (and a decision) of two aligned faces")
    p.add_argument("image1")
    p.add_argument("image2")
    p.add_argument("--model", "-m")
    p.add_argument("--threshold", type=float, help="cosine threshold for a same/different decision")
    _add_config_args(p)
    p.set_defaults(func=cmd_compare)

    for adder in (extra or {}).values():
        adder(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser(_optional_commands())
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RanfaceError as exc:
        print(f"ranface: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ranface: interrupted", file=sys.stderr)
        return 130


def _optional_commands() -> Dict[str, Callable[[argparse._SubParsersAction], None]]:
    """Subcommands of later stages register here (each module has ``add_parser(sub)``)."""
    import importlib

    out: Dict[str, Callable[[argparse._SubParsersAction], None]] = {}
    from .commands import COMMAND_MODULES

    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"ranface.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("ranface.commands"):
                continue
            raise
        out[name] = mod.add_parser
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
