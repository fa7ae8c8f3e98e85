"""MR-GAN speed: generator synthesis (faces/s, no grad) and the training steps of
``train-gan`` through ranface's Trainer, per profile: the D+G step (D phase, then G phase
with the frozen expert, G computed once) and, under ``loss.pixel_schedule`` d_ratio, the
D-only step (G without a graph) that fills the other ``pixel_every - 1`` steps, and the
mean step of that schedule.

Each figure is the median over ``--repeats`` timed windows. CPU defaults keep the
paper profile short:

    python benchmarks/gan.py                          # small + paper, this machine
    python benchmarks/gan.py --profiles small --threads 2 --expert resnet29
    python benchmarks/gan.py --profiles small --expert mobilefacenet --profile   # where a step goes
    python benchmarks/gan.py --profiles small --compare mobilefacenet+prelu:fp32,mobilefacenet:fp32

``--profile`` runs D+G steps under ``torch.profiler`` and prints, per profile, the
share of the step in each part: the forward passes of G, D_1..D_4, the expert on G(x)
(with grad) and on x (no grad), labelled in :class:`ranface.gan.trainer.GanSteps`; the
backward pass (all autograd nodes), the optimizer steps, and the rest; then the ops
that take the most time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from ranface.config import load_config
from ranface.gan.config import GanConfig, PROFILES
from ranface.gan.discriminators import MultiRegionDiscriminator
from ranface.gan.generator import MRGenerator
from ranface.gan.losses import ExpertNetwork, _channel_slope
from ranface.gan.trainer import GanSteps, compile_networks, default_expert, g_interval, to_memory_format
from ranface.models import create_backbone
from ranface.models.depthwise import set_fp32_input_grad
from ranface.train.distributed import DistInfo
from ranface.train.loop import RepeatStream, Phase, Trainer, TrainerOptions
from ranface.train.precision import resolve_device, resolve_precision




def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def profile_cfg(name, extra=()):
    over = [f"{sec}.{k}={v}" for sec, kv in PROFILES[name].items() for k, v in kv.items()]
    return load_config(GanConfig, None, over + list(extra))


def synth_rate(cfg, batch, repeats, device, precision):
    torch.manual_seed(0)
    G = MRGenerator(cfg.generator).to(device).eval()
    x = torch.rand(batch, 3, 112, 112, device=device) * 2 - 1
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        G(x)
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            G(x)
            _sync(device)
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times), sum(p.numel() for p in G.parameters())


def _breakdown(prof, steps):
    """Seconds per step in each labelled part of a profiled GAN step (top-level events)."""
    parts = {}
    events = [e for e in prof.events() if e.device_type.name == "CPU"]
    total = 0.0
    for e in events:
        name = e.name
        if name.startswith("ProfilerStep") or name == "gan.step":
            total += e.cpu_time_total
        elif name.startswith("gan."):
            parts[name] = parts.get(name, 0.0) + e.cpu_time_total
        elif name.startswith("autograd::engine::evaluate_function"):
            parts["backward"] = parts.get("backward", 0.0) + e.cpu_time_total
        elif name.startswith("Optimizer.step"):
            parts["optimizer"] = parts.get("optimizer", 0.0) + e.cpu_time_total
    return {k: v / 1e6 / steps for k, v in parts.items()}, total / 1e6 / steps


def _one_step(tr, kind, every):
    """Run one training step of ``kind`` ("dg": the D and G phases, "d": D only) by moving
    the step counter to the next step of that kind (it only seeds z)."""
    if kind == "dg":
        tr.step = -(-tr.step // every) * every
    elif tr.step % every == 0:
        tr.step += 1
    tr.opt.max_steps = tr.step + 1
    tr.fit()


def step_time(cfg, expert, batch, steps, repeats, device, precision, profile=False, compiled=False):
    """Seconds of a D+G step and of a D-only step as ``train-gan`` runs them (medians over
    ``repeats`` windows of ``steps`` steps of each kind; D-only is None when G runs every
    step), and D's parameter count.

    The phases are train-gan's: the G phase runs every :func:`~ranface.gan.trainer.g_interval`
    steps, and on those steps the D phase computes G(x) with its graph for the G phase to
    back-propagate through (G runs once); on the other steps G runs under no_grad for D's
    fakes. (Before issue 16's eighth round this benchmark ran the G phase on every step,
    so 4 of 5 "D+G" steps under d_ratio ran G twice, once without and once with a graph.)
    """
    torch.manual_seed(0)
    G = MRGenerator(cfg.generator).to(device)
    D = MultiRegionDiscriminator(cfg.discriminator).to(device)
    cl = to_memory_format(G, D, device, precision, cfg.run.channels_last)  # as train-gan decides
    cfg.run.seed = 0
    nets = compile_networks(G, D, D) if compiled else (G, D, D)
    gs = GanSteps(*nets, expert, cfg)
    every = g_interval(cfg)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    x = torch.rand(batch, 3, 112, 112, device=device) * 2 - 1
    y = torch.rand(batch, 3, 112, 112, device=device) * 2 - 1
    if cl:
        x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
    kinds = ("dg", "d") if every > 1 else ("dg",)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(run_dir=tmp, phases=[Phase("D", opt_d, gs.d_loss, [D]),
                                          Phase("G", opt_g, gs.g_loss, [G], interval=every)],
                     state_modules={"generator": G, "discriminator": D}, stream=RepeatStream((x, y, [])),
                     to_device=lambda b: b, device=device, precision=precision, dist=DistInfo(),
                     options=TrainerOptions(max_steps=1, log_every=10 ** 6, ckpt_every=10 ** 6, progress=False,
                                            tensorboard=False), config={})
        for kind in kinds:  # warm-up (compiling each kind's graphs; a checkpoint)
            for _ in range(2 if compiled else 1):
                _one_step(tr, kind, every)
        tr.ckpt.save = lambda *a, **k: None  # time the steps, not checkpoint writes
        tr.param_digest = lambda: ""  # nor the end-of-fit replica digest
        times = {k: [] for k in kinds}
        for _ in range(repeats):
            for kind in kinds:
                _sync(device)
                t = time.perf_counter()
                for _ in range(steps):
                    _one_step(tr, kind, every)
                _sync(device)
                times[kind].append((time.perf_counter() - t) / steps)
        if profile:
            from torch.profiler import ProfilerActivity, profile as tprofile, record_function

            with tprofile(activities=[ProfilerActivity.CPU]) as prof:
                with record_function("gan.step"):
                    t = time.perf_counter()
                    for _ in range(steps):
                        _one_step(tr, "dg", every)
                    wall = (time.perf_counter() - t) / steps
            parts, _ = _breakdown(prof, steps)
            print(f"  where a D+G step goes ({steps} steps profiled, {wall:.3f} s a step under the profiler):")
            rest = wall - sum(parts.values())
            for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) + [("rest (data, losses, Python)", rest)]:
                print(f"  | {k} | {v:.3f} s | {100 * v / wall:.0f}% |")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    d_only = statistics.median(times["d"]) if "d" in times else None
    return statistics.median(times["dg"]), d_only, every, sum(p.numel() for p in D.parameters())


def schedule_mean(dg, d_only, every):
    """Mean seconds a step of train-gan's schedule: one D+G step per ``every`` steps."""
    return dg if d_only is None else (dg + (every - 1) * d_only) / every


class _ReluDifferencePReLU(torch.nn.Module):
    """Issue 16's earlier frozen PReLU, relu(x) - a * relu(-x) (same values; five passes
    forward): the ``+reludiff`` reference for what ``FrozenPReLU``'s Function saves."""

    def __init__(self, frozen):
        super().__init__()
        self.register_buffer("weight", frozen.weight.clone())

    def forward(self, x):
        a = _channel_slope(self.weight.to(x.dtype), x)
        return torch.relu(x) - a * torch.relu(-x)


def _swap_frozen_prelu(module):
    from ranface.gan.losses import FrozenPReLU

    for n, child in list(module.named_children()):
        if isinstance(child, FrozenPReLU):
            setattr(module, n, _ReluDifferencePReLU(child))
        else:
            _swap_frozen_prelu(child)


def make_expert(name, device):
    """``resnet29`` | ``mobilefacenet``; suffixes: ``+nofold`` keeps the expert's BatchNorms
    (what :func:`ranface.models.fuse.fold_conv_bn` saves), ``+nativedw`` runs torch's own bf16
    kernel for the strided depthwise layers' input gradient (what
    :class:`ranface.models.depthwise.DepthwiseConv2d` saves), ``+prelu`` keeps torch's
    ``nn.PReLU`` (what :class:`ranface.gan.losses.FrozenPReLU` saves), ``+reludiff`` the
    earlier relu(x) - a * relu(-x) form of it, ``+compile`` runs G
    and D through ``torch.compile`` (:func:`ranface.gan.trainer.compile_networks`; the
    expert stays eager),
    ``+nchw`` keeps G and D in NCHW (``run.channels_last=false``; read in :func:`compare`)."""
    base, *flags = name.split("+")
    if base == "resnet29" and os.path.isdir(default_expert()):
        from ranface.models.loader import load_model

        module, source = load_model(default_expert(), device=device)[0], name
    else:
        module, source = create_backbone("mobilefacenet"), name.replace("mobilefacenet", "mobilefacenet (untrained)")
    expert = ExpertNetwork(module, source=source, fold_bn="nofold" not in flags,
                           frozen_prelu="prelu" not in flags)
    if "nativedw" in flags:
        set_fp32_input_grad(expert.backbone, False)
    if "reludiff" in flags:
        _swap_frozen_prelu(expert.backbone)
    return expert.to(device)


def compare(args, device):
    """D+G and D-only step times of each (expert, precision) variant, ``--repeats`` rounds
    interleaved (one window of ``--steps`` steps of each kind per variant per round),
    medians, train-gan's schedule mean, and ratios (steps/s) to the first variant."""
    name = args.profiles.split(",")[0]
    variants = [tuple(v.split(":")) for v in args.compare.split(",")]
    experts = {e: make_expert(e, device) for e, _ in variants}
    times = {v: ([], []) for v in variants}
    every = 1
    for _ in range(args.repeats):
        for e, p in variants:
            extra = ["run.channels_last=false"] if "nchw" in e.split("+") else []
            dg, d_only, every, _ = step_time(profile_cfg(name, args.set + extra), experts[e], args.train_batch, args.steps,
                                             1, device, resolve_precision(p, device),
                                             compiled="compile" in e.split("+"))
            times[(e, p)][0].append(dg)
            if d_only is not None:
                times[(e, p)][1].append(d_only)
    print(f"device {device}, threads {torch.get_num_threads()}, profile {name}, batch {args.train_batch}, "
          f"{args.repeats} interleaved rounds of {args.steps} steps of each kind; G phase every {every} steps")
    print("| expert | precision | D+G step s (median) | min..max | D-only step s | train-gan mean step s "
          "| D+G steps/s vs first | mean steps/s vs first |")
    print("|---|---|---|---|---|---|---|---|")

    def medians(v):
        dg = statistics.median(times[v][0])
        d_only = statistics.median(times[v][1]) if times[v][1] else None
        return dg, d_only, schedule_mean(dg, d_only, every)

    base = medians(variants[0])
    for v in variants:
        dg, d_only, mean = medians(v)
        d_txt = "–" if d_only is None else f"{d_only:.3f}"
        print(f"| {experts[v[0]].source} | {resolve_precision(v[1], device)} | {dg:.3f} | "
              f"{min(times[v][0]):.3f}..{max(times[v][0]):.3f} | {d_txt} | {mean:.3f} | "
              f"x{base[0] / dg:.2f} | x{base[2] / mean:.2f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default="small,paper")
    ap.add_argument("--synth-batch", type=int, default=64)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--expert", default="resnet29", help="resnet29 (face-api folder) | mobilefacenet (untrained)")
    ap.add_argument("--profile", action="store_true", help="also profile the training step (where it goes)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a GanConfig field of every profile (e.g. generator.level_widths=[8,32])")
    ap.add_argument("--compare", default="", metavar="EXPERT:PRECISION,...",
                    help="time the D+G step of the first profile for each variant side by side, rounds "
                         "interleaved, ratios against the first (e.g. resnet29:fp32,mobilefacenet:fp32,"
                         "mobilefacenet:bf16)")
    ap.add_argument("--allocator", choices=("tuned", "system"), default="tuned",
                    help="tuned: ranface's glibc thresholds, as every ranface command runs "
                         "(ranface.runtime); system: glibc's own")
    args = ap.parse_args()
    from ranface.runtime import ENV_VAR, tune_allocator

    print(f"allocator: {tune_allocator({**os.environ, ENV_VAR: args.allocator})}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.compare:
        return compare(args, device)
    precision = resolve_precision(args.precision, device)
    expert = make_expert(args.expert, device)
    print(f"device {device}, precision {precision}, threads {torch.get_num_threads()}, expert {expert.source}")
    print(f"| profile | G params | D params | synth faces/s (batch {args.synth_batch}) "
          f"| D+G step s (batch {args.train_batch}) | D-only step s | train-gan mean step s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.profiles.split(","):
        cfg = profile_cfg(name, args.set)
        rate, gp = synth_rate(cfg, args.synth_batch, args.repeats, device, precision)
        dg, d_only, every, dp = step_time(cfg, expert, args.train_batch, args.steps, args.repeats, device,
                                          precision, args.profile)
        d_txt = "–" if d_only is None else f"{d_only:.3f}"
        print(f"| {name} | {gp / 1e6:.2f}M | {dp / 1e6:.2f}M | {rate:.1f} | {dg:.3f} | {d_txt} | "
              f"{schedule_mean(dg, d_only, every):.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
