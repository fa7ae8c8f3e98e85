"""``ranface train-expert``: the frozen expert F of MR-GAN's perceptual loss (Eq. 2).

The paper's F is "a pre-trained MobileFaceNet" on 112x112 faces (§4.2). Training one by
classification needs far more identities than an HR set on a laptop holds (use ``ranface
train --set model.backbone=mobilefacenet`` for that); this module distils a given face
model (the teacher, by default the bundled ResNet-29) onto the HR faces instead:

    L_distil = mean_i (1 - cos(F_s(x_i), t_i)),  t_i = norm(F_t(x_i) + F_t(flip(x_i)))

F_s the student (a MobileFaceNet whose embedding size is the teacher's), F_t the teacher
fed through its own preprocessing (:class:`ranface.gan.losses.ExpertNetwork`). Targets
are the teacher's flip-sum embeddings, computed once before training (so the teacher
costs one pass over the data, and a randomly flipped input has the same target). The
result is a normal ``model.pt`` (frozen by the loaders that use it): ``train-gan
--expert <run dir>``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..config import RunConfig, path_field, to_dict
from ..errors import ConfigError, DataError
from .loop import BatchStream, Phase, StepContext, Trainer, TrainerOptions

__all__ = ["ExpertConfig", "run_train_expert", "distillation_loss", "teacher_targets"]


@dataclass
class ExpertDataConfig:
    """The HR faces the expert is distilled on (aligned, ``face_size`` square)."""

    train: str = path_field()
    format: str = "auto"  # auto | folder | rec
    face_size: int = 112
    batch_size: int = 64
    num_workers: int = 2
    hflip: bool = True
    on_error: str = "raise"


@dataclass
class ExpertOptimConfig:
    """SGD with momentum, cosine schedule after a short warm-up."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_steps: int = 2000
    warmup_steps: int = 50
    schedule: str = "cosine"


@dataclass
class ExpertConfig:
    """``teacher``: the model to distil (face-api folder, ``model.pt``, run directory; empty:
    the bundled ResNet-29). ``backbone``: the student (MobileFaceNet, 112 px, the paper's
    expert). ``embedding_size``: 0 = the teacher's."""

    data: ExpertDataConfig = field(default_factory=ExpertDataConfig)
    optim: ExpertOptimConfig = field(default_factory=ExpertOptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    teacher: str = path_field()
    teacher_backbone: str = ""
    backbone: str = "mobilefacenet"
    embedding_size: int = 0
    teacher_batch: int = 64


def validate_expert_config(cfg: ExpertConfig) -> None:
    d, o = cfg.data, cfg.optim
    if not d.train:
        raise ConfigError("data.train is empty: give the HR faces (image folder or train.rec folder)")
    for key, v in (("data.batch_size", d.batch_size), ("data.face_size", d.face_size),
                   ("optim.max_steps", o.max_steps), ("teacher_batch", cfg.teacher_batch)):
        if v < 1:
            raise ConfigError(f"{key} must be >= 1, got {v}")
    if not (o.lr > 0 and np.isfinite(o.lr)) or o.weight_decay < 0 or not 0 <= o.momentum < 1:
        raise ConfigError("optim.lr must be finite and > 0, optim.weight_decay >= 0, optim.momentum in [0, 1)")
    if cfg.embedding_size < 0:
        raise ConfigError(f"embedding_size must be >= 0, got {cfg.embedding_size}")


def distillation_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos(student_i, target_i)): 0 when every student embedding points where its
    (unit) target does, 2 when opposite."""
    return (1.0 - F.cosine_similarity(student.float(), target.float(), dim=1)).mean()


@torch.no_grad()
def teacher_targets(teacher: Any, dataset: Dataset, batch_size: int, device: torch.device) -> torch.Tensor:
    """(N, D) unit flip-sum embeddings of the teacher (an ExpertNetwork), one per image of
    ``dataset`` (uint8 HxWx3 items)."""
    out = []
    n = len(dataset)  # type: ignore[arg-type]
    for start in range(0, n, batch_size):
        arrs = []
        for i in range(start, min(n, start + batch_size)):
            item = dataset[i]
            if not isinstance(item, tuple):
                raise DataError(getattr(dataset, "root", "?"), f"image {i} is unreadable: {item}")
            arrs.append(item[0])
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1.0
        e = teacher.features(x)["embedding"] + teacher.features(x.flip(-1))["embedding"]
        out.append(F.normalize(e.float(), dim=1).cpu())
    return torch.cat(out)


class _Indexed(Dataset):
    """A face dataset whose label is the item's index (its row of the target table)."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        item = self.base[index]
        return (item[0], int(index)) if isinstance(item, tuple) else item


class DistillLoss:
    """Phase loss: batch (x, index, skipped) -> L_distil against the cached targets."""

    def __init__(self, student: nn.Module, targets: torch.Tensor):
        self.student = student
        self.targets = targets

    def __call__(self, batch: Any, ctx: StepContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        x, idx = batch[0], batch[1]
        with ctx.autocast():
            emb = self.student(x)
        t = self.targets[idx.cpu()].to(emb.device)
        loss = distillation_loss(emb, t)
        with torch.no_grad():
            cos = F.cosine_similarity(emb.float(), t, dim=1).mean()
        return loss, {"cos": cos}


def run_train_expert(cfg: ExpertConfig) -> Dict[str, Any]:
    """Distil the teacher into the student on ``data.train``; writes ``model.pt``."""
    from ..data.loader import AugmentedView, FaceTransform, build_train_loader, open_dataset
    from ..gan.losses import ExpertNetwork
    from ..gan.trainer import default_expert
    from ..models import create_backbone
    from ..models.loader import backbone_kwargs, load_model, model_package, training_card
    from .checkpoint import save_checkpoint
    from .recognition import make_to_device, wrap_ddp
    from .runs import seed_everything, setup_run, write_json
    from .schedule import make_scheduler

    validate_expert_config(cfg)
    S = cfg.data.face_size
    dataset = open_dataset(cfg.data.train, cfg.data.format, "rgb", (S, S), cfg.data.on_error)
    teacher_path = cfg.teacher or default_expert()
    ctx = setup_run(cfg, prefix="expert")
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    t_module, _ = load_model(teacher_path, backbone=cfg.teacher_backbone, device=ctx.device)
    teacher = ExpertNetwork(t_module, normalize=True, source=teacher_path)
    dim = cfg.embedding_size or int(teacher.spec.embedding_size)
    kw = backbone_kwargs({"embedding_size": dim})
    student = create_backbone(cfg.backbone, **kw)
    spec = student.spec
    size = None if tuple(spec.input_size) == (S, S) else tuple(spec.input_size)  # resized to the student
    targets = teacher_targets(teacher, dataset, cfg.teacher_batch, ctx.device)
    del teacher, t_module
    student.to(ctx.device)
    fwd = wrap_ddp(student, ctx)
    o = cfg.optim
    opt = torch.optim.SGD(student.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    sched = make_scheduler(opt, schedule=o.schedule, max_steps=o.max_steps, warmup_steps=o.warmup_steps)
    view = AugmentedView(_Indexed(dataset), FaceTransform(spec.mean, spec.std, hflip=cfg.data.hflip, size=size),
                         seed=cfg.run.seed)
    loader, sampler = build_train_loader(view, cfg.data.batch_size, cfg.data.num_workers, ctx.dist.world_size,
                                         ctx.dist.rank, cfg.run.seed, drop_last=True,
                                         pin_memory=ctx.device.type == "cuda")
    r = cfg.run
    options = TrainerOptions(max_steps=o.max_steps, log_every=r.log_every, ckpt_every=r.ckpt_every, val_every=0,
                             keep_last=r.keep_last, keep_best=r.keep_best, max_nonfinite=r.max_nonfinite,
                             progress=r.progress, tensorboard=r.tensorboard,
                             inject_nonfinite=tuple(r.inject_nonfinite))
    trainer = Trainer(run_dir=ctx.run_dir, phases=[Phase("distil", opt, DistillLoss(fwd, targets), [fwd],
                                                         scheduler=sched)],
                      state_modules={"backbone": student}, stream=BatchStream(loader, sampler),
                      to_device=make_to_device(ctx.device, False), device=ctx.device,
                      precision=ctx.precision, dist=ctx.dist, options=options, config=to_dict(cfg))
    resumed = trainer.resume(r.resume)
    result = trainer.fit()
    student.eval()
    with torch.no_grad():  # how close the frozen expert lands, on the training faces (no flip)
        probe = torch.stack([view.transform(dataset[i][0], np.random.default_rng(0))
                             for i in range(min(len(dataset), 256))]).to(ctx.device)
        final_cos = float(F.cosine_similarity(student(probe).float(), targets[:len(probe)].to(ctx.device),
                                              dim=1).mean())
    summary = {"stage": "expert", "run_dir": ctx.run_dir, "resumed": resumed, "teacher": teacher_path,
               "backbone": cfg.backbone, "embedding_size": dim, "num_images": len(dataset),
               "final_cosine_to_teacher": round(final_cos, 4), "precision": ctx.precision, **result}
    if ctx.dist.is_main:
        card = training_card(student, cfg.backbone, kw, to_dict(cfg))
        card.provenance.stage = "expert"
        save_checkpoint(os.path.join(ctx.run_dir, "model.pt"),
                        model_package(student, cfg.backbone, kw, to_dict(cfg), card=card))
        write_json(os.path.join(ctx.run_dir, "summary.json"), summary)
    return summary
