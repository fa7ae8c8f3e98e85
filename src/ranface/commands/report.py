"""``ranface report``: merge evaluation results into one comparison table.

    ranface report runs/a/eval/ijbc/result.json runs/b/eval/ijbc/result.json --out cmp/

Writes ``report.md`` and ``report.html`` (one table per protocol, one row per result, with
the fold count and data folder of each) and ``report.json``,
and overlays the results' comparable curves (ROC, CMC, TPIR-FPIR, accuracy vs pixels).
"""
from __future__ import annotations

import argparse
import json


def cmd_report(args: argparse.Namespace) -> int:
    from ..eval.comparison import write_comparison

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    res = write_comparison(args.results, args.out, labels)
    print(json.dumps({"out": args.out, "markdown": res["files"]["markdown"], "html": res["files"]["html"],
                      "protocols": {k: len(t["rows"]) for k, t in res["tables"].items()}}))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="merge result.json files of `ranface evaluate` into one "
                       "comparison table")
    p.add_argument("results", nargs="+", metavar="RESULT.json", help="result.json files of `ranface evaluate`")
    p.add_argument("--out", "-o", required=True, help="output folder: report.md, report.html "
                   "(self-contained, figures embedded), report.json and the overlaid curves (PNG)")
    p.add_argument("--labels", help="comma-separated row labels, one per result "
                   "(default: the models' run names)")
    p.set_defaults(func=cmd_report)
