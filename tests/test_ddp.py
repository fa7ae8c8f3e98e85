"""Two gloo processes on CPU through torchrun: identical replicas, then a resume of the
same run with one process."""
import json
import os
import subprocess
import sys

import pytest

from conftest import make_face_folder


def _run(args, env=None, timeout=600):
    e = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", **(env or {}))
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=e)


@pytest.mark.slow
def test_two_process_gloo_and_resume_single(tmp_path):
    data = make_face_folder(str(tmp_path / "faces"), n_ids=4, per_id=6)
    out = str(tmp_path / "runs")
    common = ["--stage", "hr", "-c", "configs/train_hr_cpu_smoke.yaml", "--set", f"data.train={data}",
              "--set", f"run.out_dir={out}", "--set", "run.name=ddp", "--set", "data.batch_size=4",
              "--set", "data.num_workers=0", "--set", "run.progress=false", "--set", "run.ckpt_every=2",
              "--set", "run.precision=fp32", "--set", "run.tensorboard=false", "--set", "model.embedding_size=64"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "ranface", "train", *common, "--set", "optim.max_steps=4"])
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.load(open(os.path.join(out, "ddp", "summary.json")))
    assert summary["world_size"] == 2 and summary["steps"] == 4
    d = summary["param_digests"]
    assert len(d) == 2 and d[0] == d[1], "DDP replicas diverged"
    # resume the 2-process run with a single process and continue to step 6
    r = _run([sys.executable, "-m", "ranface", "train", *common, "--set", "optim.max_steps=6",
              "--set", "run.resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.load(open(os.path.join(out, "ddp", "summary.json")))
    assert summary["resumed"] and summary["world_size"] == 1 and summary["steps"] == 6
