"""``ranface demo``: the whole RAN pipeline on the bundled real data, at small scale.

Stages (each writes under ``<out>/`` and records ``<out>/stages/<name>.json`` when done;
a rerun reuses finished stages whose settings are unchanged, and an interrupted training
or synthesis stage resumes from its own checkpoints/outputs):

1. ``split``       LFW ``pairs.txt``: the test folds are held out; training identities are
                   the people who appear in none of them (identity-disjoint, issue 3).
2. ``faces``       ``prepare`` the test-fold photos and the training photos (MTCNN, 5-point
                   alignment to the dlib template, the framing of the pretrained ResNet-29).
3. ``lr_pool``     ``prepare --mode all --lr-select 10:30`` on the crowd photos (paper §4.1),
                   also detecting at 2x/3x: the real LR faces y.
4. ``gan``         MR-GAN trained on the training faces against the real LR pool.
5. ``synth_*``     LR twins of the training faces by MR-GAN and by bicubic down-sampling.
6. ``lr_*``        LR models: the HR model fine-tuned on each twin with random blur.
7. ``mr_*``        MR models (feature adaption, Eq. 7-10) for each degrader, plus the
                   no-translator ablation for MR-GAN.
8. ``eval_*``      ``pairs`` protocol on the held-out folds for HR, LR and MR models: full
                   resolution and HR-vs-LR / LR-vs-LR at the probe sizes.
9. ``report``      ``report.md`` + self-contained ``report.html``.

The HR model is the imported pretrained dlib ResNet-29 (face-api weights); with
``hr_finetune_steps > 0`` it is first fine-tuned with ArcFace on the training identities.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config import AdaptConfig, default_data_root
from .errors import ConfigError, RanfaceError
from .io_utils import atomic_write_text

PROFILES: Dict[str, Dict[str, Any]] = {
    # CI-sized: one held-out fold, 100+100 of its pairs; a few dozen training identities.
    "quick": dict(test_folds=[9], pairs_per_fold=100, train_ids=40, train_images_per_id=4,
                  lr_pool_upscales=[1.0, 2.0], gan_steps=40, gan_batch=8, gan_profile="small",
                  lr_steps=16, mr_steps=16, batch_size=16, probe_sizes=[16, 12],
                  lr_pool_limit=14, mr_twin_prob=0.5, eval_modes=["hr-lr"], gan_expert="distil",
                  expert_steps=4),
    # 2-core laptop: 33 min measured on an AVX-512 Xeon, 43-46 on an AVX2 EPYC (docs/results.md): two held-out folds (1,200 pairs), 200
    # training identities; steps chosen from learning curves (docs/results.md, issue 11)
    "default": dict(test_folds=[8, 9], pairs_per_fold=0, train_ids=200, train_images_per_id=6,
                    lr_pool_upscales=[1.0, 2.0], gan_steps=1000, gan_batch=16,
                    gan_profile="small", lr_steps=120, mr_steps=120, batch_size=32,
                    probe_sizes=[24, 16, 12, 8], lr_pool_limit=0, mr_twin_prob=0.5,
                    eval_modes=["hr-lr", "lr-lr"], mr_degraders=["mrgan"], gan_expert="distil",
                    expert_steps=100),
}


@dataclass
class DemoConfig:
    """Settings of ``ranface demo``; ``profile`` fills the unset (None/empty) ones."""

    profile: str = "default"  # default | quick
    out: str = "runs/demo"
    data_root: str = ""  # "" -> ../shared/data (or $RANFACE_DATA)
    seed: int = 0
    # table1 only: replicate the whole chain (expert, MR-GAN, twins, LR / MR models, probes)
    # once per seed under <out>/seed-<s> and add table1/seeds.md, the spread over seeds and the
    # paired differences with a seeds x pairs bootstrap; [] = one run with `seed`
    seeds: List[int] = field(default_factory=list)
    template: str = "dlib"  # alignment template of every face in the demo
    face_size: int = 112  # aligned faces; the ResNet-29 resizes to its 150x150 input
    test_folds: List[int] = field(default_factory=list)  # 0-based LFW folds held out
    pairs_per_fold: Optional[int] = None  # 0: all 300+300 pairs of each test fold
    train_ids: Optional[int] = None  # training identities (most images first)
    train_min_images: int = 3
    train_images_per_id: Optional[int] = None
    lr_pool_upscales: List[float] = field(default_factory=list)
    lr_pool_limit: Optional[int] = None
    grey_lr_pool: bool = True  # LFW here is grey: the GAN's target domain must be too
    hr_finetune_steps: int = 0
    gan_steps: Optional[int] = None
    gan_batch: Optional[int] = None
    gan_profile: str = ""
    # MR-GAN's frozen expert (Eq. 2): "distil" = a 112-px MobileFaceNet distilled from the HR
    # model on the training faces (train-expert; the paper's kind of expert), "hr" = the HR model
    gan_expert: str = ""
    expert_steps: Optional[int] = None
    # the widths z's level spans while MR-GAN trains: "pool" = the real LR pool's band (LR_BAND;
    # D compares fakes with real faces of the same sizes), "twins" = the training twins' band;
    # a non-empty gan_level_widths overrides both (docs/decisions.md "MR-GAN's levels")
    gan_levels: str = "pool"
    gan_level_widths: List[int] = field(default_factory=list)
    gan_pixel_schedule: str = "d_ratio"  # loss.pixel_schedule (docs/decisions.md, issue 12 round 3)
    # MR-GAN's twins through a JPEG at each face's level width with this probability (the
    # mrgan degrader's codec_p / codec_quality; 0: G(x) as trained; docs/decisions.md,
    # issue 12 round 6)
    mrgan_codec_p: float = 1.0
    mrgan_codec_quality: List[int] = field(default_factory=lambda: [30, 90])
    # the first is the main chain (LR, MR and the no-translator ablation); docs/decisions.md
    # random-degrade's LR model is the control of MR-GAN's on the held-out probes: noise, blur
    # and JPEG without learning (docs/decisions.md "Held-out probes")
    degraders: List[str] = field(default_factory=lambda: ["bicubic", "mrgan", "random-degrade"])
    bicubic_sizes: List[int] = field(default_factory=lambda: [8, 32])  # widths, when bicubic_band is empty
    # eye-to-mouth band (px) of the bicubic twins; non-empty replaces bicubic_sizes (one band
    # definition: ranface.align.select; docs/decisions.md "The LR band")
    bicubic_band: List[float] = field(default_factory=list)
    # probability that an MR top-stream face is its LR twin (adapt.twin_prob; docs/decisions.md)
    mr_twin_prob: Optional[float] = None
    eval_modes: List[str] = field(default_factory=list)  # of the pairs protocol: hr-lr, lr-lr
    no_translator: bool = True  # the "no translator" ablation (§4.3) of the main degrader's MR model
    # degraders that get an MR model besides the main one (degraders[0]); [] = the profile's;
    # every degrader gets its LR model (Table 1's LR rows) and its realism row
    mr_degraders: List[str] = field(default_factory=list)
    lr_steps: Optional[int] = None
    mr_steps: Optional[int] = None
    batch_size: Optional[int] = None
    lr: float = 0.001  # backbone learning rate when fine-tuning the pretrained model
    head_lr_mult: float = 10.0
    # ArcFace margin of the LR/MR fine-tuning: with m = 0.5 the pretrained ResNet-29's
    # features (other people at cosine 0.77-0.92) leave training accuracy at 0 from the first
    # step; m = 0.1 trains (issue 11, item 5; docs/decisions.md)
    margin: float = 0.1
    probe_sizes: List[int] = field(default_factory=list)
    # held-out probes: every model is also scored HR-vs-LR with probes made by this degrader
    # (ranface.gan.degraders; "" = off) at heldout_probe_sizes. It must be none of `degraders`:
    # bicubic probes favour bicubic twins by construction (docs/decisions.md "Held-out probes")
    heldout_probe: str = "second-order"
    heldout_probe_sizes: List[int] = field(default_factory=lambda: [16, 12])
    workers: int = 2
    progress: bool = True


def resolve(cfg: DemoConfig) -> DemoConfig:
    if cfg.profile not in PROFILES:
        raise ConfigError(f"demo profile must be one of {sorted(PROFILES)}, got {cfg.profile!r}")
    prof = PROFILES[cfg.profile]
    values = dataclasses.asdict(cfg)
    for k, v in prof.items():
        if values.get(k) in (None, "", []):
            values[k] = v
    if not values["data_root"]:
        values["data_root"] = default_data_root()
    out = DemoConfig(**values)
    if not out.degraders:
        raise ConfigError("degraders must name at least one LR synthesis method (the first is the main chain)")
    extra = [d for d in out.mr_degraders if d not in out.degraders]
    if extra:
        raise ConfigError(f"mr_degraders {extra} are not in degraders {out.degraders}")
    if len(set(out.seeds)) != len(out.seeds) or any(not isinstance(x, int) or isinstance(x, bool) or x < 0
                                                    for x in out.seeds):
        raise ConfigError(f"seeds must be distinct non-negative integers, got {out.seeds}")
    if out.gan_levels not in ("pool", "twins"):
        raise ConfigError(f"gan_levels must be 'pool' or 'twins', got {out.gan_levels!r}")
    if not 0.0 <= float(out.mr_twin_prob or 0.0) <= 1.0:
        raise ConfigError(f"mr_twin_prob must be a probability in [0, 1], got {out.mr_twin_prob}")
    from .gan.degraders import check_codec

    check_codec(out.mrgan_codec_p, out.mrgan_codec_quality, "mrgan_")  # before the GAN trains
    from .eval.protocols.pairs import MODES

    if out.gan_expert not in ("distil", "hr"):
        raise ConfigError(f"gan_expert must be distil or hr, got {out.gan_expert!r}")
    if out.heldout_probe and out.heldout_probe in out.degraders:
        raise ConfigError(f"heldout_probe {out.heldout_probe!r} is one of degraders {out.degraders}: "
                          "its probes would not be held out (set heldout_probe='' to turn them off)")
    if out.heldout_probe and (not out.heldout_probe_sizes or any(int(s) < 1 for s in out.heldout_probe_sizes)):
        raise ConfigError(f"heldout_probe_sizes must be positive widths (px), got {out.heldout_probe_sizes}")
    if not out.eval_modes or any(m not in MODES for m in out.eval_modes):
        raise ConfigError(f"eval_modes must be a non-empty list of {', '.join(MODES)}; got {out.eval_modes}")
    return out


# ------------------------------------------------------------------------- stage cache


class Stages:
    """Records finished stages; a stage reruns when its settings changed."""

    def __init__(self, out: str):
        self.dir = os.path.join(out, "stages")
        os.makedirs(self.dir, exist_ok=True)
        self.times: Dict[str, float] = {}
        self.records: Dict[str, Dict[str, Any]] = {}

    def run(self, name: str, settings: Dict[str, Any], fn: Callable[[], Dict[str, Any]],
            outputs: Sequence[str] = ()) -> Dict[str, Any]:
        """Run ``fn`` unless it finished with the same settings. ``outputs``: the folders the
        stage writes; when it last started with other settings they are removed first, so a
        training run never resumes from another configuration's checkpoints (an interrupted
        stage with the same settings resumes from them)."""
        # the name is part of the key: two stages with equal settings (the twins of two
        # degraders) must not hand their consumers the same key
        key = hashlib.sha1(json.dumps({"stage": name, **settings}, sort_keys=True, default=str).encode()).hexdigest()
        path = os.path.join(self.dir, f"{name}.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                rec = json.load(fh)
            if rec.get("key") == key:
                self.records[name] = rec
                self.times[name] = rec.get("elapsed_s", 0.0)
                print(f"[demo] {name}: reused (finished earlier)", flush=True)
                return rec["result"]
        started = os.path.join(self.dir, f"{name}.started")
        before = open(started, encoding="utf-8").read().strip() if os.path.exists(started) else None
        if before != key and (before is not None or os.path.exists(path)):
            for out in outputs:
                shutil.rmtree(out, ignore_errors=True)
        atomic_write_text(started, key)
        print(f"[demo] {name}: running", flush=True)
        t0 = time.time()
        result = fn()
        rec = {"key": key, "settings": settings, "result": result, "elapsed_s": round(time.time() - t0, 1)}
        atomic_write_text(path, json.dumps(rec, indent=1, default=str))
        self.records[name] = rec
        self.times[name] = rec["elapsed_s"]
        print(f"[demo] {name}: done in {rec['elapsed_s']:.0f} s", flush=True)
        return result

    def key(self, name: str) -> str:
        """The settings key a finished stage ran with: later stages that consume its output
        include it in their own settings, so they rerun when it reran with new settings."""
        return self.records[name]["key"]


# ------------------------------------------------------------------------- stages


def _pairs_file(data_root: str) -> str:
    return os.path.join(data_root, "lfw-gray", "pairs.txt")


def stage_split(cfg: DemoConfig, out: str) -> Dict[str, Any]:
    """Identity-disjoint split; writes the test pairs file and the photo lists."""
    from .eval.protocols.pairs import lfw_split, parse_pairs

    pairs_path = _pairs_file(cfg.data_root)
    images = os.path.join(cfg.data_root, "lfw-gray", "images")
    pairs = parse_pairs(pairs_path)
    n_folds = 1 + max(p.fold for p in pairs)
    bad = [f for f in cfg.test_folds if not 0 <= f < n_folds]
    if bad or not cfg.test_folds:
        raise ConfigError(f"test_folds must be fold ids in 0..{n_folds - 1}, got {cfg.test_folds}")
    everyone = sorted(d for d in os.listdir(images) if os.path.isdir(os.path.join(images, d)))
    train_ids, test_ids = lfw_split(pairs, cfg.test_folds, out_path=os.path.join(out, "split.json"),
                                    all_identities=everyone)
    test = [p for p in pairs if p.fold in set(cfg.test_folds)]
    if cfg.pairs_per_fold:
        kept: List[Any] = []
        for f in cfg.test_folds:
            fp = [p for p in test if p.fold == f]
            kept += [p for p in fp if p.same][: cfg.pairs_per_fold] + [p for p in fp if not p.same][: cfg.pairs_per_fold]
        test = kept
    # a pairs.txt of the held-out pairs only: one "fold" per test fold, in LFW's format
    lines = [f"{len(cfg.test_folds)} {max(1, len(test) // (2 * len(cfg.test_folds)))}"]
    for f in cfg.test_folds:
        for same in (True, False):
            for p in (q for q in test if q.fold == f and q.same == same):
                n1, i1 = _name_index(p.path1)
                n2, i2 = _name_index(p.path2)
                lines.append(f"{n1}\t{i1}\t{i2}" if same else f"{n1}\t{i1}\t{n2}\t{i2}")
    atomic_write_text(os.path.join(out, "test_pairs.txt"), "\n".join(lines) + "\n")
    test_photos = sorted({p.path1 for p in test} | {p.path2 for p in test})
    # training identities: most images first (ArcFace needs several per class), capped
    counts = []
    for name in sorted(train_ids):
        d = os.path.join(images, name)
        if os.path.isdir(d):
            files = sorted(f for f in os.listdir(d) if f.lower().endswith(".jpg"))
            if len(files) >= cfg.train_min_images:
                counts.append((len(files), name, files))
    counts.sort(key=lambda t: (-t[0], t[1]))
    chosen = counts[: cfg.train_ids]
    train_photos = [f"{name}/{f}" for _, name, files in sorted(chosen, key=lambda t: t[1])
                    for f in files[: cfg.train_images_per_id]]
    atomic_write_text(os.path.join(out, "test_photos.txt"), "\n".join(test_photos) + "\n")
    atomic_write_text(os.path.join(out, "train_photos.txt"), "\n".join(train_photos) + "\n")
    return {"test_folds": cfg.test_folds, "test_pairs": len(test), "test_photos": len(test_photos),
            "test_identities": len(test_ids), "train_identities_available": len(train_ids),
            "train_identities": len(chosen), "train_photos": len(train_photos)}


def _name_index(rel: str) -> Tuple[str, int]:
    stem = os.path.splitext(os.path.basename(rel))[0]
    name, idx = stem.rsplit("_", 1)
    return name, int(idx)


def _prepare(cfg: DemoConfig, src: str, out: str, **extra: Any) -> Dict[str, Any]:
    from .align.prepare import run_prepare
    from .config import PrepareConfig

    pc = PrepareConfig(input=src, out=out, template=cfg.template, size=[cfg.face_size, cfg.face_size],
                       workers=cfg.workers, progress=cfg.progress, **extra)
    return run_prepare(pc)


def _run_cfg(out_dir: str, name: str, cfg: DemoConfig, **kw: Any) -> Dict[str, Any]:
    run = dict(out_dir=out_dir, name=name, seed=cfg.seed, precision="fp32", resume="auto",
               progress=cfg.progress, log_every=5, ckpt_every=50, val_every=0, keep_best=0)
    run.update(kw)
    return run


def stage_recognition(cfg: DemoConfig, out: str, name: str, stage: str, data: str, init: str,
                      steps: int, lr_train: str = "", lr_model: str = "", translator: bool = True) -> Dict[str, Any]:
    from .config import TrainConfig, from_dict

    d = {
        "stage": stage,
        "data": {"train": data, "lr_train": lr_train, "batch_size": cfg.batch_size, "num_workers": 1,
                 "resize": True},
        "model": {"backbone": "resnet29_dlib", "init": init, "head_init": "centres", "margin": cfg.margin},
        "optim": {"lr": cfg.lr, "head_lr_mult": cfg.head_lr_mult, "schedule": "cosine",
                  "warmup_steps": max(1, steps // 10), "max_steps": steps, "weight_decay": 5e-4},
        "run": _run_cfg(os.path.join(out, "models"), name, cfg),
    }
    if stage == "mr":
        d["adapt"] = {"lr_model": lr_model, "translator": translator, "twin_prob": float(cfg.mr_twin_prob or 0.0)}
    tc = from_dict(TrainConfig, d)
    if stage == "mr":
        from .adapt.trainer import run_adaption

        summary = run_adaption(tc)
    else:
        from .train.recognition import run_recognition

        summary = run_recognition(tc)
    keep = ("run_dir", "steps", "elapsed_s", "counters", "gate", "num_classes", "num_images", "start_check",
            "adaption_trace")
    out = {k: summary[k] for k in keep if k in summary}
    out["final_acc"] = _final_train_acc(summary.get("run_dir", ""))
    return out


def _final_train_acc(run_dir: str) -> Optional[float]:
    """Training accuracy (margin logits) at the last logged step of a recognition run."""
    from .train.stats import read_metrics

    rows = [r for r in read_metrics(run_dir, "train") if "recog/acc" in r] if run_dir else []
    return float(rows[-1]["recog/acc"]) if rows else None


def _run_dir(out: str, name: str) -> str:
    """Where a demo training stage's run lives (``_run_cfg``: out/models/<name>)."""
    return os.path.join(out, "models", name)


def stage_eval(cfg: DemoConfig, out: str, name: str, model: str, faces: str, pairs: str = "",
               probe: str = "") -> Dict[str, Any]:
    """``pairs`` on the held-out faces: bicubic probes at ``probe_sizes`` in ``eval_modes``, or
    with ``probe`` (a degrader) HR-vs-LR at ``heldout_probe_sizes``."""
    from .eval.protocols import EvalContext, evaluate
    from .eval.protocols.pairs import PairsOptions
    from .inference import load_model

    from .train.precision import resolve_device

    dev = resolve_device("auto")  # the GPU when there is one
    m, info = load_model(model, device=dev)
    ctx = EvalContext(model=m, info=info, device=dev, batch_size=64, progress=cfg.progress)
    opts = PairsOptions(pairs=pairs or os.path.join(out, "test_pairs.txt"), images=faces,
                        probe_sizes=list(cfg.heldout_probe_sizes if probe else cfg.probe_sizes),
                        modes=["hr-lr"] if probe else list(cfg.eval_modes), flip=False,
                        probe_degrader=probe, probe_seed=cfg.seed)
    res = evaluate("pairs", ctx, out, opts, out_dir=os.path.join(out, "eval", name))
    return {"result": os.path.join(out, "eval", name, "result.json"), "metrics": res["metrics"]}


# ------------------------------------------------------------------------- driver


def run_demo(cfg: DemoConfig) -> Dict[str, Any]:
    from .align.select import LR_BAND

    cfg = resolve(cfg)
    if cfg.seeds:
        raise ConfigError(f"seeds {cfg.seeds}: replicating over seeds is `ranface table1`'s "
                          "(the demo runs one seed: --set seed=N)")
    # one absolute base for every path the stages hand each other: a relative --out must
    # never be joined onto a protocol root that is itself under it (issue 11)
    out = os.path.abspath(cfg.out)
    for need in (_pairs_file(cfg.data_root), os.path.join(cfg.data_root, "crowd-photos", "images"),
                 os.path.join(cfg.data_root, "models", "faceapi-resnet29")):
        if not os.path.exists(need):
            raise RanfaceError(f"{need}: bundled demo data not found (set RANFACE_DATA or demo.data_root)")
    os.makedirs(out, exist_ok=True)
    from .config import save_config

    save_config(cfg, os.path.join(out, "demo_config.yaml"))
    st = Stages(out)
    t_start = time.time()
    lfw_images = os.path.join(cfg.data_root, "lfw-gray", "images")
    faceapi = os.path.join(cfg.data_root, "models", "faceapi-resnet29")
    common = {"template": cfg.template, "face_size": cfg.face_size}

    split = st.run("split", {**common, "folds": cfg.test_folds, "ppf": cfg.pairs_per_fold,
                             "ids": cfg.train_ids, "min": cfg.train_min_images, "per": cfg.train_images_per_id},
                   lambda: stage_split(cfg, out))
    faces_test = os.path.join(out, "faces_test")
    faces_train = os.path.join(out, "faces_train")
    lr_pool = os.path.join(out, "lr_pool")
    st.run("faces_test", {**common, **split}, lambda: _prepare(
        cfg, os.path.join(out, "test_photos.txt"), faces_test, root=lfw_images, policy="center"),
        outputs=[faces_test])
    st.run("faces_train", {**common, **split}, lambda: _prepare(
        cfg, os.path.join(out, "train_photos.txt"), faces_train, root=lfw_images, policy="center"),
        outputs=[faces_train])
    pool = st.run("lr_pool", {**common, "up": cfg.lr_pool_upscales, "limit": cfg.lr_pool_limit,
                              "grey": cfg.grey_lr_pool},
                  lambda: _prepare(cfg, os.path.join(cfg.data_root, "crowd-photos", "images"), lr_pool,
                                   mode="all", lr_select=f"{LR_BAND[0]:g}:{LR_BAND[1]:g}", upscales=list(cfg.lr_pool_upscales),
                                   max_outside=0.1, limit=cfg.lr_pool_limit or 0, grey=cfg.grey_lr_pool),
                  outputs=[lr_pool])
    if pool.get("faces_written", 0) < (cfg.gan_batch or 1):
        raise RanfaceError(f"{lr_pool}: only {pool.get('faces_written')} real LR faces found; MR-GAN needs "
                           f"at least one batch ({cfg.gan_batch})")

    hr_model = faceapi
    if cfg.hr_finetune_steps > 0:
        r = st.run("hr", {"steps": cfg.hr_finetune_steps, "lr": cfg.lr, "b": cfg.batch_size, **split},
                   lambda: stage_recognition(cfg, out, "hr", "hr", faces_train, faceapi, cfg.hr_finetune_steps),
                   outputs=[_run_dir(out, "hr")])
        hr_model = r["run_dir"]

    from .pipelines.table1 import run_degrader_chain

    chain = run_degrader_chain(cfg, out, st, faces_train, lr_pool, hr_model, {**pool, **split})
    models: Dict[str, str] = {"HR": hr_model, **chain["models"]}
    model_keys: Dict[str, str] = {"HR": st.key("hr") if cfg.hr_finetune_steps > 0 else hr_model,
                                  **chain["model_keys"]}
    realism = chain["realism"]
    from .pipelines.table1 import evaluate_models

    evals, heldout = evaluate_models(cfg, out, st, models, model_keys, faces_test, "", {"flip": False, **split})
    from .demo_report import write_report

    report = write_report(cfg, out, st, models, evals, total_s=time.time() - t_start,
                          realism_records=realism, heldout=heldout)
    return {"out": out, "report": report, "models": models,
            "stage_seconds": st.times, "total_s": round(time.time() - t_start, 1)}
