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


def _correct(r: Mapping[str, Any], key: str, mode: str = "hr-lr") -> Optional[List[bool]]:
    """Each scored pair's k-fold decision of result ``r`` at ``key`` ("full" or a probe size)."""
    m = r["metrics"]
    d = m["full"] if key == "full" else m.get(mode, {}).get(key)
    return None if d is None or "correct" not in d else [c == "1" for c in d["correct"]]


def paired_difference(a: Mapping[str, Any], b: Mapping[str, Any], key: str, mode: str = "hr-lr",
                      n_boot: int = 2000, seed: int = 0) -> Optional[Dict[str, Any]]:
    """Accuracy of result ``a`` minus result ``b`` at ``key``, with the 95% paired bootstrap
    interval (:func:`ranface.eval.metrics.paired_bootstrap_difference`); None when the two
    did not score the same pairs or lack per-pair decisions."""
    from .eval.metrics import paired_bootstrap_difference

    lines = a.get("scored_pairs", {}).get("lines")
    ca, cb = _correct(a, key, mode), _correct(b, key, mode)
    if lines is None or lines != b.get("scored_pairs", {}).get("lines") or ca is None or cb is None:
        return None
    return paired_bootstrap_difference(ca, cb, folds=a["scored_pairs"]["folds"], n_boot=n_boot, seed=seed)


def paired_table(results: Mapping[str, Dict[str, Any]], baseline: str = "HR", mode: str = "hr-lr",
                 n_boot: int = 2000, seed: int = 0) -> Tuple[str, Dict[str, Dict[str, Any]]]:
    """Each model minus ``baseline`` on the same pairs (accuracy points) with a 95% paired
    bootstrap interval over pairs, resampled within each fold (:func:`paired_difference`)."""
    if baseline not in results:
        return "", {}
    base = results[baseline]
    keys = ["full"] + [str(s) for s in base["metrics"]["sizes"]]
    rows, out = [], {}
    for label, r in results.items():
        if label == baseline:
            continue
        rec = {("full" if k == "full" else f"{k} px"): paired_difference(r, base, k, mode, n_boot, seed) for k in keys}
        if any(d is None for d in rec.values()):
            continue  # not the same scored pairs: no paired comparison
        cells = [label]
        for d in rec.values():
            sig = "" if d["lo"] <= 0 <= d["hi"] else " *"
            cells.append(f"{100 * d['diff']:+.2f} [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]{sig}")
        rows.append(cells)
        out[label] = rec
    if not rows:
        return "", {}
    return md_table(["model"] + [("full" if k == "full" else f"{k} px") for k in keys], rows), out


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


# the targets of the main job (issue 11, item 8): (name, compared model, key, bound in accuracy points)
TARGETS: Tuple[Tuple[str, str, str, float], ...] = (
    ("MR >= HR + 3 at 16 px", "HR", "16", 3.0),
    ("MR >= HR + 5 at 12 px", "HR", "12", 5.0),
    ("MR >= HR - 0.5 at full resolution", "HR", "full", -0.5),
    ("MR >= LR at full resolution", "LR", "full", 0.0),
    ("MR >= LR - 1 at 16 px", "LR", "16", -1.0),
    ("MR >= LR - 1 at 12 px", "LR", "12", -1.0),
)




def targets_table(results: Mapping[str, Dict[str, Any]], mr: str, lr: str, hr: str = "HR",
                  n_boot: int = 2000, seed: int = 0) -> Tuple[str, List[Dict[str, Any]]]:
    """Each target of :data:`TARGETS` for model ``mr``: the paired difference (points) with
    its 95% bootstrap interval, and whether the point estimate meets the bound ("met") and
    whether the whole interval does ("met, interval clear")."""
    if mr not in results:
        return "", []
    recs: List[Dict[str, Any]] = []
    for name, other, key, bound in TARGETS:
        ref = {"HR": hr, "LR": lr}[other]
        d = paired_difference(results[mr], results[ref], key, n_boot=n_boot, seed=seed) if ref in results else None
        if d is None:
            continue
        diff, lo, hi = 100 * d["diff"], 100 * d["lo"], 100 * d["hi"]
        status = target_status(diff, lo, hi, bound)
        recs.append({"target": name, "model": mr, "reference": ref, "key": key, "bound": bound,
                     "diff": diff, "lo": lo, "hi": hi, "status": status})
    return _targets_md(recs), recs


def target_status(diff: float, lo: float, hi: float, bound: float) -> str:
    """"met" / "met, interval clear" / "missed, interval reaches it" / "missed". A mean of
    fold means is exact only up to rounding (-0.5 may come out as -0.50000001), so
    comparisons allow 1e-6 points."""
    eps = 1e-6
    if diff >= bound - eps:
        return "met, interval clear" if lo >= bound - eps else "met"
    return "missed, interval reaches it" if hi >= bound - eps else "missed"


def _targets_md(recs: Sequence[Mapping[str, Any]]) -> str:
    if not recs:
        return ""
    rows = [[r["target"], f"{r['model']} - {r['reference']}", f"{r['diff']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]",
             f"{r['bound']:+.1f}", r["status"]] for r in recs]
    return md_table(["target", "difference", "points [95% CI]", "bound", "status"], rows)


def twin_bands(out: str, degraders: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """The band each synthesized twin recorded (``synth_manifest.json`` degrader_info.band):
    ``<deg>`` for the training twins, ``<deg> @ pool band`` for the realism twins."""
    from .gan.degraders import MANIFEST_NAME, read_synth_manifest
    from .pipelines.table1 import REALISM_ONLY, realism_twins

    bands = {}
    folders = [(deg, os.path.join(out, f"lr_{deg}")) for deg in degraders] + \
        [(f"{deg} @ pool band", realism_twins(out, deg)) for deg in dict.fromkeys(list(degraders) + list(REALISM_ONLY))]
    for label, folder in folders:
        band = ((read_synth_manifest(os.path.join(folder, MANIFEST_NAME)) or {})
                .get("degrader_info") or {}).get("band")
        if band:
            bands[label] = band
    return bands


def band_section(out: str, degraders: Sequence[str], probe_sizes: Sequence[int], template: str,
                 path: str) -> Tuple[List[str], Optional[str]]:
    """Markdown lines and a histogram: the real pool's eye-to-mouth distances beside the band
    of every synthesized twin and the probes' eye-to-mouth distances (one band definition:
    :mod:`ranface.align.select`)."""
    from .align.prepare import prepared_eye_mouth
    from .align.select import LR_BAND, eye_mouth_fraction

    d = np.asarray(prepared_eye_mouth(os.path.join(out, "lr_pool")))
    bands = twin_bands(out, degraders)
    if d.size == 0 and not bands:
        return [], None
    r = eye_mouth_fraction(template)
    rows = []
    if d.size:
        q = np.percentile(d, [5, 50, 95])
        rows.append(["real LR pool", f"{d.size} faces", f"{d.min():.1f} .. {d.max():.1f} (5/50/95%: "
                     f"{q[0]:.1f} / {q[1]:.1f} / {q[2]:.1f})"])
    for deg, b in bands.items():
        w, e = b.get("widths_px", []), b.get("eye_mouth_px", [])
        rows.append([f"twins: {deg}", f"widths {w[0]}..{w[1]} px" if len(w) == 2 else "",
                     f"{e[0]:.1f} .. {e[1]:.1f}" + (f" ({b['source']})" if b.get("source") else "")])
    for s in probe_sizes:
        rows.append([f"probe {s} px", f"width {s} px", f"{s * r:.1f}"])
    lines = ["## The LR band: real pool, synthesized twins, probes", "",
             f"Eye-midpoint to mouth-centre distance in pixels (paper §4.1 selects real LR faces at "
             f"{LR_BAND[0]:.0f}..{LR_BAND[1]:.0f} px); a face aligned to the `{template}` template and "
             f"shrunk to w px has {r:.3f} w px.", "",
             md_table(["source", "size", "eye-to-mouth px"], rows), ""]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a pinned dependency
        return lines, None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if d.size:
        ax.hist(d, bins=np.arange(0, max(40.0, float(d.max()) + 2), 1.0), color="0.6", label="real LR pool")
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    for k, (deg, b) in enumerate((d, b) for d, b in bands.items() if "@" not in d):  # training twins
        e = b.get("eye_mouth_px", [])
        if len(e) == 2:
            lo, hi = e if e[1] > e[0] else (e[0] - 0.25, e[1] + 0.25)
            ax.axvspan(lo, hi, alpha=0.18, color=colors[k % 4], label=f"twins: {deg}")
    for s in probe_sizes:
        ax.axvline(s * r, color="k", ls=":", lw=1)
    ax.set_xlabel("eye-to-mouth distance (px); dotted: probes")
    ax.set_ylabel("faces")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return lines + ["![band.png](band.png)", ""], path


def training_section(stages: Any) -> List[str]:
    """Start-of-training check of each LR/MR stage and, for MR, the Eq. 10 terms, their
    gradient shares at f_HR and D's scores at the first and last logged step."""
    rows, trace_rows = [], []
    for name, rec in stages.records.items():
        res = rec.get("result", {}) if isinstance(rec, Mapping) else {}
        sc = res.get("start_check") or {}
        if sc:
            rows.append([name, f"{sc.get('loss', float('nan')):.2f}", f"{sc.get('log_classes', float('nan')):.2f}",
                         f"{sc.get('acc', float('nan')):.3f}", f"{sc.get('cosine_acc', float('nan')):.3f}",
                         f"{res.get('final_acc', float('nan')):.3f}" if res.get("final_acc") is not None else "n/a"])
        for t in (res.get("adaption_trace") or {}).values():  # first and last logged step
            cell = lambda k: "n/a" if t.get(k) is None else f"{t[k]:.3f}"  # noqa: E731
            trace_rows.append([name, str(t.get("step"))]
                              + [cell(f"recog/{k}") for k in ("l_c_hr", "l_feature_g", "l_p", "l_f")]
                              + [" / ".join(cell(f"recog/grad_share/{k}") for k in ("l_c_hr", "l_feature_g", "l_p", "l_f"))]
                              + [cell(k) for k in ("feat_D/d_real", "feat_D/d_translated", "recog/w_mean")])
    out: List[str] = []
    if rows:
        out += ["## Start of training (margin head vs log C)", "",
                "Loss and top-1 accuracy of the margin logits on the initial features, before the first "
                "step, beside log(classes); final: training accuracy at the last logged step.", "",
                md_table(["stage", "loss", "log C", "margin acc", "cosine acc", "final train acc"], rows), ""]
    if trace_rows:
        out += ["## Adaption terms (Eq. 10) and the feature discriminator", "",
                "Unweighted terms; gradient share of each weighted term at f_HR "
                "(L_c^HR / alpha L_feature^G / beta L_p / gamma L_f); D's mean score on f_LR^Real and on "
                "T_LR(f_HR); mean gate W (Eq. 8).", "",
                md_table(["stage", "step", "L_c^HR", "L_feature^G", "L_p", "L_f", "grad shares", "d_real",
                          "d_translated", "W"], trace_rows), ""]
    return out


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
                 realism_records: Optional[Sequence[Dict[str, Any]]] = None,
                 heldout: Optional[Mapping[str, Dict[str, Any]]] = None) -> str:
    results = {label: _load(e["result"]) for label, e in evals.items()}
    held = {label: _load(e["result"]) for label, e in (heldout or {}).items()}
    figs: Dict[str, str] = {}
    rep = os.path.join(out, "report")
    os.makedirs(rep, exist_ok=True)
    sizes = next(iter(results.values()))["metrics"]["sizes"]
    modes = [m for m in ("hr-lr", "lr-lr") if m in next(iter(results.values()))["metrics"].get("modes", ["hr-lr"])]
    for mode in modes:
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
    from .pipelines.table1 import write_table1

    realism = [_load(r["result"]) for r in (realism_records or [])]
    t1 = write_table1(rep, cfg.degraders, results, realism, sizes, os.path.join(out, "faces_train"),
                      os.path.join(out, "lr_pool"), out, seed=cfg.seed, heldout=held)
    if t1["grid"]:
        figs["degraders.png"] = t1["grid"]
    w = gate_curve(models, os.path.join(rep, "gate_w.png"))
    if w:
        figs["gate_w.png"] = w

    n_folds = next(iter(results.values()))["metrics"].get("folds", 10)
    paired_md, diffs = paired_table(results)
    target_recs: List[Dict[str, Any]] = []
    for deg in cfg.degraders:  # every MR model against HR and against its own LR teacher
        for mr in (f"MR ({deg})", f"MR ({deg}, no translator)"):
            target_recs += targets_table(results, mr, f"LR ({deg})")[1]
    targets_md = _targets_md(target_recs)
    band_md, band_fig = band_section(out, list(cfg.degraders), list(cfg.probe_sizes), cfg.template,
                                     os.path.join(rep, "band.png"))
    if band_fig:
        figs["band.png"] = band_fig
    split = stages.records.get("split", {}).get("result", {})
    pool = stages.records.get("lr_pool", {}).get("result", {})
    md = [f"# ranface demo report (profile `{cfg.profile}`)", "",
          f"- data: `{cfg.data_root}`; faces aligned to the `{cfg.template}` template at {cfg.face_size} px",
          f"- held-out LFW folds {split.get('test_folds')} ({split.get('test_pairs')} pairs, "
          f"{split.get('test_photos')} photos); training: {split.get('train_identities')} identities "
          f"disjoint from them, {split.get('train_photos')} photos",
          f"- real LR pool: {pool.get('faces_written')} faces from the crowd photos "
          f"(eye-to-mouth {pool.get('lr_select')} px, median {pool.get('eye_mouth_px', {}).get('median')})",
          f"- total time {total_s / 60:.1f} min; accuracies are {n_folds}-fold over the held-out pairs (each "
          f"fold's threshold chosen on the other {n_folds - 1}; with one held-out LFW fold the pairs are split "
          "into 10 pseudo-folds)", "",
          *_targets_section(targets_md),
          "## Verification accuracy, HR-vs-LR (Table 2 shape)", "",
          f"{n_folds}-fold accuracy (%) on the held-out pairs (threshold of each fold chosen on the "
          "other folds); the second image of each pair shrunk to the probe "
          "width and resized back (bicubic, antialiased).", "",
          results_table(results, "hr-lr"), dropped_note(next(iter(results.values()))),
          *_paired_section(paired_md),
          *_heldout_section(held),
          *band_md, *training_section(stages),
          *(["## LR-vs-LR (both images degraded)", "", results_table(results, "lr-lr")] if "lr-lr" in modes else []),
          "## TAR@FAR, HR-vs-LR", "", tar_table(results, "hr-lr"),
          "## Accuracy vs probe pixels", "", *[f"![acc_{m}.png](acc_{m}.png)\n" for m in modes],
          "## ROC curves", "", "![roc.png](roc.png)", ""]
    if "gate_w.png" in figs:
        md += ["## Translation gate W (Eq. 8)", "", "![gate_w.png](gate_w.png)", ""]
    if realism:
        from .pipelines.table1 import table1_markdown

        md += ["## LR synthesis methods (Table 1 shape)", "",
               "Realism against the real LR pool (expert: the HR model): Fréchet distance between the Gaussians "
               "of expert embeddings of synthesized and real LR faces, +- 1.96 bootstrap sd over "
               "faces; held-out accuracy of a real-vs-synthesized logistic regression with the 95% range of a "
               "guessing classifier on as many test faces (inside it = indistinguishable); mean cosine of x and "
               "its twin. Then HR-vs-LR accuracy (%) of each method's LR model (and MR model where trained): "
               "the paper's decisive test. Same faces, steps, batch and learning rate for every method.", "",
               table1_markdown(t1["rows"], sizes), ""]
    if "degraders.png" in figs:
        md += ["## Synthesized faces (Fig. 5 shape)", "",
               "Columns: HR training face | each method's twin of it | a real LR face from the pool "
               "(bands: see the LR band section).", "",
               "![degraders.png](degraders.png)", ""]
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
    atomic_write_text(os.path.join(rep, "targets.json"), json.dumps(target_recs, indent=1))
    atomic_write_text(os.path.join(rep, "summary.json"), json.dumps(summary, indent=1))
    return os.path.join(rep, "report.md")


def _targets_section(table: str) -> List[str]:
    if not table:
        return []
    return ["## Targets of the main job", "",
            "Each MR model against the HR model and against its own LR model (HR-vs-LR accuracy points, "
            "paired over the same held-out pairs, 95% bootstrap interval). \"met\" compares the point estimate with the "
            "bound; \"interval clear\" means the whole interval is on the right side of it.", "",
            table, ""]


def _heldout_section(held: Mapping[str, Dict[str, Any]]) -> List[str]:
    """HR-vs-LR accuracy of every model on probes of a degrader none of them trained on."""
    if not held:
        return []
    probe = next(iter(held.values()))["metrics"]["probe"]["degrader"]
    table, _ = paired_table(held)
    return [f"## Held-out probes (`{probe}`)", "",
            f"The same pairs, the second image degraded by `{probe}` at the probe width (blur, resize, noise "
            "and JPEG, twice, random per image, the same probe for every model) instead of bicubic: a kind of "
            "LR face no model here trained on. Bicubic probes favour models trained on bicubic twins by "
            "construction; these test whether LR training transfers.", "",
            results_table(held, "hr-lr"), "",
            *(["Difference from the HR model (paired, 95% bootstrap interval; * excludes 0):", "", table, ""]
              if table else [])]


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
