"""The MR stage (paper §3.4, Fig. 4, §4.2 step 3): ``ranface train --stage mr``.

Paper symbols -> code names:
- top stream f_HR = ``backbone(x_HR)`` (the MR model, initialised from the HR model
  ``model.init``), classified by ``head`` (ArcFace) for L_c^HR (Eq. 10);
- bottom stream f_LR^Real = ``lr.backbone(x_LR)``: the frozen LR model (``adapt.lr_model``)
  on each HR face's synthesized LR twin (``data.lr_train``); p^Real from its classifier
  ``lr.head``;
- T_LR = ``translator`` (:class:`~ranface.adapt.translator.Translator`), D = ``disc``
  (:class:`~ranface.adapt.discriminator.FeatureDiscriminator`), the gate W and
  f_LR^Translate = :func:`~ranface.adapt.gate.translation_gate` (Eq. 8);
- the losses of Eq. 7, 9, 10 in :mod:`ranface.adapt.losses`.

Two phases walk one :class:`~ranface.train.loop.Trainer`, both every step:
``recog`` (SGD on backbone, head, translator: Eq. 10, with alpha L_feature^G switched on
once every ``adapt.feature_g_every`` discriminator iterations) then ``feat_D`` (Adam on
D: L_feature^D, Eq. 7). ``recog`` runs first and leaves the detached f_LR^Real and
T_LR(f_HR) in ``ctx.cache``; ``feat_D`` trains on those, so a step costs one backbone
forward/backward and one frozen LR forward (CycleGAN's order: generator step, then
the discriminator on the same, detached, fakes).

Features are L2-normalised before D and before the gate: every later use (L_f, L_p via
cosine logits, verification) is scale-free, so D should not win on norms, and W only
balances two sources when they have the same scale.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AdaptConfig, TrainConfig, to_dict
from ..data.loader import (AugmentedView, FaceTransform, build_train_loader, check_identities, dataset_labels,
                           open_dataset)
from ..errors import CheckpointError, ConfigError, DataError
from ..models import create_backbone
from ..models.loader import backbone_kwargs, is_faceapi_dir, load_model, model_package
from ..train.checkpoint import CKPT_RE, CheckpointManager, load_checkpoint, load_state_strict, save_checkpoint
from ..train.loop import BatchStream, Phase, StepContext, Trainer
from ..train.precision import use_channels_last, use_compile
from ..train.recognition import (ClassificationLoss, build_head, load_init, make_to_device, make_validator, trained_card,
                                 expected_size, init_head_from_centres, input_resize, stage_transforms,
                                 trainer_options, wrap_ddp)
from ..train.runs import setup_run, seed_everything, write_json
from ..train.schedule import make_scheduler
from .discriminator import FeatureDiscriminator
from .gate import translation_gate
from .losses import LF_DISTANCES, LF_REDUCTIONS, feature_loss, lsgan_d_loss, lsgan_g_loss, probability_loss, total_loss
from .translator import Translator

__all__ = ["LRStream", "load_lr_stream", "open_paired", "AdaptionLoss", "DiscriminatorLoss", "run_adaption",
           "REAL_KEY", "TRANSLATED_KEY"]

# ctx.cache keys: what the recog phase hands to the feat_D phase of the same step
REAL_KEY = "adapt/f_lr_real"
TRANSLATED_KEY = "adapt/t_lr"


# ---------------------------------------------------------------------------- inputs


def check_inputs(cfg: TrainConfig) -> None:
    """Everything the MR stage needs from earlier stages, in one error."""
    missing = []
    if not cfg.model.init:
        missing.append("model.init (the HR model: run `ranface train --stage hr` first)")
    if not cfg.data.lr_train:
        missing.append("data.lr_train (the synthesized LR twin of data.train: run `ranface synthesize` first)")
    if not cfg.adapt.lr_model:
        missing.append("adapt.lr_model (the frozen LR model: run `ranface train --stage lr` first)")
    if missing:
        raise ConfigError("stage mr needs " + "; ".join(missing))
    if not os.path.exists(cfg.data.lr_train):
        raise DataError(cfg.data.lr_train, "LR twin of data.train not found (data.lr_train): run "
                        "`ranface synthesize` first")
    if not os.path.exists(cfg.adapt.lr_model):
        raise CheckpointError(cfg.adapt.lr_model, "LR model not found (adapt.lr_model): run "
                              "`ranface train --stage lr` first")
    a = cfg.adapt
    if a.feature_g_every < 1:
        raise ConfigError(f"adapt.feature_g_every must be >= 1, got {a.feature_g_every}")
    if a.lf_distance not in LF_DISTANCES:
        raise ConfigError(f"adapt.lf_distance must be one of {', '.join(LF_DISTANCES)}, got {a.lf_distance!r}")
    if a.lf_reduction not in LF_REDUCTIONS:
        raise ConfigError(f"adapt.lf_reduction must be one of {', '.join(LF_REDUCTIONS)}, got {a.lf_reduction!r}")
    if len(a.disc_betas) != 2:
        raise ConfigError(f"adapt.disc_betas must be two numbers (beta1, beta2), got {a.disc_betas}")
    for k in ("alpha", "beta", "gamma", "disc_lr"):
        if getattr(a, k) < 0:
            raise ConfigError(f"adapt.{k} must be >= 0, got {getattr(a, k)}")
    if not 0.0 <= a.twin_prob <= 1.0:
        raise ConfigError(f"adapt.twin_prob must be a probability in [0, 1], got {a.twin_prob}")


def open_paired(cfg: TrainConfig, input_size: Optional[Tuple[int, int]]) -> Tuple[Any, Any]:
    """HR set ``data.train`` and its LR twin ``data.lr_train``: same identities, same
    number of faces, same labels in the same order (else a :class:`DataError`)."""
    from ..data.datasets import PairedDataset

    d = cfg.data
    hr = open_dataset(d.train, d.format, d.color, input_size, d.on_error)
    lr = open_dataset(d.lr_train, d.format, d.color, input_size, d.on_error)
    hc, lc = getattr(hr, "classes", None), getattr(lr, "classes", None)
    if hc is not None and lc is not None and list(hc) != list(lc):
        diff = next((i for i, (a, b) in enumerate(zip(hc, lc)) if a != b), min(len(hc), len(lc)))
        shown = lambda c: repr(c[diff]) if diff < len(c) else "none"  # noqa: E731
        raise DataError(d.lr_train, f"identity folders differ from data.train's ({len(lc)} vs {len(hc)}; "
                        f"#{diff}: {shown(lc)} vs {shown(hc)}); the LR twin must keep the HR layout")
    PairedDataset(hr, lr)  # checks counts and labels
    return hr, lr


@dataclass
class LRStream:
    """The frozen bottom stream: the LR model's backbone and its classifier (None when
    L_p is off). Both in eval mode, without gradient, in no optimizer, never DDP-wrapped."""

    backbone: nn.Module
    head: Optional[nn.Module]
    info: Dict[str, Any]


def _run_checkpoint(spec: str) -> Optional[str]:
    """A run's training checkpoint: ``spec`` itself when it is one, else the latest
    ``checkpoints/ckpt-*.pt`` of the run directory (or of model.pt's folder)."""
    if os.path.isfile(spec) and CKPT_RE.match(os.path.basename(spec)):
        return spec
    run_dir = spec if os.path.isdir(spec) else os.path.dirname(os.path.abspath(spec))
    return CheckpointManager(os.path.join(run_dir, "checkpoints")).latest()


def _same_weights(module: nn.Module, state: Dict[str, torch.Tensor]) -> bool:
    own = module.state_dict()
    return set(own) == set(state) and all(torch.equal(own[k].cpu(), state[k].cpu()) for k in own)


def _init_head_from_run(head: nn.Module, backbone: nn.Module, spec: str) -> Optional[str]:
    """The HR run's classifier for L_c^HR when ``model.init`` named its run dir or
    model.pt (which holds no head): taken from the run's checkpoint whose backbone is
    the one just loaded, if its shape fits. Returns that checkpoint, or None."""
    if not spec or not os.path.exists(spec) or is_faceapi_dir(spec):
        return None
    ckpt = _run_checkpoint(spec)
    if ckpt is None:
        return None
    modules = load_checkpoint(ckpt).get("modules", {})
    head_state = modules.get("head")
    if head_state is None or not _same_weights(backbone, modules.get("backbone", {})):
        return None
    own = head.state_dict()
    if not all(k in head_state and head_state[k].shape == v.shape for k, v in own.items()):
        return None
    head.load_state_dict(head_state)
    return ckpt


def _freeze(m: nn.Module) -> nn.Module:
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def load_lr_stream(spec: str, device: torch.device, backbone: str, embedding_size: int, num_classes: int,
                   need_head: bool = True, channels_last: bool = False) -> LRStream:
    """Load the frozen LR model (``adapt.lr_model``: run dir, model.pt or ckpt-*.pt).

    The backbone and its card come through :func:`ranface.models.loader.load_model`. The classifier of
    p^Real / p^Translate (L_p) is the LR run's own ArcFace head, taken from its training
    checkpoint (model.pt holds no head); that checkpoint's backbone must equal the loaded
    one, so the classifier belongs to the same LR model.
    """
    bb, card = load_model(spec, device=device)
    info = card.info()
    lr_emb = card.embedding_size
    if card.architecture != backbone or lr_emb != embedding_size:
        raise ConfigError(f"adapt.lr_model {spec} is a {card.architecture} with {lr_emb}-d embeddings but "
                          f"the MR backbone is a {backbone} with {embedding_size}-d embeddings: the LR model "
                          "must be the same architecture (fine-tune the HR model with `ranface train --stage lr`)")
    _freeze(bb)
    if channels_last:
        bb.to(memory_format=torch.channels_last)
    head = None
    if need_head:
        ckpt = _run_checkpoint(spec)
        if ckpt is None:
            raise CheckpointError(spec, "no training checkpoint (checkpoints/ckpt-*.pt) of this LR model: L_p "
                                  "needs its classifier from there (or set adapt.beta=0 to train without L_p)")
        state = load_checkpoint(ckpt)
        modules = state.get("modules", {})
        if "head" not in modules or "backbone" not in modules:
            raise CheckpointError(ckpt, "not a recognition training checkpoint (needs 'backbone' and 'head')")
        if not _same_weights(bb, modules["backbone"]):
            raise CheckpointError(ckpt, f"its backbone is not the LR model loaded from {spec} (another step or "
                                  "run): set adapt.lr_model to the checkpoint itself")
        weight = modules["head"].get("weight")
        if weight is None or weight.dim() != 2:
            raise CheckpointError(ckpt, "its 'head' has no (classes x embedding) weight")
        if weight.shape[0] != num_classes:
            raise ConfigError(f"the LR model's classifier ({ckpt}) has {weight.shape[0]} classes but data.train "
                              f"has {num_classes}: the LR model must be trained on the LR twin of data.train")
        mcfg = state.get("config", {}).get("model", {})
        from ..models import create_head

        kw: Dict[str, Any] = {"s": float(mcfg.get("scale", 64.0))}
        if mcfg.get("margin") is not None:
            kw["m"] = float(mcfg["margin"])
        head = create_head(mcfg.get("head", "arcface"), weight.shape[1], weight.shape[0], **kw)
        load_state_strict(head, modules["head"], ckpt, what="LR classifier")
        head = _freeze(head.to(device))
        info["head_source"] = ckpt
    return LRStream(backbone=bb, head=head, info=info)


# ---------------------------------------------------------------------------- phases


class AdaptionLoss:
    """Phase ``recog``: L_c of Eq. 10 on a paired batch ``(x_HR, x_LR, labels, skipped)``.

    ``translator=None`` is the "no translator" ablation (§4.3): f_HR stands in for
    T_LR(f_HR) everywhere (D, the gate, L_f, L_p), so f_LR^Translate = f_HR.
    ``d_iterations()`` is the number of discriminator iterations so far; alpha
    L_feature^G is added when it is a multiple of ``feature_g_every`` (§4.2), otherwise
    weighted by 0 (kept in the graph so DDP sees the same parameters used every step).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, translator: Optional[nn.Module],
                 disc: FeatureDiscriminator, lr: LRStream, cfg: AdaptConfig,
                 d_iterations: Callable[[], int]):
        self.backbone = backbone
        self.classification = ClassificationLoss(nn.Identity(), head)  # L_c^HR on a given f_HR
        self.translator = translator
        self.disc = disc  # the plain module: scored with frozen parameters (score_frozen)
        self.lr = lr
        self.cfg = cfg
        self.d_iterations = d_iterations

    def __call__(self, batch: Any, ctx: StepContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        x_hr, x_lr, labels = batch[0], batch[1], batch[2]
        a = self.cfg
        with ctx.autocast():
            f_hr = self.backbone(x_hr)
        with torch.no_grad(), ctx.autocast():
            f_real = self.lr.backbone(x_lr)
        f_hr, f_real = f_hr.float(), f_real.float()
        l_c_hr, cls_stats = self.classification((f_hr, labels), ctx)

        # the small adaption networks run in fp32: LSGAN scores and the KL are sensitive
        t_lr = self.translator(f_hr) if self.translator is not None else f_hr
        u_t, u_hr, u_real = (F.normalize(v, dim=1) for v in (t_lr, f_hr, f_real))
        d_t = self.disc.score_frozen(u_t)
        f_translate, w = translation_gate(u_t, u_hr, d_t, grad=a.gate_grad)  # Eq. 8
        l_f = feature_loss(f_translate, u_real, a.lf_distance, a.lf_reduction)  # Eq. 9
        if self.lr.head is not None and a.beta > 0:
            # one head call for both (the head normalises its class centres once)
            logits = self.lr.head(torch.cat([u_real, f_translate]))
            l_p = probability_loss(logits[:len(u_real)], logits[len(u_real):])  # Eq. 9
        else:
            l_p = torch.zeros((), device=f_hr.device)
        l_g = lsgan_g_loss(d_t)  # Eq. 7
        g_on = float(self.d_iterations() % a.feature_g_every == 0)
        loss = total_loss(l_c_hr, g_on * l_g, l_p, l_f, a.alpha, a.beta, a.gamma)  # Eq. 10

        shares = _grad_shares({"l_c_hr": l_c_hr, "l_feature_g": a.alpha * g_on * l_g, "l_p": a.beta * l_p,
                               "l_f": a.gamma * l_f}, f_hr) if a.log_grad_share else {}
        ctx.cache[REAL_KEY] = u_real.detach()
        ctx.cache[TRANSLATED_KEY] = u_t.detach()
        w = w.detach()
        stats = {"l_c_hr": l_c_hr.detach(), "l_feature_g": l_g.detach(), "l_p": l_p.detach(),
                 "l_f": l_f.detach(), "g_on": g_on, "w_mean": w.mean(), "w_std": w.std(unbiased=False),
                 "d_translated": d_t.detach().mean(), **shares, **cls_stats}
        return loss, stats


def _grad_shares(terms: Dict[str, torch.Tensor], f_hr: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Each weighted term of Eq. 10 -- its share of the summed gradient norms at f_HR,
    ||d(w_k L_k)/d f_HR|| / sum_j ||d(w_j L_j)/d f_HR||: which term actually moves the
    MR embedding (issue 11: gamma L_f ~ 0.5 against L_c^HR ~ 12.7). Taken at the
    embedding, not the backbone's weights: four small backward passes through the heads,
    none through the backbone, and no parameter's .grad is touched (DDP hooks stay quiet)."""
    norms = {}
    for k, t in terms.items():
        if not t.requires_grad:
            norms[k] = torch.zeros((), device=f_hr.device)
            continue
        (g,) = torch.autograd.grad(t, f_hr, retain_graph=True, allow_unused=True)
        norms[k] = torch.zeros((), device=f_hr.device) if g is None else g.detach().norm()
    total = sum(norms.values()) + 1e-12
    return {f"grad_share/{k}": v / total for k, v in norms.items()}


class DiscriminatorLoss:
    """Phase ``feat_D``: L_feature^D of Eq. 7 on the detached f_LR^Real and T_LR(f_HR)
    the ``recog`` phase of the same step left in ``ctx.cache``. Real and translated go
    through D as one batch (D has no batch statistics, and DDP sees one forward)."""

    def __init__(self, disc: nn.Module):
        self.disc = disc

    def __call__(self, batch: Any, ctx: StepContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        if REAL_KEY not in ctx.cache:
            raise RuntimeError("phase feat_D needs the features of the recog phase of the same step "
                               "(run recog first, sharing ctx.cache)")
        real, fake = ctx.cache[REAL_KEY], ctx.cache[TRANSLATED_KEY]
        scores = self.disc(torch.cat([real, fake])).float()
        d_real, d_fake = scores[:real.shape[0]], scores[real.shape[0]:]
        loss = lsgan_d_loss(d_real, d_fake)
        return loss, {"d_real": d_real.detach().mean(), "d_translated": d_fake.detach().mean()}


# ---------------------------------------------------------------------------- recipe


def _gate_trajectory(run_dir: str, max_points: int = 100) -> Dict[str, Any]:
    """W's mean and spread over training, from metrics.jsonl (evenly thinned)."""
    from ..train.stats import read_metrics

    rows = [r for r in read_metrics(run_dir, "train") if "recog/w_mean" in r]
    if not rows:
        return {}
    stride = max(1, -(-len(rows) // max_points))
    picked = rows[::stride] + ([rows[-1]] if (len(rows) - 1) % stride else [])
    return {"w_mean_first": rows[0]["recog/w_mean"], "w_mean_last": rows[-1]["recog/w_mean"],
            "w_std_last": rows[-1]["recog/w_std"],
            "trajectory": [[r["step"], r["recog/w_mean"], r["recog/w_std"]] for r in picked]}


def _adaption_trace(run_dir: str) -> Dict[str, Any]:
    """The four terms of Eq. 10, their gradient shares, and D's scores (d_real,
    d_translated) and W at the first and the last logged step (from metrics.jsonl)."""
    from ..train.stats import read_metrics

    rows = read_metrics(run_dir, "train")
    keys = ("recog/l_c_hr", "recog/l_feature_g", "recog/l_p", "recog/l_f", "recog/grad_share/l_c_hr",
            "recog/grad_share/l_feature_g", "recog/grad_share/l_p", "recog/grad_share/l_f", "recog/w_mean",
            "recog/d_translated", "feat_D/d_real", "feat_D/d_translated")
    pick = lambda r: {"step": r.get("step"), **{k: r[k] for k in keys if k in r}}  # noqa: E731
    rows = [r for r in rows if "recog/l_f" in r]
    return {"first": pick(rows[0]), "last": pick(rows[-1])} if rows else {}


def run_adaption(cfg: TrainConfig) -> Dict[str, Any]:
    """``ranface train --stage mr``: returns a summary dict (also written to the run dir);
    the run's ``model.pt`` is the MR backbone (f_HR), in the HR stage's format."""
    if cfg.stage != "mr":
        raise ConfigError(f"run_adaption handles stage mr, not {cfg.stage!r}")
    check_inputs(cfg)
    a = cfg.adapt
    ctx = setup_run(cfg, prefix="mr")
    seed_everything(cfg.run.seed, cfg.run.deterministic)

    kw = backbone_kwargs(to_dict(cfg.model))
    backbone = create_backbone(cfg.model.backbone, **kw)
    spec = backbone.spec
    emb = spec.embedding_size
    hr_ds, lr_ds = open_paired(cfg, expected_size(cfg, spec))
    hr_labels = dataset_labels(hr_ds)
    check_identities(hr_labels, cfg.data.train)
    num_classes = max(hr_labels) + 1
    head = build_head(cfg, emb, num_classes)
    init_info = load_init(backbone, head, cfg.model.init)
    if not init_info.get("head"):
        # load_init takes a run's model.pt (no head) over its checkpoints; a fresh ArcFace
        # head would hit the pretrained backbone with large L_c^HR gradients
        head_src = _init_head_from_run(head, backbone, cfg.model.init)
        init_info.update(head=head_src is not None, head_source=head_src)
    if cfg.model.head_init == "centres" and not init_info.get("head"):
        init_info["head_centres_from"], init_info["start_check"] = init_head_from_centres(
            head, backbone, hr_ds, stage_transforms(cfg, spec), torch.device("cpu"))
    channels_last = use_channels_last(ctx.device, ctx.precision, cfg.run.channels_last)
    compiled = use_compile(cfg.run.compile, ctx.device, cfg.optim.max_steps, cfg.run.compile_min_steps)
    lr = load_lr_stream(a.lr_model, ctx.device, cfg.model.backbone, emb, num_classes,
                        need_head=a.beta > 0, channels_last=channels_last)
    translator = Translator(emb, a.translator_hidden) if a.translator else None
    disc = FeatureDiscriminator(emb, a.disc_hidden, spectral_norm=a.disc_spectral_norm)

    for m in (backbone, head, translator, disc):
        if m is not None:
            m.to(ctx.device)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    fwd_backbone, fwd_head, fwd_disc = wrap_ddp(backbone, ctx), wrap_ddp(head, ctx), wrap_ddp(disc, ctx)
    fwd_translator = wrap_ddp(translator, ctx) if translator is not None else None
    if compiled:
        fwd_backbone = torch.compile(fwd_backbone)
        lr.backbone = torch.compile(lr.backbone)  # the frozen forward is a fixed graph too

    o = cfg.optim
    groups: List[Dict[str, Any]] = [
        {"params": [p for p in backbone.parameters() if p.requires_grad], "lr": o.lr},
        {"params": list(head.parameters()), "lr": o.lr * o.head_lr_mult}]
    if translator is not None:
        groups.append({"params": list(translator.parameters()), "lr": o.lr})
    opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    sched = make_scheduler(opt, schedule=o.schedule, max_steps=o.max_steps, milestones=o.milestones,
                           gamma=o.gamma, warmup_steps=o.warmup_steps,
                           warmup_start_factor=o.warmup_start_factor)
    opt_d = torch.optim.Adam(disc.parameters(), lr=a.disc_lr, betas=(float(a.disc_betas[0]),
                                                                       float(a.disc_betas[1])))
    phase_d = Phase("feat_D", opt_d, DiscriminatorLoss(fwd_disc), [fwd_disc], interval=1)
    loss = AdaptionLoss(fwd_backbone, fwd_head, fwd_translator, disc, lr, a, lambda: phase_d.runs)
    recog_modules = [fwd_backbone, fwd_head] + ([fwd_translator] if fwd_translator is not None else [])
    phase_r = Phase("recog", opt, loss, recog_modules, interval=1, scheduler=sched,
                    clip_grad_norm=o.clip_grad_norm or None)

    hr_tf = stage_transforms(cfg, spec)  # stage mr: flip only
    lr_extra = None
    if a.lr_blur:
        from ..degrade import RandomGaussianBlur

        lr_extra = RandomGaussianBlur()
    lr_tf = FaceTransform(spec.mean, spec.std, hflip=cfg.data.hflip, extra=lr_extra,
                          size=input_resize(cfg, spec))
    view = AugmentedView(hr_ds, hr_tf, seed=cfg.run.seed, pair=lr_ds, pair_transform=lr_tf,
                         twin_prob=a.twin_prob)
    loader, sampler = build_train_loader(view, cfg.data.batch_size, cfg.data.num_workers,
                                         ctx.dist.world_size, ctx.dist.rank, cfg.run.seed,
                                         drop_last=cfg.data.drop_last, pin_memory=ctx.device.type == "cuda",
                                         source=cfg.data.train)
    state_modules: Dict[str, nn.Module] = {"backbone": backbone, "head": head, "disc": disc}
    if translator is not None:
        state_modules["translator"] = translator
    validator = make_validator(cfg, backbone, ctx)
    trainer = Trainer(run_dir=ctx.run_dir, phases=[phase_r, phase_d], state_modules=state_modules,
                      stream=BatchStream(loader, sampler),
                      to_device=make_to_device(ctx.device, channels_last), device=ctx.device,
                      precision=ctx.precision, dist=ctx.dist, options=trainer_options(cfg), config=to_dict(cfg),
                      validate=validator, best_metric="val/acc" if validator else None)
    resumed = trainer.resume(cfg.run.resume)
    result = trainer.fit()
    summary = {"stage": "mr", "run_dir": ctx.run_dir, "resumed": resumed, "num_classes": num_classes,
               "adaption_trace": _adaption_trace(ctx.run_dir) if ctx.dist.is_main else {},
               "num_images": len(hr_ds), "backbone": cfg.model.backbone, "precision": ctx.precision,
               "channels_last": channels_last, "compiled": compiled, "world_size": ctx.dist.world_size, "translator": a.translator,
               "lr_model": lr.info.get("source"), "lr_head": lr.info.get("head_source"),
               "phase_runs": {p.name: p.runs for p in trainer.phases}, **init_info, **result}
    if ctx.dist.is_main:
        summary["gate"] = _gate_trajectory(ctx.run_dir)
        save_checkpoint(os.path.join(ctx.run_dir, "model.pt"),
                        model_package(backbone, cfg.model.backbone, kw, to_dict(cfg),
                                      card=trained_card(backbone, cfg, kw, validator)))
        write_json(os.path.join(ctx.run_dir, "summary.json"), summary)
    return summary
