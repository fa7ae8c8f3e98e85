"""Training loaders: dataset opening, deterministic per-sample augmentation, and a
DataLoader over :class:`~ranface.data.samplers.ResumableDistributedSampler`.

Augmentation randomness is a pure function of (seed, epoch, index), so the batches of a
run are identical whatever the number of DataLoader workers, and a resumed run sees the
same samples with the same flips as an uninterrupted one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from .samplers import ResumableDistributedSampler, sample_generator


def detect_format(path: str) -> str:
    """'rec' for a ``.rec`` file or a folder holding ``train.rec``; 'folder' otherwise."""
    if path.endswith(".rec"):
        return "rec"
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "train.rec")):
        return "rec"
    return "folder"


def open_dataset(path: str, fmt: str = "auto", color: str = "rgb",
                 expect_size: Optional[Tuple[int, int]] = None, on_error: str = "raise") -> Dataset:
    """Open an aligned-face training set (image folder or insightface RecordIO)."""
    from .datasets import ImageFolderDataset, RecordDataset

    if not path:
        raise ConfigError("data.train is empty: give an image folder or a train.rec folder "
                          "(e.g. --set data.train=/data/faces_webface_112x112)")
    if not os.path.exists(path):
        raise DataError(path, "training data not found")
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "rec":
        return RecordDataset(path, color=color, expect_size=expect_size, on_error=on_error)
    if fmt == "folder":
        return ImageFolderDataset(path, color=color, expect_size=expect_size, on_error=on_error)
    raise ConfigError(f"data.format must be auto, folder or rec, got {fmt!r}")


@dataclass
class FaceTransform:
    """uint8 HxWx3 -> normalised float tensor, with a random horizontal flip and an
    optional extra augmentation ``extra(tensor_0_1, torch.Generator) -> tensor_0_1``
    applied before normalisation (the LR stage's random Gaussian blur)."""

    mean: Sequence[float]
    std: Sequence[float]
    hflip: bool = True
    extra: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None
    size: Optional[Tuple[int, int]] = None  # resize (bilinear, antialiased) to the model input

    def __call__(self, arr: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()
        if self.hflip and rng.random() < 0.5:
            t = t.flip(-1)
        if self.extra is not None:
            g = torch.Generator()
            g.manual_seed(int(rng.integers(0, 2**62)))
            t = self.extra((t / 255.0).unsqueeze(0), g).squeeze(0) * 255.0
        if self.size is not None and tuple(t.shape[-2:]) != tuple(self.size):
            t = torch.nn.functional.interpolate(t.unsqueeze(0), size=tuple(self.size), mode="bilinear",
                                                align_corners=False, antialias=True).squeeze(0).clamp(0, 255)
        m = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (t - m) / s


class AugmentedView(Dataset):
    """Indexed by the sampler's ``(epoch, index)``; returns ``(tensor, label)`` or the base
    dataset's ``Skipped`` marker. With ``pair`` set, also returns the LR twin of the same
    index: ``(hr_tensor, lr_tensor, label)`` (the same flip is applied to both).

    ``twin_prob`` (MR stage, ``adapt.twin_prob``): with this probability per sample the
    first tensor is the LR twin as well, so the top stream also sees synthesized LR faces;
    the coin is a pure function of (seed, epoch, index) like every other augmentation.
    """

    def __init__(self, base: Dataset, transform: FaceTransform, seed: int,
                 pair: Optional[Dataset] = None, pair_transform: Optional[FaceTransform] = None,
                 twin_prob: float = 0.0):
        if not 0.0 <= twin_prob <= 1.0:
            raise ValueError(f"twin_prob {twin_prob} is not in [0, 1]")
        self.base = base
        self.transform = transform
        self.seed = seed
        self.pair = pair
        self.pair_transform = pair_transform or transform
        self.twin_prob = float(twin_prob)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, int]):
        from .datasets import Skipped

        epoch, index = key
        item = self.base[index]
        if isinstance(item, Skipped):
            return item
        arr, label = item
        if self.pair is None:
            return self.transform(arr, sample_generator(self.seed, epoch, index)), label
        twin = self.pair[index]
        if isinstance(twin, Skipped):
            return twin
        lr_arr, _ = twin
        hr = self.transform(arr, sample_generator(self.seed, epoch, index))
        lr = self.pair_transform(lr_arr, sample_generator(self.seed, epoch, index))
        if self.twin_prob > 0 and sample_generator(self.seed, epoch, index, stream=1).random() < self.twin_prob:
            hr = lr
        return hr, lr, label


def _worker_init(_: int) -> None:
    # one intra-op thread per worker: workers x threads must not oversubscribe the cores
    torch.set_num_threads(1)


def build_train_loader(view: AugmentedView, batch_size: int, num_workers: int, world_size: int,
                       rank: int, seed: int, drop_last: bool = True,
                       pin_memory: bool = False, source: Optional[str] = None
                       ) -> Tuple[DataLoader, ResumableDistributedSampler]:
    from .datasets import collate_skipping

    check_batch(len(view), batch_size, drop_last, source, world_size)
    sampler = ResumableDistributedSampler(len(view), batch_size, world_size, rank, seed=seed,
                                          shuffle=True, drop_last=drop_last)
    loader = DataLoader(view, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate_skipping, pin_memory=pin_memory,
                        worker_init_fn=_worker_init if num_workers > 0 else None,
                        # workers live for the whole run: re-forked at every epoch of a small
                        # set, they made a 300-step GAN run take 1.26-1.40x as long, the
                        # parent copying its heap page by page after each fork
                        # (docs/performance.md, issue 16 eleventh round)
                        persistent_workers=num_workers > 0, drop_last=False,
                        # own generator: creating an iterator must not draw from the global
                        # torch RNG (that would make a resumed run diverge from a straight one)
                        generator=torch.Generator().manual_seed(seed),
                        prefetch_factor=2 if num_workers > 0 else None)
    return loader, sampler


def check_batch(n: int, batch_size: int, drop_last: bool, source: Optional[str], world_size: int = 1) -> None:
    """With ``drop_last`` a dataset smaller than one (global) batch yields no step at all."""
    if drop_last and n < batch_size * world_size:
        raise DataError(source or "training data", f"{n} faces, fewer than one batch "
                        f"({batch_size} per process x {world_size}); lower data.batch_size or set "
                        "data.drop_last=false")


def check_identities(labels: List[int], source: str) -> None:
    """A margin-softmax loss over one class is 0 for every sample: nothing is learned."""
    if len(set(labels)) < 2:
        raise DataError(source, f"{len(set(labels))} identity: training a classifier needs at "
                        "least 2 (the loss is 0 and nothing is learned)")


def dataset_labels(ds: Dataset) -> List[int]:
    labels = getattr(ds, "labels", None)
    if labels is None:
        raise TypeError(f"{type(ds).__name__} does not expose .labels")
    return [int(x) for x in labels]
