"""Table 1 as one pipeline: every LR synthesis method under one identical budget.

For each degrader (bicubic, second-order, random-degrade, MR-GAN, ...):

1. its LR twin of the HR training faces (``synthesize``; MR-GAN first trains its frozen
   expert, ``train-expert``, then itself, ``train-gan``);
2. its realism against the real LR pool (``lr-realism``: Fréchet distance with a bootstrap
   interval, domain-classifier accuracy with the chance band, identity cosine);
3. its LR model (the HR model fine-tuned on the twin, §4.2) and, for the chosen
   degraders, the MR model (Eq. 7-10), all with the same steps, batch and learning rate;
4. verification accuracy of every model on held-out pairs at full resolution and HR-vs-LR
   at the probe widths (the decisive test of the paper: better twins, better LR model).

One table (``table1.md`` / ``table1.json``) and one face grid of every degrader side by side
(``degraders.png``, Fig. 5 shape). ``ranface table1`` runs it on prepared folders; the demo
runs the same chain (:func:`run_degrader_chain`) inside its pipeline. The recipe knobs
(steps, batch, probe sizes, degraders) are the demo's :class:`ranface.demo.DemoConfig`.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..config import AdaptConfig
from ..io_utils import atomic_write_bytes, atomic_write_text

__all__ = ["realism_methods", "CODEC_CONTROL", "run_degrader_chain", "run_table1", "write_table1_seeds", "evaluate_models", "degrader_grid", "table1_markdown", "REALISM_ONLY"]

# synthesized and scored for realism even when they get no LR model (cheap; Table 1's rows)
REALISM_ONLY = ("random-degrade", "second-order")
# with MR-GAN's codec on (mrgan_codec_p > 0): bicubic twins through the same codec, the
# control that tells what the codec does from what MR-GAN does (a realism row)
CODEC_CONTROL = "bicubic+codec"


def realism_methods(cfg: Any) -> List[str]:
    """Table 1's realism rows: the chain's degraders, then REALISM_ONLY, then the codec's control."""
    extra = [CODEC_CONTROL] if "mrgan" in cfg.degraders and cfg.mrgan_codec_p else []
    return list(dict.fromkeys(list(cfg.degraders) + list(REALISM_ONLY) + extra))


# ------------------------------------------------------------------------- stages
def stage_expert(cfg: Any, out: str, faces: str, teacher: str) -> Dict[str, Any]:
    """MR-GAN's frozen expert F (Eq. 2): a 112-px MobileFaceNet distilled from the HR model."""
    from ..config import from_dict
    from ..demo import _run_cfg
    from ..train.distill import ExpertConfig, run_train_expert

    steps = int(cfg.expert_steps)
    ec = from_dict(ExpertConfig, {
        "data": {"train": faces, "face_size": cfg.face_size, "batch_size": cfg.batch_size, "num_workers": 1},
        "optim": {"max_steps": steps, "warmup_steps": max(1, steps // 10)},
        "teacher": teacher,
        "run": _run_cfg(os.path.join(out, "models"), "expert", cfg, ckpt_every=max(10, steps // 2))})
    s = run_train_expert(ec)
    return {k: s[k] for k in ("run_dir", "steps", "elapsed_s", "final_cosine_to_teacher") if k in s}


def twin_widths(cfg: Any) -> List[int]:
    """The widths of the twins the LR / MR models train on (``bicubic_band`` /
    ``bicubic_sizes``): every degrader's training twins cover the same face sizes."""
    from ..align.select import band_to_widths

    if cfg.bicubic_band:
        return list(band_to_widths(cfg.bicubic_band, cfg.template))
    return list(cfg.bicubic_sizes)


def pool_widths(cfg: Any) -> List[int]:
    """The widths whose eye-to-mouth distances span the real LR pool's band (``LR_BAND``,
    the ``--lr-select`` of the pool, paper §4.1): where real LR faces exist to compare with."""
    from ..align.select import LR_BAND, band_to_widths

    return list(band_to_widths(LR_BAND, cfg.template))


def gan_level_widths(cfg: Any) -> List[int]:
    """The widths z's level ranges over while MR-GAN trains: ``gan_level_widths`` when set,
    else by ``gan_levels``: "pool" = the real pool's band (the discriminators compare fakes
    with real faces of the same sizes; docs/decisions.md), "twins" = the twins' band."""
    if cfg.gan_level_widths:
        return list(cfg.gan_level_widths)
    return pool_widths(cfg) if cfg.gan_levels == "pool" else twin_widths(cfg)


def gan_networks(cfg: Any) -> tuple:
    """(GeneratorConfig, DiscriminatorConfig) of the chain's MR-GAN: the profile's, with the
    regions of the demo's alignment template and z's levels over :func:`gan_level_widths`."""
    from ..gan.config import profile_configs

    gen, disc = profile_configs(cfg.gan_profile)
    gen = dataclasses.replace(gen, template=cfg.template, level_widths=gan_level_widths(cfg))
    return gen, dataclasses.replace(disc, template=cfg.template)


def stage_gan(cfg: Any, out: str, faces: str, pool: str, expert: str) -> Dict[str, Any]:
    from ..config import from_dict
    from ..demo import _run_cfg
    from ..gan.config import GanConfig
    from ..gan.trainer import run_train_gan

    gen, disc = gan_networks(cfg)
    d = {"data": {"hr": faces, "lr_pool": pool, "face_size": cfg.face_size, "batch_size": cfg.gan_batch,
                  "num_workers": 1},
         "generator": gen, "discriminator": disc,
         "loss": {"pixel_schedule": cfg.gan_pixel_schedule},
         "optim": {"max_steps": cfg.gan_steps},
         "expert": expert,
         "image_every": max(1, cfg.gan_steps // 3),
         # eager, as every other stage of the chain (fp32, no compile): the recipe its results
         # were measured with (docs/performance.md "MR-GAN step": what compile buys)
         "run": _run_cfg(os.path.join(out, "models"), "gan", cfg, ckpt_every=max(10, cfg.gan_steps // 3),
                         compile=False)}
    gc = from_dict(GanConfig, d)
    summary = run_train_gan(gc)
    keep = ("run_dir", "steps", "elapsed_s", "counters", "losses", "generator", "expert")
    return {k: summary[k] for k in keep if k in summary}


def stage_synth(cfg: Any, out: str, faces: str, degrader: str, gan_dir: str,
                widths: Optional[Sequence[int]] = None, dest: str = "",
                checkpoint: str = "") -> Dict[str, Any]:
    """``degrader``'s LR twin of ``faces`` into ``dest`` (default ``<out>/lr_<degrader>``),
    at ``widths`` (default: the twins' band). MR-GAN may be asked for widths outside the
    levels it trained on (``extrapolate``); its generator is ``<gan_dir>/generator.pt`` or
    ``checkpoint`` (a train-gan checkpoint) when given. MR-GAN and ``CODEC_CONTROL``
    (bicubic) get the codec of ``mrgan_codec_p`` / ``mrgan_codec_quality``."""
    from ..config import from_dict
    from ..gan.config import SynthConfig
    from ..gan.degraders import synthesize

    opts: Dict[str, Any] = {}
    name = "bicubic" if degrader == CODEC_CONTROL else degrader
    if name == "mrgan":
        opts = {"checkpoint": checkpoint or os.path.join(gan_dir, "generator.pt"),
                "level_widths": list(widths or twin_widths(cfg)), "extrapolate": True}
    elif name in ("bicubic", "random-degrade", "second-order"):
        opts = {"size_range": list(widths or twin_widths(cfg))}  # the same band as the other twins
        if name == "bicubic":
            opts["template"] = cfg.template  # its manifest's eye-to-mouth band
    if degrader in ("mrgan", CODEC_CONTROL):
        opts.update(codec_p=float(cfg.mrgan_codec_p), codec_quality=list(cfg.mrgan_codec_quality))
    sc = from_dict(SynthConfig, {"input": faces, "output": dest or os.path.join(out, f"lr_{degrader}"),
                                 "degrader": name, "options": opts, "seed": cfg.seed,
                                 "num_workers": 1, "progress": cfg.progress, "batch_size": 32})
    res = synthesize(sc)
    return {k: v for k, v in res.items() if isinstance(v, (int, float, str, list, dict))}


def realism_twins(out: str, degrader: str) -> str:
    """The folder of ``degrader``'s twins at the real pool's band (realism rows, face grid)."""
    return os.path.join(out, "realism_twins", degrader)


def stage_realism(cfg: Any, out: str, degrader: str, expert: str, faces: str, pool: str,
                  synth: str, reference: str = "", reference_label: str = "") -> Dict[str, Any]:
    from ..eval.protocols import EvalContext, evaluate
    from ..eval.protocols.realism import RealismOptions
    from ..inference import load_model

    from ..train.precision import resolve_device

    dev = resolve_device("auto")  # the GPU when there is one
    m, info = load_model(expert, device=dev)
    ctx = EvalContext(model=m, info=info, device=dev, batch_size=64, progress=cfg.progress)
    opts = RealismOptions(synth=synth, real=pool, reference=reference, reference_label=reference_label, hr=faces, label=degrader,
                          seed=cfg.seed)
    res = evaluate("lr-realism", ctx, out, opts, out_dir=os.path.join(out, "eval", f"realism_{degrader}"))
    return {"result": os.path.join(out, "eval", f"realism_{degrader}", "result.json"), "metrics": res["metrics"]}


# ------------------------------------------------------------------------- the chain
def _codec_key(cfg: Any, deg: str) -> Dict[str, Any]:
    """The codec's settings in MR-GAN's synthesis keys (absent when off: earlier runs' keys hold)."""
    if deg not in ("mrgan", CODEC_CONTROL) or not cfg.mrgan_codec_p:
        return {}
    return {"codec": [float(cfg.mrgan_codec_p), *[int(q) for q in cfg.mrgan_codec_quality]]}


def run_degrader_chain(cfg: Any, out: str, st: Any, faces: str, pool: str, hr_model: str,
                       deps: Mapping[str, Any]) -> Dict[str, Any]:
    """Expert, MR-GAN, every degrader's twin, LR model, MR model(s) and realism, as cached
    stages of ``st`` (:class:`ranface.demo.Stages`). ``deps``: settings of the stages the
    inputs came from (their keys make these stages rerun when the inputs changed).

    Returns ``models`` (label -> run dir), ``model_keys`` (label -> stage key) and
    ``realism`` (one record per degrader)."""
    from ..demo import _run_dir, stage_recognition

    # the seed drives every draw below (expert, GAN, twins, training order): a rerun in the
    # same folder with another seed must not reuse these stages
    deps = {**deps, "seed": cfg.seed}
    models: Dict[str, str] = {}
    model_keys: Dict[str, str] = {}
    expert = hr_model
    if "mrgan" in cfg.degraders and cfg.gan_expert == "distil":
        r = st.run("expert", {"steps": cfg.expert_steps, "b": cfg.batch_size, "teacher": hr_model, **deps},
                   lambda: stage_expert(cfg, out, faces, hr_model), outputs=[_run_dir(out, "expert")])
        expert = r["run_dir"]
    gan: Dict[str, Any] = {"run_dir": _run_dir(out, "gan")}
    gan_key = ""
    if "mrgan" in cfg.degraders:
        gan = st.run("gan", {"steps": cfg.gan_steps, "b": cfg.gan_batch, "p": cfg.gan_profile,
                             "expert": st.key("expert") if expert != hr_model else expert,
                             "nets": [dataclasses.asdict(c) for c in gan_networks(cfg)],
                             "pix": cfg.gan_pixel_schedule, **deps},
                     lambda: stage_gan(cfg, out, faces, pool, expert), outputs=[_run_dir(out, "gan")])
        gan_key = st.key("gan")
    for deg in cfg.degraders:
        st.run(f"synth_{deg}", {"gan": gan_key if deg == "mrgan" else "", **_codec_key(cfg, deg),
                                "sizes": cfg.bicubic_sizes,
                                "band": cfg.bicubic_band, "levels": twin_widths(cfg), "tpl": cfg.template, **deps},
               lambda deg=deg: stage_synth(cfg, out, faces, deg, gan["run_dir"]),
               outputs=[os.path.join(out, f"lr_{deg}")])
        lr_dir = os.path.join(out, f"lr_{deg}")
        r = st.run(f"lr_{deg}", {"steps": cfg.lr_steps, "lr": cfg.lr, "b": cfg.batch_size, "hr": hr_model,
                                 "m": cfg.margin, "twin": st.key(f"synth_{deg}"), **deps},
                   lambda deg=deg, lr_dir=lr_dir: stage_recognition(cfg, out, f"lr_{deg}", "lr", lr_dir, hr_model,
                                                                    cfg.lr_steps),
                   outputs=[_run_dir(out, f"lr_{deg}")])
        models[f"LR ({deg})"] = lr_run = r["run_dir"]
        model_keys[f"LR ({deg})"] = st.key(f"lr_{deg}")
        main = deg == cfg.degraders[0]
        variants = ([(f"mr_{deg}", True)] if main or deg in cfg.mr_degraders else []) + \
            ([(f"mr_{deg}_notrans", False)] if cfg.no_translator and main else [])
        for name, trans in variants:
            r = st.run(name, {"steps": cfg.mr_steps, "lr": cfg.lr, "b": cfg.batch_size, "t": trans, "m": cfg.margin,
                              "twin_prob": cfg.mr_twin_prob, "lr_stage": st.key(f"lr_{deg}"),
                              "adapt": dataclasses.asdict(AdaptConfig()), **deps},
                       lambda name=name, trans=trans, lr_dir=lr_dir, lr_run=lr_run: stage_recognition(
                           cfg, out, name, "mr", faces, hr_model, cfg.mr_steps, lr_train=lr_dir,
                           lr_model=lr_run, translator=trans),
                       outputs=[_run_dir(out, name)])
            label = f"MR ({deg})" if trans else f"MR ({deg}, no translator)"
            models[label] = r["run_dir"]
            model_keys[label] = st.key(name)
    # realism of each synthesis method against the real LR pool (expert = the HR model), on
    # twins at the pool's own band: at the training twins' smaller widths every method would
    # be told from the real faces by resolution alone (docs/decisions.md "Realism at the pool's band")
    realism: List[Dict[str, Any]] = []
    # every other method is also compared with the first (the main chain's) on the same faces:
    # a paired Fréchet difference (eval/protocols/realism.frechet_paired_bootstrap)
    widths = pool_widths(cfg)
    methods = realism_methods(cfg)
    ref = methods[0]  # synthesized first: the loop's first method
    for deg in methods:
        dest = realism_twins(out, deg)
        st.run(f"synth_pool_{deg}", {"gan": gan_key if deg == "mrgan" else "", **_codec_key(cfg, deg),
                                     "widths": widths, **deps},
               lambda deg=deg, dest=dest: stage_synth(cfg, out, faces, deg, gan["run_dir"], widths, dest),
               outputs=[dest])
        paired = deg != ref
        realism.append(st.run(
            f"realism_{deg}", {"model": hr_model, "synth": st.key(f"synth_pool_{deg}"),
                               "ref": st.key(f"synth_pool_{ref}") if paired else "", **deps},
            lambda deg=deg, dest=dest, paired=paired: stage_realism(
                cfg, out, deg, hr_model, faces, pool, dest, realism_twins(out, ref) if paired else "",
                ref if paired else ""),
            outputs=[os.path.join(out, "eval", f"realism_{deg}")]))
    return {"models": models, "model_keys": model_keys, "realism": realism}


# ------------------------------------------------------------------------- outputs
def _images(root: str) -> List[str]:
    from ..data.image import is_image_file

    return sorted(os.path.relpath(os.path.join(dp, f), root) for dp, _, fs in os.walk(root)
                  for f in fs if is_image_file(f))


def degrader_grid(faces: str, twins: Mapping[str, str], pool: str, path: str, n: int = 6,
                  seed: int = 0) -> Optional[str]:
    """Fig.-5-style grid, one row per HR training face: HR | each degrader's twin of it (in
    ``twins`` order) | a real LR face of the pool. None when a folder is missing."""
    from PIL import Image, ImageDraw

    cols = [faces] + [twins[k] for k in twins]
    if not all(os.path.isdir(c) for c in cols):
        return None
    rels = [r for r in _images(faces) if all(os.path.exists(os.path.join(c, r)) for c in cols[1:])]
    real = _images(pool) if os.path.isdir(pool) else []
    if not rels:
        return None
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rels), size=min(n, len(rels)), replace=False)
    real_pick = rng.choice(len(real), size=len(pick), replace=len(real) < len(pick)) if real else []
    s, head = 112, 16
    names = ["HR"] + list(twins) + (["real LR"] if real else [])
    grid = Image.new("RGB", (len(names) * (s + 3), head + len(pick) * (s + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for col, name in enumerate(names):
        draw.text((col * (s + 3) + 2, 2), name[:18], fill="black")
    for row, i in enumerate(pick):
        ims = [Image.open(os.path.join(c, rels[i])).convert("RGB").resize((s, s)) for c in cols]
        if real:
            ims.append(Image.open(os.path.join(pool, real[real_pick[row]])).convert("RGB").resize((s, s)))
        for col, im in enumerate(ims):
            grid.paste(im, (col * (s + 3), head + row * (s + 2)))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def table1_rows(degraders: Sequence[str], results: Mapping[str, Dict[str, Any]],
                realism: Sequence[Dict[str, Any]], sizes: Sequence[int],
                heldout: Optional[Mapping[str, Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """One record per degrader: realism metrics and the HR-vs-LR accuracy of its LR / MR models
    (``LR`` / ``MR``: bicubic probes at ``sizes``; ``LR_heldout`` / ``MR_heldout``: the probes of
    ``heldout``'s results, keyed by their own sizes, with ``heldout_probe`` naming the degrader)."""
    by_label = {r["options"].get("label"): r["metrics"] for r in realism}
    rows = []
    for deg in list(dict.fromkeys(list(degraders) + [r["options"].get("label") for r in realism])):
        rec: Dict[str, Any] = {"degrader": deg, "realism": by_label.get(deg)}
        for kind in ("LR", "MR"):
            m = results.get(f"{kind} ({deg})", {}).get("metrics")
            if m:
                rec[kind] = {"full": m["full"]["acc"], **{str(s): m["hr-lr"][str(s)]["acc"] for s in sizes}}
            h = (heldout or {}).get(f"{kind} ({deg})", {}).get("metrics")
            if h:
                rec[f"{kind}_heldout"] = {str(s): h["hr-lr"][str(s)]["acc"] for s in h["sizes"]}
                rec["heldout_probe"] = h["probe"]["degrader"]
        rows.append(rec)
    return rows


def table1_markdown(rows: Sequence[Dict[str, Any]], sizes: Sequence[int]) -> str:
    from ..eval.report import md_table

    refs = {(r.get("realism") or {}).get("frechet_vs_reference", {}).get("reference") for r in rows} - {None}
    vs = f"Fréchet − {sorted(refs)[0]} [95% paired]" if len(refs) == 1 else "Fréchet − reference [95% paired]"
    probe = next((r["heldout_probe"] for r in rows if "heldout_probe" in r), "")
    hsizes = next((list(r["LR_heldout"]) for r in rows if "LR_heldout" in r), [])
    head = ["LR synthesis", "Fréchet ↓ [±1.96 bootstrap sd]", vs, "domain acc ↓ [chance 95%]", "identity cos ↑"] + \
        [f"LR model {s} px" for s in sizes] + [f"MR model {s} px" for s in sizes] + \
        [f"LR model {s} px ({probe} probes)" for s in hsizes]
    body = []
    for r in rows:
        m = r.get("realism") or {}
        ci, ch = m.get("frechet_ci95"), m.get("domain_chance_ci95")
        fd = "n/a" if "frechet_distance" not in m else f"{m['frechet_distance']:.4f}" + (
            f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
        da = "n/a" if "domain_accuracy" not in m else f"{m['domain_accuracy']:.3f}" + (
            f" [{ch[0]:.3f}, {ch[1]:.3f}]" if ch else "")
        pv = m.get("frechet_vs_reference")
        pd = "—" if not pv else f"{pv['diff']:+.4f}" + (
            f" [{pv['ci95'][0]:+.4f}, {pv['ci95'][1]:+.4f}]" if pv.get("ci95") else "")
        ic = m.get("identity_cosine")
        acc = [f"{100 * r[k][str(s)]:.2f}" if k in r else "—" for k in ("LR", "MR") for s in sizes]
        acc += [f"{100 * r['LR_heldout'][s]:.2f}" if "LR_heldout" in r else "—" for s in hsizes]
        body.append([r["degrader"], fd, pd, da, "n/a" if ic is None else f"{ic:.3f}"] + acc)
    return md_table(head, body)


def _paired_lr(results: Mapping[str, Dict[str, Any]], degraders: Sequence[str]) -> str:
    """Each method's LR model minus the first method's, HR-vs-LR, paired over the same pairs."""
    from ..demo_report import paired_table

    lr = {k: v for k, v in results.items() if k.startswith("LR (")}
    base = f"LR ({degraders[0]})"
    if base not in lr or len(lr) < 2:
        return ""
    return paired_table(lr, baseline=base)[0]


def write_table1(out: str, degraders: Sequence[str], results: Mapping[str, Dict[str, Any]],
                 realism: Sequence[Dict[str, Any]], sizes: Sequence[int], faces: str, pool: str,
                 twins_root: str, seed: int = 0,
                 heldout: Optional[Mapping[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """``table1.md``, ``table1.json`` and ``degraders.png`` under ``out``; the grid shows the
    twins at the real pool's band (:func:`realism_twins` under ``twins_root``). ``heldout``:
    the models' results on held-out probes (:func:`evaluate_models`), extra LR columns."""
    rows = table1_rows(degraders, results, realism, sizes, heldout)
    twins = {r["degrader"]: realism_twins(twins_root, r["degrader"]) for r in rows}
    grid = degrader_grid(faces, {k: v for k, v in twins.items() if os.path.isdir(v)}, pool,
                         os.path.join(out, "degraders.png"), seed=seed)
    md = ["# Table 1: LR synthesis methods under one budget", "",
          "Realism against the real LR pool (expert: the HR model) of each method's twins at the pool's band "
          "of face sizes, and HR-vs-LR verification accuracy (%) "
          "of the LR model trained on each method's twins at the training band (and of the MR model where "
          "trained), on the held-out pairs. Fréchet distance +- 1.96 bootstrap std over faces; "
          "domain-classifier accuracy with the 95% range of a guessing classifier on as many test faces.", "",
          table1_markdown(rows, sizes), ""]
    lr_paired = _paired_lr(results, degraders)
    if lr_paired:
        md += [f"LR models against the LR model of `{degraders[0]}`'s twins on the same pairs (accuracy points, "
               "95% paired bootstrap over pairs within folds; * = the interval excludes 0):", "", lr_paired, ""]
    held_paired = _paired_lr(heldout or {}, degraders)
    if held_paired:
        probe = next(r["heldout_probe"] for r in rows if "heldout_probe" in r)
        md += [f"The same on held-out probes made by `{probe}` (no LR model trained on its faces; bicubic "
               f"probes favour `bicubic` twins by construction):", "", held_paired, ""]
    if grid:
        md += ["Faces (Fig. 5 shape): HR | each method's twin of the same face at the pool's band | "
               "a real LR face.", "",
               "![degraders.png](degraders.png)", ""]
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "table1.md"), "\n".join(md))
    atomic_write_text(os.path.join(out, "table1.json"), json.dumps(rows, indent=1, default=str))
    return {"table": os.path.join(out, "table1.md"), "grid": grid, "rows": rows}


def run_table1(cfg: Any, faces: str, pool: str, test_faces: str, pairs: str, hr_model: str) -> Dict[str, Any]:
    """``ranface table1``: the chain on prepared folders, each model evaluated on ``pairs``
    (LFW format, paths under ``test_faces``); outputs under ``cfg.out``. With ``cfg.seeds``
    the chain runs once per seed under ``<out>/seed-<s>`` (each a complete one-seed Table 1)
    and ``<out>/table1/seeds.md`` aggregates them (:func:`write_table1_seeds`)."""
    from ..config import save_config
    from ..demo import resolve
    from ..errors import DataError

    cfg = resolve(cfg)
    for p, what in ((faces, "HR training faces"), (pool, "real LR pool"), (test_faces, "test faces")):
        if not os.path.isdir(p):
            raise DataError(p, f"{what}: folder not found")
    if not os.path.isfile(pairs):
        raise DataError(pairs, "pairs file not found")
    out = os.path.abspath(cfg.out)
    inputs = tuple(os.path.abspath(p) for p in (faces, pool, test_faces, pairs))
    if not cfg.seeds:
        return _table1_once(cfg, out, *inputs, hr_model)
    os.makedirs(out, exist_ok=True)
    save_config(cfg, os.path.join(out, "table1_config.yaml"))
    runs = {}
    for s in cfg.seeds:
        one = dataclasses.replace(cfg, seed=s, seeds=[], out=os.path.join(out, f"seed-{s}"))
        print(f"[table1] seed {s}: {one.out}", flush=True)
        runs[s] = _table1_once(one, one.out, *inputs, hr_model)
    agg = write_table1_seeds(os.path.join(out, "table1"), cfg.degraders, runs, cfg.probe_sizes)
    first = runs[cfg.seeds[0]]
    return {"out": out, "runs": {s: r["table"] for s, r in runs.items()}, **agg, "grid": first["grid"]}


def _table1_once(cfg: Any, out: str, faces: str, pool: str, test_faces: str, pairs: str,
                 hr_model: str) -> Dict[str, Any]:
    """One seed's chain, evaluation and table under ``out`` (absolute inputs)."""
    from ..config import save_config
    from ..demo import Stages
    from ..demo_report import _load

    os.makedirs(out, exist_ok=True)
    save_config(cfg, os.path.join(out, "table1_config.yaml"))
    st = Stages(out)
    deps = {"faces": faces, "pool": pool, "face_size": cfg.face_size, "template": cfg.template}
    chain = run_degrader_chain(cfg, out, st, faces, pool, hr_model, deps)
    models = {"HR": hr_model, **chain["models"]}
    keys = {"HR": hr_model, **chain["model_keys"]}
    evals, heldout = evaluate_models(cfg, out, st, models, keys, test_faces, pairs,
                                     {"pairs": pairs, "test": test_faces})
    # stage records -> the protocols' results
    results, held = ({label: _load(rec["result"]) for label, rec in d.items()} for d in (evals, heldout))
    realism = [_load(rec["result"]) for rec in chain["realism"]]
    written = write_table1(os.path.join(out, "table1"), cfg.degraders, results, realism,
                           cfg.probe_sizes, faces, pool, out, cfg.seed, heldout=held)
    return {"out": out, **written, "results": results, "heldout": held, "realism": realism}


def _mean_sd(xs: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    v = np.asarray(xs, dtype=np.float64) * scale
    sd = f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else ""
    return f"{v.mean():.{digits}f}{sd}"


def seeds_rows(degraders: Sequence[str], runs: Mapping[int, Mapping[str, Any]],
               sizes: Sequence[int]) -> Dict[str, Any]:
    """Aggregate one-seed Table 1 runs (``runs``: seed -> the ``results`` / ``heldout`` /
    ``realism`` of :func:`_table1_once`). Returns ``accuracy`` (model -> column -> per-seed
    values), ``paired`` (LR model -> column -> :func:`ranface.eval.metrics.
    seeds_paired_bootstrap_difference` against the first degrader's LR model) and ``realism``
    (degrader -> metric -> per-seed values). Columns: ``"<size>"`` for the bicubic probes,
    ``"<probe>:<size>"`` for the held-out ones."""
    from ..demo_report import _correct
    from ..eval.metrics import seeds_paired_bootstrap_difference

    seeds = list(runs)
    sources = [("", "results", [str(s) for s in sizes])]
    held_probe = ""
    for r in runs.values():
        for res in r["heldout"].values():
            held_probe = res["metrics"]["probe"]["degrader"]
            sources.append((held_probe, "heldout", [str(s) for s in res["metrics"]["sizes"]]))
            break
        break
    accuracy: Dict[str, Dict[str, List[float]]] = {}
    paired: Dict[str, Dict[str, Any]] = {}
    base = f"LR ({degraders[0]})"
    for probe, kind, keys in sources:
        labels = [lb for lb in runs[seeds[0]][kind] if all(lb in runs[s][kind] for s in seeds)]
        for label in labels:
            for k in keys:
                col = f"{probe}:{k}" if probe else k
                accuracy.setdefault(label, {})[col] = [runs[s][kind][label]["metrics"]["hr-lr"][k]["acc"]
                                                       for s in seeds]
        if base not in labels:
            continue
        for label in (lb for lb in labels if lb.startswith("LR (") and lb != base):
            for k in keys:
                ra, rb = [runs[s][kind][label] for s in seeds], [runs[s][kind][base] for s in seeds]
                lines = rb[0].get("scored_pairs", {}).get("lines")
                ca, cb = [_correct(r, k) for r in ra], [_correct(r, k) for r in rb]
                if (lines is None or any(r.get("scored_pairs", {}).get("lines") != lines for r in ra + rb)
                        or any(c is None for c in ca + cb)):
                    continue  # not the same scored pairs in every seed: no paired comparison
                col = f"{probe}:{k}" if probe else k
                paired.setdefault(label, {})[col] = seeds_paired_bootstrap_difference(
                    ca, cb, folds=rb[0]["scored_pairs"]["folds"])
    realism: Dict[str, Dict[str, List[float]]] = {}
    for s in seeds:
        for rec in runs[s]["realism"]:
            m, deg = rec["metrics"], rec["options"].get("label")
            row = realism.setdefault(deg, {})
            for key in ("frechet_distance", "domain_accuracy", "identity_cosine"):
                if m.get(key) is not None:
                    row.setdefault(key, []).append(float(m[key]))
            if m.get("frechet_vs_reference"):
                row.setdefault("frechet_minus_reference", []).append(float(m["frechet_vs_reference"]["diff"]))
                row["reference"] = m["frechet_vs_reference"]["reference"]
    return {"seeds": seeds, "baseline": base, "heldout_probe": held_probe, "accuracy": accuracy,
            "paired": paired, "realism": realism}


def _col_name(col: str) -> str:
    probe, _, size = col.rpartition(":")
    return f"{size} px ({probe} probes)" if probe else f"{size} px"


def seeds_markdown(agg: Mapping[str, Any]) -> str:
    """The three tables of ``seeds.md`` from :func:`seeds_rows`."""
    from ..eval.report import md_table

    seeds = agg["seeds"]
    cols = list(dict.fromkeys(c for row in agg["accuracy"].values() for c in row))
    acc = md_table(["model"] + [_col_name(c) for c in cols],
                   [[label] + [_mean_sd(row[c]) if c in row else "—" for c in cols]
                    for label, row in agg["accuracy"].items()])
    md = [f"Seeds {', '.join(map(str, seeds))}: HR-vs-LR accuracy (%), mean ± sd over seeds.", "", acc, ""]
    if agg["paired"]:
        pcols = list(dict.fromkeys(c for row in agg["paired"].values() for c in row))
        body = []
        for label, row in agg["paired"].items():
            cells = [label]
            for c in pcols:
                d = row.get(c)
                if d is None:
                    cells.append("—")
                    continue
                sig = "" if d["lo"] <= 0 <= d["hi"] else " *"
                cells.append(f"{100 * d['diff']:+.2f} [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]{sig} "
                             f"({d['n_positive']}/{d['n_seeds']} > 0; "
                             + " ".join(f"{100 * x:+.1f}" for x in d["per_seed"]) + ")")
            body.append(cells)
        md += [f"LR models minus `{agg['baseline']}`, paired on the same pairs in every seed (accuracy points): "
               "mean over seeds [95% seeds x pairs bootstrap] (seeds with a gain; each seed's difference). "
               "* = the interval excludes 0. With few seeds the interval understates the seed spread: read "
               "the per-seed values beside it.", "", md_table(["model"] + [_col_name(c) for c in pcols], body), ""]
    if agg["realism"]:
        keys = [("frechet_distance", "Fréchet ↓", 4, 1.0), ("frechet_minus_reference", "Fréchet − reference", 4, 1.0),
                ("domain_accuracy", "domain acc ↓", 3, 1.0), ("identity_cosine", "identity cos ↑", 3, 1.0)]
        body = [[deg] + [_mean_sd(row[k], scale, dg) if row.get(k) else "—" for k, _, dg, scale in keys]
                for deg, row in agg["realism"].items()]
        ref = next((r["reference"] for r in agg["realism"].values() if "reference" in r), "the first method")
        md += [f"Realism against the real LR pool, mean ± sd over seeds (reference of the paired Fréchet: `{ref}`).",
               "", md_table(["LR synthesis"] + [name for _, name, _, _ in keys], body), ""]
    return "\n".join(md)


def write_table1_seeds(out: str, degraders: Sequence[str], runs: Mapping[int, Mapping[str, Any]],
                       sizes: Sequence[int]) -> Dict[str, Any]:
    """``seeds.md`` and ``seeds.json`` under ``out``: Table 1 over seeds (:func:`seeds_rows`)."""
    agg = seeds_rows(degraders, runs, sizes)
    md = ["# Table 1 over seeds", "",
          "Each seed reran the whole chain: the distilled expert, MR-GAN, every method's twins, the LR / MR "
          "models and the random draws of the held-out probes. One-seed tables: "
          + ", ".join(f"[seed {s}](../seed-{s}/table1/table1.md)" for s in agg["seeds"]) + ".", "",
          seeds_markdown(agg)]
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "seeds.md"), "\n".join(md))
    atomic_write_text(os.path.join(out, "seeds.json"), json.dumps(agg, indent=1, default=str))
    return {"table": os.path.join(out, "seeds.md"), "grid": None, "seeds_summary": agg}


def evaluate_models(cfg: Any, out: str, st: Any, models: Mapping[str, str], keys: Mapping[str, str],
                    test_faces: str, pairs: str, deps: Mapping[str, Any]) -> tuple:
    """Every model on the held-out pairs as cached stages: ``eval_<slug>`` (bicubic probes,
    ``cfg.probe_sizes``, ``cfg.eval_modes``) and, with ``cfg.heldout_probe``, ``eval_<slug>_<probe>``
    (HR-vs-LR, probes made by that degrader at ``cfg.heldout_probe_sizes``). Returns two dicts
    label -> stage record (``result``: the result.json path); the second is empty without it."""
    from ..demo import stage_eval

    deps = {**deps, "seed": cfg.seed}  # the held-out probes' draws (probe_seed)
    evals: Dict[str, Dict[str, Any]] = {}
    heldout: Dict[str, Dict[str, Any]] = {}
    for label, path in models.items():
        slug = label.lower().replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        base = {"model": path, "trained": keys[label], **deps}
        evals[label] = st.run(f"eval_{slug}", {**base, "sizes": cfg.probe_sizes, "modes": cfg.eval_modes},
                              lambda slug=slug, path=path: stage_eval(cfg, out, slug, path, test_faces, pairs),
                              outputs=[os.path.join(out, "eval", slug)])
        if cfg.heldout_probe:
            name = f"{slug}_{cfg.heldout_probe.replace('-', '_')}"
            heldout[label] = st.run(
                f"eval_{name}", {**base, "sizes": cfg.heldout_probe_sizes, "probe": cfg.heldout_probe},
                lambda name=name, path=path: stage_eval(cfg, out, name, path, test_faces, pairs, cfg.heldout_probe),
                outputs=[os.path.join(out, "eval", name)])
    return evals, heldout
