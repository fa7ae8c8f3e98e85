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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has a meaningful one) after its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool) or default == [] or default == ""
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def _add_config_args(p: argparse.ArgumentParser, example: str) -> None:
    """``-c``, ``--set`` (with an ``example`` that fits the command) and ``--dry-run``."""
    p.add_argument("--config", "-c", help="YAML config file of this command's settings (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"dotted override of a setting, e.g. --set {example} (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def _progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (bars go to stderr and only to a terminal)")


# ------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig, dump_yaml, load_config

    cfg = load_config(TrainConfig, args.config, args.overrides, flags={
        "stage": args.stage, "run.force_resume": args.force or None,
        "run.progress": False if args.no_progress else None})
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
    from .deploy.embed import embed_folder

    cfg = load_config(EmbedConfig, args.config, args.overrides, flags=_embed_flags(args))
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    res = embed_folder(cfg, args.input, args.out, on_error=args.on_error, progress=not args.no_progress)
    print(json.dumps(res))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .config import EmbedConfig, dump_yaml, load_config
    from .deploy.embed import compare_images

    cfg = load_config(EmbedConfig, args.config, args.overrides,
                      flags={**_embed_flags(args), "threshold": args.threshold})
    if args.dry_run:
        sys.stdout.write(dump_yaml(cfg))
        return 0
    print(json.dumps(compare_images(cfg, args.image1, args.image2)))
    return 0


def _embed_flags(args: argparse.Namespace) -> dict:
    """embed / compare options as config flags (typed by their fields, never YAML)."""
    return {"model": args.model or None, "aligned": True if args.aligned else None,
            "force": True if args.force else None}


def _embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="model.pt, run dir, training checkpoint, face-api folder "
                   "or exported model.onnx (its model card says how to align and when two faces match)")
    p.add_argument("--aligned", action="store_true",
                   help="inputs are already aligned faces (any size; resized to the model's input); "
                   "default: detect (MTCNN) and align with the model card's template")
    p.add_argument("--force", action="store_true",
                   help="with --aligned: use faces aligned with another template than the card's "
                   "(warn instead of refusing)")


# ------------------------------------------------------------------------- parser

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line on stderr, exit 2 (the
    usage text is one ``--help`` away, not printed with every mistake)."""

    def error(self, message: str) -> "typing.NoReturn":  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0] if message else ''} "
                     f"(see {self.prog} --help)\n")


def build_parser(extra: Optional[Dict[str, Callable[[argparse._SubParsersAction], None]]] = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="ranface", formatter_class=HelpFormatter, description=(
        "Low-resolution face recognition: Resolution Adaption Network (Fang et al., ECCV 2020)."))
    parser.add_argument("--version", action="version", version=f"ranface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train a recognition model (stage hr, lr or mr)",
                       description="Train a recognition model; writes runs/<stage>-NNNN/ (config.yaml, "
                       "checkpoints/, metrics.jsonl, summary.json and model.pt with its model card).")
    p.add_argument("--stage", choices=("hr", "lr", "mr"), help="overrides the config's stage")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (same as --set run.progress=false)")
    p.add_argument("--force", action="store_true",
                   help="resume although the recipe differs from the run's config.yaml (run.force_resume)")
    _add_config_args(p, "optim.lr=0.05")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("embed", help="embed a folder of photos (or aligned faces) to .npy + index",
                       description="Embed every image under a folder: faces detected and aligned "
                       "with the model card's template (or --aligned faces of any size).")
    p.add_argument("input", help="folder of photos or aligned faces (searched recursively; every "
                   "image format PIL reads)")
    _embed_args(p)
    p.add_argument("--out", "-o", required=True, help="output prefix: writes PREFIX.npy (N x D float32, "
                   "L2-normalised) and PREFIX.tsv (row, relative path)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="unreadable image: stop or skip it and report the count")
    _progress_arg(p)
    _add_config_args(p, "batch_size=32")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("compare", help="are two photos the same person? (cosine and a decision)",
                       description="Detect and align the face of each photo with the model card's "
                       "template, embed, and print JSON: cosine, same (cosine > threshold), the "
                       "threshold and where it came from (the card's calibration unless --threshold).")
    p.add_argument("image1", help="first photo (or aligned face with --aligned)")
    p.add_argument("image2", help="second photo (or aligned face with --aligned)")
    _embed_args(p)
    p.add_argument("--threshold", type=float, help="cosine threshold for same (default: the model "
                   "card's calibrated threshold at best accuracy)")
    _add_config_args(p, "device=cpu")
    p.set_defaults(func=cmd_compare)

    for adder in (extra or {}).values():
        adder(sub)
    _set_formatter(parser)
    return parser


def _set_formatter(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command's help shows defaults."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                _set_formatter(sp)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser(_optional_commands())
    args = parser.parse_args(argv)
    try:
        from .runtime import tune_allocator

        tune_allocator()  # glibc keeps freed activations for the next batch (runtime.py)
        return int(args.func(args) or 0)
    except RanfaceError as exc:
        print(f"ranface: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ranface: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Destroy the process group a torchrun command joined, while the interpreter is whole:
    a gloo process that exits with it alive can abort in finalisation ("terminate called
    without an active exception", SIGABRT; seen once in the 2-process DDP test)."""
    if "torch.distributed" in sys.modules:
        from .train.distributed import shutdown_distributed

        shutdown_distributed()


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
