"""Recognition training recipes: the HR stage (paper §4.2 step 1) and the LR stage
(§4.2 step 2: the HR model fine-tuned on synthesized LR faces with random Gaussian blur).

Both are one :class:`~ranface.train.loop.Phase`: backbone + margin head, SGD, cross-entropy
on margin logits (ArcFace, s=64, m=0.5 by default). The MR stage (§3.4) lives in
:mod:`ranface.adapt`.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig, to_dict
from ..data.loader import (AugmentedView, FaceTransform, build_train_loader, check_batch, check_identities,
                           dataset_labels, open_dataset)
from ..errors import ConfigError
from ..models.loader import backbone_kwargs, model_package
from .checkpoint import load_state_strict, save_checkpoint
from .distributed import unwrap
from .loop import BatchStream, Phase, StepContext, Trainer, TrainerOptions
from .precision import use_channels_last, use_compile
from .runs import RunContext, seed_everything, setup_run, write_json
from .schedule import make_scheduler

STAGES = ("hr", "lr", "mr")


def build_head(cfg: TrainConfig, embedding_size: int, num_classes: int) -> nn.Module:
    from ..models import create_head

    kw: Dict[str, Any] = {"s": cfg.model.scale}
    if cfg.model.margin is not None:
        kw["m"] = cfg.model.margin
    return create_head(cfg.model.head, embedding_size, num_classes, **kw)


def load_init(backbone: nn.Module, head: Optional[nn.Module], spec: str) -> Dict[str, Any]:
    """Initialise from anything :func:`ranface.models.loader.init_state` reads (run dir,
    checkpoint, model.pt, face-api folder): the backbone, and the head when it fits."""
    if not spec:
        return {}
    from ..models.loader import init_state

    bb_state, head_state, _, card = init_state(spec)
    load_state_strict(backbone, bb_state, spec, what="backbone")
    used_head = False
    if head is not None and head_state is not None:
        own = head.state_dict()
        if all(k in head_state and head_state[k].shape == v.shape for k, v in own.items()):
            head.load_state_dict(head_state)
            used_head = True
    source = card.provenance.source
    return {"init": source, "head": used_head, "init_template": card.template,
            **({"head_source": source} if used_head else {})}


@torch.no_grad()
def init_head_from_centres(head: nn.Module, backbone: nn.Module, dataset: Any, transform: FaceTransform,
                           device: torch.device, batch_size: int = 64, check_images: int = 1024
                           ) -> Tuple[int, Dict[str, Any]]:
    """Set each class vector W_j of a margin head to the mean L2-normalised embedding of
    class j (backbone in eval mode, no flip). Fine-tuning a pretrained backbone with a
    random head sends large, meaningless gradients into it for the first steps; with the
    class centres the head starts where the features already are. Returns the number of
    faces embedded."""
    from ..data.datasets import Skipped

    was = backbone.training
    backbone.eval()
    plain = FaceTransform(transform.mean, transform.std, hflip=False, size=transform.size)
    dim = head.weight.shape[1]
    sums = torch.zeros(head.weight.shape[0], dim, dtype=torch.float64)
    rng = np.random.default_rng(0)
    xs: list = []
    ys: list = []
    n = 0
    kept_f: list = []  # a sample of the embeddings for the start-of-training check
    kept_y: list = []

    def flush() -> None:
        nonlocal n
        if xs:
            f = F.normalize(backbone(torch.stack(xs).to(device)).float(), dim=1).cpu().double()
            sums.index_add_(0, torch.tensor(ys), f)
            if sum(len(k) for k in kept_f) < check_images:
                kept_f.append(f.float())
                kept_y.append(torch.tensor(ys))
            n += len(xs)
            xs.clear()
            ys.clear()

    try:
        for i in range(len(dataset)):
            item = dataset[i]
            if isinstance(item, Skipped):
                continue
            arr, label = item
            xs.append(plain(arr, rng))
            ys.append(int(label))
            if len(xs) >= batch_size:
                flush()
        flush()
    finally:
        backbone.train(was)
    have = sums.norm(dim=1) > 0
    w = head.weight.data
    w[have] = F.normalize(sums[have], dim=1).to(w.dtype).to(w.device)
    check = start_check(head, torch.cat(kept_f), torch.cat(kept_y)) if kept_f else {}
    return n, check


@torch.no_grad()
def start_check(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> Dict[str, Any]:
    """What the margin head makes of the initial features, before the first step.

    Returns the cross-entropy and top-1 accuracy of the margin logits (what training
    optimises and logs) and of the plain cosine logits, beside log(classes), the loss of
    a uniform guess. Margin accuracy 0 with a loss above log(C) means the head cannot be
    satisfied from here: the true class is ranked below others for every face once the
    margin is applied (issue 11: ArcFace m = 0.5 on the pretrained ResNet-29). A warning is
    printed then; the numbers go into the run's summary.
    """
    dev = next(head.parameters()).device
    f, y = features.to(dev), labels.to(dev)
    logits = head(f, y)
    cos = F.linear(F.normalize(f, dim=1), F.normalize(head.weight, dim=1))
    out = {"images": int(len(y)), "log_classes": float(np.log(head.weight.shape[0])),
           "loss": float(F.cross_entropy(logits, y)), "acc": float((logits.argmax(1) == y).float().mean()),
           "cosine_acc": float((cos.argmax(1) == y).float().mean()),
           "true_cosine_mean": float(cos.gather(1, y[:, None]).mean())}
    out["satisfiable"] = not (out["acc"] == 0.0 and out["loss"] > out["log_classes"])
    msg = (f"[train] start check on {out['images']} faces: loss {out['loss']:.2f} (log C = {out['log_classes']:.2f}), "
           f"margin accuracy {out['acc']:.3f}, cosine accuracy {out['cosine_acc']:.3f}")
    if not out["satisfiable"]:
        msg += ("; WARNING: with this margin no face ranks its own class first, training accuracy will stay "
                "near 0 (lower model.margin for fine-tuning a pretrained backbone)")
    print(msg, flush=True)
    return out


class ClassificationLoss:
    """L_c: cross-entropy over margin logits (ArcFace/CosFace). Batch: (x, y, skipped)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        self.backbone = backbone
        self.head = head

    def __call__(self, batch: Any, ctx: StepContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        images, labels = batch[0], batch[1]
        with ctx.autocast():
            emb = self.backbone(images)
        logits = self.head(emb.float(), labels)  # margin maths in fp32
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            acc = (logits.argmax(1) == labels).float().mean()
        return loss, {"acc": acc}


def make_to_device(device: torch.device, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def to_device(batch: Any) -> Any:
        out = []
        for x in batch:
            if isinstance(x, torch.Tensor):
                x = x.to(device, non_blocking=True)
                if x.dim() == 4:
                    x = x.contiguous(memory_format=fmt)
            out.append(x)
        return tuple(out)

    return to_device


def make_validator(cfg: TrainConfig, backbone: nn.Module, ctx: RunContext):
    """Periodic verification (10-fold accuracy) on an insightface ``.bin`` or an aligned
    folder with a ``pairs.txt`` (then also at ``data.val_probe_size`` px, HR-vs-LR)."""
    if not cfg.data.val:
        return None
    from ..eval.verification import make_validator as make

    return make(cfg.data.val, lambda: unwrap(backbone), ctx.device, ctx.precision, cfg.data.val_probe_size)


def trained_card(backbone: nn.Module, cfg: TrainConfig, kw: Dict[str, Any], validator: Any):
    """The model card of a finished run; with a pairs validator, its last thresholds."""
    from ..models.loader import training_card

    card = training_card(unwrap(backbone), cfg.model.backbone, kw, to_dict(cfg))
    thr = getattr(validator, "thresholds", None)
    if thr is not None:
        card.thresholds = thr
    return card


def stage_transforms(cfg: TrainConfig, spec: Any) -> FaceTransform:
    extra = None
    if cfg.stage == "lr":
        from ..degrade import RandomGaussianBlur

        extra = RandomGaussianBlur()  # §4.2: "random Gaussian blur is added" (LR stage)
    return FaceTransform(spec.mean, spec.std, hflip=cfg.data.hflip, extra=extra, size=input_resize(cfg, spec))


def input_resize(cfg: TrainConfig, spec: Any) -> Optional[Tuple[int, int]]:
    """The model input size when ``data.resize`` lets faces of another size in."""
    return tuple(spec.input_size) if cfg.data.resize else None


def expected_size(cfg: TrainConfig, spec: Any) -> Optional[Tuple[int, int]]:
    """Faces must have the model's input size unless ``data.resize`` is set."""
    return None if cfg.data.resize else tuple(spec.input_size)


def wrap_ddp(module: nn.Module, ctx: RunContext) -> nn.Module:
    if not ctx.dist.enabled:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def run_recognition(cfg: TrainConfig) -> Dict[str, Any]:
    """``ranface train --stage hr|lr``: returns a summary dict (also written to the run dir)."""
    if cfg.stage not in ("hr", "lr"):
        raise ConfigError(f"run_recognition handles stages hr and lr, not {cfg.stage!r}")
    if cfg.stage == "lr" and not cfg.model.init:
        raise ConfigError("stage lr is fine-tuned from the HR model: set model.init=<HR run dir or model.pt>")
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    kw = backbone_kwargs(to_dict(cfg.model))
    from ..models import create_backbone

    backbone = create_backbone(cfg.model.backbone, **kw)
    spec = backbone.spec
    # the data is checked before the run directory exists: bad input leaves no output
    dataset = open_dataset(cfg.data.train, cfg.data.format, cfg.data.color, expected_size(cfg, spec),
                           cfg.data.on_error)
    labels = dataset_labels(dataset)
    check_identities(labels, cfg.data.train)
    check_batch(len(dataset), cfg.data.batch_size, cfg.data.drop_last, cfg.data.train)
    ctx = setup_run(cfg, prefix=cfg.stage)
    num_classes = max(labels) + 1
    head = build_head(cfg, spec.embedding_size, num_classes)
    init_info = load_init(backbone, head, cfg.model.init)
    backbone.to(ctx.device)
    head.to(ctx.device)
    if cfg.model.head_init not in ("random", "centres"):
        raise ConfigError(f"model.head_init must be random or centres, got {cfg.model.head_init!r}")
    if cfg.model.head_init == "centres" and not init_info.get("head"):
        init_info["head_centres_from"], init_info["start_check"] = init_head_from_centres(
            head, backbone, dataset, stage_transforms(cfg, spec), ctx.device)
    channels_last = use_channels_last(ctx.device, ctx.precision, cfg.run.channels_last)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    fwd_backbone = wrap_ddp(backbone, ctx)
    fwd_head = wrap_ddp(head, ctx)
    compiled = use_compile(cfg.run.compile, ctx.device, cfg.optim.max_steps, cfg.run.compile_min_steps)
    if compiled:
        fwd_backbone = torch.compile(fwd_backbone)

    o = cfg.optim
    opt = torch.optim.SGD([
        {"params": [p for p in backbone.parameters() if p.requires_grad], "lr": o.lr},
        {"params": list(head.parameters()), "lr": o.lr * o.head_lr_mult},
    ], lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    sched = make_scheduler(opt, schedule=o.schedule, max_steps=o.max_steps, milestones=o.milestones,
                           gamma=o.gamma, warmup_steps=o.warmup_steps,
                           warmup_start_factor=o.warmup_start_factor)
    phase = Phase("recog", opt, ClassificationLoss(fwd_backbone, fwd_head), [fwd_backbone, fwd_head],
                  interval=1, scheduler=sched, clip_grad_norm=o.clip_grad_norm or None)

    view = AugmentedView(dataset, stage_transforms(cfg, spec), seed=cfg.run.seed)
    loader, sampler = build_train_loader(view, cfg.data.batch_size, cfg.data.num_workers,
                                         ctx.dist.world_size, ctx.dist.rank, cfg.run.seed,
                                         drop_last=cfg.data.drop_last,
                                         pin_memory=ctx.device.type == "cuda", source=cfg.data.train)
    validator = make_validator(cfg, backbone, ctx)
    trainer = Trainer(run_dir=ctx.run_dir, phases=[phase], state_modules={"backbone": backbone, "head": head},
                      stream=BatchStream(loader, sampler), to_device=make_to_device(ctx.device, channels_last),
                      device=ctx.device, precision=ctx.precision, dist=ctx.dist,
                      options=trainer_options(cfg), config=to_dict(cfg),
                      validate=validator, best_metric="val/acc" if validator else None)
    resumed = trainer.resume(cfg.run.resume)
    result = trainer.fit()
    summary = {"stage": cfg.stage, "run_dir": ctx.run_dir, "resumed": resumed, "num_classes": num_classes,
               "num_images": len(dataset), "backbone": cfg.model.backbone, "precision": ctx.precision,
               "channels_last": channels_last, "compiled": compiled,
               "world_size": ctx.dist.world_size, **init_info, **result}
    if ctx.dist.is_main:
        save_checkpoint(os.path.join(ctx.run_dir, "model.pt"),
                        model_package(backbone, cfg.model.backbone, kw, to_dict(cfg),
                                      card=trained_card(backbone, cfg, kw, validator)))
        write_json(os.path.join(ctx.run_dir, "summary.json"), summary)
    return summary


def trainer_options(cfg: TrainConfig) -> TrainerOptions:
    r = cfg.run
    return TrainerOptions(max_steps=cfg.optim.max_steps, log_every=r.log_every, ckpt_every=r.ckpt_every,
                          val_every=r.val_every, keep_last=r.keep_last, keep_best=r.keep_best,
                          max_nonfinite=r.max_nonfinite, progress=r.progress, tensorboard=r.tensorboard,
                          inject_nonfinite=tuple(r.inject_nonfinite))
