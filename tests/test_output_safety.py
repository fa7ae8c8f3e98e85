"""Output safety (hardening, issue 7), for every command that writes files (train,
train-gan, prepare, synthesize, evaluate, embed):

* an unwritable output folder is a one-line error BEFORE any work (the function doing
  the work is replaced by a tripwire). As root, ``chmod`` does not stop writes, so the
  portable case puts the output under a regular file (``<file>/sub``), which fails for
  root too; the ``chmod 0o500`` case runs only for other users;
* every output file is written atomically: after a clean run, each file in the output
  folder is the destination of an ``os.replace`` (written as a temp file and renamed),
  except append-only logs; and when one ``os.replace`` fails mid-run, the command fails
  with a clear error, its target holds no partial file and no temp file is left.

A new command is one more entry in :data:`COMMANDS`.
"""
import os
import shutil
import stat
from dataclasses import dataclass
from typing import Callable, Dict, List, Set

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_face_folder, shared_path, sets
from ranface.cli import main

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]

# append-only logs: written line by line on purpose (a kill loses at most the last line;
# resume truncates metrics.jsonl atomically to the checkpoint's step)
LOGS = ("metrics.jsonl",)




@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from ranface.inference import model_package
    from ranface.models import create_backbone
    from ranface.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("outsafe")
    faces = make_face_folder(str(root / "faces"), n_ids=2, per_id=4)
    small = make_face_folder(str(root / "small"), n_ids=2, per_id=4, size=32)
    torch.manual_seed(0)
    model = str(root / "model.pt")
    save_checkpoint(model, model_package(create_backbone("mobilefacenet", embedding_size=32), "mobilefacenet",
                                         {"embedding_size": 32}))
    pairs = root / "pairs"
    for c, name in enumerate(("Ann", "Bob")):
        (pairs / "images" / name).mkdir(parents=True)
        for i in (1, 2):
            Image.open(os.path.join(faces, f"id{c:03d}", f"{i:03d}.png")).convert("RGB").save(
                pairs / "images" / name / f"{name}_{i:04d}.jpg")
    (pairs / "pairs.txt").write_text("2 1\nAnn 1 2\nAnn 1 Bob 1\nBob 1 2\nBob 2 Ann 2\n")
    photos = root / "photos"
    lfw = shared_path("lfw-gray", "images", "Aaron_Peirsol")
    photos.mkdir()
    if os.path.isdir(lfw):
        for f in sorted(os.listdir(lfw))[:2]:
            shutil.copy(os.path.join(lfw, f), photos / f)
    else:  # no real photos: a face-less picture still exercises the outputs (a failures row)
        Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(photos / "x.jpg")
    return {"faces": faces, "small": small, "model": model, "pairs": str(pairs), "photos": str(photos)}




TRAIN = ["model.backbone=mobilefacenet", "model.embedding_size=32", "data.batch_size=4", "data.num_workers=0",
         "run.precision=fp32", "run.progress=false", "run.tensorboard=false", "run.device=cpu",
         "optim.max_steps=2", "run.ckpt_every=1", "run.name=r"]
GAN = ["data.face_size=32", "data.batch_size=2", "data.num_workers=0", "generator.base_width=4",
       "generator.num_stages=1", "generator.blocks_per_stage=1", "generator.z_dim=4", "generator.local_width=4",
       "generator.fuse_width=8", "discriminator.base_width=4", "run.progress=false", "run.tensorboard=false",
       "run.precision=fp32", "optim.max_steps=2", "run.ckpt_every=1", "image_every=1", "run.name=r"]


@dataclass
class Command:
    argv: Callable[[Dict[str, str], str], List[str]]  # (env, output folder) -> argv
    tripwire: str  # module:attribute doing the work; must not run when the output is unwritable
    out_is_prefix: bool = False  # embed takes an output prefix, not a folder


COMMANDS: Dict[str, Command] = {
    "train": Command(lambda e, o: ["train", "--stage", "hr"] + sets(TRAIN + [f"data.train={e['faces']}",
                                                                            f"run.out_dir={o}"]),
                     "ranface.train.loop:Trainer.fit"),
    "train-gan": Command(lambda e, o: ["train-gan", "--hr", e["small"], "--lr-pool", os.path.join(e["small"], "id000"),
                                       "--expert", e["model"]] + sets(GAN + [f"run.out_dir={o}"]),
                         "ranface.train.loop:Trainer.fit"),
    "prepare": Command(lambda e, o: ["prepare", e["photos"], "--out", o] + sets(["workers=1", "progress=false"]),
                       "ranface.align.prepare:_init_worker"),
    "synthesize": Command(lambda e, o: ["synthesize", e["small"], o, "--degrader", "bicubic"] + sets(
        ["num_workers=0", "progress=false", "device=cpu", "batch_size=3"]), "ranface.gan.degraders:_FolderJob.run"),
    "evaluate": Command(lambda e, o: ["evaluate", "--protocol", "pairs", "--root", e["pairs"], "--model", e["model"],
                                      "--out", o, "--no-progress", "--workers", "0"] + sets(
        ["probe_sizes=[16]", "modes=[hr-lr]"]), "ranface.eval.protocols.pairs:embed_images"),
    "embed": Command(lambda e, o: ["embed", e["faces"], "--aligned", "--model", e["model"], "--out", os.path.join(o, "emb")],
                     "ranface.inference:Embedder.embed_arrays", out_is_prefix=True),
}


def set_tripwire(monkeypatch, spec: str) -> None:
    import importlib

    mod, attr = spec.split(":")
    target = importlib.import_module(mod)
    parts = attr.split(".")
    for p in parts[:-1]:
        target = getattr(target, p)

    def tripwire(*a, **kw):
        raise AssertionError(f"{spec} ran although the output folder is unwritable")

    monkeypatch.setattr(target, parts[-1], tripwire)


# ---------------------------------------------------------------------------- unwritable output


def unwritable(tmp_path, how: str) -> str:
    if how == "under-a-file":
        blocker = tmp_path / "a_file"
        blocker.write_text("not a folder")
        return str(blocker / "out")
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop root from writing (the under-a-file case covers it)")
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)  # 0o500
    return str(ro / "out")


@pytest.mark.parametrize("how", ["under-a-file", "chmod-0o500"])
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_unwritable_output_fails_before_any_work(name, how, env, tmp_path, capsys, monkeypatch):
    cmd = COMMANDS[name]
    out = unwritable(tmp_path, how)
    set_tripwire(monkeypatch, cmd.tripwire)
    try:
        rc = main(cmd.argv(env, out))
    finally:
        if how == "chmod-0o500":
            os.chmod(os.path.dirname(out), 0o700)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err, err
    assert len(err) == 1 and err[0].startswith("ranface: error: "), err
    assert "out" in err[0] and ("not writable" in err[0] or "cannot write" in err[0]), err[0]


# ---------------------------------------------------------------------------- atomic writes


def output_files(root: str) -> Set[str]:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


def record_replaces(monkeypatch, fail_at: int = -1) -> List[str]:
    """Record every os.replace / os.rename destination; the ``fail_at``-th call raises."""
    seen: List[str] = []
    real_replace, real_rename = os.replace, os.rename

    def wrap(real):
        def call(src, dst, *a, **kw):
            seen.append(os.path.abspath(os.fspath(dst)))
            if len(seen) - 1 == fail_at:
                raise OSError(28, "No space left on device (injected)")
            return real(src, dst, *a, **kw)
        return call

    monkeypatch.setattr(os, "replace", wrap(real_replace))
    monkeypatch.setattr(os, "rename", wrap(real_rename))
    return seen


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_output_is_written_atomically(name, env, tmp_path, capsys, monkeypatch):
    cmd = COMMANDS[name]
    out = str(tmp_path / "out")
    os.makedirs(out)
    replaced = record_replaces(monkeypatch)
    assert main(cmd.argv(env, out)) == 0, capsys.readouterr().err
    files = output_files(out)
    assert files
    direct = sorted(os.path.relpath(f, out) for f in files
                    if f not in set(replaced) and os.path.basename(f) not in LOGS)
    assert direct == [], f"written in place, not atomically: {direct}"
    n = len(replaced)
    monkeypatch.undo()

    # now the middle os.replace of the same run fails ("disk full" at that moment)
    out2 = str(tmp_path / "out2")
    os.makedirs(out2)
    replaced2 = record_replaces(monkeypatch, fail_at=n // 2)
    rc = main(cmd.argv(env, out2))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("ranface: error: "), err
    assert "No space left on device" in err[-1]
    target = replaced2[n // 2]
    assert os.path.basename(target) in err[-1] or os.path.dirname(target) in err[-1], (target, err[-1])
    assert not os.path.exists(target), f"partial {target} left behind"
    leftovers = [f for f in output_files(out2) if os.path.basename(f).endswith((".tmp", ".part"))]
    assert leftovers == [], leftovers
