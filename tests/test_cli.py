"""End-to-end CLI: train (HR) on an image folder, exact resume, embed, compare, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import make_face_folder
from ranface.cli import main
from ranface.train.checkpoint import load_checkpoint

SMALL = ["--set", "data.batch_size=4", "--set", "data.num_workers=0", "--set", "run.progress=false",
         "--set", "run.precision=fp32", "--set", "run.tensorboard=false", "--set", "model.embedding_size=64",
         "--set", "run.ckpt_every=3", "--set", "run.log_every=1"]


def train(data, out, name, steps, *extra):
    return main(["train", "--stage", "hr", "-c", "configs/train_hr_cpu_smoke.yaml", "--set", f"data.train={data}",
                 "--set", f"run.out_dir={out}", "--set", f"run.name={name}", "--set", f"optim.max_steps={steps}",
                 *SMALL, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_face_folder(str(root / "faces"), n_ids=3, per_id=4)
    out = str(root / "runs")
    assert train(data, out, "straight", 6) == 0
    return data, out


def test_run_dir_contents(trained):
    data, out = trained
    run = os.path.join(out, "straight")
    for f in ("config.yaml", "model.pt", "summary.json", "metrics.jsonl", "environment.json"):
        assert os.path.exists(os.path.join(run, f)), f
    import yaml

    cfg = yaml.safe_load(open(os.path.join(run, "config.yaml")))
    assert cfg["optim"]["max_steps"] == 6 and cfg["data"]["train"] == data
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["steps"] == 6 and summary["num_classes"] == 3


def test_exact_resume_hr(trained):
    data, out = trained
    assert train(data, out, "half", 3) == 0
    assert train(data, out, "half", 6, "--set", "run.resume=auto") == 0
    a = load_checkpoint(os.path.join(out, "straight", "model.pt"))["state_dict"]
    b = load_checkpoint(os.path.join(out, "half", "model.pt"))["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_dry_run_prints_config(capsys):
    assert main(["train", "--stage", "hr", "--dry-run", "--set", "optim.lr=0.02"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.02" in out and "stage: hr" in out


def test_unknown_key_is_one_line_error(capsys):
    assert main(["train", "--dry-run", "--set", "optim.lrate=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.lrate" in err[0]


def test_missing_data_error(tmp_path, capsys):
    rc = main(["train", "--stage", "hr", "--set", f"data.train={tmp_path}/nope", "--set",
               f"run.out_dir={tmp_path}/runs", *SMALL])
    assert rc == 2 and "nope" in capsys.readouterr().err


def test_embed_and_compare(trained, tmp_path, capsys):
    data, out = trained
    model = os.path.join(out, "straight", "model.pt")
    assert main(["embed", data, "--aligned", "--model", model, "--out", str(tmp_path / "emb")]) == 0
    res = json.loads(capsys.readouterr().out)
    feats = np.load(tmp_path / "emb.npy")
    assert feats.shape == (12, 64) and res["embedded"] == 12
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    lines = open(tmp_path / "emb.tsv").read().splitlines()
    assert lines[0] == "0\tid000/000.png"
    a = os.path.join(data, "id000", "000.png")
    b = os.path.join(data, "id001", "000.png")
    assert main(["compare", a, a, "--aligned", "--model", model, "--threshold", "0.5"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert abs(same["cosine"] - 1.0) < 1e-5 and same["same"] is True
    assert main(["compare", a, b, "--aligned", "--model", model]) == 0
    diff = json.loads(capsys.readouterr().out)
    # compare and embed agree: the score is the dot product of the two stored embeddings
    # (6 steps leave BN running statistics at their init, so no separation is asserted)
    row = {p: i for i, p in (ln.split("\t") for ln in lines)}
    want = float(feats[int(row["id000/000.png"])] @ feats[int(row["id001/000.png"])])
    # a model trained without pair validation has no calibrated threshold: same is null
    assert abs(diff["cosine"] - want) < 1e-5 and diff["same"] is None and diff["threshold"] is None


def test_embed_corrupt_image(trained, tmp_path, capsys):
    data, out = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    import shutil

    shutil.copy(os.path.join(data, "id000", "000.png"), bad / "y.png")
    model = os.path.join(out, "straight", "model.pt")
    assert main(["embed", str(bad), "--aligned", "--model", model, "--out", str(tmp_path / "e")]) == 2
    assert "x.jpg" in capsys.readouterr().err
    assert not (tmp_path / "e.npy").exists()
    assert main(["embed", str(bad), "--aligned", "--model", model, "--out", str(tmp_path / "e"), "--on-error", "skip"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["embedded"] == 1 and res["skipped"] == 1


def test_checkpoint_of_other_architecture(trained, tmp_path, capsys):
    data, out = trained
    model = os.path.join(out, "straight", "model.pt")
    st = load_checkpoint(model)
    st["backbone"] = "iresnet18"
    from ranface.train.checkpoint import save_checkpoint

    save_checkpoint(str(tmp_path / "wrong.pt"), st)
    assert main(["embed", data, "--model", str(tmp_path / "wrong.pt"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "wrong.pt" in err and "does not fit" in err


def test_console_script_installed():
    r = subprocess.run([sys.executable, "-m", "ranface", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "embed" in r.stdout


def test_pairs_folder_validation_ranks_checkpoints(trained, tmp_path):
    """data.val = an aligned folder with pairs.txt: val/acc (and HR-vs-LR at 16 px) is logged
    and the validated checkpoints are ranked."""
    from PIL import Image

    data, out = trained
    val = tmp_path / "val"
    for c in range(3):
        d = val / f"p{c}"
        d.mkdir(parents=True)
        for k in range(2):
            Image.open(os.path.join(data, f"id{c:03d}", f"{k:03d}.png")).save(d / f"p{c}_{k + 1:04d}.jpg")
    lines = ["1 3"] + [f"p{c}\t1\t2" for c in range(3)] + [f"p{c}\t1\tp{(c + 1) % 3}\t2" for c in range(3)]
    (val / "pairs.txt").write_text("\n".join(lines) + "\n")
    assert train(data, out, "val", 4, "--set", f"data.val={val}", "--set", "run.val_every=2",
                 "--set", "data.val_probe_size=16", "--set", "run.keep_best=1") == 0
    summary = json.load(open(os.path.join(out, "val", "summary.json")))
    v = summary["validation"]
    assert 0.0 <= v["val/acc"] <= 1.0 and 0.0 <= v["val/acc_lr"] <= 1.0
    index = json.load(open(os.path.join(out, "val", "checkpoints", "index.json")))
    assert set(index["metrics"]) <= {"2", "4"} and index["metrics"]
