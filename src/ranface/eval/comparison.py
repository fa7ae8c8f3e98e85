"""``ranface report``: several ``result.json`` files of ``ranface evaluate`` -> one
comparison (Markdown + self-contained HTML + JSON + overlaid curves), one table per
protocol and one row per result, with the data folder and fold count each row used.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

from ..errors import DataError
from ..io_utils import atomic_write_text
from .protocols import get_protocol
from .report import (REPORT_FORMAT, RESULT_FORMAT, _clean, _json_default, markdown_to_html, md_table,
                     method_label, plot_curves)

__all__ = ["load_result", "compare_results", "write_comparison"]


def load_result(path: str) -> Dict[str, Any]:
    """Read a ``result.json`` written by ``ranface evaluate``."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            res = json.load(fh)
    except OSError as exc:
        raise DataError(path, f"cannot read result ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg})", f"line {exc.lineno}") from None
    except (UnicodeDecodeError, RecursionError):
        raise DataError(path, "not a UTF-8 JSON result file") from None
    if not isinstance(res, dict) or res.get("format") != RESULT_FORMAT:
        raise DataError(path, f"not a ranface evaluation result (expected format "
                        f"{RESULT_FORMAT!r})")
    for key in ("protocol", "model", "metrics"):
        if key not in res:
            raise DataError(path, f"result has no {key!r}", f"key {key}")
    return res


# ----------------------------------------------------------------------------- comparison
def compare_results(paths: Sequence[str], labels: Optional[Sequence[str]] = None
                    ) -> Dict[str, Any]:
    """One comparison table per protocol over several results.

    Rows are results (labelled by ``labels`` or the model's run name, made unique),
    columns the union of each protocol's summary columns in first-seen order.
    """
    if labels and len(labels) != len(paths):
        raise DataError(None, f"{len(labels)} labels for {len(paths)} results")
    tables: Dict[str, Dict[str, Any]] = {}
    seen: Dict[str, int] = {}
    results = []
    for i, path in enumerate(paths):
        res = load_result(path)
        proto = get_protocol(res["protocol"])
        label = labels[i] if labels else method_label(res)
        if label in seen:
            seen[label] += 1
            label = f"{label} #{seen[label]}"
        else:
            seen[label] = 1
        try:
            row = proto.summary(res)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(path, f"result metrics do not fit protocol {res['protocol']!r} "
                            f"({type(exc).__name__}: {exc})") from None
        t = tables.setdefault(res["protocol"], {"title": proto.title or proto.name,
                                                "columns": [], "rows": []})
        for col in row:
            if col not in t["columns"]:
                t["columns"].append(col)
        t["rows"].append({"label": label, "source": os.path.abspath(path),
                          "model": res["model"].get("source", ""),
                          "data_root": res.get("data_root", ""),
                          "data": _data_folder(res),
                          "folds": res.get("counts", {}).get("folds") or res.get("metrics", {}).get("folds"),
                          "scored": res.get("counts", {}).get("scored"),
                          "skipped": res.get("counts", {}).get("skipped"),
                          "values": row})
        results.append((label, res))
    return {"format": REPORT_FORMAT, "tables": tables, "_results": results}


def write_comparison(paths: Sequence[str], out_dir: str,
                     labels: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``ranface report``: ``report.md`` + ``report.json`` + overlaid curves in ``out_dir``."""
    from ..io_utils import check_writable_dir

    check_writable_dir(out_dir)  # a read-only place: one line before any work
    cmp = compare_results(paths, labels)
    results = cmp.pop("_results")
    os.makedirs(out_dir, exist_ok=True)
    # Overlay the curves marked for comparison, one figure per protocol and curve name.
    plots: Dict[str, List[str]] = {}
    for proto_name in cmp["tables"]:
        names: List[str] = []
        for _, res in results:
            if res["protocol"] == proto_name:
                names += [n for n, c in res.get("curves", {}).items()
                          if c.get("compare") and n not in names]
        for n in names:
            series = {label: res["curves"][n] for label, res in results
                      if res["protocol"] == proto_name and n in res.get("curves", {})}
            fname = f"{proto_name}_{n}".replace("/", "_").replace(" ", "_") + ".png"
            plots.setdefault(proto_name, []).append(
                plot_curves(series, os.path.join(out_dir, fname), f"{proto_name}: {n}"))
    lines = ["# Evaluation comparison", ""]
    for proto_name, t in cmp["tables"].items():
        lines += [f"## {t['title']} (`{proto_name}`)", ""]
        rows = [[r["label"], *[r["values"].get(c, "") for c in t["columns"]], r["scored"],
                 r["folds"] if r["folds"] is not None else "", f"`{r['data']}`"] for r in t["rows"]]
        lines.append(md_table(["Method", *t["columns"], "scored", "folds", "data"], rows))
        for p in plots.get(proto_name, []):
            lines.append(f"![{os.path.basename(p)}]({os.path.basename(p)})\n")
        t["plots"] = plots.get(proto_name, [])
    md_path = os.path.join(out_dir, "report.md")
    json_path = os.path.join(out_dir, "report.json")
    html_path = os.path.join(out_dir, "report.html")
    md = "\n".join(lines)
    atomic_write_text(md_path, md)
    atomic_write_text(html_path, markdown_to_html(md, out_dir))
    cmp["files"] = {"markdown": md_path, "json": json_path, "html": html_path}
    atomic_write_text(json_path, json.dumps(_clean(cmp), indent=1, default=_json_default) + "\n")
    return cmp


def _data_folder(res: Dict[str, Any]) -> str:
    """The folder of faces a result was scored on (the protocol's image folder when it
    names one, else its data root)."""
    opts = res.get("options", {}) or {}
    root = str(res.get("data_root", ""))
    for key in ("images", "hr"):
        v = opts.get(key)
        if isinstance(v, str) and v and v != "auto":
            return v if os.path.isabs(v) else os.path.join(root, v)
    return root
