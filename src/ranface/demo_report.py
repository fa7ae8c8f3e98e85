"""The report of ``ranface demo``: one Markdown file and one self-contained HTML page.

Sections: a Table-2-like table (HR / LR / MR rows: 10-fold accuracy and TAR@FAR at full
resolution and at every probe size), accuracy vs probe pixels, ROC curves, a Fig.-5-style
face grid (HR | bicubic | MR-GAN | real LR), the translation gate W over MR training,
the realism table (when computed), and the exact configuration and time of every stage.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .eval.protocols.pairs import dropped_note
from .eval.report import md_table, plot_curves, plot_panels
from .io_utils import atomic_write_bytes, atomic_write_text


def _pct(x: Optional[float], std: Optional[float] = None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _load(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def results_table(results: Mapping[str, Dict[str, Any]], mode: str = "hr-lr") -> str:
    """Rows = models; columns = full resolution and each probe size (accuracy %)."""
    sizes = next(iter(results.values()))["metrics"]["sizes"]
    head = ["model", "full"] + [f"{s} px" for s in sizes]
    rows = []
    for label, r in results.items():
        m = r["metrics"]
        rows.append([label, _pct(m["full"]["acc"], m["full"]["acc_std"])]
                    + [_pct(m[mode][str(s)]["acc"], m[mode][str(s)]["acc_std"]) for s in sizes])
    return md_table(head, rows)


def tar_table(results: Mapping[str, Dict[str, Any]], mode: str = "hr-lr") -> str:
    sizes = next(iter(results.values()))["metrics"]["sizes"]
    fars = next(iter(results.values()))["metrics"]["fars"]
    head = ["model"] + [f"full TAR@{f}" for f in fars] + [f"{s}px TAR@{f}" for s in sizes for f in fars]
    rows = []
    for label, r in results.items():
        m = r["metrics"]

        def t(d: Dict[str, Any], f: str) -> str:
            v = d["tar"][f]["tar"]
            return "n/m" if v is None else f"{v:.3f}"

        rows.append([label] + [t(m["full"], f) for f in fars] + [t(m[mode][str(s)], f) for s in sizes for f in fars])
    return md_table(head, rows)


def paired_table(results: Mapping[str, Dict[str, Any]], baseline: str = "HR", mode: str = "hr-lr",
                 n_boot: int = 2000, seed: int = 0) -> Tuple[str, Dict[str, Dict[str, Any]]]:
    """Each model minus ``baseline`` on the same pairs (accuracy points) with a 95% paired
    bootstrap interval over pairs, resampled within each fold
    (:func:`ranface.eval.metrics.paired_bootstrap_difference`)."""
    from .eval.metrics import paired_bootstrap_difference

    if baseline not in results:
        return "", {}
    base = results[baseline]
    sizes = base["metrics"]["sizes"]
    keys = [("full", lambda m: m["full"])] + [(f"{s} px", lambda m, s=s: m[mode][str(s)]) for s in sizes]
    lines_b = base.get("scored_pairs", {}).get("lines")
    head = ["model"] + [k for k, _ in keys]
    rows, out = [], {}
    for label, r in results.items():
        if label == baseline:
            continue
        if lines_b is None or r.get("scored_pairs", {}).get("lines") != lines_b:
            continue  # not the same scored pairs: no paired comparison
        folds = r["scored_pairs"]["folds"]
        cells, rec = [label], {}
        for k, pick in keys:
            ca = [c == "1" for c in pick(r["metrics"])["correct"]]
            cb = [c == "1" for c in pick(base["metrics"])["correct"]]
            d = paired_bootstrap_difference(ca, cb, folds=folds, n_boot=n_boot, seed=seed)
            rec[k] = d
            sig = "" if d["lo"] <= 0 <= d["hi"] else " *"
            cells.append(f"{100 * d['diff']:+.2f} [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]{sig}")
        rows.append(cells)
        out[label] = rec
    if not rows:
        return "", {}
    return md_table(head, rows), out


def face_grid(out: str, path: str, n: int = 6, seed: int = 0) -> Optional[str]:
    """Fig.-5-style grid: one row per training face: HR | bicubic | MR-GAN | a real LR face."""
    from PIL import Image

    faces = os.path.join(out, "faces_train")
    cols = [faces, os.path.join(out, "lr_bicubic"), os.path.join(out, "lr_mrgan")]
    if not all(os.path.isdir(c) for c in cols):
        return None
    rels = sorted(os.path.relpath(os.path.join(dp, f), faces) for dp, _, fs in os.walk(faces)
                  for f in fs if f.lower().endswith((".jpg", ".png")))
    rels = [r for r in rels if all(os.path.exists(os.path.join(c, r)) for c in cols)]
    pool_dir = os.path.join(out, "lr_pool")
    pool = sorted(os.path.relpath(os.path.join(dp, f), pool_dir) for dp, _, fs in os.walk(pool_dir)
                  for f in fs if f.lower().endswith((".jpg", ".png")))
    if not rels:
        return None
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rels), size=min(n, len(rels)), replace=False)
    pool_pick = rng.choice(len(pool), size=len(pick), replace=len(pool) < len(pick)) if pool else []
    s = 112
    grid = Image.new("RGB", (4 * s + 10, len(pick) * s + 2 * (len(pick) - 1)), "white")
    for row, i in enumerate(pick):
        ims = [Image.open(os.path.join(c, rels[i])).convert("RGB").resize((s, s)) for c in cols]
        if len(pool):
            ims.append(Image.open(os.path.join(pool_dir, pool[pool_pick[row]])).convert("RGB").resize((s, s)))
        for col, im in enumerate(ims):
            grid.paste(im, (col * (s + 3), row * (s + 2)))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def gate_curve(models: Mapping[str, str], path: str) -> Optional[str]:
    from .train.stats import read_metrics

    series = {}
    for label, run in models.items():
        if not label.startswith("MR") or not os.path.isdir(run):
            continue
        rows = [r for r in read_metrics(run, "train") if "recog/w_mean" in r]
        if rows:
            from .eval.report import curve

            series[label] = curve([r["step"] for r in rows], [r["recog/w_mean"] for r in rows], "step",
                                  "mean W (Eq. 8)", y_err=[r["recog/w_std"] for r in rows], markers=True)
    if not series:
        return None
    return plot_curves(series, path, "translation gate W over MR training (error bars: std)")


def _img_tag(path: str) -> str:
    with open(path, "rb") as fh:
        data = base64.b64encode(fh.read()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def _md_to_html(md: str, images: Mapping[str, str]) -> str:
    """Tiny Markdown subset -> HTML (headings, tables, lists, paragraphs, images inlined)."""
    out: List[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            body = [r for r in rows if not all(set(c) <= set("-: ") for c in r)]
            out.append("<table>")
            for k, r in enumerate(body):
                tag = "th" if k == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in r) + "</tr>")
            out.append("</table>")
            continue
        if ln.startswith("!["):
            name = ln[ln.index("(") + 1: ln.rindex(")")]
            out.append(_img_tag(images[name]) if name in images else "")
        elif ln.startswith("#"):
            level = len(ln) - len(ln.lstrip("#"))
            out.append(f"<h{level}>{html.escape(ln[level:].strip())}</h{level}>")
        elif ln.startswith("- "):
            out.append(f"<li>{html.escape(ln[2:])}</li>")
        elif ln.startswith("```"):
            block = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            out.append("<pre>" + html.escape("\n".join(block)) + "</pre>")
        elif ln.strip():
            out.append(f"<p>{html.escape(ln)}</p>")
        i += 1
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}pre{background:#f4f4f4;padding:8px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>ranface demo</title><style>{style}</style>" \
           f"</head><body>{''.join(out)}</body></html>"


def write_report(cfg: Any, out: str, stages: Any, models: Mapping[str, str],
                 evals: Mapping[str, Dict[str, Any]], total_s: float,
                 realism_records: Optional[Sequence[Dict[str, Any]]] = None) -> str:
    results = {label: _load(e["result"]) for label, e in evals.items()}
    figs: Dict[str, str] = {}
    rep = os.path.join(out, "report")
    os.makedirs(rep, exist_ok=True)
    sizes = next(iter(results.values()))["metrics"]["sizes"]
    for mode in ("hr-lr", "lr-lr"):
        series = {}
        for label, r in results.items():
            m = r["metrics"]
            from .eval.report import curve

            series[label] = curve(sizes, [m[mode][str(s)]["acc"] for s in sizes], "probe width (px)",
                                  f"{m.get('folds', 10)}-fold accuracy", markers=True)
        figs[f"acc_{mode}.png"] = plot_curves(series, os.path.join(rep, f"acc_{mode}.png"),
                                              f"accuracy vs probe width ({mode})")
    roc_size = str(min(sizes, key=lambda s: abs(s - 16)))
    panels = {"full resolution": {l: r["curves"]["roc/full"] for l, r in results.items()},
              f"HR-vs-LR {roc_size} px": {l: r["curves"][f"roc/hr-lr/{roc_size}"] for l, r in results.items()}}
    figs["roc.png"] = plot_panels(panels, os.path.join(rep, "roc.png"))
    g = face_grid(out, os.path.join(rep, "faces.png"), seed=cfg.seed)
    if g:
        figs["faces.png"] = g
    w = gate_curve(models, os.path.join(rep, "gate_w.png"))
    if w:
        figs["gate_w.png"] = w

    n_folds = next(iter(results.values()))["metrics"].get("folds", 10)
    paired_md, diffs = paired_table(results)
    split = stages.records.get("split", {}).get("result", {})
    pool = stages.records.get("lr_pool", {}).get("result", {})
    md = [f"# ranface demo report (profile `{cfg.profile}`)", "",
          f"- data: `{cfg.data_root}`; faces aligned to the `{cfg.template}` template at {cfg.face_size} px",
          f"- held-out LFW folds {split.get('test_folds')} ({split.get('test_pairs')} pairs, "
          f"{split.get('test_photos')} photos); training: {split.get('train_identities')} identities "
          f"disjoint from them, {split.get('train_photos')} photos",
          f"- real LR pool: {pool.get('faces_written')} faces from the crowd photos "
          f"(eye-to-mouth 10..30 px, median {pool.get('eye_mouth_px', {}).get('median')})",
          f"- total time {total_s / 60:.1f} min", "",
          "## Verification accuracy, HR-vs-LR (Table 2 shape)", "",
          f"{n_folds}-fold accuracy (%) on the held-out pairs (threshold of each fold chosen on the "
          "other folds); the second image of each pair shrunk to the probe "
          "width and resized back (bicubic, antialiased).", "",
          results_table(results, "hr-lr"), dropped_note(next(iter(results.values()))),
          *_paired_section(paired_md),
          "## LR-vs-LR (both images degraded)", "", results_table(results, "lr-lr"),
          "## TAR@FAR, HR-vs-LR", "", tar_table(results, "hr-lr"),
          "## Accuracy vs probe pixels", "", "![acc_hr-lr.png](acc_hr-lr.png)", "",
          "![acc_lr-lr.png](acc_lr-lr.png)", "",
          "## ROC curves", "", "![roc.png](roc.png)", ""]
    if "faces.png" in figs:
        md += ["## Synthesized faces (Fig. 5 shape)", "",
               "Columns: HR training face | bicubic (random 8..32 px) | MR-GAN | a real LR face from the pool.", "",
               "![faces.png](faces.png)", ""]
    if "gate_w.png" in figs:
        md += ["## Translation gate W (Eq. 8)", "", "![gate_w.png](gate_w.png)", ""]
    realism = [_load(r["result"]) for r in (realism_records or [])]
    if realism:
        from .eval.protocols.realism import realism_table

        md += ["## Realism of synthesized LR faces", "",
               "Expert: the HR model. Fréchet distance between the Gaussians of expert embeddings of the "
               "synthesized and the real LR faces; held-out accuracy of a real-vs-synthesized logistic "
               "regression (0.5 = indistinguishable); mean cosine between x and its synthesized twin.", "",
               realism_table(realism), ""]
    md += ["## Stages", "", md_table(["stage", "seconds", "settings"],
                                     [[k, f"{v:.0f}", json.dumps(stages.records.get(k, {}).get("settings", {}),
                                                                  default=str)[:160]]
                                      for k, v in stages.times.items()]),
           "## Models", "", md_table(["label", "path"], [[k, v] for k, v in models.items()]),
           "## Demo configuration", "", "```", json.dumps(_plain(cfg), indent=1), "```", ""]
    text = "\n".join(md)
    atomic_write_text(os.path.join(rep, "report.md"), text)
    atomic_write_text(os.path.join(rep, "report.html"), _md_to_html(text, figs))
    summary = {label: {"full": r["metrics"]["full"]["acc"],
                       **{f"hr-lr {s}": r["metrics"]["hr-lr"][str(s)]["acc"] for s in sizes}}
               for label, r in results.items()}
    atomic_write_text(os.path.join(rep, "paired_vs_hr.json"), json.dumps(diffs, indent=1))
    atomic_write_text(os.path.join(rep, "summary.json"), json.dumps(summary, indent=1))
    return os.path.join(rep, "report.md")


def _paired_section(table: str) -> List[str]:
    if not table:
        return []
    return ["## Difference from the HR model (paired, HR-vs-LR)", "",
            "Accuracy points of each model minus the HR model on the same held-out pairs, with a 95% "
            "paired bootstrap interval over pairs (2,000 resamples within each fold); * marks an "
            "interval that excludes 0. A difference whose interval contains 0 is inside the noise.", "",
            table, ""]


def _plain(cfg: Any) -> Dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
