"""The phase loop: exact resume, non-finite guard, phase intervals, on a toy problem."""
import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ranface.errors import NonFiniteError
from ranface.train.distributed import DistInfo
from ranface.train.loop import BatchStream, Phase, Trainer, TrainerOptions
from ranface.data.samplers import ResumableDistributedSampler, sample_generator


class Toy(Dataset):
    def __init__(self, n=40):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 5, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        epoch, i = key
        noise = float(sample_generator(0, epoch, i).normal()) * 0.01  # per-sample augmentation
        return self.x[i] + noise, self.y[i]


def build(run_dir, max_steps, inject=(), max_nonfinite=20, workers=0):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2))
    other = torch.nn.Linear(5, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt2 = torch.optim.Adam(other.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.9 ** s)

    def loss_main(batch, ctx):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y), {}

    def loss_other(batch, ctx):
        x, y = batch
        ctx.cache["seen"] = True
        return ((other(x).squeeze(1) - y.float()) ** 2).mean(), {"every": ctx.phase_iter}

    phases = [Phase("main", opt, loss_main, [model], scheduler=sched, clip_grad_norm=1.0),
              Phase("other", opt2, loss_other, [other], interval=3)]
    ds = Toy()
    sampler = ResumableDistributedSampler(len(ds), 8, seed=1)
    loader = DataLoader(ds, batch_size=8, sampler=sampler, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    tr = Trainer(run_dir=run_dir, phases=phases, state_modules={"model": model, "other": other},
                 stream=BatchStream(loader, sampler), to_device=lambda b: b, device=torch.device("cpu"),
                 precision="fp32", dist=DistInfo(), config={"toy": 1},
                 options=TrainerOptions(max_steps=max_steps, log_every=2, ckpt_every=4, progress=False,
                                        tensorboard=False, inject_nonfinite=inject, max_nonfinite=max_nonfinite))
    return tr, model, other


def params(*mods):
    return torch.cat([p.detach().flatten() for m in mods for p in m.parameters()])


def test_exact_resume_equals_straight_run(tmp_path):
    tr, m, o = build(str(tmp_path / "a"), 12)
    tr.fit()
    straight = params(m, o)
    # stop at 8 (a checkpoint at 4 and 8), then resume in a fresh process-like state
    tr2, m2, o2 = build(str(tmp_path / "b"), 8)
    tr2.fit()
    torch.manual_seed(1234)  # the resumed run must not depend on the ambient RNG
    tr3, m3, o3 = build(str(tmp_path / "b"), 12)
    assert tr3.resume("auto")
    assert tr3.step == 8
    tr3.fit()
    assert torch.equal(params(m3, o3), straight)
    assert tr3.phases[1].runs == tr.phases[1].runs == 4  # steps 0,3,6,9


def test_resume_with_workers_matches(tmp_path):
    tr, m, o = build(str(tmp_path / "a"), 6, workers=0)
    tr.fit()
    tr2, m2, o2 = build(str(tmp_path / "b"), 6, workers=2)
    tr2.fit()
    assert torch.equal(params(m, o), params(m2, o2))


def test_nonfinite_steps_skipped_and_counted(tmp_path):
    tr, m, o = build(str(tmp_path / "a"), 6, inject=(2, 3))
    out = tr.fit()
    # injected at steps 2 and 3: 2 main-phase skips; other phase ran at 0 and 3 -> 1 skip
    assert out["counters"]["nonfinite_total"] == 3
    assert torch.isfinite(params(m, o)).all()
    assert tr.phases[0].runs == 4


def test_nonfinite_stops_after_k(tmp_path):
    tr, m, o = build(str(tmp_path / "a"), 12, inject=tuple(range(5, 12)), max_nonfinite=3)
    with pytest.raises(NonFiniteError, match="consecutive"):
        tr.fit()
    # the last good checkpoint (step 4) is intact and loadable
    tr2, _, _ = build(str(tmp_path / "a"), 12)
    assert tr2.resume("auto") and tr2.step == 4


def test_metrics_log_truncated_on_resume(tmp_path):
    from ranface.train.stats import read_metrics

    tr, *_ = build(str(tmp_path / "a"), 6)
    tr.fit()
    tr2, *_ = build(str(tmp_path / "a"), 10)
    tr2.resume(os.path.join(str(tmp_path / "a"), "checkpoints", "ckpt-00000004.pt"))
    tr2.fit()
    steps = [r["step"] for r in read_metrics(str(tmp_path / "a"))]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
