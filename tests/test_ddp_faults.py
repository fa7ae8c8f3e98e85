"""DDP faults (hardening, issue 7): two gloo processes on CPU, one of them killed
(SIGKILL) or hung (SIGSTOP) after the first checkpoint. The job must end with an error,
never hang: under torchrun its agent tears the group down; launched without an agent
(as on a node whose agent died), the survivor's own collective fails or times out after
``run.dist_timeout_s`` and it exits with ranface's one-line ``DistributedError`` (exit
code 2). The run then resumes from its last checkpoint with ONE process.

The subprocess ``timeout`` arguments are the "no hang" bounds, far above the expected
times (about 1 s after a kill; ``run.dist_timeout_s`` after a hang).
"""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List

import pytest

from conftest import ROOT, make_face_folder
from ranface.train.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

DIST_TIMEOUT = 15


def train_args(faces: str, out: str, steps: int, *extra: str) -> List[str]:
    items = ["model.backbone=mobilefacenet", "model.embedding_size=32", f"data.train={faces}",
             "data.batch_size=2", "data.num_workers=0", "run.precision=fp32", "run.progress=false",
             "run.tensorboard=false", "run.device=cpu", "run.ckpt_every=2", "run.log_every=1",
             f"run.out_dir={out}", "run.name=ddp", f"optim.max_steps={steps}",
             f"run.dist_timeout_s={DIST_TIMEOUT}", "optim.schedule=constant", "optim.lr=0.01",
             "run.compile=false", *extra]  # 10,000 steps would compile on auto: minutes, and beside the point
    return ["train", "--stage", "hr"] + [a for s in items for a in ("--set", s)]


def base_env() -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
                PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH", "")]))


def wait_for_checkpoint(ckpt_dir: str, procs: List[subprocess.Popen], timeout: float = 240) -> None:
    t0 = time.time()
    while not glob.glob(os.path.join(ckpt_dir, "ckpt-*.pt")):
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"a rank exited early: {p.communicate()[0][-3000:]}")
        assert time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.05)


def rank_of(pid: int) -> int:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
    return int(env.get(b"RANK", b"-1"))


def checkpoints_ok(ckpt_dir: str) -> List[int]:
    steps = []
    for path in sorted(glob.glob(os.path.join(ckpt_dir, "ckpt-*.pt"))):
        ck = load_checkpoint(path)
        assert ck["world_size"] == 2 and set(ck["modules"]) == {"backbone", "head"}
        steps.append(ck["step"])
    assert steps, "no checkpoint survived"
    return steps


def resume_single(faces: str, out: str, last: int) -> None:
    r = subprocess.run([sys.executable, "-m", "ranface", *train_args(faces, out, last + 2, "run.resume=auto")],
                       cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.load(open(os.path.join(out, "ddp", "summary.json")))
    assert summary["resumed"] and summary["world_size"] == 1 and summary["steps"] == last + 2


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return make_face_folder(str(tmp_path_factory.mktemp("ddpf") / "faces"), n_ids=2, per_id=8)


def test_torchrun_rank_killed_job_fails_then_single_process_resume(faces, tmp_path):
    out = str(tmp_path / "runs")
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "ranface", *train_args(faces, out, 10_000)],
                         cwd=ROOT, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        wait_for_checkpoint(os.path.join(out, "ddp", "checkpoints"), [p])
        kids = [int(k) for k in subprocess.run(["ps", "--ppid", str(p.pid), "-o", "pid="],
                                               capture_output=True, text=True).stdout.split()]
        victim = [k for k in kids if rank_of(k) == 1]
        assert len(kids) == 2 and len(victim) == 1, kids
        os.kill(victim[0], signal.SIGKILL)
        log, _ = p.communicate(timeout=120)  # no hang: the whole job ends
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode != 0
    assert "SIGKILL" in log or "Signal 9" in log, log[-2000:]
    steps = checkpoints_ok(os.path.join(out, "ddp", "checkpoints"))
    resume_single(faces, out, steps[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_survivor_exits_with_distributed_error_without_agent(fault, faces, tmp_path):
    out = str(tmp_path / "runs")
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(base_env(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                   RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
        procs.append(subprocess.Popen([sys.executable, "-m", "ranface", *train_args(faces, out, 10_000)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    try:
        wait_for_checkpoint(os.path.join(out, "ddp", "checkpoints"), procs)
        os.kill(procs[1].pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        _, err = procs[0].communicate(timeout=DIST_TIMEOUT + 120)  # no hang
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode == 2, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("ranface: error: rank 0 of 2 stopped at step"), line
    cause = line.split("run.dist_timeout_s): ", 1)[1]  # gloo's own first line
    # a hung peer: gloo says "Timed out ..." or, when the collective was DDP's buffer broadcast
    # in forward, "Application timeout caused pair closure"; a killed one: "Connection ..."
    timed_out = "timed out" in cause.lower() or "timeout" in cause.lower()
    assert timed_out == (fault == "hang") and ("Connection" in cause) == (fault == "kill"), line
    resume_single(faces, out, checkpoints_ok(os.path.join(out, "ddp", "checkpoints"))[-1])


def test_collective_failure_messages_are_recognised():
    """gloo raises plain RuntimeErrors: these texts (seen in runs) make a DistributedError
    (exit 2, resume hint); an ordinary error stays itself."""
    from ranface.train.loop import _is_comm_failure

    for msg in ("Application timeout caused pair closure",  # DDP buffer broadcast, hung peer
                "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer",
                "Timed out waiting 30000ms for recv operation to complete"):
        assert _is_comm_failure(RuntimeError(msg)), msg
    assert not _is_comm_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
