"""``ranface train-gan``: the MR-GAN recipe (paper §3.2-3.3, §4.2) on the project's Trainer.

Two phases per step, in this order:

* ``D``: Adam on D_1..D_4 with L_D = l1 L_adv^D (Eq. 3, 6), real LR faces y from the
  unpaired pool against G(x).detach(); real and fake go through the discriminators in
  one concatenated batch (one DDP forward).
* ``G``: Adam on G with L_G = l1 L_adv^G + l2 L_perceptual + l3 L_pixel + l4 L_att
  (Eq. 6); the pixel critic term follows ``loss.pixel_schedule``: ``g_every`` applies it
  when ``phase_iter % pixel_every == 0`` (every 5 generator iterations, §4.2), ``d_ratio``
  on every G update with the G phase run once per ``pixel_every`` steps. The discriminators are evaluated through the
  plain (un-wrapped) module with ``requires_grad`` off, so the G step computes no D
  gradients and never touches D's DDP reducer.

G runs once per step: the D phase computes G(x) with its graph and leaves it in
``ctx.cache``; D uses the detached fakes, the G phase pops the cached output and
back-propagates through it (D's update in between does not touch G's graph). z is drawn
from a generator seeded by (seed, step, rank), so a resumed run draws the same z.

Data: HR faces x through :func:`ranface.data.loader.open_dataset` (folder or .rec) and
the LR pool through :class:`LRPoolDataset` (flat folder or ``<id>/<file>``), each with
its own :class:`~ranface.data.samplers.ResumableDistributedSampler`; :class:`GanStream`
zips the two and checkpoints both positions (``{"hr": ..., "lr": ...}``).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.profiler import record_function
from torch.utils.data import Dataset

from ..config import to_dict
from ..train.distributed import unwrap
from ..data.datasets import Skipped
from ..data.image import is_image_file
from ..data.image import encode_image, read_image
from ..errors import ConfigError, DataError
from ..train.loop import BatchStream, Phase, StepContext, Trainer, TrainerOptions
from ..train.precision import use_compile
from .config import GanConfig, validate_gan_config
from .discriminators import MultiRegionDiscriminator
from .generator import GenOutput, MRGenerator, generator_package
from .losses import (ExpertNetwork, adversarial_d_loss, adversarial_g_loss, attention_loss,
                     discriminator_objective, generator_objective, load_expert, perceptual_loss,
                     pixel_loss)

__all__ = ["run_train_gan", "LRPoolDataset", "GanStream", "GanSteps", "default_expert",
           "sample_grid", "to_memory_format", "compile_networks", "g_interval"]


# --------------------------------------------------------------------------- data
class LRPoolDataset(Dataset):
    """Unpaired real LR faces: every image under ``root`` (flat, or ``<id>/<file>``, any
    depth; hidden entries ignored), sorted by relative path. Labels are all 0 (unused).
    Returns ``(uint8 HxWx3, 0)`` or, with ``on_error='skip'``, a ``Skipped``."""

    def __init__(self, root: str, expect_size: Optional[Tuple[int, int]] = None,
                 on_error: str = "raise", color: str = "rgb"):
        if not root:
            raise ConfigError("data.lr_pool is empty: give a folder of real low-resolution "
                              "faces (aligned, flat or <id>/<file>)")
        if not os.path.isdir(root):
            raise DataError(root, "LR pool folder not found" if not os.path.exists(root)
                            else "LR pool must be a folder of images")
        self.root = root
        self.expect_size = expect_size
        self.on_error = on_error
        self.color = color
        self.files: List[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if not f.startswith(".") and is_image_file(f):
                    self.files.append(os.path.relpath(os.path.join(dirpath, f), root))
        self.files.sort()
        if not self.files:
            raise DataError(root, "LR pool holds no images (any format PIL reads)")
        self.labels = np.zeros(len(self.files), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path = os.path.join(self.root, self.files[index])
        try:
            return read_image(path, self.color, self.expect_size), 0
        except DataError as exc:
            if self.on_error == "skip":
                return Skipped(int(index), str(exc))
            raise


class GanStream:
    """Zips the HR stream and the LR-pool stream: ``next()`` -> ``(x, y, skipped)``;
    ``(None, None, skipped)`` when either side lost its whole batch to skips."""

    def __init__(self, hr: BatchStream, lr: BatchStream):
        self.hr, self.lr = hr, lr

    def next(self) -> Tuple[Any, Any, List[str]]:
        hx = self.hr.next()
        ly = self.lr.next()
        skipped = list(hx[-1]) + list(ly[-1])
        if hx[0] is None or ly[0] is None:
            return None, None, skipped
        return hx[0], ly[0], skipped

    def state_dict(self) -> Dict[str, Any]:
        return {"hr": self.hr.state_dict(), "lr": self.lr.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.hr.load_state_dict(state["hr"])
        self.lr.load_state_dict(state["lr"])

    def close(self) -> None:
        self.hr.close()
        self.lr.close()


# --------------------------------------------------------------------------- steps
@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of ``module`` do not require grad inside the block (graphs built there
    carry no gradient to them; the flags are restored on exit)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def z_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The torch.Generator z of step ``step`` is drawn from: a pure function of its args."""
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), int(rank), 0x6A4])
    return torch.Generator().manual_seed(int(s.generate_state(1, dtype=np.uint64)[0] >> 1))


def g_interval(cfg: GanConfig) -> int:
    """Every how many steps the G phase runs: ``loss.pixel_every`` under ``pixel_schedule``
    d_ratio (WGAN's n_critic), every step under g_every. On the other steps G runs without
    a graph, for D's fakes only."""
    return int(cfg.loss.pixel_every) if cfg.loss.pixel_schedule == "d_ratio" else 1


class GanSteps:
    """The loss functions of the two phases (``d_loss``, ``g_loss``), sharing G's output.

    ``G`` / ``D`` are the modules to call (DDP-wrapped when distributed); ``D_plain`` is
    the module behind ``D`` (used in the G phase). ``on_sample(step, x, out, y)`` is
    called from the G phase at sample steps (rank 0 only).
    """

    def __init__(self, G: nn.Module, D: nn.Module, D_plain: nn.Module, expert: ExpertNetwork,
                 cfg: GanConfig, rank: int = 0, on_sample=None):
        self.G, self.D, self.D_plain = G, D, D_plain
        self.expert = expert
        self.cfg = cfg
        self.rank = rank
        self.on_sample = on_sample
        lo = cfg.loss
        self.lambdas = (lo.lambda_adv, lo.lambda_perc, lo.lambda_pix, lo.lambda_att)
        self.z_dim = cfg.generator.z_dim

    def generate(self, x: torch.Tensor, ctx: StepContext) -> GenOutput:
        g = z_generator(self.cfg.run.seed, ctx.step, self.rank)
        z = torch.randn(x.shape[0], self.z_dim, generator=g).to(x.device)
        widths = unwrap(self.G).sample_levels(x.shape[0], g)  # z's degradation level (None: fixed)
        with ctx.autocast(), record_function("gan.G"):  # labels for benchmarks/gan.py --profile
            return self.G(x, z, widths=widths)

    def d_loss(self, batch: Any, ctx: StepContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """Eq. 6, L_D = l1 L_adv^D (Eq. 3)."""
        x, y = batch[0], batch[1]
        if ctx.step % g_interval(self.cfg):
            with torch.no_grad():  # no G update this step: no graph to keep
                out = self.generate(x, ctx)
        else:
            out = self.generate(x, ctx)
            ctx.cache["gen"] = out  # the G phase back-propagates through this graph
        ny = y.shape[0]
        with ctx.autocast(), record_function("gan.D"):
            scores = self.D(torch.cat([y, out.fake.detach().to(y.dtype)], 0))
        real = {k: v[:ny] for k, v in scores.items()}
        fake = {k: v[ny:] for k, v in scores.items()}
        adv = adversarial_d_loss(real, fake)
        loss = discriminator_objective(adv, self.lambdas[0])
        with torch.no_grad():
            stats = {"adv_d": adv.detach(),
                     "score_real": torch.stack([v.float().mean() for v in real.values()]).mean(),
                     "score_fake": torch.stack([v.float().mean() for v in fake.values()]).mean()}
        return loss, stats

    def g_loss(self, batch: Any, ctx: StepContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """Eq. 6, L_G = l1 L_adv^G + l2 L_perceptual + l3 L_pixel + l4 L_att."""
        x, y = batch[0], batch[1]
        out = ctx.cache.pop("gen", None)
        if out is None:
            out = self.generate(x, ctx)
        with frozen(self.D_plain), ctx.autocast():
            with record_function("gan.D"):
                d_fake = self.D_plain(out.fake)
            with record_function("gan.expert"):
                f_gx = self.expert.features(out.fake)
            with torch.no_grad(), record_function("gan.expert_x"):
                f_x = self.expert.features(x)
        adv = adversarial_g_loss(d_fake)
        perc = perceptual_loss(f_x, f_gx)
        pix = pixel_loss(out.fake, out.x_r3)
        att = attention_loss(out.G_A, tuple(self.cfg.loss.center_size))
        lo = self.cfg.loss
        use_pixel = lo.pixel_schedule == "d_ratio" or ctx.phase_iter % lo.pixel_every == 0
        loss = generator_objective(adv, perc, pix, att, self.lambdas, use_pixel=use_pixel)
        stats = {"adv_g": adv.detach(), "perceptual": perc.detach(), "pixel": pix.detach(),
                 "attention": att.detach(), "G_A_mean": out.G_A.detach().float().mean(),
                 "pixel_critic": float(use_pixel)}
        if self.on_sample is not None:
            self.on_sample(ctx.step, x, out, y)
        return loss, stats


# --------------------------------------------------------------------------- samples
def _to_unit(t: torch.Tensor) -> torch.Tensor:
    return ((t.detach().float().cpu() + 1.0) / 2.0).clamp(0, 1)


def sample_grid(rows: List[torch.Tensor], pad: int = 2) -> torch.Tensor:
    """Rows of (n, C, H, W) images in [-1, 1] (C = 1 or 3) -> one (3, H', W') image in [0, 1]."""
    n = min(r.shape[0] for r in rows)
    h, w = rows[0].shape[-2:]
    grid = torch.ones(3, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for i, r in enumerate(rows):
        r = _to_unit(r[:n])
        if r.shape[1] == 1:
            r = r.expand(-1, 3, -1, -1)
        for j in range(n):
            y0, x0 = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y0:y0 + h, x0:x0 + w] = r[j]
    return grid


class SampleWriter:
    """Every ``every`` steps: a grid of x, x_r3, G^A, G(x) and real LR faces y to
    TensorBoard (``samples``) and to ``<run>/samples/step-XXXXXXXX.png`` (atomic)."""

    def __init__(self, run_dir: str, every: int, count: int, last_step: int, interval: int = 1):
        self.dir = os.path.join(run_dir, "samples")
        self.every = every
        self.count = count
        self.last_step = last_step
        self.interval = max(1, int(interval))  # G runs on every interval-th step (pixel_schedule d_ratio)
        self.due = 0  # the step from which the next grid is due
        self.writer = None  # the Trainer's MetricsWriter, set once the Trainer exists
        self.written: List[str] = []

    def __call__(self, step: int, x: torch.Tensor, out: GenOutput, y: torch.Tensor) -> None:
        # the first G step, the first G step at or after every ``every``-th step, and the last
        # G step of the run; named by steps completed
        if self.every <= 0 or not (step >= self.due or step + self.interval > self.last_step):
            return
        self.due = ((step + 1) // self.every + 1) * self.every - 1
        from ..io_utils import atomic_write_bytes

        k = self.count
        grid = sample_grid([x[:k], out.x_r3[:k], out.G_A[:k] * 2 - 1, out.fake[:k], y[:k]])
        if self.writer is not None:
            self.writer.image(step + 1, "samples", grid)
        arr = (grid * 255).round().byte().permute(1, 2, 0).numpy()
        path = os.path.join(self.dir, f"step-{step + 1:08d}.png")
        os.makedirs(self.dir, exist_ok=True)
        atomic_write_bytes(path, encode_image(arr, "png"))
        self.written.append(path)


# --------------------------------------------------------------------------- recipe
def to_memory_format(G: nn.Module, D: nn.Module, device: torch.device, precision: str,
                     setting: Optional[bool] = None) -> bool:
    """Put G and D in channels_last when :func:`ranface.train.precision.use_channels_last`
    says so (``run.channels_last``; auto: under bf16/fp16); returns whether it did (the
    batches follow). The expert keeps its own layout."""
    from ..train.precision import use_channels_last

    cl = use_channels_last(device, precision, setting)
    if cl:
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    return cl


def compile_networks(G: nn.Module, D: nn.Module, D_plain: nn.Module) -> tuple:
    """``torch.compile`` for G and D: returns (G, D, D_plain) to hand to :class:`GanSteps`.
    The plain modules stay what the optimizers and checkpoints hold (compiled wrappers
    share their parameters). D_plain gets its own graphs: the G phase calls it with its
    parameters frozen.

    The frozen expert stays eager: compiled, its input-gradient pass made the D+G step
    slower, not faster (0.87 against 0.68 s, bf16, docs/performance.md issue 16 tenth
    round). G's per-face input resizes run eagerly inside the compiled G
    (:meth:`~ranface.gan.generator.MRGenerator.inputs`)."""
    G_c = torch.compile(G)
    D_c = torch.compile(D)
    D_plain_c = D_c if D is D_plain else torch.compile(D_plain)
    return G_c, D_c, D_plain_c


def default_expert() -> str:
    from ..config import default_data_root

    return os.path.join(default_data_root(), "models", "faceapi-resnet29")


def _check_first(ds: Dataset) -> None:
    """Decode one sample now, so a wrong face size fails (naming the file) before any
    training and before DataLoader workers would wrap the error."""
    ds[0]


def _build_stream(ds: Dataset, cfg: GanConfig, seed: int, world: int, rank: int, pin: bool,
                  what: str, path: str) -> BatchStream:
    from ..data.loader import AugmentedView, FaceTransform, build_train_loader

    need = cfg.data.batch_size * world
    if len(ds) < need:
        raise DataError(path, f"{what} holds {len(ds)} images, fewer than one batch "
                        f"({cfg.data.batch_size} x {world} processes = {need}); add images or "
                        "lower data.batch_size")
    view = AugmentedView(ds, FaceTransform((127.5,) * 3, (127.5,) * 3, hflip=cfg.data.hflip), seed=seed)
    loader, sampler = build_train_loader(view, cfg.data.batch_size, cfg.data.num_workers, world, rank,
                                         seed, drop_last=True, pin_memory=pin)
    return BatchStream(loader, sampler)


def run_train_gan(cfg: GanConfig, expert: Optional[ExpertNetwork] = None) -> Dict[str, Any]:
    """Train MR-GAN; returns a summary (also written to ``summary.json``). Writes
    checkpoints, ``generator.pt`` (rebuild with :func:`ranface.gan.generator.load_generator`),
    metrics, TensorBoard scalars and sample grids into the run directory.

    ``expert``: an already built expert (tests); otherwise ``cfg.expert`` is loaded.
    """
    from ..data.loader import open_dataset
    from ..train.checkpoint import save_checkpoint
    from ..train.recognition import make_to_device, wrap_ddp
    from ..train.runs import seed_everything, setup_run, write_json

    validate_gan_config(cfg)
    S = cfg.data.face_size
    if not cfg.data.hr:
        raise ConfigError("data.hr is empty: give the HR faces (image folder or train.rec folder)")
    # open the data before creating a run directory: bad input fails early
    hr = open_dataset(cfg.data.hr, cfg.data.format, "rgb", (S, S), cfg.data.on_error)
    pool = LRPoolDataset(cfg.data.lr_pool, (S, S), cfg.data.on_error)
    _check_first(hr)
    _check_first(pool)

    ctx = setup_run(cfg, prefix="gan")
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    dist, device = ctx.dist, ctx.device
    pin = device.type == "cuda"
    stream = GanStream(
        _build_stream(hr, cfg, cfg.run.seed, dist.world_size, dist.rank, pin, "HR dataset", cfg.data.hr),
        _build_stream(pool, cfg, cfg.run.seed + 1, dist.world_size, dist.rank, pin, "LR pool",
                      cfg.data.lr_pool))

    if expert is None:
        spec = cfg.expert or default_expert()
        expert = load_expert(spec, cfg.expert_backbone, device, cfg.loss.perceptual_normalize,
                             cfg.loss.perceptual_stages)
    expert.to(device)

    G = MRGenerator(cfg.generator, S).to(device)
    D = MultiRegionDiscriminator(cfg.discriminator, S).to(device)
    G_fwd, D_fwd = wrap_ddp(G, ctx), wrap_ddp(D, ctx)
    o = cfg.optim
    betas = (float(o.betas[0]), float(o.betas[1]))
    opt_G = torch.optim.Adam(G.parameters(), lr=o.lr, betas=betas)
    opt_D = torch.optim.Adam(D.parameters(), lr=o.d_lr or o.lr, betas=betas)

    every = g_interval(cfg)
    samples = SampleWriter(ctx.run_dir, cfg.image_every, cfg.num_samples, o.max_steps - 1, every) \
        if dist.is_main else None
    compiled = use_compile(cfg.run.compile, device, o.max_steps, cfg.run.compile_min_steps)
    nets = compile_networks(G_fwd, D_fwd, D) if compiled else (G_fwd, D_fwd, D)
    steps = GanSteps(*nets, expert, cfg, dist.rank, samples)
    clip = o.clip_grad_norm or None
    phases = [Phase("D", opt_D, steps.d_loss, [D_fwd], clip_grad_norm=clip),
              Phase("G", opt_G, steps.g_loss, [G_fwd], clip_grad_norm=clip,
                    interval=every)]
    r = cfg.run
    options = TrainerOptions(max_steps=o.max_steps, log_every=r.log_every, ckpt_every=r.ckpt_every,
                             val_every=0, keep_last=r.keep_last, keep_best=r.keep_best,
                             max_nonfinite=r.max_nonfinite, progress=r.progress,
                             tensorboard=r.tensorboard, inject_nonfinite=tuple(r.inject_nonfinite))
    channels_last = to_memory_format(G, D, device, ctx.precision, r.channels_last)
    trainer = Trainer(run_dir=ctx.run_dir, phases=phases,
                      state_modules={"generator": G, "discriminator": D}, stream=stream,
                      to_device=make_to_device(device, channels_last), device=device,
                      precision=ctx.precision, dist=dist, options=options, config=to_dict(cfg))
    if samples is not None:
        samples.writer = trainer.writer
    resumed = trainer.resume(r.resume)
    result = trainer.fit()
    summary = {"stage": "gan", "run_dir": ctx.run_dir, "resumed": resumed, "num_hr": len(hr),
               "num_lr_pool": len(pool), "expert": expert.source, "precision": ctx.precision,
               "compiled": compiled,
               "world_size": dist.world_size, "samples": list(samples.written) if samples else [],
               **result}
    if dist.is_main:
        save_checkpoint(os.path.join(ctx.run_dir, "generator.pt"),
                        generator_package(unwrap(G), to_dict(cfg), step=result["steps"]))
        write_json(os.path.join(ctx.run_dir, "summary.json"), summary)
    return summary
