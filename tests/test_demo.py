"""`ranface demo --profile quick` end to end on the bundled real data (the CI-sized run)."""
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from conftest import require_shared

SECTIONS = ("## Verification accuracy, HR-vs-LR", "## Targets of the main job", "## Difference from the HR model",
            "## The LR band", "## Start of training", "## Adaption terms (Eq. 10)",
            "## LR synthesis methods (Table 1 shape)", "## Held-out probes (`second-order`)", "## TAR@FAR", "## Accuracy vs probe pixels",
            "## ROC curves", "## Synthesized faces", "## Translation gate W", "## Stages", "## Models")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_readme_main_command_quick_profile_from_repo_root():
    """The README's main command exactly as a user types it, from the repository root,
    with its default relative output folder (runs/demo-quick): issue 11 found it crashing
    on a relative path that every absolute-path test missed."""
    require_shared("lfw-gray", "pairs.txt")
    out = os.path.join(REPO, "runs", "demo-quick")
    with _set_aside(out), _set_aside(os.path.join(REPO, "runs", "table1")):
        _check_demo_and_table1(out)


@contextlib.contextmanager
def _set_aside(out):
    """A user's earlier run in ``out`` is kept but not reused: moved aside, put back after."""
    aside = out + ".before-test"
    if os.path.exists(out):
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(out, aside)
    try:
        yield
    finally:
        if os.path.exists(aside):
            shutil.rmtree(out, ignore_errors=True)
            os.replace(aside, out)


def _check_demo_and_table1(out):
    cmd = ["bash", "scripts/run_main.sh", "--profile", "quick", "--set", "progress=false"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    report_path = os.path.join(REPO, res["report"]) if not os.path.isabs(res["report"]) else res["report"]
    assert os.path.realpath(report_path) == os.path.realpath(os.path.join(out, "report", "report.md"))
    report = open(report_path).read()
    for s in SECTIONS:
        assert s in report, s
    html = open(os.path.join(out, "report", "report.html")).read()
    assert html.count("data:image/png;base64") >= 4
    summary = json.load(open(os.path.join(out, "report", "summary.json")))
    assert set(summary) == {"HR", "LR (bicubic)", "MR (bicubic)", "MR (bicubic, no translator)", "LR (mrgan)",
                            "LR (random-degrade)"}
    for label, row in summary.items():
        assert all(math.isfinite(v) for v in row.values()), label
    # a wrong weight import or alignment shows here
    assert summary["HR"]["full"] > 0.90
    # paired differences against HR, with intervals that contain their point estimate
    diffs = json.load(open(os.path.join(out, "report", "paired_vs_hr.json")))
    assert set(diffs) >= {"LR (bicubic)", "MR (bicubic)", "LR (mrgan)"}
    for label, rec in diffs.items():
        for k, d in rec.items():
            assert d["lo"] <= d["diff"] <= d["hi"], (label, k)
    # every target of the main job is judged for both MR models, with its interval
    targets = json.load(open(os.path.join(out, "report", "targets.json")))
    assert {t["model"] for t in targets} == {"MR (bicubic)", "MR (bicubic, no translator)"}
    assert len(targets) == 12 and all(t["lo"] <= t["diff"] <= t["hi"] for t in targets)
    assert all(t["status"].startswith(("met", "missed")) for t in targets)
    # the twins recorded their band; the report compares it with the real pool's
    manifest = json.load(open(os.path.join(out, "lr_bicubic", "synth_manifest.json")))
    assert manifest["degrader_info"]["band"]["widths_px"] == [8, 32]
    assert "real LR pool" in report and "twins: bicubic" in report and "twins: mrgan" in report
    # MR-GAN's twins went through the camera codec (the default), recorded in their manifest
    codec = json.load(open(os.path.join(out, "lr_mrgan", "synth_manifest.json")))["degrader_info"]["codec"]
    assert codec["p"] == 1.0 and codec["quality"] == [30, 90]
    # Table 1: every synthesis method scored for realism (with spread); the LR model of each
    # degrader that trained one; the face grid of every method; MR-GAN's per-face levels
    rows = {r["degrader"]: r for r in json.load(open(os.path.join(out, "report", "table1.json")))}
    # bicubic+codec: the codec's control row, present because MR-GAN's codec is on by default
    assert set(rows) == {"bicubic", "mrgan", "random-degrade", "second-order", "bicubic+codec"}
    assert all(len(r["realism"]["frechet_ci95"]) == 2 for r in rows.values())
    assert all("LR" in rows[d] for d in ("bicubic", "mrgan", "random-degrade")) and "MR" in rows["bicubic"]
    # and on held-out probes (second-order at 16 and 12 px), recorded in each result
    assert set(rows["mrgan"]["LR_heldout"]) == {"16", "12"} and rows["bicubic"]["heldout_probe"] == "second-order"
    held = json.load(open(os.path.join(out, "eval", "lr_mrgan_second_order", "result.json")))
    assert held["options"]["probe_degrader"] == "second-order" and held["metrics"]["modes"] == ["hr-lr"]
    assert os.path.exists(os.path.join(out, "report", "degraders.png"))
    levels = open(os.path.join(out, "lr_mrgan", "synth_levels.tsv")).read().splitlines()[1:]
    assert levels and all(8 <= int(ln.split("\t")[1]) <= 32 for ln in levels)
    # MR-GAN trained at the real pool's band; every realism row scored at that band
    for deg in ("bicubic", "mrgan", "second-order"):  # the methods that record their widths
        band = json.load(open(os.path.join(out, "realism_twins", deg, "synth_manifest.json")))
        assert band["degrader_info"]["band"]["widths_px"] == [25, 76], deg
    mrgan_band = json.load(open(os.path.join(out, "lr_mrgan", "synth_manifest.json")))["degrader_info"]["band"]
    assert mrgan_band["trained_widths_px"] == [25, 76] and mrgan_band["extrapolated"] is True
    assert os.path.exists(os.path.join(out, "models", "expert", "model.pt"))  # the distilled expert
    # the MR stage's adaption trace: D's scores at the first and last step
    assert "d_real" in report and "| mr_bicubic |" in report
    # rerun (the module directly, the venv is set up): every stage reused
    py = os.path.join(REPO, os.environ.get("RANFACE_VENV", ".venv"), "bin", "python")
    p = subprocess.run([py if os.path.exists(py) else sys.executable, "-m", "ranface", "demo", "--profile",
                        "quick", "--set", "progress=false"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "running" not in p.stdout.replace("[demo] report", "")
    # Table 1 over two seeds on the demo's prepared folders, relative paths, default
    # output folder (runs/table1); no MR-GAN to keep it CI-sized
    d = "runs/demo-quick"
    p = subprocess.run([py if os.path.exists(py) else sys.executable, "-m", "ranface", "table1", "--profile",
                        "quick", "--faces", f"{d}/faces_train", "--lr-pool", f"{d}/lr_pool", "--test-faces",
                        f"{d}/faces_test", "--pairs", f"{d}/test_pairs.txt", "--set",
                        "degraders=[bicubic,random-degrade]", "--set", "seeds=[0,1]", "--set", "no_translator=false",
                        "--set", "progress=false"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    t1 = os.path.join(REPO, "runs", "table1")
    assert os.path.realpath(res["table"]) == os.path.realpath(os.path.join(t1, "table1", "seeds.md"))
    for s in (0, 1):  # each seed a complete one-seed Table 1, trained with its own seed
        rows = {r["degrader"]: r for r in json.load(open(os.path.join(t1, f"seed-{s}", "table1", "table1.json")))}
        assert "LR_heldout" in rows["random-degrade"] and "MR" in rows["bicubic"]
        assert f"seed: {s}" in open(os.path.join(t1, f"seed-{s}", "table1_config.yaml")).read()
    agg = json.load(open(os.path.join(t1, "table1", "seeds.json")))
    assert agg["seeds"] == [0, 1] and agg["heldout_probe"] == "second-order"
    pr = agg["paired"]["LR (random-degrade)"]
    assert set(pr) == {"16", "12", "second-order:16", "second-order:12"}
    assert all(r["n_seeds"] == 2 and r["lo"] <= r["diff"] <= r["hi"] for r in pr.values())
    held = json.load(open(os.path.join(t1, "seed-1", "eval", "lr_random-degrade_second_order", "result.json")))
    assert held["options"]["probe_seed"] == 1
    assert "Table 1 over seeds" in open(res["table"]).read()

