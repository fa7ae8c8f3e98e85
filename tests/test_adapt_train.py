"""End-to-end ``train --stage mr`` on a tiny synthetic face folder: HR run, LR run (from
HR, on the LR twins), then MR; summary, model.pt, W statistics, exact resume, ablation."""
import json
import os

import pytest
import torch

from conftest import make_face_folder
from test_adapt import make_lr_twin
from ranface.adapt.trainer import load_lr_stream, run_adaption
from ranface.cli import main
from ranface.config import TrainConfig, load_config
from ranface.errors import CheckpointError
from ranface.models.loader import load_model
from ranface.train.checkpoint import load_checkpoint
from ranface.train.recognition import run_recognition
from ranface.train.stats import read_metrics

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # on a shared 2-core machine two intra-op threads spin against other jobs (measured
    # 3-20x slower per MobileFaceNet step than one thread); restored afterwards
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


BASE = ["model.backbone=mobilefacenet", "model.embedding_size=64", "data.batch_size=4", "data.num_workers=0",
        "run.progress=false", "run.precision=fp32", "run.tensorboard=false", "run.device=cpu",
        "run.log_every=1", "run.ckpt_every=2", "run.channels_last=false", "optim.schedule=constant",
        "optim.lr=0.01"]


def cfg(stage, out, name, steps, *extra):
    return load_config(TrainConfig, None, [f"stage={stage}", f"run.out_dir={out}", f"run.name={name}",
                                           f"optim.max_steps={steps}", *BASE, *extra])


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("mr")
    hr = make_face_folder(str(root / "hr"), n_ids=3, per_id=4)
    lr = make_lr_twin(hr, str(root / "lr"), size=16)
    out = str(root / "runs")
    run_recognition(cfg("hr", out, "hr", 1, f"data.train={hr}"))
    run_recognition(cfg("lr", out, "lr", 1, f"data.train={lr}", f"model.init={out}/hr"))
    mr = [f"data.train={hr}", f"data.lr_train={lr}", f"model.init={out}/hr", f"adapt.lr_model={out}/lr"]
    summary = run_adaption(cfg("mr", out, "straight", 4, *mr))
    return out, mr, summary


def test_mr_summary_and_outputs(stages):
    out, _, summary = stages
    run = os.path.join(out, "straight")
    assert summary["steps"] == 4 and summary["phase_runs"] == {"recog": 4, "feat_D": 4}
    assert summary["num_classes"] == 3 and summary["num_images"] == 12 and summary["translator"] is True
    # the HR head (same identities) is taken from the HR run's checkpoint; model.pt has none
    assert summary["head"] is True
    assert summary["head_source"].endswith(os.path.join("hr", "checkpoints", "ckpt-00000001.pt"))
    assert summary["lr_head"].endswith(os.path.join("lr", "checkpoints", "ckpt-00000001.pt"))
    assert json.load(open(os.path.join(run, "summary.json")))["steps"] == 4
    # model.pt: the MR backbone in the HR stage's format
    pkg = load_checkpoint(os.path.join(run, "model.pt"))
    hr_pkg = load_checkpoint(os.path.join(out, "hr", "model.pt"))
    assert pkg["format"] == hr_pkg["format"] and pkg["backbone"] == "mobilefacenet"
    assert pkg["state_dict"].keys() == hr_pkg["state_dict"].keys()
    assert any(not torch.equal(pkg["state_dict"][k], hr_pkg["state_dict"][k]) for k in pkg["state_dict"])
    bb, card = load_model(os.path.join(run, "model.pt"))
    assert card.embedding_size == 64 and card.provenance.stage == "mr"
    assert pkg["card"]["architecture"] == "mobilefacenet"  # the card travels in model.pt
    ck = load_checkpoint(os.path.join(run, "checkpoints", "ckpt-00000004.pt"))
    assert set(ck["modules"]) == {"backbone", "head", "translator", "disc"}
    assert torch.equal(ck["modules"]["backbone"]["features.weight"], pkg["state_dict"]["features.weight"])


def test_w_statistics_logged(stages):
    out, _, summary = stages
    rows = read_metrics(os.path.join(out, "straight"), "train")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert 0.0 <= r["recog/w_mean"] <= 1.0 and r["recog/w_std"] >= 0.0
        assert "feat_D/loss" in r and "recog/l_p" in r and "recog/l_f" in r
    assert [r["recog/g_on"] for r in rows] == [1, 0, 0, 0]
    gate = summary["gate"]
    assert gate["w_mean_first"] == rows[0]["recog/w_mean"] and len(gate["trajectory"]) == 4
    # the four Eq. 10 terms' gradient shares at f_HR: a distribution; L_feature^G has none
    # on the steps where it is weighted by 0 (g_on = 0)
    for r in rows:
        shares = [r[f"recog/grad_share/{k}"] for k in ("l_c_hr", "l_feature_g", "l_p", "l_f")]
        assert all(0.0 <= v <= 1.0 for v in shares) and sum(shares) == pytest.approx(1.0, abs=1e-4)
        assert r["recog/grad_share/l_c_hr"] > 0 and r["recog/grad_share/l_f"] > 0
        if r["recog/g_on"] == 0:
            assert r["recog/grad_share/l_feature_g"] == 0.0
    trace = summary["adaption_trace"]
    assert trace["first"]["step"] == 1 and trace["last"]["step"] == 4
    assert {"recog/l_f", "recog/grad_share/l_f", "feat_D/d_real", "feat_D/d_translated",
            "recog/w_mean"} <= set(trace["last"])
    assert trace["last"]["recog/l_f"] == rows[-1]["recog/l_f"]


def test_lr_model_frozen_on_disk_and_in_memory(stages):
    out, _, _ = stages
    # the LR run's files are not rewritten by the MR stage
    lr_pkg = load_checkpoint(os.path.join(out, "lr", "model.pt"))
    lr = load_lr_stream(os.path.join(out, "lr"), torch.device("cpu"), "mobilefacenet", 64, 3)
    assert not lr.backbone.training and not lr.head.training
    assert all(not p.requires_grad for m in (lr.backbone, lr.head) for p in m.parameters())
    sd = lr.backbone.state_dict()
    assert all(torch.equal(sd[k], lr_pkg["state_dict"][k]) for k in sd)


def test_exact_resume_mr(stages):
    out, mr, _ = stages
    run_adaption(cfg("mr", out, "half", 2, *mr))
    resumed = run_adaption(cfg("mr", out, "half", 4, *mr, "run.resume=auto"))
    assert resumed["resumed"] and resumed["phase_runs"] == {"recog": 4, "feat_D": 4}
    a = load_checkpoint(os.path.join(out, "straight", "checkpoints", "ckpt-00000004.pt"))["modules"]
    b = load_checkpoint(os.path.join(out, "half", "checkpoints", "ckpt-00000004.pt"))["modules"]
    for mod in ("backbone", "head", "translator", "disc"):
        assert a[mod].keys() == b[mod].keys()
        for k in a[mod]:
            assert torch.equal(a[mod][k], b[mod][k]), (mod, k)


def test_twin_prob_changes_training_and_resumes_exactly(stages):
    """adapt.twin_prob: the top stream also sees LR twins (a different run from the same
    seed), and the per-sample coin is part of the exact resume."""
    out, mr, _ = stages
    run_adaption(cfg("mr", out, "twin_straight", 4, *mr, "adapt.twin_prob=0.5"))
    run_adaption(cfg("mr", out, "twin_half", 2, *mr, "adapt.twin_prob=0.5"))
    run_adaption(cfg("mr", out, "twin_half", 4, *mr, "adapt.twin_prob=0.5", "run.resume=auto"))
    path = lambda name: os.path.join(out, name, "checkpoints", "ckpt-00000004.pt")  # noqa: E731
    a, b = load_checkpoint(path("twin_straight"))["modules"], load_checkpoint(path("twin_half"))["modules"]
    assert all(torch.equal(a["backbone"][k], b["backbone"][k]) for k in a["backbone"])
    plain = load_checkpoint(path("straight"))["modules"]
    assert any(not torch.equal(a["backbone"][k], plain["backbone"][k]) for k in a["backbone"])


def test_no_translator_ablation_via_cli(stages):
    out, mr, _ = stages
    args = ["train", "--stage", "mr"]
    for s in [f"run.out_dir={out}", "run.name=abl", "optim.max_steps=2", *BASE, *mr, "adapt.translator=false"]:
        args += ["--set", s]
    assert main(args) == 0
    ck = load_checkpoint(os.path.join(out, "abl", "checkpoints", "ckpt-00000002.pt"))
    assert set(ck["modules"]) == {"backbone", "head", "disc"}


def test_lr_model_without_checkpoint_needs_beta_zero(stages, tmp_path):
    import shutil

    out, _, _ = stages
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(os.path.join(out, "lr", "model.pt"), lone / "model.pt")
    with pytest.raises(CheckpointError, match="adapt.beta=0"):
        load_lr_stream(str(lone / "model.pt"), torch.device("cpu"), "mobilefacenet", 64, 3)
    lr = load_lr_stream(str(lone / "model.pt"), torch.device("cpu"), "mobilefacenet", 64, 3, need_head=False)
    assert lr.head is None
    # a checkpoint whose backbone is not the given model.pt is refused
    other = tmp_path / "other"
    shutil.copytree(os.path.join(out, "hr", "checkpoints"), other / "checkpoints")
    shutil.copy(os.path.join(out, "lr", "model.pt"), other / "model.pt")
    with pytest.raises(CheckpointError, match="not the LR model"):
        load_lr_stream(str(other / "model.pt"), torch.device("cpu"), "mobilefacenet", 64, 3)
