"""HR training-step throughput (img/s): plain fp32 eager vs the project's default path.

Runs the real recognition phase (backbone + ArcFace head + SGD through ranface's
Trainer) on an in-memory batch, side by side in one process, and prints the ratio.
Each figure is the median over ``--repeats`` timed windows of ``--steps`` steps.

    python benchmarks/train_step.py                       # IResNet-34, batch 32, 112x112
    python benchmarks/train_step.py --backbone mobilefacenet --steps 5
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from ranface.models import create_backbone, create_head
from ranface.models.depthwise import DepthwiseConv2d, set_fp32_input_grad
from ranface.train.distributed import DistInfo
from ranface.train.loop import RepeatStream, Phase, Trainer, TrainerOptions
from ranface.train.precision import resolve_device, resolve_precision
from ranface.train.recognition import ClassificationLoss




def measure(backbone_name, batch, steps, repeats, device, precision, channels_last, compile_, native_dw=False):
    torch.manual_seed(0)
    bb = create_backbone(backbone_name).to(device)
    if native_dw:  # torch's own bf16 kernel for strided depthwise input gradients
        set_fp32_input_grad(bb, False)
    head = create_head("arcface", bb.spec.embedding_size, 1000).to(device)
    if channels_last:
        bb = bb.to(memory_format=torch.channels_last)
    fwd = torch.compile(bb) if compile_ else bb
    h, w = bb.spec.input_size
    x = torch.randn(batch, 3, h, w, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    opt = torch.optim.SGD(list(bb.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    phase = Phase("recog", opt, ClassificationLoss(fwd, head), [bb, head], clip_grad_norm=5.0)
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(run_dir=d, phases=[phase], state_modules={}, stream=RepeatStream((x, y, [])),
                     to_device=lambda b: b, device=device, precision=precision, dist=DistInfo(), config={},
                     options=TrainerOptions(max_steps=0, log_every=10**9, ckpt_every=10**9, progress=False,
                                            tensorboard=False))
        cache = {}
        for _ in range(2):  # warm-up (and compilation)
            tr._run_phase(phase, (x, y, []), cache)
        rates = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps):
                tr._run_phase(phase, (x, y, []), cache)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates.append(batch * steps / (time.perf_counter() - t))
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(rates), mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="iresnet34")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="also measure the default path + torch.compile")
    args = ap.parse_args()
    device = resolve_device(args.device)
    default_prec = resolve_precision("auto", device)
    variants = [("fp32 eager", "fp32", False, False, False)]
    if device.type == "cuda":
        variants.append((f"default ({default_prec} autocast, channels_last)", default_prec, True, False, False))
    else:
        # CPU candidates, side by side (the default is what `run.precision=auto` picks)
        variants += [(f"{default_prec} + channels_last", default_prec, True, False, False),
                     ("bf16 autocast", "bf16", False, False, False)]
        if default_prec != "fp32" and any(isinstance(m, DepthwiseConv2d)
                                          for m in create_backbone(args.backbone).modules()):
            # what models.depthwise saves: torch's own bf16 kernel for strided depthwise input grads
            variants.append((f"{default_prec} + channels_last, torch's depthwise backward", default_prec, True,
                             False, True))
    if args.compile:
        variants.append((f"{default_prec} + torch.compile", default_prec, device.type == "cuda", True, False))
    print(f"device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"threads={torch.get_num_threads()}, backbone={args.backbone}, batch={args.batch}, "
          f"torch={torch.__version__}")
    base = None
    print(f"{'variant':48s} {'img/s':>9s} {'ratio':>7s} {'GPU mem GiB':>12s}")
    for name, prec, cl, comp, native_dw in variants:
        rate, mem = measure(args.backbone, args.batch, args.steps, args.repeats, device, prec, cl, comp, native_dw)
        base = base or rate
        print(f"{name:48s} {rate:9.2f} {rate / base:7.2f} {mem:12.2f}", flush=True)


if __name__ == "__main__":
    main()
