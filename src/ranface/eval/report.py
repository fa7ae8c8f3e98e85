"""Evaluation reports: ``result.json`` / ``result.md`` / ``result.html`` / PNG plots of one
protocol run, and the formatting pieces protocols use. (The comparison of several
results, which needs the protocol registry, is :mod:`ranface.eval.comparison`; this
module imports no protocol, so protocols can import it.)

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
           "render_markdown", "markdown_to_html", "REPORT_FORMAT", "RESULT_FORMAT"]

REPORT_FORMAT = "ranface-report/1"
RESULT_FORMAT = "ranface-eval/1"
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
             f"- data root: `{result['data_root']}`"
             + "".join(f"; {k}: `{v}`" for k, v in sorted(result.get("options", {}).items())
                       if k in ("images", "pairs", "hr", "lr", "synth", "real") and v),
             *([f"- folds: {c['folds']} (from the pair file)"] if c.get("folds") else []),
             f"- scored: {c.get('scored', 0)}, skipped: {c.get('skipped', 0)}"
             + "".join(f", {k}: {v}" for k, v in c.items() if k not in ("scored", "skipped", "folds")),
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
    html_path = os.path.join(out_dir, "result.html")
    files = {"json": json_path, "markdown": md_path, "html": html_path, "plots": list(plots)}
    md = render_markdown(proto, result, plots)
    atomic_write_text(md_path, md)
    atomic_write_text(html_path, markdown_to_html(md, out_dir))
    result = dict(result, files=files)
    atomic_write_text(json_path, json.dumps(_clean(result), indent=1,
                                            default=_json_default) + "\n")
    return files




# ----------------------------------------------------------------------------- HTML
_HTML_STYLE = ("body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em;color:#222}"
               "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
               "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
               "th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}"
               "img{max-width:100%;display:block;margin:1em 0}code{background:#f6f6f6}")


def markdown_to_html(md: str, base_dir: str, title: str = "") -> str:
    """The report's Markdown as one self-contained HTML page: headings, lists, tables,
    paragraphs and ``code``; images (PNG files next to the report) embedded as base64,
    so the page can be mailed or archived alone."""
    import base64
    import html as _html
    import re

    def inline(text: str) -> str:
        t = _html.escape(text)
        t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)

    def image(alt: str, src: str) -> str:
        path = src if os.path.isabs(src) else os.path.join(base_dir, src)
        try:
            with open(path, "rb") as fh:
                data = base64.b64encode(fh.read()).decode("ascii")
        except OSError:
            return f"<p>[missing figure {_html.escape(src)}]</p>"
        return f'<img alt="{_html.escape(alt)}" src="data:image/png;base64,{data}">'

    def cells(line: str) -> List[str]:
        parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        return [p.strip().replace("\\|", "|") for p in parts]

    out: List[str] = []
    lines = md.splitlines()
    i, heading = 0, title
    while i < len(lines):
        ln = lines[i]
        img = re.fullmatch(r"\s*!\[([^\]]*)\]\(([^)]+)\)\s*", ln)
        if img:
            out.append(image(img.group(1), img.group(2)))
        elif ln.startswith("#"):
            level = min(len(ln) - len(ln.lstrip("#")), 6)
            text = ln[level:].strip()
            heading = heading or text
            out.append(f"<h{level}>{inline(text)}</h{level}>")
        elif ln.lstrip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(lines[i])
                i += 1
            body = [r for r in rows[1:] if not re.fullmatch(r"\s*\|[\s|:-]+\|?\s*", r)]
            t = ["<table>", "<tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells(rows[0])) + "</tr>"]
            t += ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells(r)) + "</tr>" for r in body]
            out.append("\n".join(t + ["</table>"]))
            continue
        elif ln.lstrip().startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].lstrip().startswith(("- ", "* ")):
                items.append(f"<li>{inline(lines[i].lstrip()[2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif ln.strip():
            para = [ln.strip()]
            while i + 1 < len(lines) and lines[i + 1].strip() and not lines[i + 1].lstrip().startswith(
                    ("#", "|", "- ", "* ", "![")):
                i += 1
                para.append(lines[i].strip())
            out.append(f"<p>{inline(' '.join(para))}</p>")
        i += 1
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{_html.escape(heading or 'ranface report')}</title>"
            f"<style>{_HTML_STYLE}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
