"""Reliability round 2 (issue 15): no user input may load the wrong thing, exhaust
memory, leave half an output or show a traceback. One test (or a few) per case of the
issue, numbered as there; the command-line table is in test_cli_bad_inputs.py.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, make_face_folder, sets
from ranface.cli import main
from ranface.config import EmbedConfig, PrepareConfig, TrainConfig, load_config
from ranface.errors import CheckpointError, ConfigError, DataError, NonFiniteError, ProtocolError, RanfaceError
from ranface.train.checkpoint import load_checkpoint, save_checkpoint

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]

QUIET = ["run.progress=false", "run.tensorboard=false", "run.precision=fp32", "run.device=cpu",
         "data.batch_size=4", "data.num_workers=0", "model.backbone=mobilefacenet",
         "model.embedding_size=32", "optim.max_steps=2", "run.ckpt_every=1", "run.log_every=1"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Faces of 2 identities, a 2-step HR run (checkpoints at steps 1 and 2)."""
    root = tmp_path_factory.mktemp("rel2")
    faces = make_face_folder(str(root / "faces"), n_ids=2, per_id=4)
    out = str(root / "runs")
    assert main(["train", *sets(QUIET + [f"data.train={faces}", f"run.out_dir={out}", "run.name=hr"])]) == 0
    return {"root": str(root), "faces": faces, "out": out, "run": os.path.join(out, "hr"),
            "model": os.path.join(out, "hr", "model.pt")}


# ---------------------------------------------------------------- 1. values are not YAML

def test_command_line_strings_are_never_yaml(tmp_path):
    cfg = load_config(EmbedConfig, None, ["backbone=0001"], flags={"model": "out/m #1/model.pt"})
    assert cfg.model == "out/m #1/model.pt"  # ' #' was a YAML comment
    assert cfg.backbone == "0001"  # was the int 1
    t = load_config(TrainConfig, None, ["run.name=007", "data.batch_size=12", "optim.lr=1e-3",
                                        "model.margin=null", "data.hflip=false",
                                        "optim.milestones=[5, 9]", "model.init=a: b"])
    assert t.run.name == "007"
    assert t.data.batch_size == 12 and isinstance(t.data.batch_size, int)
    assert t.optim.lr == 0.001 and t.model.margin is None and t.data.hflip is False
    assert t.optim.milestones == [5, 9]
    assert t.model.init.endswith("a: b")  # a path: made absolute, text kept
    with pytest.raises(ConfigError, match="data.batch_size: expected an integer"):
        load_config(TrainConfig, None, ["data.batch_size=twelve"])
    # in a YAML file, YAML has already changed an unquoted 007 (to 7) or 10:30 (to 630)
    f = tmp_path / "c.yaml"
    f.write_text("run: {name: 007}\n")
    with pytest.raises(ConfigError, match=r"run.name: expected a string, got 7"):
        load_config(TrainConfig, str(f))
    f.write_text("run: {name: '007'}\n")
    assert load_config(TrainConfig, str(f)).run.name == "007"


def test_model_path_with_hash_loads_that_file(env, tmp_path, capsys):
    folder = tmp_path / "m #1"
    folder.mkdir()
    shutil.copy(env["model"], folder / "model.pt")  # and nothing at tmp/m/model.pt
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["embed", env["faces"], "-m", "m #1/model.pt", "--aligned", "--out", str(tmp_path / "e")]) == 0
    finally:
        os.chdir(cwd)
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the model reported is the file named (the card records it as an absolute path)
    assert os.path.samefile(os.path.join(tmp_path, res["model"]), folder / "model.pt") and res["embedded"] == 8


def test_set_run_name_keeps_leading_zeros(env, capsys):
    assert main(["train", "--dry-run", *sets(["run.name=007"])]) == 0
    assert "name: '007'" in capsys.readouterr().out


# ---------------------------------------------------------------- 2. YAML alias bomb

def _bomb(levels: int) -> str:
    lines, prev = ["[" + ", ".join(["lol"] * 10) + "]"], None
    text = "optim: {lr: [&a0 " + lines[0]
    for i in range(1, levels):
        text += f", &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]"
    return text + "]}\n"


def test_yaml_alias_bomb_is_refused_fast(tmp_path, capsys):
    f = tmp_path / "bomb.yaml"
    f.write_text(_bomb(9))  # ~10^9 values once expanded; 348 bytes in the issue
    assert len(f.read_bytes()) < 700
    t0 = time.perf_counter()
    assert main(["train", "-c", str(f), "--dry-run"]) == 2
    assert time.perf_counter() - t0 < 5
    line = one_line_error(capsys)
    assert "bomb.yaml" in line and ("aliases" in line or "expands" in line)


def test_error_message_echoes_a_bounded_value(tmp_path, capsys):
    f = tmp_path / "small_bomb.yaml"
    f.write_text(_bomb(3))  # 1110 values: under the bound, but the wrong type for optim.lr
    assert main(["train", "-c", str(f), "--dry-run"]) == 2
    line = one_line_error(capsys)
    assert "optim.lr: expected a number" in line and len(line) < 250


def test_config_file_size_and_kind_bounded(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(TrainConfig, str(big))
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(TrainConfig, "/dev/zero")
    many = tmp_path / "aliases.yaml"
    many.write_text("a: &x 1\nb: [" + ", ".join(["*x"] * 100) + "]\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_config(TrainConfig, str(many))


# ---------------------------------------------------------------- 3. outputs published together

def test_publish_together_rolls_back(tmp_path, monkeypatch):
    from ranface import io_utils

    a, b = tmp_path / "p.npy", tmp_path / "p.tsv"
    a.write_bytes(b"old-a")
    b.write_bytes(b"old-b")
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if str(dst).endswith("p.tsv") and str(src).endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(io_utils.os, "replace", flaky)
    with pytest.raises(DataError, match="none of p.npy, p.tsv was changed"):
        io_utils.publish_together({str(a): lambda fh: fh.write(b"new-a"),
                                   str(b): lambda fh: fh.write(b"new-b")})
    assert a.read_bytes() == b"old-a" and b.read_bytes() == b"old-b"
    assert sorted(os.listdir(tmp_path)) == ["p.npy", "p.tsv"]  # no temp or backup left
    monkeypatch.setattr(io_utils.os, "replace", real)
    io_utils.publish_together({str(a): lambda fh: fh.write(b"new-a"), str(b): lambda fh: fh.write(b"new-b")})
    assert a.read_bytes() == b"new-a" and b.read_bytes() == b"new-b"


def test_embed_failing_second_output_keeps_the_old_pair(env, tmp_path, monkeypatch, capsys):
    from ranface import io_utils

    one = tmp_path / "one"
    shutil.copytree(os.path.join(env["faces"], "id000"), one / "id000")
    prefix = str(tmp_path / "P")
    assert main(["embed", str(one), "-m", env["model"], "--aligned", "--out", prefix]) == 0
    old = (open(prefix + ".npy", "rb").read(), open(prefix + ".tsv").read())
    real = os.replace
    monkeypatch.setattr(io_utils.os, "replace", lambda s, d: (_ for _ in ()).throw(OSError(5, "I/O error"))
                        if str(d).endswith(".tsv") and str(s).endswith(".tmp") else real(s, d))
    assert main(["embed", env["faces"], "-m", env["model"], "--aligned", "--out", prefix]) == 2
    assert "was changed" in one_line_error(capsys)
    assert (open(prefix + ".npy", "rb").read(), open(prefix + ".tsv").read()) == old
    rows = len(open(prefix + ".tsv").read().splitlines())
    assert np.load(prefix + ".npy").shape[0] == rows == 4


# ---------------------------------------------------------------- 4. settings validated

@pytest.mark.parametrize("override, message", [
    ("optim.lr=.nan", "optim.lr: must be a finite number"),
    ("optim.lr=inf", "optim.lr: must be a finite number"),
    ("optim.lr=-1", "optim.lr: must be > 0"),
    ("data.batch_size=0", "data.batch_size: must be >= 1"),
    ("data.batch_size=-4", "data.batch_size: must be >= 1"),
    ("data.num_workers=-3", "data.num_workers: must be >= 0"),
    ("run.device=tpu", "run.device: must be auto, cpu"),
    ("run.ckpt_every=0", "run.ckpt_every: must be >= 1"),
    ("optim.max_steps=-1", "optim.max_steps: must be >= 1"),
    ("optim.schedule=linear", "optim.schedule: must be one of"),
    ("model.head=softmax", "model.head: must be one of"),
    ("adapt.twin_prob=1.5", r"adapt.twin_prob: must be in \[0, 1\]"),
    ("optim.milestones=[10, -2]", r"optim.milestones\[1\]: must be >= 0"),
])
def test_bad_setting_is_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, [override])


def test_other_modules_configs_validated_by_field_name():
    from ranface.gan.config import GanConfig, SynthConfig

    with pytest.raises(ConfigError, match="data.batch_size: must be >= 1"):
        load_config(GanConfig, None, ["data.batch_size=0"])
    with pytest.raises(ConfigError, match="jpeg_quality: must be in"):
        load_config(SynthConfig, None, ["jpeg_quality=101"])
    with pytest.raises(ConfigError, match="workers: must be >= 1"):
        load_config(PrepareConfig, None, ["workers=0"])


def test_nonfinite_weights_are_never_saved(tmp_path):
    p = str(tmp_path / "model.pt")
    sd = {"w": torch.ones(3), "b": torch.tensor([0.0, float("nan")])}
    with pytest.raises(NonFiniteError, match="not written: weights hold NaN or inf"):
        save_checkpoint(p, {"format": "ranface-model/1", "state_dict": sd})
    with pytest.raises(NonFiniteError, match="backbone.b"):
        save_checkpoint(p, {"modules": {"backbone": sd}, "step": 1})
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- 5. protocol lists

def test_escapes_folder_cases():
    from ranface.eval.protocols.common import check_listed, escapes_folder

    for bad in ("../x.jpg", "a/../../x.jpg", "/etc/passwd", "..", "~/x.jpg"):
        assert escapes_folder(bad), bad
    for good in ("a/b.jpg", "a/../b.jpg", "./a.jpg", "a..b.jpg"):
        assert not escapes_folder(good), good
    with pytest.raises(ProtocolError, match=r"meta.txt \(line 7\): names '../x.jpg'"):
        check_listed(["ok.jpg", "../x.jpg"], "meta.txt", "imgs", False, ["line 3", "line 7"])
    check_listed(["../x.jpg"], "meta.txt", "imgs", True)  # opted in


def test_pairs_list_outside_root_refused_unless_allowed(env, tmp_path, capsys):
    root = tmp_path / "pairs"
    for name in ("Ann", "Bob"):
        (root / "images" / name).mkdir(parents=True)
        for i in (1, 2):
            Image.open(os.path.join(env["faces"], "id000", "000.png")).convert("RGB").save(
                root / "images" / name / f"{name}_{i:04d}.jpg")
    # name "../x" -> image "../x/../x_0001.jpg" = <root>/x_0001.jpg, outside images/
    (root / "x").mkdir()
    Image.open(os.path.join(env["faces"], "id001", "000.png")).convert("RGB").save(root / "x_0001.jpg")
    (root / "pairs.txt").write_text("2 1\nAnn 1 2\nAnn 1 ../x 1\nBob 1 2\nBob 1 Ann 2\n")
    args = ["evaluate", "-p", "pairs", "-r", str(root), "-m", env["model"], "--no-progress",
            "--workers", "0", *sets(["probe_sizes=[16]", "modes=[lr-lr]"])]
    assert main(args + ["--out", str(tmp_path / "e1")]) == 2
    line = one_line_error(capsys)
    assert "pairs.txt (line 3)" in line and "outside" in line
    assert not os.path.exists(tmp_path / "e1" / "result.json")
    assert main(args + ["--out", str(tmp_path / "e2"), "--allow-outside-root"]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------- 6. face-api folders

def _manifest(folder, paths, nbytes=16):
    folder.mkdir(exist_ok=True)
    m = folder / "face_recognition_model-weights_manifest.json"
    m.write_text(json.dumps([{"paths": paths, "weights": [
        {"name": "fc", "shape": [nbytes // 4], "dtype": "float32"}]}]))
    return m


@pytest.mark.parametrize("name, match", [
    ("/dev/zero", "not a file of the model folder"),
    ("../w.bin", "not a file of the model folder"),
    ("link.bin", "outside the model folder"),
    ("fifo.bin", "not a regular file"),
    ("short.bin", "holds 8 bytes but"),
])
def test_faceapi_shards_stay_in_the_folder_and_are_size_checked(tmp_path, name, match):
    from ranface.models.faceapi import read_tfjs_weights

    model = tmp_path / "model"
    m = _manifest(model, [name])
    (tmp_path / "w.bin").write_bytes(b"\0" * 16)
    os.symlink(tmp_path / "w.bin", model / "link.bin")
    os.mkfifo(model / "fifo.bin")
    (model / "short.bin").write_bytes(b"\0" * 8)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=match):
        read_tfjs_weights(str(m))
    assert time.perf_counter() - t0 < 5


def test_faceapi_folder_reached_through_embed_is_refused(env, tmp_path, capsys):
    model = tmp_path / "model"
    _manifest(model, ["/dev/zero"])
    assert main(["embed", env["faces"], "-m", str(model), "--out", str(tmp_path / "e")]) == 2
    assert "not a file of the model folder" in one_line_error(capsys)


# ---------------------------------------------------------------- 7. one line, not a traceback

@pytest.mark.parametrize("state, match", [
    ({}, "keys: none"),
    ({"format": "ranface-model/1", "backbone": ["iresnet34"], "state_dict": {}}, "'backbone' is list"),
    ({"modules": {"backbone": {}}, "config": "model: x"}, "'config' is a str"),
    ({"modules": {"backbone": {"w": [1, 2]}}, "config": {"model": {"backbone": "mobilefacenet"}}},
     "entry 'w' is a list"),
    ({"modules": {"backbone": {}}, "config": {"model": {"backbone": "mobilefacenet",
                                                          "embedding_size": "big"}}},
     "config.model.embedding_size"),
])
def test_malformed_checkpoint_is_one_line(env, tmp_path, capsys, state, match):
    p = str(tmp_path / "bad.pt")
    torch.save(state, p)
    assert main(["compare", os.path.join(env["faces"], "id000", "000.png"),
                 os.path.join(env["faces"], "id000", "001.png"), "-m", p]) == 2
    line = one_line_error(capsys)
    assert "bad.pt" in line and (match in line), line


def test_malformed_training_checkpoint_on_resume(env, tmp_path, capsys):
    p = str(tmp_path / "ck.pt")
    torch.save({"step": "3", "modules": {}, "optimizers": {}, "phase_runs": {}, "rng": {}, "sampler": {}}, p)
    args = QUIET + [f"data.train={env['faces']}", f"run.out_dir={tmp_path}", "run.name=r", f"run.resume={p}"]
    assert main(["train", *sets(args)]) == 2
    assert "malformed checkpoint: 'step' is a str" in one_line_error(capsys)


def test_disk_full_during_checkpoint_write(tmp_path, monkeypatch):
    def full(obj, fh):
        fh.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 45")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=r"ck.pt: cannot write checkpoint \(disk full\?"):
        save_checkpoint(str(tmp_path / "ck.pt"), {"step": 1})
    assert os.listdir(tmp_path) == []


def test_dataset_smaller_than_one_batch(env, tmp_path, capsys):
    args = QUIET + [f"data.train={env['faces']}", f"run.out_dir={tmp_path}", "data.batch_size=64"]
    assert main(["train", *sets(args)]) == 2
    assert "8 faces, fewer than one batch" in one_line_error(capsys)


def test_report_out_unwritable(env, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["report", os.path.join(env["run"], "summary.json"), "--out", str(blocker / "sub")]) == 2
    assert "not writable" in one_line_error(capsys)


# ---------------------------------------------------------------- 8. late failures

@pytest.mark.parametrize("sub", ["enrol", "search"])
def test_gallery_out_checked_before_work(env, tmp_path, capsys, monkeypatch, sub):
    from ranface import api

    blocker = tmp_path / "file"
    blocker.write_text("x")

    def tripwire(*a, **k):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(api.FaceRecognizer, "from_config", classmethod(tripwire))
    if sub == "enrol":
        args = ["gallery", "enrol", env["faces"], "-m", env["model"], "--aligned", "--out", str(blocker / "g.npz")]
    else:
        args = ["gallery", "search", str(tmp_path / "g.npz"), env["faces"], "-m", env["model"],
                "--out", str(blocker / "r.json")]
    assert main(args) == 2
    assert "not writable" in one_line_error(capsys)


# ---------------------------------------------------------------- 9. resume with another recipe

def test_resume_refuses_changed_recipe_and_keeps_history(env, tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    base = QUIET + [f"data.train={env['faces']}", f"run.out_dir={tmp_path / 'runs'}", "run.name=r"]
    assert main(["train", *sets(base)]) == 0
    first = (run / "config.yaml").read_text()
    capsys.readouterr()
    more = ["optim.max_steps=3", "run.resume=auto"]
    assert main(["train", *sets(base + more + ["optim.lr=0.5", "data.batch_size=2"])]) == 2
    line = one_line_error(capsys)
    assert "changed recipe" in line and "optim.lr: 0.1 -> 0.5" in line and "data.batch_size: 4 -> 2" in line
    assert (run / "config.yaml").read_text() == first and not list(run.glob("config.resume-*"))
    assert main(["train", "--force", *sets(base + more + ["optim.lr=0.5"])]) == 0
    assert (run / "config.yaml").read_text() == first  # still the first part
    part = load_config(TrainConfig, str(run / "config.resume-1.yaml"))
    assert part.optim.lr == 0.5 and part.optim.max_steps == 3
    # extending a run (max_steps) is no change of recipe; an identical resume adds no file
    assert main(["train", *sets(base + ["optim.max_steps=4", "run.resume=auto", "optim.lr=0.5"])]) == 2
    capsys.readouterr()
    assert main(["train", *sets(base + ["optim.max_steps=4", "run.resume=auto"])]) == 0
    assert sorted(p.name for p in run.glob("config*.yaml")) == ["config.resume-1.yaml", "config.resume-2.yaml",
                                                                 "config.yaml"]


# ---------------------------------------------------------------- 10. failing prepare workers

def test_prepare_missing_mtcnn_weights_ends_at_once(tmp_path):
    fake = tmp_path / "site" / "facenet_pytorch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")  # the wheel without its data/ folder
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.full((64, 64, 3), 100 + i, np.uint8)).save(photos / f"p{i}.jpg")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), os.path.join(ROOT, "src")]))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ranface", "prepare", str(photos), "--out", str(tmp_path / "o"),
                        "--set", "workers=2", "--set", "progress=false"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "MTCNN weights" in lines[0], r.stderr
    assert time.perf_counter() - t0 < 60


def test_worker_error_ends_the_pool(tmp_path):
    from dataclasses import asdict

    from ranface.align.prepare import _run_pool

    cfg = asdict(PrepareConfig(out=str(tmp_path), template="no-such-template"))
    t0 = time.perf_counter()
    with pytest.raises(RanfaceError, match="template must be one of"):
        _run_pool(2, cfg, [(i, str(tmp_path), str(tmp_path), ["x.jpg"]) for i in range(4)], lambda r: None)
    assert time.perf_counter() - t0 < 90


# ---------------------------------------------------------------- 11. minor

def test_synthesize_output_inside_input_refused(env, capsys):
    out = os.path.join(env["faces"], "lr_twin")
    assert main(["synthesize", env["faces"], out, "-d", "bicubic"]) == 2
    assert "inside the input's folder" in one_line_error(capsys)
    assert not os.path.exists(out)


def test_single_identity_dataset_refused(env, tmp_path, capsys):
    one = tmp_path / "one"
    shutil.copytree(os.path.join(env["faces"], "id000"), one / "id000")
    assert main(["train", *sets(QUIET + [f"data.train={one}", f"run.out_dir={tmp_path}"])]) == 2
    assert "1 identity" in one_line_error(capsys)


def test_rec_and_bin_outputs_get_normal_permissions(tmp_path):
    from ranface.data.binfile import write_bin
    from ranface.data.recordio import RecordWriter

    umask = os.umask(0o022)
    os.umask(umask)
    with RecordWriter(str(tmp_path / "t.rec"), str(tmp_path / "t.idx")) as w:
        w.write_idx(0, b"abc")
    write_bin(str(tmp_path / "v.bin"), [b"a", b"b"], [True])
    for name in ("t.rec", "t.idx", "v.bin"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name


def test_fifo_in_image_folder_is_skipped(env, tmp_path, capsys):
    folder = tmp_path / "faces"
    shutil.copytree(os.path.join(env["faces"], "id000"), folder / "id000")
    os.mkfifo(folder / "id000" / "x.jpg")
    assert main(["embed", str(folder), "-m", env["model"], "--aligned", "--out", str(tmp_path / "e")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["embedded"] == 4 and res["not_regular_files"] == 1
