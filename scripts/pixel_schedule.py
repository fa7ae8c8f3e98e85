"""Issue 12 item 4: one more MR-GAN on a finished default demo, with another pixel-critic
schedule or step count, scored for realism at the real pool's band against bicubic's twins
(paired), exactly as the demo's Table 1 scores its own MR-GAN.

    python scripts/pixel_schedule.py --out runs/demo-default --schedule d_ratio --steps 500

Writes ``<out>/models/gan_<schedule><steps>``, ``<out>/realism_twins/mrgan-<schedule><steps>``
and ``<out>/eval/realism_mrgan-<schedule><steps>/result.json``; prints the metrics.
"""
import argparse
import json
import os

from ranface.config import load_config
from ranface.demo import DemoConfig, resolve
from ranface.gan.config import GanConfig
from ranface.gan.trainer import run_train_gan
from ranface.pipelines.table1 import pool_widths, realism_twins, stage_realism, stage_synth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo-default", help="a finished default demo's folder")
    ap.add_argument("--schedule", default="d_ratio", choices=["d_ratio", "g_every"])
    ap.add_argument("--steps", type=int, default=1000)
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    tag = f"{a.schedule}{a.steps}"
    cfg = load_config(GanConfig, os.path.join(out, "models", "gan", "config.yaml"),
                      [f"loss.pixel_schedule={a.schedule}", f"optim.max_steps={a.steps}", f"run.name=gan_{tag}",
                       f"run.ckpt_every={a.steps}", f"image_every={max(1, a.steps // 3)}"])
    s = run_train_gan(cfg)
    dc = resolve(DemoConfig(out=out, progress=False))
    faces, pool = os.path.join(out, "faces_train"), os.path.join(out, "lr_pool")
    dest = realism_twins(out, f"mrgan-{tag}")
    stage_synth(dc, out, faces, "mrgan", s["run_dir"], pool_widths(dc), dest)
    hr = json.load(open(os.path.join(out, "stages", "realism_bicubic.json"), encoding="utf-8"))["settings"]["model"]
    r = stage_realism(dc, out, f"mrgan-{tag}", hr, faces, pool, dest, realism_twins(out, "bicubic"), "bicubic")
    print(json.dumps({"gan_s": s.get("elapsed_s"), **r["metrics"]}, default=str, indent=1))


if __name__ == "__main__":
    main()
