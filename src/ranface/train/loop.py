"""The one training loop of ranface: phases walked step by step.

A :class:`Phase` is one optimiser over some modules with its own loss and interval
(stylegan3's idea). The recognition stages have one phase; MR-GAN has a discriminator
and a generator phase; the MR stage a recognition phase and a feature-discriminator
phase. :class:`Trainer` owns everything around them: data order, autocast, gradient
scaling and clipping, non-finite guard, logging, validation, checkpoints and exact resume.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import CheckpointError, DistributedError, NonFiniteError
from .checkpoint import (CheckpointManager, capture_rng, check_training_checkpoint, load_checkpoint,
                         load_state_strict, restore_rng)
from .distributed import DistInfo, all_gather_objects, any_rank, barrier, unwrap
from .precision import autocast, make_scaler
from .stats import MetricsWriter, StatsAccumulator

LossFn = Callable[[Any, "StepContext"], Tuple[torch.Tensor, Dict[str, Any]]]


@dataclass
class StepContext:
    """What a phase's loss function may use: the global step, how often this phase has
    run before (for "every k-th iteration" terms such as the pixel critic), the autocast
    context and a per-step cache shared by the phases of one step."""

    step: int
    phase_iter: int
    device: torch.device
    precision: str
    cache: Dict[str, Any] = field(default_factory=dict)

    def autocast(self):
        return autocast(self.device, self.precision)


@dataclass
class Phase:
    """One optimiser step on ``loss_fn`` every ``interval`` global steps.

    ``modules`` are the (possibly DDP-wrapped) modules whose parameters this phase
    optimises: they are set to train mode, clipped and checked for finite gradients.
    """

    name: str
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    modules: Sequence[nn.Module]
    interval: int = 1
    scheduler: Optional[Any] = None
    clip_grad_norm: Optional[float] = None
    runs: int = 0  # times this phase has stepped (checkpointed)

    def parameters(self) -> List[torch.nn.Parameter]:
        seen, out = set(), []
        for m in self.modules:
            for p in m.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out


class BatchStream:
    """Endless batches from a DataLoader over a :class:`ResumableDistributedSampler`;
    the sampler position advances only for batches actually consumed."""

    def __init__(self, loader: torch.utils.data.DataLoader, sampler: Any):
        self.loader = loader
        self.sampler = sampler
        self._it: Optional[Iterator] = None

    def next(self) -> Any:
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                continue
            self.sampler.advance(1)
            if self.sampler.consumed == 0:  # epoch rolled over: the iterator is exhausted
                self._it = None
            return batch

    def state_dict(self) -> Dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.sampler.load_state_dict(state)
        self._it = None

    def close(self) -> None:
        """Stop the loader's worker processes (they persist across epochs; see
        :func:`ranface.data.loader.build_train_loader`). A later :meth:`next` starts new ones."""
        self._it = None
        it = getattr(self.loader, "_iterator", None)
        self.loader._iterator = None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


class RepeatStream:
    """The same batch forever (benchmarks and unit tests of a phase)."""

    def __init__(self, batch: Any):
        self.batch = batch

    def next(self) -> Any:
        return self.batch

    def state_dict(self) -> Dict[str, int]:
        return {}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class TrainerOptions:
    max_steps: int
    log_every: int = 10
    ckpt_every: int = 500
    val_every: int = 0
    keep_last: int = 2
    keep_best: int = 2
    max_nonfinite: int = 20
    progress: bool = True
    tensorboard: bool = True
    # hardening hooks: steps at which a loss is replaced by NaN (tests of the guard)
    inject_nonfinite: Sequence[int] = ()


class Trainer:
    """Walks the phases for ``options.max_steps`` global steps.

    ``state_modules``: every module whose state belongs in the checkpoint (plain, not
    DDP-wrapped). ``stream``: ``next()``, ``state_dict()``, ``load_state_dict()`` and
    ``close()`` (:class:`BatchStream`, :class:`RepeatStream`, the GAN's two-stream
    ``GanStream``). ``to_device``: moves a batch to the device. ``validate(step)`` returns
    metrics on rank 0 (and ``{}`` elsewhere); ``best_metric`` picks the one that ranks
    checkpoints. ``config`` is the resolved config dict stored in each checkpoint.
    """

    def __init__(self, *, run_dir: str, phases: Sequence[Phase], state_modules: Mapping[str, nn.Module],
                 stream: BatchStream, to_device: Callable[[Any], Any], device: torch.device,
                 precision: str, dist: DistInfo, options: TrainerOptions, config: Mapping[str, Any],
                 validate: Optional[Callable[[int], Dict[str, float]]] = None,
                 best_metric: Optional[str] = None,
                 on_log: Optional[Callable[[int, Dict[str, float]], None]] = None,
                 extra_state: Optional[Dict[str, Any]] = None):
        self.run_dir = run_dir
        self.phases = list(phases)
        self.state_modules = dict(state_modules)
        self.stream = stream
        self.to_device = to_device
        self.device = device
        self.precision = precision
        self.dist = dist
        self.opt = options
        self.config = dict(config)
        self.validate = validate
        self.best_metric = best_metric
        self.on_log = on_log
        self.extra_state = extra_state if extra_state is not None else {}
        self.step = 0
        self.counters: Dict[str, int] = {"nonfinite_total": 0, "nonfinite_run": 0, "skipped_samples": 0}
        # consecutive skipped updates per phase: a diverged G next to a healthy D (or a
        # NaN recognition phase next to its discriminator) must still stop the run
        self._streak: Dict[str, int] = {}
        self.last_val: Dict[str, float] = {}
        if dist.is_main:
            os.makedirs(run_dir, exist_ok=True)
        self.scalers = {p.name: make_scaler(device, precision) for p in self.phases}
        self.ckpt = CheckpointManager(os.path.join(run_dir, "checkpoints"), options.keep_last, options.keep_best)
        self.stats = StatsAccumulator()
        self.writer = MetricsWriter(run_dir, enabled=dist.is_main, tensorboard=options.tensorboard)
        self.skipped_messages: List[str] = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        return {
            "step": self.step,
            "config": self.config,
            "modules": {k: unwrap(m).state_dict() for k, m in self.state_modules.items()},
            "optimizers": {p.name: p.optimizer.state_dict() for p in self.phases},
            "schedulers": {p.name: p.scheduler.state_dict() for p in self.phases if p.scheduler is not None},
            "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
            "phase_runs": {p.name: p.runs for p in self.phases},
            "rng": capture_rng(),
            "sampler": self.stream.state_dict(),
            "counters": dict(self.counters),
            "metrics": dict(self.last_val),
            "extra": {k: v.state_dict() for k, v in self.extra_state.items()},
            "world_size": self.dist.world_size,
        }

    def load_state_dict(self, state: Mapping[str, Any], source: str) -> None:
        try:
            for k, m in self.state_modules.items():
                if k not in state["modules"]:
                    raise CheckpointError(source, f"has no state for module {k!r} "
                                          f"(it has {sorted(state['modules'])})")
                load_state_strict(unwrap(m), state["modules"][k], source, what=k)
            for p in self.phases:
                try:
                    p.optimizer.load_state_dict(state["optimizers"][p.name])
                    if p.scheduler is not None:
                        p.scheduler.load_state_dict(state["schedulers"][p.name])
                    if p.name in state.get("scalers", {}):
                        self.scalers[p.name].load_state_dict(state["scalers"][p.name])
                except (ValueError, TypeError, RuntimeError, AttributeError) as exc:
                    # e.g. parameter groups of another recipe: torch's ValueError, made one line
                    raise CheckpointError(source, f"optimizer state of phase {p.name!r} does not "
                                          f"fit this run ({exc})") from None
                p.runs = int(state["phase_runs"][p.name])
            for k, v in self.extra_state.items():
                v.load_state_dict(state["extra"][k])
            self.step = int(state["step"])
            self.counters.update({k: int(v) for k, v in state.get("counters", {}).items()})
            self.last_val = dict(state.get("metrics", {}))
            self.stream.load_state_dict(state["sampler"])
            same_world = int(state.get("world_size", 1)) == self.dist.world_size
            # RNG streams are per process; restoring rank 0's state on a different world
            # would correlate ranks, so a resize reseeds from (seed, step, rank) instead.
            if same_world:
                restore_rng(state["rng"])
            else:
                torch.manual_seed(hash((self.step, self.dist.rank)) & 0x7FFFFFFF)
        except KeyError as exc:
            raise CheckpointError(source, f"not a ranface training checkpoint (missing {exc})") from None

    def resume(self, spec: str) -> bool:
        """``spec``: '' (fresh), 'auto' (latest in this run dir, if any) or a path."""
        if not spec:
            return False
        path = self.ckpt.latest() if spec == "auto" else spec
        if path is None:
            return False
        state = load_checkpoint(path, map_location=self.device)
        check_training_checkpoint(state, path)
        self.load_state_dict(state, path)
        if self.dist.is_main:
            _truncate_metrics(self.writer.path, self.step)
        return True

    def save(self, metric: Optional[float] = None) -> None:
        state = self.state_dict()  # every rank builds it (RNG capture is cheap)
        if self.dist.is_main:
            self.ckpt.save(self.step, state, metric)
        barrier(self.dist)

    def param_digest(self) -> str:
        h = hashlib.sha1()
        for name in sorted(self.state_modules):
            # parameters only: BN running statistics are per-replica between DDP's
            # buffer broadcasts (rank 0's are the ones checkpointed)
            for k, v in sorted(unwrap(self.state_modules[name]).named_parameters()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ loop
    def _run_phase(self, phase: Phase, batch: Any, cache: Dict[str, Any]) -> Dict[str, float]:
        for m in phase.modules:
            m.train()
        ctx = StepContext(step=self.step, phase_iter=phase.runs, device=self.device,
                          precision=self.precision, cache=cache)
        phase.optimizer.zero_grad(set_to_none=True)
        loss, stats = phase.loss_fn(batch, ctx)
        if self.step in self.opt.inject_nonfinite:
            loss = loss * float("nan")
        scaler = self.scalers[phase.name]
        scaler.scale(loss).backward()
        scaler.unscale_(phase.optimizer)
        params = phase.parameters()
        max_norm = phase.clip_grad_norm if phase.clip_grad_norm else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
        bad = not (math.isfinite(float(loss.detach())) and math.isfinite(float(grad_norm)))
        bad = any_rank(bad, self.dist, self.device)  # all ranks skip together
        if bad:
            # A real NaN must not shrink the fp16 scale to zero: back off only when an
            # fp16 overflow (finite loss, inf grads) is the plausible cause. Otherwise the
            # scale is kept, but update() must still run: it clears unscale_()'s record,
            # without which the next step's unscale_() raises. Decided on all ranks alike.
            if scaler.is_enabled():
                nan_loss = any_rank(not math.isfinite(float(loss.detach())), self.dist, self.device)
                scaler.update(scaler.get_scale() if nan_loss else None)
            phase.optimizer.zero_grad(set_to_none=True)
            self.counters["nonfinite_total"] += 1
            self._streak[phase.name] = self._streak.get(phase.name, 0) + 1
            self.counters["nonfinite_run"] = max(self._streak.values())
            self.stats.add(f"{phase.name}/nonfinite", 1.0)
            return {}
        scaler.step(phase.optimizer)
        scaler.update()
        if phase.scheduler is not None:
            phase.scheduler.step()
        phase.runs += 1
        self._streak[phase.name] = 0
        self.counters["nonfinite_run"] = max(self._streak.values())
        out = {f"{phase.name}/{k}": v for k, v in stats.items()}
        out[f"{phase.name}/loss"] = loss.detach()
        out[f"{phase.name}/grad_norm"] = grad_norm.detach()
        out[f"{phase.name}/lr"] = phase.optimizer.param_groups[0]["lr"]
        return out

    def fit(self) -> Dict[str, Any]:
        bar = None
        if self.dist.is_main and self.opt.progress and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=self.opt.max_steps, initial=self.step, desc="train", dynamic_ncols=True,
                       file=sys.stderr, mininterval=1.0)
        t0, seen0, last_t, last_step = time.time(), self.step, time.time(), self.step
        try:
            while self.step < self.opt.max_steps:
                batch = self.stream.next()
                skipped = batch[-1] if isinstance(batch, (list, tuple)) and isinstance(batch[-1], list) else []
                if skipped:
                    self.counters["skipped_samples"] += len(skipped)
                    self.skipped_messages.extend(skipped[:100 - len(self.skipped_messages)])
                if isinstance(batch, (list, tuple)) and batch[0] is None:
                    continue  # every sample of this batch failed to load (skip mode)
                batch = self.to_device(batch)
                cache: Dict[str, Any] = {}
                for phase in self.phases:
                    if self.step % phase.interval == 0:
                        self.stats.add_dict(self._run_phase(phase, batch, cache))
                if self.counters["nonfinite_run"] >= self.opt.max_nonfinite:
                    worst = max(self._streak, key=lambda k: self._streak[k], default='?')
                    raise NonFiniteError(
                        f"training stopped at step {self.step}: {self.counters['nonfinite_run']} "
                        f"consecutive steps of phase {worst!r} had non-finite losses or gradients "
                        f"(each skipped); the last good checkpoint in {self.ckpt.directory} is intact")
                self.step += 1
                if bar is not None:
                    bar.update(1)
                if self.step % self.opt.log_every == 0 or self.step == self.opt.max_steps:
                    values = self.stats.flush(self.dist, self.device)
                    now = time.time()
                    values["throughput/steps_per_s"] = (self.step - last_step) / max(now - last_t, 1e-9)
                    last_t, last_step = now, self.step
                    self.writer.scalars(self.step, values)
                    if self.on_log is not None:
                        self.on_log(self.step, values)
                    if bar is not None:
                        short = {k.split("/")[-1]: v for k, v in values.items() if k.endswith("/loss")}
                        bar.set_postfix({k: f"{v:.3f}" for k, v in short.items()})
                metric = None
                if self.validate is not None and self.opt.val_every and (
                        self.step % self.opt.val_every == 0 or self.step == self.opt.max_steps):
                    metric = self._validate()
                # a validated step is always checkpointed so best-k can rank it
                if (metric is not None or self.step % self.opt.ckpt_every == 0
                        or self.step == self.opt.max_steps):
                    self.save(metric)
        except RuntimeError as exc:
            if self.dist.enabled and _is_comm_failure(exc):
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
                raise DistributedError(
                    f"rank {self.dist.rank} of {self.dist.world_size} stopped at step {self.step}: a "
                    f"peer process died or hung (collective failed or timed out after "
                    f"run.dist_timeout_s): {first}; resume from {self.ckpt.directory}") from None
            raise
        finally:
            if bar is not None:
                bar.close()
            self.writer.close()
            self.stream.close()  # loader workers stop with the run
        elapsed = time.time() - t0
        # DDP must keep replicas identical; record each rank's parameter digest to prove it
        digests = all_gather_objects(self.param_digest(), self.dist)
        return {"steps": self.step, "param_digests": digests, "elapsed_s": elapsed,
                "steps_per_s": (self.step - seen0) / max(elapsed, 1e-9), "counters": dict(self.counters),
                "validation": dict(self.last_val), "skipped_examples": list(self.skipped_messages[:10])}

    def _validate(self) -> Optional[float]:
        values = self.validate(self.step) if self.dist.is_main else {}
        barrier(self.dist)
        if self.dist.is_main and values:
            self.last_val = dict(values)
            self.writer.scalars(self.step, values, kind="val")
        if self.best_metric and values.get(self.best_metric) is not None:
            return float(values[self.best_metric])
        return None


def _is_comm_failure(exc: BaseException) -> bool:
    """A collective's failure (gloo raises plain RuntimeErrors, NCCL DistBackendError)."""
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    text = str(exc)
    # "Application timeout caused pair closure": gloo's words when a collective inside DDP's
    # forward (its buffer broadcast) outlives the timeout
    return any(s in text for s in ("gloo", "NCCL", "Connection reset", "Connection closed",
                                   "Timed out", "timed out", "pair closure"))


def _truncate_metrics(path: str, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone)."""
    import json

    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as fh:
        lines = [ln for ln in fh if ln.strip()]
    keep = []
    for ln in lines:
        try:
            if int(json.loads(ln).get("step", 0)) <= step:
                keep.append(ln)
        except ValueError:
            continue
    from ..io_utils import atomic_write_text

    atomic_write_text(path, "".join(keep))
