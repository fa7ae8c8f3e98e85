"""Non-finite training (hardening, issue 7), in the HR, MR-GAN and MR stages: a NaN loss
(``run.inject_nonfinite``) or an inf gradient (a backward hook) skips the step on every
phase it hits and is counted in ``summary.json``; parameters stay untouched; K
consecutive skips of one phase stop the run with ``NonFiniteError`` (exit code 2 from the
CLI), leaving the last good checkpoint intact. Plus the fp16 GradScaler: a NaN loss must
not shrink the loss scale (down to zero), an overflow must (AMP's backoff), and it recovers.

A new stage is one more entry in :data:`STAGES`.
"""
import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import pytest
import torch

from conftest import make_face_folder, sets
from ranface.cli import main
from ranface.errors import NonFiniteError
from ranface.train import loop
from ranface.train.checkpoint import load_checkpoint
from ranface.train.loop import RepeatStream
from ranface.train.stats import read_metrics
from test_reliability_resume import GAN, RECOG, setup_gan, setup_mr

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]

STEPS = 4
COMMON = ["data.batch_size=4", "data.num_workers=0", "run.precision=fp32", "run.ckpt_every=1",
          "run.keep_last=10", "run.log_every=1", "run.progress=false", "run.tensorboard=false",
          "run.device=cpu"]




# ---------------------------------------------------------------------------- stages




def argv_hr(data: Dict[str, str], out: str) -> List[str]:
    return ["train", "--stage", "hr"] + sets(COMMON + RECOG + [f"data.train={data['faces']}",
                                                               f"run.out_dir={out}", "run.name=r"])


def argv_gan(data: Dict[str, str], out: str) -> List[str]:
    return ["train-gan", "--hr", data["hr"], "--lr-pool", data["pool"], "--expert", data["expert"]] + sets(
        COMMON + GAN + [f"run.out_dir={out}", "run.name=r"])


def argv_mr(data: Dict[str, str], out: str) -> List[str]:
    return ["train", "--stage", "mr"] + sets(
        COMMON + RECOG + [f"data.train={data['hr']}", f"data.lr_train={data['lr']}",
                          f"model.init={data['hr_run']}", f"adapt.lr_model={data['lr_run']}",
                          f"run.out_dir={out}", "run.name=r"])


@dataclass
class Stage:
    setup: Callable[[str], Dict[str, str]]
    argv: Callable[[Dict[str, str], str], List[str]]
    phases: Tuple[str, ...]  # phases that step every step (interval 1), in order
    modules: Tuple[str, ...]
    first_phase_modules: Tuple[str, ...]  # what phases[0] optimises


STAGES: Dict[str, Stage] = {
    "hr": Stage(lambda root: {"faces": make_face_folder(os.path.join(root, "faces"), n_ids=2, per_id=4)},
                argv_hr, ("recog",), ("backbone", "head"), ("backbone", "head")),
    "gan": Stage(setup_gan, argv_gan, ("D", "G"), ("generator", "discriminator"), ("discriminator",)),
    "mr": Stage(setup_mr, argv_mr, ("recog", "feat_D"), ("backbone", "head", "disc", "translator"),
                ("backbone", "head", "translator")),
}


@pytest.fixture(scope="module")
def stage_data(tmp_path_factory):
    cache: Dict[str, Dict[str, str]] = {}

    def get(name: str) -> Dict[str, str]:
        if name not in cache:
            cache[name] = STAGES[name].setup(str(tmp_path_factory.mktemp(f"data-{name}")))
        return cache[name]

    return get


def run_cli(argv: List[str], capsys) -> Tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def params(ck: dict, modules) -> Dict[str, torch.Tensor]:
    """Trainable parameters (not BN running statistics or spectral norm's power-iteration
    vectors _u/_v, which a forward pass updates even when the step is skipped) of the
    checkpointed modules."""
    out = {}
    for m in modules:
        for k, v in ck["modules"][m].items():
            if "running_" not in k and "num_batches_tracked" not in k and not k.endswith(("._u", "._v")):
                out[f"{m}.{k}"] = v
    return out


def ckpt(run_dir: str, step: int) -> dict:
    return load_checkpoint(os.path.join(run_dir, "checkpoints", f"ckpt-{step:08d}.pt"))


# ---------------------------------------------------------------------------- fault injection


class InfGrad(torch.autograd.Function):
    """Identity forward; the backward pass hands out +inf gradients (an fp16-style
    overflow with a finite loss)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, float("inf"))


def inject_into_phase(monkeypatch, phase: str, steps, kind: str) -> None:
    """Wrap ``phase``'s loss function in every Trainer built from now on: at ``steps``
    its loss becomes NaN (``kind='nan'``) or back-propagates inf (``kind='inf'``)."""
    steps = set(steps)
    init = loop.Trainer.__init__

    def patched(self, *a, **kw):
        init(self, *a, **kw)
        for p in self.phases:
            if p.name != phase:
                continue
            fn = p.loss_fn

            def wrapped(batch, ctx, fn=fn):
                loss, stats = fn(batch, ctx)
                if ctx.step in steps:
                    loss = loss * float("nan") if kind == "nan" else InfGrad.apply(loss)
                return loss, stats

            p.loss_fn = wrapped

    monkeypatch.setattr(loop.Trainer, "__init__", patched)


# ---------------------------------------------------------------------------- stage tests


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_nan_loss_step_skipped_counted_and_params_untouched(stage, stage_data, tmp_path, capsys):
    st = STAGES[stage]
    out = str(tmp_path)
    rc, err = run_cli(st.argv(stage_data(stage), out) + sets([f"optim.max_steps={STEPS}",
                                                             "run.inject_nonfinite=[1]"]), capsys)
    assert rc == 0, err
    run = os.path.join(out, "r")
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["steps"] == STEPS
    # every phase that ran at step index 1 was skipped once
    assert summary["counters"]["nonfinite_total"] == len(st.phases)
    assert summary["counters"]["nonfinite_run"] == 0
    a, b, c = (params(ckpt(run, s), st.modules) for s in (1, 2, 3))
    assert all(torch.equal(a[k], b[k]) for k in a), "a skipped step changed parameters"
    assert any(not torch.equal(b[k], c[k]) for k in b), "training did not continue after the skip"
    assert all(torch.isfinite(v).all() for v in c.values())
    rows = {r["step"]: r for r in read_metrics(run, "train")}
    for ph in st.phases:
        assert rows[2][f"{ph}/nonfinite"] == 1 and f"{ph}/nonfinite" not in rows[3]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_k_consecutive_nan_steps_stop_with_exit_2(stage, stage_data, tmp_path, capsys):
    st = STAGES[stage]
    out = str(tmp_path)
    rc, err = run_cli(st.argv(stage_data(stage), out) + sets([
        "optim.max_steps=8", "run.ckpt_every=2", "run.max_nonfinite=2",
        "run.inject_nonfinite=[2,3,4,5,6,7]"]), capsys)
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert "training stopped at step 3" in line and "2 consecutive steps" in line, line
    run = os.path.join(out, "r")
    # the last checkpoint is the good one from before the bad run, and it loads
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["ckpt-00000002.pt", "index.json"]
    good = ckpt(run, 2)
    assert good["step"] == 2 and good["counters"]["nonfinite_total"] == 0
    assert all(torch.isfinite(v).all() for v in params(good, st.modules).values())
    assert not os.path.exists(os.path.join(run, "summary.json"))


STREAK_CASES = [("gan", "G"), ("gan", "D"), ("mr", "recog"), ("mr", "feat_D")]


@pytest.mark.parametrize("stage,phase", STREAK_CASES)
def test_one_diverged_phase_stops_the_run(stage, phase, stage_data, tmp_path, capsys, monkeypatch):
    """Only one phase turns NaN (e.g. G diverges while D is fine): its own streak counts."""
    inject_into_phase(monkeypatch, phase, range(1, 100), "nan")
    rc, err = run_cli(STAGES[stage].argv(stage_data(stage), str(tmp_path)) + sets(
        ["optim.max_steps=8", "run.max_nonfinite=3"]), capsys)
    assert rc == 2, err
    assert "training stopped at step 3" in err and f"phase {phase!r}" in err


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_inf_gradient_step_skipped(stage, stage_data, tmp_path, capsys, monkeypatch):
    st = STAGES[stage]
    inject_into_phase(monkeypatch, st.phases[0], {1}, "inf")
    rc, err = run_cli(st.argv(stage_data(stage), str(tmp_path)) + sets([f"optim.max_steps={STEPS}"]), capsys)
    assert rc == 0, err
    run = os.path.join(str(tmp_path), "r")
    a, b = (params(ckpt(run, s), st.modules) for s in (1, 2))
    counters = json.load(open(os.path.join(run, "summary.json")))["counters"]
    assert counters["nonfinite_total"] == 1
    rows = {r["step"]: r for r in read_metrics(run, "train")}
    assert rows[2][f"{st.phases[0]}/nonfinite"] == 1
    hit = [k for k in a if k.split(".")[0] in st.first_phase_modules]
    assert hit and all(torch.equal(a[k], b[k]) for k in hit), "the inf-gradient step moved weights"


# ---------------------------------------------------------------------------- GradScaler


def toy_trainer(tmp_path, growth_interval=1):
    from ranface.train.distributed import DistInfo

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mode = {"kind": "ok"}

    def loss_fn(batch, ctx):
        loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
        if mode["kind"] == "nan":
            loss = loss * float("nan")
        elif mode["kind"] == "inf":
            loss = InfGrad.apply(loss)
        return loss, {}

    phase = loop.Phase("main", opt, loss_fn, [model])
    tr = loop.Trainer(run_dir=str(tmp_path), phases=[phase], state_modules={"model": model},
                      stream=RepeatStream(None), to_device=lambda b: b, device=torch.device("cpu"), precision="fp32",
                      dist=DistInfo(), config={},
                      options=loop.TrainerOptions(max_steps=0, progress=False, tensorboard=False))
    # ranface refuses fp16 on CPU: force an fp16-style (enabled) scaler onto the phase
    tr.scalers["main"] = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=growth_interval)
    batch = (torch.randn(8, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1] * 4))
    tr.stream.batch = batch
    return tr, phase, model, mode, batch


def weights(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_scaler_nan_loss_keeps_scale_overflow_backs_off_and_recovers(tmp_path):
    tr, phase, model, mode, batch = toy_trainer(tmp_path)
    scaler = tr.scalers["main"]
    assert scaler.is_enabled() and scaler.get_scale() == 1024.0
    w0 = weights(model)
    mode["kind"] = "nan"
    for _ in range(300):  # far more than the ~140 halvings that reach a zero scale
        assert tr._run_phase(phase, batch, {}) == {}
    assert scaler.get_scale() == 1024.0, "NaN losses shrank the loss scale"
    assert torch.equal(weights(model), w0) and tr.counters["nonfinite_total"] == 300
    mode["kind"] = "inf"  # finite loss, overflowing gradients: the fp16 case the scaler handles
    for k in range(3):
        tr._run_phase(phase, batch, {})
        assert scaler.get_scale() == 1024.0 / 2 ** (k + 1)
    assert torch.equal(weights(model), w0)
    mode["kind"] = "ok"
    out = tr._run_phase(phase, batch, {})
    assert math.isfinite(float(out["main/loss"])) and not torch.equal(weights(model), w0)
    assert scaler.get_scale() == 256.0  # growth_interval 1: doubles after a good step
    assert tr.counters["nonfinite_run"] == 0 and tr.counters["nonfinite_total"] == 303
    # the scale travels with the checkpoint
    assert float(tr.state_dict()["scalers"]["main"]["scale"]) == 256.0


def test_scaler_enabled_nan_run_stops_with_scale_intact(tmp_path):
    """fit() with an enabled scaler: K consecutive NaN steps stop the run; the scale
    was never touched by them."""
    tr, phase, model, mode, batch = toy_trainer(tmp_path, growth_interval=1000)
    tr.opt.max_steps, tr.opt.max_nonfinite, tr.opt.ckpt_every = 10, 4, 1000
    tr.opt.inject_nonfinite = (2, 3, 4, 5, 6, 7, 8, 9)
    with pytest.raises(NonFiniteError, match="at step 5: 4 consecutive steps of phase 'main'"):
        tr.fit()
    assert tr.scalers["main"].get_scale() == 1024.0 and phase.runs == 2
