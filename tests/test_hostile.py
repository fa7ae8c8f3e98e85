"""Hostile files (hardening, issue 7), the gaps left by test_checkpoint.py / test_binfile.py
/ test_prepare.py: every command-line entry that loads a checkpoint, model, generator,
expert or ``.bin`` refuses a pickle that would run code (checked by a marker file that
must not appear); checkpoints with extra / missing / misshapen tensors or a foreign
optimizer state give one error listing them; list-file paths escaping the dataset root
(absolute, ``a/../..``, symlinks) are refused; a YAML config cannot construct objects.

A new consumer is one more entry in :data:`CONSUMERS` / :data:`DEFECTS`.
"""
import os
import pickle
from typing import Dict, List

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_face_folder, sets
from ranface.cli import main
from ranface.config import TrainConfig, load_config
from ranface.train.checkpoint import load_checkpoint, save_checkpoint

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]

QUIET = ["run.progress=false", "run.tensorboard=false", "run.precision=fp32", "run.device=cpu",
         "data.batch_size=4", "data.num_workers=0", "model.backbone=mobilefacenet",
         "model.embedding_size=32", "optim.max_steps=1"]






@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Faces (112 and 32 px), an LR pool, a 1-step HR run, a generator.pt, a pairs root."""
    from ranface.gan.config import GeneratorConfig
    from ranface.gan.generator import MRGenerator, generator_package
    from ranface.train.recognition import run_recognition

    root = tmp_path_factory.mktemp("hostile")
    faces = make_face_folder(str(root / "faces"), n_ids=2, per_id=4)
    small = make_face_folder(str(root / "small"), n_ids=2, per_id=4, size=32)
    out = str(root / "runs")
    run_recognition(load_config(TrainConfig, None, QUIET + [
        f"data.train={faces}", f"run.out_dir={out}", "run.name=hr", "run.ckpt_every=1"]))
    torch.manual_seed(0)
    G = MRGenerator(GeneratorConfig(base_width=4, num_stages=1, blocks_per_stage=1, z_dim=4,
                                    local_width=4, fuse_width=8), face_size=32)
    gen = str(root / "generator.pt")
    save_checkpoint(gen, generator_package(G, {}, step=3))
    pairs = root / "pairs"
    for name, n in (("Ann", 2), ("Bob", 1)):
        (pairs / "images" / name).mkdir(parents=True)
        for i in range(1, n + 1):
            src = os.path.join(faces, "id000", f"{i:03d}.png")
            Image.open(src).convert("RGB").save(pairs / "images" / name / f"{name}_{i:04d}.jpg")
    (pairs / "pairs.txt").write_text("1 1\nAnn 1 2\nAnn 1 Bob 1\n")
    return {"root": str(root), "faces": faces, "small": small, "out": out,
            "hr_run": os.path.join(out, "hr"), "model": os.path.join(out, "hr", "model.pt"),
            "ckpt": os.path.join(out, "hr", "checkpoints", "ckpt-00000001.pt"),
            "generator": gen, "pairs": str(pairs)}


# ---------------------------------------------------------------------------- consumers

def c_embed(e, path, tmp):
    return ["embed", e["faces"], "--aligned", "--model", path, "--out", os.path.join(tmp, "emb")]


def c_compare(e, path, tmp):
    a = os.path.join(e["faces"], "id000", "000.png")
    return ["compare", a, a, "--aligned", "--model", path]


def c_evaluate(e, path, tmp):
    return ["evaluate", "--protocol", "pairs", "--root", e["pairs"], "--model", path, "--out",
            os.path.join(tmp, "eval"), "--no-progress", "--workers", "0"]


def c_resume(e, path, tmp):
    return ["train", "--stage", "hr"] + sets(QUIET + [f"data.train={e['faces']}", f"run.out_dir={tmp}",
                                                      "optim.max_steps=2", f"run.resume={path}"])


def c_init(e, path, tmp):
    return ["train", "--stage", "lr"] + sets(QUIET + [f"data.train={e['faces']}", f"run.out_dir={tmp}",
                                                      f"model.init={path}"])


def c_val_bin(e, path, tmp):
    return ["train", "--stage", "hr"] + sets(QUIET + [f"data.train={e['faces']}", f"run.out_dir={tmp}",
                                                      f"data.val={path}", "run.val_every=1"])


def c_expert(e, path, tmp):
    return ["train-gan", "--hr", e["small"], "--lr-pool", os.path.join(e["small"], "id000"),
            "--expert", path] + sets(["data.face_size=32", "data.batch_size=2", "data.num_workers=0",
                                      "generator.base_width=4", "generator.num_stages=1",
                                      "discriminator.base_width=4", "run.progress=false",
                                      "run.tensorboard=false", "optim.max_steps=1", f"run.out_dir={tmp}"])


def c_mrgan(e, path, tmp):
    return ["synthesize", e["small"], os.path.join(tmp, "lr"), "--degrader", "mrgan", "--checkpoint", path,
            "--set", "num_workers=0", "--set", "progress=false", "--set", "device=cpu"]


def c_mr_lr_model(e, path, tmp):
    return ["train", "--stage", "mr"] + sets(QUIET + [f"data.train={e['faces']}", f"data.lr_train={e['faces']}",
                                                      f"model.init={e['hr_run']}", f"adapt.lr_model={path}",
                                                      f"run.out_dir={tmp}"])


# consumer -> (argv builder, kind of file it loads)
CONSUMERS: Dict[str, tuple] = {
    "embed --model": (c_embed, "pt"),
    "compare --model": (c_compare, "pt"),
    "evaluate --model": (c_evaluate, "pt"),
    "train run.resume": (c_resume, "pt"),
    "train model.init": (c_init, "pt"),
    "train adapt.lr_model": (c_mr_lr_model, "pt"),
    "train-gan --expert": (c_expert, "pt"),
    "synthesize mrgan --checkpoint": (c_mrgan, "pt"),
    "train data.val (.bin)": (c_val_bin, "bin"),
}


class Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_payload(path: str, kind: str, marker: str) -> None:
    """A file that runs ``touch marker`` when unpickled: a legacy (non-zip) pickle, a
    torch.save zip archive, or a .bin pickle with the payload where the images go."""
    if kind == "legacy":
        with open(path, "wb") as fh:
            pickle.dump({"format": "ranface-model/1", "state_dict": {"w": Evil(marker)}}, fh, protocol=2)
    elif kind == "zip":
        torch.save({"modules": {"backbone": Evil(marker)}, "step": 1}, path)
    elif kind == "bin":
        with open(path, "wb") as fh:
            pickle.dump(([Evil(marker), b"x"], [True]), fh, protocol=2)


PAYLOADS = {"pt": ("legacy", "zip"), "bin": ("bin",)}
CASES = [(c, p) for c, (_, kind) in CONSUMERS.items() for p in PAYLOADS[kind]]


@pytest.mark.parametrize("consumer,payload", CASES)
def test_code_in_pickle_is_never_executed(consumer, payload, env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = str(tmp_path / "PWNED")
    evil = str(tmp_path / ("evil.bin" if payload == "bin" else "evil.pt"))
    write_payload(evil, payload, marker)
    build, _ = CONSUMERS[consumer]
    rc = main(build(env, evil, str(tmp_path / "out")))
    err = capsys.readouterr().err
    assert not os.path.exists(marker), "the pickle ran code"
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert os.path.basename(evil) in line and "refused" in line, line


def test_yaml_config_cannot_build_objects(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"stage: !!python/object/apply:os.system ['touch {tmp_path}/PWNED']\n")
    assert main(["train", "-c", str(cfg), "--dry-run"]) == 2
    assert "evil.yaml" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists()


# ---------------------------------------------------------------------------- defective checkpoints


def _extra_missing(sd: dict) -> dict:
    sd = dict(sd)
    first = sorted(sd)[0]
    sd.pop(first)
    sd["bogus.weight"] = torch.zeros(3)
    return sd


def _misshapen(sd: dict) -> dict:
    sd = dict(sd)
    k = sorted(k for k, v in sd.items() if v.dim() == 4)[0]
    sd[k] = torch.zeros(1, *sd[k].shape[1:])
    return sd


def ck_backbone(transform):
    def make(e, path):
        ck = load_checkpoint(e["ckpt"])
        ck["modules"]["backbone"] = transform(ck["modules"]["backbone"])
        save_checkpoint(path, ck)
        return load_checkpoint(e["ckpt"])["modules"]["backbone"]
    return make


def ck_drop_head(e, path):
    ck = load_checkpoint(e["ckpt"])
    del ck["modules"]["head"]
    save_checkpoint(path, ck)


def ck_foreign_optimizer(e, path):
    ck = load_checkpoint(e["ckpt"])
    ck["optimizers"]["recog"]["param_groups"] = ck["optimizers"]["recog"]["param_groups"][:1]
    save_checkpoint(path, ck)


def ck_no_optimizers(e, path):
    ck = load_checkpoint(e["ckpt"])
    del ck["optimizers"]
    save_checkpoint(path, ck)


def model_pt(transform):
    def make(e, path):
        pkg = load_checkpoint(e["model"])
        pkg["state_dict"] = transform(pkg["state_dict"])
        save_checkpoint(path, pkg)
        return load_checkpoint(e["model"])["state_dict"]
    return make


def generator_pt(transform):
    def make(e, path):
        pkg = load_checkpoint(e["generator"])
        pkg["state_dict"] = transform(pkg["state_dict"])
        save_checkpoint(path, pkg)
        return load_checkpoint(e["generator"])["state_dict"]
    return make


def expect_listed(kind: str):
    """What the one-line error must name, given the original state dict."""
    def check(line: str, original: dict) -> None:
        if kind == "extra-missing":
            assert f"missing: {sorted(original)[0]}" in line and "unexpected: bogus.weight" in line, line
        elif kind == "misshapen":
            k = sorted(k for k, v in original.items() if v.dim() == 4)[0]
            assert f"shape mismatch: {k} (1," in line, line
    return check


# name -> (consumer, make(env, path) -> original state or None, expected text / checker)
DEFECTS: Dict[str, tuple] = {
    "resume: backbone extra+missing": ("train run.resume", ck_backbone(_extra_missing),
                                       expect_listed("extra-missing")),
    "resume: backbone misshapen": ("train run.resume", ck_backbone(_misshapen), expect_listed("misshapen")),
    "resume: head module missing": ("train run.resume", ck_drop_head, "has no state for module 'head'"),
    "resume: foreign optimizer state": ("train run.resume", ck_foreign_optimizer, "optimizer"),
    "resume: no optimizer state": ("train run.resume", ck_no_optimizers, "missing 'optimizers'"),
    "model.pt: extra+missing": ("embed --model", model_pt(_extra_missing), expect_listed("extra-missing")),
    "model.pt: misshapen": ("embed --model", model_pt(_misshapen), expect_listed("misshapen")),
    "init: extra+missing": ("train model.init", ck_backbone(_extra_missing), expect_listed("extra-missing")),
    "generator.pt: extra+missing": ("synthesize mrgan --checkpoint", generator_pt(_extra_missing),
                                    expect_listed("extra-missing")),
    "generator.pt: misshapen": ("synthesize mrgan --checkpoint", generator_pt(_misshapen),
                                expect_listed("misshapen")),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_defective_checkpoint_is_one_clear_error(defect, env, tmp_path, capsys):
    consumer, make, expected = DEFECTS[defect]
    path = str(tmp_path / "defective.pt")
    original = make(env, path)
    rc = main(CONSUMERS[consumer][0](env, path, str(tmp_path / "out")))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err, err
    line = err[-1]
    assert line.startswith("ranface: error: ") and "defective.pt" in line, line
    if callable(expected):
        expected(line, original)
    else:
        assert expected in line, line


# ---------------------------------------------------------------------------- list-file escapes


@pytest.fixture
def photo_root(tmp_path):
    """<tmp>/root/<person>/a.jpg inside the dataset root, <tmp>/outside.jpg outside it."""
    root = tmp_path / "root"
    (root / "p").mkdir(parents=True)
    img = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    img.save(root / "p" / "a.jpg")
    img.save(tmp_path / "outside.jpg")
    (tmp_path / "elsewhere").mkdir()
    img.save(tmp_path / "elsewhere" / "b.jpg")
    os.symlink(tmp_path / "outside.jpg", root / "p" / "link.jpg")
    os.symlink(tmp_path / "elsewhere", root / "dirlink")
    return root


ESCAPES = {
    "absolute": lambda t: str(t / "outside.jpg"),
    "dotdot-inside": lambda t: "p/../../outside.jpg",
    "symlinked file": lambda t: "p/link.jpg",
    "symlinked folder": lambda t: "dirlink/b.jpg",
}


@pytest.mark.parametrize("how", sorted(ESCAPES))
def test_list_file_path_escaping_root_refused(how, photo_root, tmp_path, capsys):
    lst = tmp_path / "list.txt"
    lst.write_text(f"# photos\np/a.jpg\n{ESCAPES[how](tmp_path)}\n")
    out = tmp_path / "out"
    rc = main(["prepare", str(lst), "--out", str(out), "--set", f"root={photo_root}",
               "--set", "workers=1", "--set", "progress=false"])
    err = capsys.readouterr().err
    assert rc == 2 and "escapes" in err and "list.txt (line 3)" in err, err
    assert not out.exists(), "work started before the list was checked"
