"""Training-step throughput (img/s) of the LR and MR stages next to the HR step, on the
same backbone, batch and precision (SPEC §7: MR step goal <= 1.5x the HR step's time).

- HR: the recognition phase (backbone + ArcFace head + SGD) on HR faces.
- LR: the same phase on LR twins (its random blur runs in the loader workers, so the
  step itself costs what the HR step costs; measured to show it).
- MR: both MR phases of ``ranface.adapt`` through the Trainer: ``recog`` (backbone +
  head + translator, frozen LR model forward, gate, Eq. 10) then ``feat_D`` (Adam on D).

Timed windows of the three stages are interleaved (HR, LR, MR, HR, LR, MR, ...) so a
noisy machine slows all of them alike; each figure is the median over ``--repeats``
windows of ``--steps`` steps. Ratios are HR img/s over the stage's img/s (time ratio).

    python benchmarks/stage_steps.py                          # IResNet-34, batch 32
    python benchmarks/stage_steps.py --backbone mobilefacenet --batch 8 --steps 2 --threads 1
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ranface.train.loop import RepeatStream  # noqa: E402

from ranface.adapt.discriminator import FeatureDiscriminator  # noqa: E402
from ranface.adapt.trainer import AdaptionLoss, DiscriminatorLoss, LRStream  # noqa: E402
from ranface.adapt.translator import Translator  # noqa: E402
from ranface.config import AdaptConfig  # noqa: E402
from ranface.degrade import down_up  # noqa: E402
from ranface.models import create_backbone, create_head  # noqa: E402
from ranface.train.distributed import DistInfo  # noqa: E402
from ranface.train.loop import Phase, Trainer, TrainerOptions  # noqa: E402
from ranface.train.precision import resolve_device, resolve_precision, use_channels_last  # noqa: E402
from ranface.train.recognition import ClassificationLoss  # noqa: E402


Step = Callable[[], None]


def _frozen(m: torch.nn.Module) -> torch.nn.Module:
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def build(name: str, batch: int, classes: int, device: torch.device, precision: str,
          channels_last: bool, run_dir: str) -> Tuple[Dict[str, Step], Dict[str, Step]]:
    """One step function per stage (each with its own modules and optimizers), and the
    MR step's two phases apart (the discriminator phase reuses a fixed cache)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def backbone() -> torch.nn.Module:
        return create_backbone(name).to(device).to(memory_format=fmt)

    h, w = create_backbone(name).spec.input_size
    x_hr = torch.rand(batch, 3, h, w, device=device) * 2 - 1
    x_lr = down_up(x_hr, 16).contiguous(memory_format=fmt)  # a 16-px face scaled back up
    x_hr = x_hr.contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (batch,), device=device)
    opts = TrainerOptions(max_steps=0, log_every=10**9, ckpt_every=10**9, progress=False, tensorboard=False)

    def trainer(phases: List[Phase], batch_: tuple) -> Trainer:
        return Trainer(run_dir=run_dir, phases=phases, state_modules={}, stream=RepeatStream(batch_),
                       to_device=lambda b: b, device=device, precision=precision, dist=DistInfo(), config={},
                       options=opts)

    steps: Dict[str, Step] = {}
    for stage, x in (("HR", x_hr), ("LR", x_lr)):
        bb = backbone()
        head = create_head("arcface", bb.spec.embedding_size, classes).to(device)
        opt = torch.optim.SGD(list(bb.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
        phase = Phase("recog", opt, ClassificationLoss(bb, head), [bb, head], clip_grad_norm=5.0)
        tr, b = trainer([phase], (x, y, [])), (x, y, [])
        steps[stage] = lambda tr=tr, phase=phase, b=b: tr._run_phase(phase, b, {})

    bb, lr_bb = backbone(), _frozen(backbone())
    emb = bb.spec.embedding_size
    head = create_head("arcface", emb, classes).to(device)
    lr_head = _frozen(create_head("arcface", emb, classes).to(device))
    translator = Translator(emb).to(device)
    disc = FeatureDiscriminator(emb).to(device)
    a = AdaptConfig()
    opt = torch.optim.SGD(list(bb.parameters()) + list(head.parameters()) + list(translator.parameters()),
                          lr=0.01, momentum=0.9)
    opt_d = torch.optim.Adam(disc.parameters(), lr=a.disc_lr, betas=tuple(a.disc_betas))
    phase_d = Phase("feat_D", opt_d, DiscriminatorLoss(disc), [disc])
    loss = AdaptionLoss(bb, head, translator, disc, LRStream(lr_bb, lr_head, {}), a, lambda: phase_d.runs)
    phase_r = Phase("recog", opt, loss, [bb, head, translator], clip_grad_norm=5.0)
    b = (x_hr, x_lr, y, [])
    tr = trainer([phase_r, phase_d], b)

    def mr_step() -> None:
        cache: Dict[str, torch.Tensor] = {}
        tr._run_phase(phase_r, b, cache)
        tr._run_phase(phase_d, b, cache)

    steps["MR"] = mr_step
    fixed: Dict[str, torch.Tensor] = {}
    tr._run_phase(phase_r, b, fixed)
    parts = {"MR recog phase": lambda: tr._run_phase(phase_r, b, {}),
             "MR feat_D phase": lambda: tr._run_phase(phase_d, b, fixed)}
    return steps, parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="iresnet34")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                    help="auto: as the training stages decide (ranface.train.precision.use_channels_last)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    cl = use_channels_last(device, precision, None if args.channels_last == "auto" else args.channels_last == "on")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"threads={torch.get_num_threads()}, backbone={args.backbone}, batch={args.batch}, "
          f"precision={precision}, channels_last={cl}, torch={torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        steps, parts = build(args.backbone, args.batch, args.classes, device, precision, cl, d)
        timed = {**steps, **parts}
        for fn in timed.values():
            for _ in range(args.warmup):
                fn()
        rates: Dict[str, List[float]] = {k: [] for k in timed}
        for _ in range(args.repeats):
            for name, fn in timed.items():
                sync()
                t = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                sync()
                rates[name].append(args.batch * args.steps / (time.perf_counter() - t))
    mem = ""
    if device.type == "cuda":
        mem = f" (peak GPU memory of the process {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB)"
    hr = statistics.median(rates["HR"])
    print(f"{'stage':6s} {'img/s':>9s} {'time vs HR':>11s}   windows img/s{mem}")
    for name in steps:
        med = statistics.median(rates[name])
        print(f"{name:6s} {med:9.2f} {hr / med:10.2f}x   {', '.join(f'{v:.1f}' for v in rates[name])}", flush=True)
    print(f"ms/step: HR {1e3 * args.batch / hr:.2f}; " + "; ".join(
        f"{k} {1e3 * args.batch / statistics.median(rates[k]):.2f}" for k in parts))
    mr = hr / statistics.median(rates["MR"])
    print(f"MR/HR step time = {mr:.2f} (goal <= 1.5: {'met' if mr <= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
