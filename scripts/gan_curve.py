"""Issue 12: MR-GAN's realism against the real LR pool as a function of its training steps.

Extends the MR-GAN of a finished Table 1 (or default demo) run past its budget, in a copy
(``<run>/models/gan_curve``; the run's own GAN stays untouched), keeping a checkpoint every
``--every`` steps; then scores each checkpoint exactly as Table 1 scores its MR-GAN: twins of
the HR faces at the real pool's band (``pipelines.table1.pool_widths``), the run's seed, the
realism protocol (Fréchet distance with its bootstrap, paired against bicubic's twins; the
held-out real-vs-synthetic classifier) with the run's realism model. The GAN's learning
rate is constant (no schedule), so extending a finished run is the same recipe as a longer
one from the start (``train.runs.RESUME_MAY_CHANGE``).

    python scripts/gan_curve.py --run runs/table1-seeds/seed-1 --steps 3000 --every 250

A variant of the recipe (``--set`` dotted GanConfig overrides, e.g. loss.lambda_adv=5) cannot
extend the run's GAN: it trains from step 0 in ``<run>/models/<name>`` with the run's recipe
plus the overrides, and is scored the same way:

    python scripts/gan_curve.py --run runs/table1-seeds/seed-1 --steps 1000 --every 500 \
        --name adv5 --set loss.lambda_adv=5

Writes ``<run>/<name>/curve.json``, ``curve.md`` and ``curve.png`` (atomically; name
``gan_curve`` by default); a rerun reuses the checkpoints already trained and the rows already
scored.
"""
import argparse
import json
import os
import shutil
import sys
from typing import Any, Dict, List, Sequence, Tuple

from ranface.config import load_config
from ranface.demo import DemoConfig
from ranface.demo_report import _load as _read_json
from ranface.errors import ConfigError
from ranface.gan.config import GanConfig
from ranface.gan.trainer import run_train_gan
from ranface.io_utils import atomic_save, atomic_write_text
from ranface.pipelines.table1 import pool_widths, realism_twins, stage_realism, stage_synth
from ranface.train.checkpoint import CheckpointManager

DEFAULT_NAME = "gan_curve"


def train_gan(run: str, steps: int, every: int, name: str = DEFAULT_NAME, overrides: Sequence[str] = ()) -> str:
    """Train ``<run>/models/<name>`` to ``steps``: without ``overrides`` a copy of the run's own
    MR-GAN (made once) trained on, with them a new run of the run's recipe + ``overrides``."""
    src, dst = os.path.join(run, "models", "gan"), os.path.join(run, "models", name)
    if not os.path.isfile(os.path.join(src, "config.yaml")):
        raise ConfigError(f"{src}: no finished MR-GAN run here (config.yaml missing)")
    if not overrides and not os.path.isdir(dst):
        shutil.copytree(src, dst + ".partial")
        os.replace(dst + ".partial", dst)
    cfg = load_config(GanConfig, os.path.join(src, "config.yaml"),
                      [*overrides, f"optim.max_steps={steps}", f"run.name={name}", f"run.ckpt_every={every}",
                       "run.keep_last=1000", "run.resume=auto", "run.progress=false",
                       f"image_every={every}"])
    run_train_gan(cfg)
    return dst


def gan_data(run: str) -> Tuple[str, str]:
    """The HR faces and the real LR pool the run's MR-GAN trained on (its config.yaml): the
    faces its twins are made of and the pool they are scored against, as in Table 1."""
    data = load_config(GanConfig, os.path.join(run, "models", "gan", "config.yaml"), []).data
    return data.hr, data.lr_pool


def score(run: str, cfg: DemoConfig, step: int, ckpt: str, name: str = DEFAULT_NAME) -> Dict[str, Any]:
    """Table 1's realism row of the generator in ``ckpt`` (cached in its result.json)."""
    label = f"mrgan-step{step}" if name == DEFAULT_NAME else f"mrgan-{name}-step{step}"
    if cfg.mrgan_codec_p:  # twins through the camera codec: never mixed with rows scored without it
        label = label.replace("mrgan-", "mrgan-codec-", 1)
    res = os.path.join(run, "eval", f"realism_{label}", "result.json")
    if not os.path.isfile(res):
        model = _read_json(os.path.join(run, "stages", "realism_bicubic.json"))["settings"]["model"]
        faces, pool = gan_data(run)
        dest = realism_twins(run, label)
        stage_synth(cfg, run, faces, "mrgan", "", pool_widths(cfg), dest, checkpoint=ckpt)
        stage_realism(cfg, run, label, model, faces, pool, dest,
                      realism_twins(run, "bicubic"), "bicubic")
    m = _read_json(res)["metrics"]
    ref = m.get("frechet_vs_reference") or {}
    return {"step": step, "frechet": m["frechet_distance"], "frechet_ci95": m.get("frechet_ci95"),
            "frechet_vs_bicubic": ref.get("diff"), "frechet_vs_bicubic_ci95": ref.get("ci95"),
            "domain_accuracy": m["domain_accuracy"], "domain_chance_ci95": m.get("domain_chance_ci95"),
            "identity_cosine": m.get("identity_cosine")}


def reference_rows(run: str) -> List[Dict[str, Any]]:
    """The run's own Table 1 realism rows (bicubic, random-degrade, ...), the lines to beat."""
    rows = []
    for name in sorted(os.listdir(os.path.join(run, "eval"))):
        p = os.path.join(run, "eval", name, "result.json")
        if name.startswith("realism_") and not name.startswith("realism_mrgan") and os.path.isfile(p):
            m = _read_json(p)["metrics"]
            rows.append({"degrader": name[len("realism_"):], "frechet": m["frechet_distance"],
                         "domain_accuracy": m["domain_accuracy"]})
    return rows


def markdown(rows: List[Dict[str, Any]], refs: List[Dict[str, Any]], gan_s_per_step: float) -> str:
    lines = ["| MR-GAN steps | Fréchet ↓ | − bicubic [95% paired bootstrap] | domain acc ↓ | identity cos ↑ |",
             "|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["frechet_vs_bicubic_ci95"] or (float("nan"), float("nan"))
        lines.append(f"| {r['step']} | {r['frechet']:.4f} | {r['frechet_vs_bicubic']:+.4f} [{lo:+.4f}, {hi:+.4f}] "
                     f"| {r['domain_accuracy']:.3f} | {r['identity_cosine']:.3f} |")
    lines += ["", "The run's other methods (the lines to beat):", "",
              "| method | Fréchet | domain acc |", "|---|---|---|"]
    lines += [f"| {r['degrader']} | {r['frechet']:.4f} | {r['domain_accuracy']:.3f} |" for r in refs]
    if gan_s_per_step:
        lines += ["", f"MR-GAN training time: {gan_s_per_step:.2f} s a step on this machine."]
    return "\n".join(lines) + "\n"


def plot(rows: List[Dict[str, Any]], refs: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    steps = [r["step"] for r in rows]
    for ax, key, title in ((axes[0], "frechet", "Fréchet distance to the real LR pool"),
                           (axes[1], "domain_accuracy", "real-vs-synthetic classifier accuracy")):
        ax.plot(steps, [r[key] for r in rows], "o-", label="MR-GAN")
        for ref in refs:
            ax.axhline(ref[key], ls="--", lw=1, label=ref["degrader"], color=f"C{1 + refs.index(ref)}")
        ax.set_xlabel("MR-GAN steps")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished table1 seed folder or default demo folder")
    ap.add_argument("--steps", type=int, default=3000, help="train MR-GAN on to this many steps")
    ap.add_argument("--every", type=int, default=250, help="a checkpoint (and a curve point) every N steps")
    ap.add_argument("--name", default=DEFAULT_NAME, help="the GAN run's name under <run>/models and the output folder")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe variant (dotted GanConfig override), trained from step 0; needs --name")
    a = ap.parse_args()
    run = os.path.abspath(a.run)
    try:
        if a.overrides and a.name == DEFAULT_NAME:
            raise ConfigError("a recipe variant (--set) needs its own --name")
        cfg_path = os.path.join(run, "table1_config.yaml")
        if not os.path.isfile(cfg_path):
            cfg_path = os.path.join(run, "demo_config.yaml")
        if not os.path.isfile(cfg_path):
            raise ConfigError(f"{run}: neither table1_config.yaml nor demo_config.yaml (not a finished run)")
        cfg = load_config(DemoConfig, cfg_path, ["progress=false"])
        gan_dir = train_gan(run, a.steps, a.every, a.name, a.overrides)
        ckpts = CheckpointManager(os.path.join(gan_dir, "checkpoints"))
        rows = [score(run, cfg, s, ckpts.path_for(s), a.name) for s in ckpts.steps()
                if s % a.every == 0 or s == a.steps]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    refs = reference_rows(run)
    summary = _read_json(os.path.join(gan_dir, "summary.json"))
    per_step = 1.0 / summary["steps_per_s"] if summary.get("steps_per_s") else 0.0
    dest = os.path.join(run, a.name)
    os.makedirs(dest, exist_ok=True)
    atomic_write_text(os.path.join(dest, "curve.json"),
                      json.dumps({"rows": rows, "references": refs, "gan_s_per_step": per_step}, indent=1))
    atomic_write_text(os.path.join(dest, "curve.md"), markdown(rows, refs, per_step))
    plot(rows, refs, os.path.join(dest, "curve.png"))
    print(markdown(rows, refs, per_step))
    return 0


if __name__ == "__main__":
    sys.exit(main())
