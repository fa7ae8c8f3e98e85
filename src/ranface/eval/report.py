"""Evaluation reports: ``result.json`` / ``result.md`` / PNG plots of one protocol run,
and the comparison table that ``ranface report`` builds from several results.

Every file is written atomically. Plots use matplotlib's object API on an Agg canvas
created inside the plotting function (no pyplot, no global backend switch at import).
A result stores its curves (ROC, CMC, TPIR-FPIR, accuracy-vs-pixels) as exact points
subsampled for plotting, so reports can redraw and overlay them without the model.
"""
from __future__ import annotations

import io
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from ..io_utils import atomic_write_bytes, atomic_write_text, check_writable_dir

__all__ = ["fmt_pct", "fmt_rate", "md_table", "curve", "plot_curves", "write_result",
           "render_markdown", "load_result", "compare_results", "write_comparison",
           "REPORT_FORMAT"]

REPORT_FORMAT = "ranface-report/1"
NOT_MEASURABLE = "n/m"


# ----------------------------------------------------------------------------- text
def fmt_pct(x: Optional[float], std: Optional[float] = None, digits: int = 2) -> str:
    """0.9861 -> '98.61' (and ' ± 0.40' with a std); None -> 'n/m'."""
    if x is None:
        return NOT_MEASURABLE
    s = f"{100 * x:.{digits}f}"
    return s if std is None else f"{s} ± {100 * std:.{digits}f}"


def fmt_rate(x: Optional[float], digits: int = 4) -> str:
    """A TAR as the paper prints it (0.3273); None -> 'n/m'."""
    return NOT_MEASURABLE if x is None else f"{x:.{digits}f}"


def far_label(far: float) -> str:
    """1e-07 -> '1e-7', 0.3 -> '0.3' (column titles)."""
    s = f"{far:g}"
    if "e" in s:
        m, e = s.split("e")
        s = f"{m}e{int(e)}"
    return s


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def method_label(result: Mapping[str, Any]) -> str:
    """A short name for the model of a result: its run directory, file or folder name."""
    src = str(result.get("model", {}).get("source", "") or "model")
    p = os.path.normpath(src)
    base = os.path.basename(p)
    parent = os.path.basename(os.path.dirname(p))
    if base == "model.pt" and parent:
        return parent
    if parent == "checkpoints":
        run = os.path.basename(os.path.dirname(os.path.dirname(p)))
        return f"{run}/{base}" if run else base
    return base or src


# ----------------------------------------------------------------------------- curves
def curve(x: Sequence[float], y: Sequence[float], x_label: str, y_label: str,
          log_x: bool = False, compare: bool = False, **extra: Any) -> Dict[str, Any]:
    """A curve as stored in a result: plain float lists plus how to draw it.

    ``compare`` marks curves that ``ranface report`` overlays across results.
    """
    d = {"x": [float(v) for v in np.asarray(x).ravel()],
         "y": [float(v) for v in np.asarray(y).ravel()],
         "x_label": x_label, "y_label": y_label, "log_x": bool(log_x), "compare": bool(compare)}
    d.update(extra)
    return d


def _new_figure(size: Tuple[float, float] = (6.0, 4.5)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _draw(ax, series: Mapping[str, Mapping[str, Any]], title: str) -> None:
    first = next(iter(series.values()))
    for label, c in series.items():
        x, y = np.asarray(c["x"], float), np.asarray(c["y"], float)
        if c.get("log_x"):
            keep = x > 0
            x, y = x[keep], y[keep]
        err = c.get("y_err")
        style = dict(marker="o", markersize=3) if c.get("markers") else {}
        if err is not None:
            e = np.asarray(err, float)[keep] if c.get("log_x") else np.asarray(err, float)
            ax.errorbar(x, y, yerr=e, label=label, capsize=3, **style)
        else:
            ax.plot(x, y, label=label, drawstyle=c.get("drawstyle", "default"), **style)
        if c.get("hline") is not None:
            ax.axhline(float(c["hline"]), linestyle="--", linewidth=1, color="grey")
    if first.get("log_x"):
        ax.set_xscale("log")
    elif first.get("markers"):  # a few measured sizes: tick exactly those
        ax.set_xticks(sorted({float(v) for c in series.values() for v in c["x"]}))
    if first.get("invert_x"):
        ax.invert_xaxis()
    ax.set_xlabel(first["x_label"])
    ax.set_ylabel(first["y_label"])
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if len(series) > 1 or next(iter(series)) != "":
        ax.legend(fontsize=7, loc="best")


def plot_curves(series: Mapping[str, Mapping[str, Any]], path: str, title: str = "") -> str:
    """Draw labelled curves (same axes) to a PNG at ``path`` (atomically)."""
    if not series:
        raise ValueError("no curves to plot")
    fig = _new_figure()
    _draw(fig.add_subplot(1, 1, 1), series, title)
    fig.tight_layout()
    return _save(fig, path)


def plot_panels(panels: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str) -> str:
    """Several sets of curves side by side (one subplot per panel title)."""
    n = len(panels)
    fig = _new_figure((5.0 * n, 4.5))
    for k, (title, series) in enumerate(panels.items()):
        _draw(fig.add_subplot(1, n, k + 1), series, title)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- one result
def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    """JSON has no inf/NaN: write them as strings ('inf'), never as invalid tokens."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if math.isfinite(f) else str(f)
    if isinstance(o, np.integer):
        return int(o)
    return o


def render_markdown(proto, result: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """Header (model, data, counts) + the protocol's table(s) + the plots."""
    c = result.get("counts", {})
    lines = [f"# {proto.title or proto.name}: {method_label(result)}", "",
             f"- protocol: `{result['protocol']}`",
             f"- model: `{result['model'].get('source', '')}`"
             + (f" ({result['model']['backbone']})" if result["model"].get("backbone") else ""),
             f"- data root: `{result['data_root']}`",
             f"- scored: {c.get('scored', 0)}, skipped: {c.get('skipped', 0)}"
             + "".join(f", {k}: {v}" for k, v in c.items() if k not in ("scored", "skipped")),
             ""]
    if result.get("skipped_examples"):
        lines += ["Skipped (first ones):", ""]
        lines += [f"- {m}" for m in result["skipped_examples"]] + [""]
    lines.append(proto.markdown(result).rstrip() + "\n")
    for p in plots:
        lines.append(f"![{os.path.splitext(os.path.basename(p))[0]}]({os.path.basename(p)})\n")
    return "\n".join(lines)


def write_result(proto, result: Dict[str, Any], out_dir: str) -> Dict[str, Any]:
    """Write plots, ``result.md`` and ``result.json`` (last, so its presence means the
    others are complete) into ``out_dir``; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    plots = proto.plots(result, out_dir)
    md_path = os.path.join(out_dir, "result.md")
    json_path = os.path.join(out_dir, "result.json")
    files = {"json": json_path, "markdown": md_path, "plots": list(plots)}
    atomic_write_text(md_path, render_markdown(proto, result, plots))
    result = dict(result, files=files)
    atomic_write_text(json_path, json.dumps(_clean(result), indent=1,
                                            default=_json_default) + "\n")
    return files


def load_result(path: str) -> Dict[str, Any]:
    """Read a ``result.json`` written by ``ranface evaluate``."""
    from .protocols import RESULT_FORMAT

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
    from .protocols import get_protocol

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
                          "scored": res.get("counts", {}).get("scored"),
                          "skipped": res.get("counts", {}).get("skipped"),
                          "values": row})
        results.append((label, res))
    return {"format": REPORT_FORMAT, "tables": tables, "_results": results}


def write_comparison(paths: Sequence[str], out_dir: str,
                     labels: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``ranface report``: ``report.md`` + ``report.json`` + overlaid curves in ``out_dir``."""
    check_writable_dir(out_dir)  # a read-only place: one line before any work
    cmp = compare_results(paths, labels)
    results = cmp.pop("_results")
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
        rows = [[r["label"], *[r["values"].get(c, "") for c in t["columns"]], r["scored"]]
                for r in t["rows"]]
        lines.append(md_table(["Method", *t["columns"], "scored"], rows))
        for p in plots.get(proto_name, []):
            lines.append(f"![{os.path.basename(p)}]({os.path.basename(p)})\n")
        t["plots"] = plots.get(proto_name, [])
    md_path = os.path.join(out_dir, "report.md")
    json_path = os.path.join(out_dir, "report.json")
    atomic_write_text(md_path, "\n".join(lines))
    cmp["files"] = {"markdown": md_path, "json": json_path}
    atomic_write_text(json_path, json.dumps(_clean(cmp), indent=1, default=_json_default) + "\n")
    return cmp
