"""Crash and resume (hardening, issue 7): a training stage, ``synthesize`` and ``prepare``
run as real subprocesses, are SIGKILLed (at a random step, and while an output or
checkpoint is being written) and rerun. The rerun's final parameters / outputs equal an
uninterrupted run's; no checkpoint on disk is ever unreadable; nothing half-written and
no stale temp file is left.

A kill "during a write" is made reliable by a ``sitecustomize`` put on the child's
PYTHONPATH (test-side only) that makes ``os.fsync`` slow: the window between a temp
file's creation and its rename then lasts long enough for the poller to see the temp
file and kill the process inside it. A new training stage is one more entry in
:data:`STAGES`.
"""
import glob
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, make_face_folder, require_shared, sets
from ranface.train.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400), pytest.mark.usefixtures("one_thread")]

TEMP_RE = re.compile(r"^\..+\.(tmp|part)$")
SLOW_FSYNC = '''
import os, time
if os.environ.get("RANFACE_TEST_SLOW_FSYNC"):
    _fsync, _delay = os.fsync, float(os.environ["RANFACE_TEST_SLOW_FSYNC"])
    def _slow_fsync(fd):
        time.sleep(_delay)
        return _fsync(fd)
    os.fsync = _slow_fsync
'''




@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sitehook")
    (d / "sitecustomize.py").write_text(SLOW_FSYNC)
    return str(d)


def child_env(hook_dir: str, slow_fsync: float = 0.0) -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([hook_dir, os.path.join(ROOT, "src"), env.get("PYTHONPATH", "")])
    env.pop("RANFACE_TEST_SLOW_FSYNC", None)
    if slow_fsync:
        env["RANFACE_TEST_SLOW_FSYNC"] = str(slow_fsync)
    return env


def temps(root: str) -> List[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if TEMP_RE.match(f))


# ---------------------------------------------------------------------------- kill plans


@dataclass
class Kill:
    """When to SIGKILL: ``kind='write'``: as soon as the ``nth`` temp file shows up under
    ``watch`` (fsync slowed so the kill lands before its rename); ``kind='time'``: once
    ``progress(watch)`` has grown by ``after`` since the start, ``delay`` seconds later."""

    kind: str
    nth: int = 1
    after: int = 1
    delay: float = 0.0


def run_until_killed(argv: List[str], env: Dict[str, str], watch: str, kill: Kill,
                     progress: Callable[[str], int], timeout: float = 240) -> Tuple[bool, List[str]]:
    """Start ``argv``; kill it per ``kill``. Returns (killed, temp files right after the
    kill). A process that finishes first counts as not killed (its exit must be 0)."""
    start = progress(watch)
    p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    seen = set()
    t0 = time.time()
    deadline = None
    try:
        while p.poll() is None:
            if time.time() - t0 > timeout:
                raise AssertionError(f"{argv[:4]} did not finish or reach its kill point in {timeout}s")
            if kill.kind == "write":
                seen.update(temps(watch))
                if len(seen) >= kill.nth:
                    break
                time.sleep(0.002)
            else:
                if deadline is None and progress(watch) >= start + kill.after:
                    deadline = time.time() + kill.delay
                if deadline is not None and time.time() >= deadline:
                    break
                time.sleep(0.01)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            return True, temps(watch)
        err = p.stderr.read().decode(errors="replace")
        assert p.returncode == 0, err[-3000:]
        return False, []
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        p.stderr.close()


def run_to_end(argv: List[str], env: Dict[str, str], timeout: float = 300) -> None:
    r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]


def kill_plan(seed: int, max_after: int) -> List[Kill]:
    """A kill inside a checkpoint / output write, then one at a random point."""
    rng = random.Random(seed)
    return [Kill("write", nth=rng.randint(1, 3)),
            Kill("time", after=rng.randint(1, max_after), delay=rng.uniform(0.0, 0.5))]


# ---------------------------------------------------------------------------- training stages

STEPS = 5
COMMON = ["data.batch_size=4", "data.num_workers=0", "run.precision=fp32", "run.deterministic=true",
          "run.ckpt_every=1", "run.keep_last=2", "run.log_every=1", "run.progress=false",
          "run.tensorboard=false", "run.device=cpu", f"optim.max_steps={STEPS}"]
RECOG = ["model.backbone=mobilefacenet", "model.embedding_size=32", "optim.schedule=constant",
         "optim.lr=0.01"]
GAN = ["data.face_size=32", "generator.base_width=4", "generator.num_stages=1",
       "generator.blocks_per_stage=1", "generator.z_dim=4", "generator.local_width=4",
       "generator.fuse_width=8", "discriminator.base_width=4", "image_every=2",
       "loss.pixel_schedule=g_every"]  # both phases on every step (what these tests count)




def setup_hr(root: str) -> Dict[str, str]:
    return {"faces": make_face_folder(os.path.join(root, "faces"), n_ids=2, per_id=4)}


def argv_hr(data: Dict[str, str], out: str, name: str) -> List[str]:
    return [sys.executable, "-m", "ranface", "train", "--stage", "hr"] + sets(
        COMMON + RECOG + [f"data.train={data['faces']}", f"run.out_dir={out}", f"run.name={name}",
                          "run.resume=auto"])


def setup_gan(root: str) -> Dict[str, str]:
    from ranface.inference import model_package
    from ranface.models import create_backbone
    from ranface.train.checkpoint import save_checkpoint

    hr = make_face_folder(os.path.join(root, "hr"), n_ids=2, per_id=4, size=32)
    pool = os.path.join(root, "pool")
    os.makedirs(pool)
    rng = np.random.default_rng(5)
    for i in range(6):
        arr = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).resize((32, 32), Image.BICUBIC).save(os.path.join(pool, f"lr{i}.png"))
    expert = os.path.join(root, "expert.pt")
    torch.manual_seed(0)
    save_checkpoint(expert, model_package(create_backbone("mobilefacenet", embedding_size=32),
                                          "mobilefacenet", {"embedding_size": 32}))
    return {"hr": hr, "pool": pool, "expert": expert}


def argv_gan(data: Dict[str, str], out: str, name: str) -> List[str]:
    return [sys.executable, "-m", "ranface", "train-gan", "--hr", data["hr"], "--lr-pool", data["pool"],
            "--expert", data["expert"]] + sets(
        COMMON + GAN + [f"run.out_dir={out}", f"run.name={name}", "run.resume=auto"])


def setup_mr(root: str) -> Dict[str, str]:
    """HR and LR runs of one step each (in-process), as tests/test_adapt_train.py does."""
    from test_adapt import make_lr_twin
    from ranface.config import TrainConfig, load_config
    from ranface.train.recognition import run_recognition

    hr = make_face_folder(os.path.join(root, "hr"), n_ids=2, per_id=4)
    lr = make_lr_twin(hr, os.path.join(root, "lr"), size=16)
    out = os.path.join(root, "base")
    base = [s for s in COMMON + RECOG if not s.startswith(("optim.max_steps", "run.deterministic"))]
    for stage, data, extra in (("hr", hr, []), ("lr", lr, [f"model.init={out}/hr"])):
        run_recognition(load_config(TrainConfig, None, base + [
            f"stage={stage}", f"data.train={data}", f"run.out_dir={out}", f"run.name={stage}",
            "optim.max_steps=1", *extra]))
    return {"hr": hr, "lr": lr, "hr_run": os.path.join(out, "hr"), "lr_run": os.path.join(out, "lr")}


def argv_mr(data: Dict[str, str], out: str, name: str) -> List[str]:
    return [sys.executable, "-m", "ranface", "train", "--stage", "mr"] + sets(
        COMMON + RECOG + [f"data.train={data['hr']}", f"data.lr_train={data['lr']}",
                          f"model.init={data['hr_run']}", f"adapt.lr_model={data['lr_run']}",
                          f"run.out_dir={out}", f"run.name={name}", "run.resume=auto"])


@dataclass
class Stage:
    setup: Callable[[str], Dict[str, str]]
    argv: Callable[[Dict[str, str], str, str], List[str]]
    modules: Tuple[str, ...]  # state the checkpoints must hold


STAGES: Dict[str, Stage] = {
    "hr": Stage(setup_hr, argv_hr, ("backbone", "head")),
    "gan": Stage(setup_gan, argv_gan, ("generator", "discriminator")),
    "mr": Stage(setup_mr, argv_mr, ("backbone", "head", "disc", "translator")),
}


def check_checkpoints(ckpt_dir: str, modules: Tuple[str, ...]) -> List[int]:
    """Every ckpt-*.pt loads and is a complete training checkpoint; returns their steps."""
    steps = []
    for path in sorted(glob.glob(os.path.join(ckpt_dir, "ckpt-*.pt"))):
        ck = load_checkpoint(path)
        assert set(ck["modules"]) == set(modules), path
        assert ck["step"] == int(os.path.basename(path)[5:13]), path
        steps.append(ck["step"])
    index = os.path.join(ckpt_dir, "index.json")
    if os.path.exists(index):
        json.load(open(index))
    return steps


def last_checkpoint(ckpt_dir: str) -> int:
    steps = [int(m.group(1)) for f in (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else [])
             if (m := re.match(r"^ckpt-(\d{8})\.pt$", f))]
    return max(steps, default=0)


@pytest.mark.parametrize("seed", [0])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_training_killed_and_resumed_equals_straight_run(stage, seed, tmp_path, hook_dir):
    st = STAGES[stage]
    data = st.setup(str(tmp_path / "data"))
    out = str(tmp_path / "runs")
    run_to_end(st.argv(data, out, "straight"), child_env(hook_dir))
    run_dir = os.path.join(out, "killed")
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    argv = st.argv(data, out, "killed")
    mid_write = 0
    for kill in kill_plan(seed, max_after=2):
        slow = 0.3 if kill.kind == "write" else 0.0
        killed, left = run_until_killed(argv, child_env(hook_dir, slow), ckpt_dir, kill,
                                        progress=last_checkpoint)
        if killed and kill.kind == "write":
            assert left, "the kill did not land inside a checkpoint write"
            mid_write += 1
        check_checkpoints(ckpt_dir, st.modules)  # never an unreadable checkpoint
    assert mid_write == 1
    run_to_end(argv, child_env(hook_dir))
    assert check_checkpoints(ckpt_dir, st.modules)[-1] == STEPS
    assert temps(run_dir) == [], "stale temp files left by the killed runs"
    a = load_checkpoint(os.path.join(out, "straight", "checkpoints", f"ckpt-{STEPS:08d}.pt"))
    b = load_checkpoint(os.path.join(ckpt_dir, f"ckpt-{STEPS:08d}.pt"))
    for m in st.modules:
        assert a["modules"][m].keys() == b["modules"][m].keys()
        for k, v in a["modules"][m].items():
            assert torch.equal(v, b["modules"][m][k]), f"{m}.{k} differs from the straight run"
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["resumed"] and summary["steps"] == STEPS
    steps = [json.loads(ln)["step"] for ln in open(os.path.join(run_dir, "metrics.jsonl")) if ln.strip()]
    assert steps == list(range(1, STEPS + 1)), "metrics.jsonl has gaps or repeated steps"


# ---------------------------------------------------------------------------- synthesize / prepare


def image_tree(root: str) -> Dict[str, bytes]:
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            if not f.startswith(".") and f.lower().endswith((".png", ".jpg")):
                out[os.path.relpath(os.path.join(d, f), root)] = open(os.path.join(d, f), "rb").read()
    return out


def assert_complete_images(root: str, expected: Dict[str, bytes], exact: bool) -> None:
    from ranface.data.image import decode_image

    got = image_tree(root)
    assert sorted(got) == sorted(expected), "missing or extra (duplicate) outputs"
    for rel, data in got.items():
        decode_image(data, rel)  # every image decodes: none half-written
        if exact:
            assert data == expected[rel], f"{rel} differs from the uninterrupted run"
    assert temps(root) == [], f"stale temp files: {temps(root)}"


def count_images(root: str) -> int:
    return len(image_tree(root))


@pytest.mark.parametrize("seed", [0, 1])
def test_synthesize_killed_and_rerun(seed, tmp_path, hook_dir):
    faces = make_face_folder(str(tmp_path / "hr"), n_ids=3, per_id=6, size=48)

    def argv(out):
        return [sys.executable, "-m", "ranface", "synthesize", faces, out, "--degrader", "bicubic",
                "--seed", "3"] + sets(["batch_size=4", "num_workers=0", "progress=false", "device=cpu",
                                       "options.size_range=[8,16]"])

    ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
    run_to_end(argv(ref), child_env(hook_dir))
    expected = image_tree(ref)
    assert len(expected) == 18
    for kill in kill_plan(seed, max_after=4):
        killed, left = run_until_killed(argv(out), child_env(hook_dir, 0.05), out, kill,
                                        progress=count_images)
        assert killed, "synthesize finished before the kill"
        if kill.kind == "write":
            assert left, "the kill did not land inside an image write"
        for rel, data in image_tree(out).items():  # what is there is complete
            assert data == expected[rel], rel
    run_to_end(argv(out), child_env(hook_dir))
    assert_complete_images(out, expected, exact=True)
    assert json.load(open(os.path.join(out, "synth_manifest.json")))["status"] == "complete"


@pytest.mark.parametrize("seed", [0])
def test_prepare_killed_and_rerun(seed, tmp_path, hook_dir):
    lfw = require_shared("lfw-gray", "images")
    photos = tmp_path / "photos"
    for name in ("Aaron_Peirsol", "Abdullah_Gul"):
        os.makedirs(photos / name)
        for f in sorted(os.listdir(os.path.join(lfw, name)))[:2]:
            (photos / name / f).write_bytes(open(os.path.join(lfw, name, f), "rb").read())

    def argv(out):
        return [sys.executable, "-m", "ranface", "prepare", str(photos), "--out", out] + sets(
            ["workers=1", "chunk_size=1", "progress=false"])

    ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
    run_to_end(argv(ref), child_env(hook_dir))
    expected = image_tree(ref)
    assert len(expected) == 4
    for kill in kill_plan(seed, max_after=1):
        killed, left = run_until_killed(argv(out), child_env(hook_dir, 0.1), out, kill,
                                        progress=count_images)
        assert killed, "prepare finished before the kill"
        if kill.kind == "write":
            assert left, "the kill did not land inside a write"
        for rel, data in image_tree(out).items():
            assert data == expected[rel], rel
    run_to_end(argv(out), child_env(hook_dir))
    assert_complete_images(out, expected, exact=True)
    rows = open(os.path.join(out, "manifest.csv")).read().splitlines()
    assert rows == open(os.path.join(ref, "manifest.csv")).read().splitlines()
    assert len(rows) == 5 and len({r.split(",")[0] for r in rows[1:]}) == 4  # no duplicate rows
