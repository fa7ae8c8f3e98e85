"""Embedding lists of images for the evaluation protocols.

Every protocol turns a list of image files (or decoded arrays) into flip-sum,
L2-normalised embeddings through :class:`ranface.inference.Embedder`, in batches, with
the same error policy: an unreadable image (or one the alignment hook rejects) either
stops the run with an error naming it, or, with ``on_error='skip'``, is counted and its
row is left NaN so that nothing computed from it can pass unnoticed.

Images of any size are resized one by one to the model's input size before batching
(bicubic, antialiased when shrinking, :func:`ranface.degrade.upsample`): TinyFace,
SCface and SurvFace crops come in many sizes. A protocol can also ask for several
*variants* of each image (full resolution and down-up probes of each size) so that every
image is read and decoded only once.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import (Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Sequence,
                    Tuple, Union)

import numpy as np

from ..data.image import is_image_file, read_image
from ..errors import DataError, RanfaceError

__all__ = ["SkipLog", "Features", "embed_images", "embed_arrays", "resize_to", "list_image_files",
           "default_workers"]


# prepare(image, index) -> aligned image, or None to skip it (reason via SkipLog).
Prepare = Callable[[np.ndarray, int], Optional[np.ndarray]]
Variant = Callable[[np.ndarray], np.ndarray]


@dataclass
class SkipLog:
    """Counts what was skipped under ``on_error='skip'``; raises under 'raise'."""

    on_error: str = "raise"
    count: int = 0
    examples: List[str] = field(default_factory=list)
    max_examples: int = 10

    def handle(self, err: RanfaceError) -> None:
        """Re-raise ``err`` or record it as one skipped item."""
        if self.on_error != "skip":
            raise err
        self.record(str(err))

    def record(self, message: str, n: int = 1) -> None:
        self.count += n
        if len(self.examples) < self.max_examples:
            self.examples.append(message)


@dataclass
class Features:
    """Embeddings of N items: ``feats[variant]`` is (N, D) float32, NaN rows where the
    item failed (``ok`` False) or the variant was not wanted for it."""

    feats: Dict[str, np.ndarray]
    ok: np.ndarray

    def __getitem__(self, variant: str) -> np.ndarray:
        return self.feats[variant]

    @property
    def n_ok(self) -> int:
        return int(self.ok.sum())

    @property
    def n_embedded(self) -> int:
        """Forward passes' worth of faces: embedded rows over all variants."""
        return int(sum(np.isfinite(f[:, 0]).sum() for f in self.feats.values() if f.size))


def list_image_files(folder: str, recursive: bool = False,
                     not_regular: Optional[List[str]] = None) -> List[str]:
    """Image files under ``folder`` as sorted paths relative to it. Names with an image
    extension that are not regular files (a FIFO would block a reader forever, a device
    never end) are left out and, when ``not_regular`` is given, appended to it."""
    out: List[str] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            out.extend(os.path.relpath(os.path.join(dirpath, f), folder)
                       for f in sorted(filenames) if is_image_file(f))
    else:
        out = sorted(f for f in os.listdir(folder) if is_image_file(f)
                     and not os.path.isdir(os.path.join(folder, f)))
    regular = [f for f in out if os.path.isfile(os.path.join(folder, f))]
    if not_regular is not None and len(regular) != len(out):
        not_regular.extend(f for f in out if f not in set(regular))
    return regular


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(limit: int = 8) -> int:
    """Decoding threads for evaluation: one per core this process may use (at most
    ``limit``)."""
    return max(1, min(limit, _usable_cores()))


def resize_to(arr: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 HxWx3 -> ``size`` = (H, W); bicubic, antialiased when shrinking."""
    if tuple(arr.shape[:2]) == tuple(size):
        return arr
    from ..degrade import upsample

    return upsample(arr, (int(size[0]), int(size[1])), kernel="bicubic")


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False)


def embed_images(embedder, paths: Sequence[str], *, color: Optional[str] = None,
                 skips: Optional[SkipLog] = None, prepare: Optional[Prepare] = None,
                 variants: Optional[Mapping[str, Optional[Variant]]] = None,
                 wanted: Optional[Mapping[str, np.ndarray]] = None,
                 sources: Optional[Sequence[str]] = None, workers: int = 0,
                 progress: bool = False, desc: str = "embed") -> Features:
    """Read, (align,) degrade, resize and embed each image of ``paths`` once.

    ``prepare(image, i)`` is the alignment hook: it returns the face to embed (any
    size) or raises :class:`DataError` to reject it (a DataError without a path gets
    the item's). ``variants`` maps a name to an operator applied to that face at its
    own (aligned) size, before the resize to the model's input (None = as is; default
    ``{"": None}``); ``wanted[name]`` (bool, N) restricts a variant to some items.
    ``sources[i]`` names item i in error messages (default: its path). Reading errors
    go to ``skips``. ``workers`` > 0 decodes, aligns, degrades and resizes in that many
    threads (PIL and torch release the GIL), at most a few batches ahead, results in
    order; on a CPU the forward passes of the batches run in the same threads, each on
    its share of the cores (data parallel over batches), on an accelerator in this thread.
    < 0: one per usable core (:func:`default_workers`); 0: everything in this thread.
    The batches are the same whatever ``workers`` (tests/test_pairs.py).
    """
    workers = default_workers() if workers < 0 else workers
    skips = skips if skips is not None else SkipLog()
    color = color or embedder.color
    variants = dict(variants) if variants is not None else {"": None}
    n = len(paths)
    want = {v: (np.ones(n, bool) if wanted is None or v not in wanted
                else np.asarray(wanted[v], bool)) for v in variants}
    todo = [i for i in range(n) if any(want[v][i] for v in variants)]
    feats: Dict[str, Optional[np.ndarray]] = {v: None for v in variants}
    ok = np.zeros(n, bool)
    pending: Dict[str, List[Any]] = {v: [] for v in variants}  # prepared faces (tensors)
    rows: Dict[str, List[int]] = {v: [] for v in variants}
    size = embedder.input_size

    def load(i: int) -> Union[Dict[str, np.ndarray], DataError]:
        path = paths[i]
        try:
            img = read_image(path, color=color)
            if prepare is not None:
                img = prepare(img, i)
        except DataError as exc:
            if exc.path is None or (sources is not None and exc.path == os.fspath(path)):
                exc = DataError(sources[i] if sources is not None else path, exc.problem,
                                exc.where)
            return exc
        # resized and normalised here, in the worker: the forward-pass thread only stacks
        return {v: embedder.prepare(resize_to(img if op is None else op(img), size), color)
                for v, op in variants.items() if want[v][i]}

    def store(v: str, at: List[int], f: np.ndarray) -> None:
        if feats[v] is None:
            feats[v] = np.full((n, f.shape[1]), np.nan, np.float32)
        feats[v][at] = f

    # Forward passes submitted to the pool and not yet stored, oldest first.
    running: Deque[Tuple[str, List[int], "Future[np.ndarray]"]] = deque()

    def flush(v: str) -> None:
        if not pending[v]:
            return
        batch, at = list(pending[v]), list(rows[v])
        pending[v].clear()
        rows[v].clear()
        if not forward_in_pool:
            store(v, at, embedder.embed_prepared(batch))
            return
        running.append((v, at, pool.submit(embedder.embed_prepared, batch)))
        while len(running) > workers:  # bounded: at most one batch in flight per thread
            store(*_done(running.popleft()))

    bar = _progress(len(todo), desc, progress)
    # On a CPU, one forward pass per thread on its share of the cores beats one pass on
    # every core beside the decoding threads: the passes' OpenMP teams no longer share
    # cores with the decoding (docs/decisions.md, issue 16). An accelerator keeps one
    # stream of passes in this thread, and the workers one core each.
    forward_in_pool = workers > 0 and embedder.device.type == "cpu"
    per_worker = max(1, _usable_cores() // workers) if forward_in_pool else 1
    pool = (ThreadPoolExecutor(workers, thread_name_prefix="ranface-embed",
                               initializer=_intra_op_threads, initargs=(per_worker,))
            if workers > 0 else None)
    # Loading runs this far ahead of the forward pass (bounded memory; results in order).
    ahead = max(2 * embedder.batch_size, 4 * max(workers, 1))
    try:
        loaded = (_ahead(pool, load, todo, ahead) if pool is not None
                  else ((i, load(i)) for i in todo))
        for i, got in loaded:
            if bar is not None:
                bar.update(1)
            if isinstance(got, DataError):
                skips.handle(got)
                continue
            ok[i] = True
            for v, face in got.items():
                pending[v].append(face)
                rows[v].append(i)
                if len(pending[v]) >= embedder.batch_size:
                    flush(v)
        for v in variants:
            flush(v)
        while running:
            store(*_done(running.popleft()))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    dim = next((f.shape[1] for f in feats.values() if f is not None), 0)
    out = {v: (f if f is not None else np.full((n, dim), np.nan, np.float32))
           for v, f in feats.items()}
    return Features(out, ok)


def _done(job: Tuple[str, List[int], "Future[np.ndarray]"]) -> Tuple[str, List[int], np.ndarray]:
    v, at, fut = job
    return v, at, fut.result()


def _intra_op_threads(n: int) -> None:
    """Worker threads run their torch ops (degrading, resizing, forward passes on a CPU) on
    ``n`` threads each, their share of the cores (1 with one worker per core): OpenMP's
    thread count is per calling thread, so a worker never starts a team of threads on
    cores the other workers use."""
    import torch

    torch.set_num_threads(n)


def _ahead(pool: ThreadPoolExecutor, fn: Callable[[int], Any], items: Sequence[int],
           ahead: int) -> Iterator[Tuple[int, Any]]:
    """(item, fn(item)) in the order of ``items``, with at most ``ahead`` calls submitted
    to ``pool`` and not yet consumed: the workers decode while the caller's forward pass
    runs, and memory stays bounded however long the list."""
    queue: Deque[Tuple[int, "Future[Any]"]] = deque()
    it = iter(items)
    for i in it:
        queue.append((i, pool.submit(fn, i)))
        if len(queue) >= ahead:
            break
    while queue:
        i, fut = queue.popleft()
        nxt = next(it, None)
        if nxt is not None:
            queue.append((nxt, pool.submit(fn, nxt)))
        yield i, fut.result()


def embed_arrays(embedder, arrays: Sequence[np.ndarray], color: Optional[str] = None,
                 variant: Optional[Variant] = None) -> np.ndarray:
    """Embed decoded arrays of any sizes (resized one by one, then batched)."""
    color = color or embedder.color
    out = []
    bs = embedder.batch_size
    for s in range(0, len(arrays), bs):
        batch = [resize_to(a if variant is None else variant(a), embedder.input_size)
                 for a in arrays[s:s + bs]]
        out.append(embedder.embed_arrays(batch, color))
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
