"""MTCNN face detector (Zhang et al., 2016) with the pretrained P/R/O-Net weights.

The weights are the ones shipped in the ``facenet-pytorch==2.6.0`` wheel (converted
from the original Caffe models); install them with
``pip install --no-deps facenet-pytorch==2.6.0``. The package itself is never imported
(its ``__init__`` needs torchvision): only its ``data/{pnet,rnet,onet}.pt`` state dicts
are read, with ``torch.load(weights_only=True)``, into the modules below.

Conventions of those weights (checked against the converted files):

* input is RGB, NCHW, not transposed (the conversion already swapped the kernels'
  spatial axes that the Caffe/MATLAB original had transposed), scaled as
  ``(x - 127.5) * 0.0078125``;
* the dense layers of R/O-Net expect the last conv map flattened in (W, H, C) order,
  which is the original's transposed layout, hence the ``permute(0, 3, 2, 1)``;
* bounding-box regression is (dx1, dy1, dx2, dy2) in units of the box size; O-Net's
  landmarks are (x1..x5, y1..y5) relative to its 48x48 crop, ordered left eye, right
  eye, nose, left mouth corner, right mouth corner (left/right as seen in the image).

Coordinates returned by :meth:`MTCNN.detect` are in original-image pixels:

* landmarks: pixel-centre convention, pixel (row i, col j) has its centre at
  (x=j, y=i) — the convention of OpenCV/insightface templates and of :mod:`.transform`;
* boxes: (x1, y1, x2, y2) as slice bounds, so ``img[y1:y2, x1:x2]`` (after rounding)
  is the box and ``x2 - x1`` its width.

Inside the cascade the boxes follow the original's 1-based inclusive integer
convention so that the trained regressors see the same crops as in training.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from .nms import nms

WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
INSTALL_HINT = "install them with `pip install --no-deps facenet-pytorch==2.6.0` " \
               "or pass weights_dir"
PAD_MODES = ("constant", "replicate")
# Crops go through R/O-Net in chunks of this many: it bounds memory on crowded photos,
# and the activations of a chunk stay in cache (one core, 3,000 crops: R-Net 0.30 s in
# chunks of 128 vs 0.54 s of 512, O-Net 1.55 s of 64 vs 3.75 s of 512). The chunk can
# change the float bits (oneDNN picks its kernel by batch: R-Net in 256 differs from 128
# on an AVX-512 EPYC), so it is fixed, not tuned per machine.
_CHUNK = {"RNet": 128, "ONet": 64}


def _max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``nn.MaxPool2d(2, 2, ceil_mode=True)``: the maximum of row pairs, then of column
    pairs (an odd last row or column is its own window). A maximum is exact, so these
    are torch's values; 3-4x faster than torch's kernel on one core for P-Net's
    stripes (which also computes argmax indices)."""
    h, w = x.shape[-2:]
    r = torch.maximum(x[:, :, 0:h - 1:2], x[:, :, 1:h:2])
    if h % 2:
        r = torch.cat([r, x[:, :, h - 1:]], 2)
    out = torch.maximum(r[..., 0:w - 1:2], r[..., 1:w:2])
    if w % 2:
        out = torch.cat([out, r[..., w - 1:]], 3)
    return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
        memory_format=torch.channels_last) else out.contiguous()


class PNet(nn.Module):
    """Proposal network: fully convolutional, 12x12 receptive field, stride 2; its
    2x2 max pooling is :func:`_max_pool_2x2`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / non-face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box regression

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = _max_pool_2x2(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The dense weights were trained on the transposed (W, H, C) flattening.
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output network on 48x48 crops: score, box regression and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def default_weights_dir() -> Optional[str]:
    """``facenet_pytorch/data`` of the installed wheel, found without importing it."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def load_mtcnn_nets(weights_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
                    device: Union[str, torch.device] = "cpu") -> Tuple[PNet, RNet, ONet]:
    """Build P/R/O-Net and load their weights from ``weights_dir`` (default: the wheel)."""
    folder = os.fspath(weights_dir) if weights_dir is not None else default_weights_dir()
    if folder is None:
        raise CheckpointError("facenet_pytorch/data/pnet.pt",
                              f"MTCNN weights not found; {INSTALL_HINT}")
    nets = (PNet(), RNet(), ONet())
    for net, name in zip(nets, WEIGHT_FILES):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise CheckpointError(path, f"missing MTCNN weights file; {INSTALL_HINT}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unreadable/unsafe file is reported the same way
            raise CheckpointError(path, f"cannot load MTCNN weights ({exc})") from None
        if not isinstance(state, dict):
            raise CheckpointError(path, f"expected a state dict, got {type(state).__name__}")
        ours = net.state_dict()
        missing = sorted(set(ours) - set(state))
        extra = sorted(set(state) - set(ours))
        bad = [k for k in ours if k in state and tuple(state[k].shape) != tuple(ours[k].shape)]
        if missing or extra or bad:
            detail = "; ".join(p for p in (
                f"missing keys {missing}" if missing else "",
                f"unexpected keys {extra}" if extra else "",
                "wrong shapes " + ", ".join(f"{k} {tuple(state[k].shape)} != "
                                            f"{tuple(ours[k].shape)}" for k in bad)
                if bad else "") if p)
            raise CheckpointError(path, f"does not fit {type(net).__name__}: {detail}",
                                  where=bad[0] if bad else None)
        net.load_state_dict(state)
        # NHWC runs these small-channel convs and pools 2-5x faster on CPU.
        net.to(device=device, memory_format=torch.channels_last).eval()
        for p in net.parameters():
            p.requires_grad_(False)
    return nets  # type: ignore[return-value]


@dataclass(frozen=True)
class Detections:
    """Faces of one image, sorted by descending score (see module doc for coordinates)."""

    boxes: np.ndarray      # (N, 4) float64, x1 y1 x2 y2 slice bounds
    scores: np.ndarray     # (N,) float64, O-Net face probability
    landmarks: np.ndarray  # (N, 5, 2) float64, (x, y) pixel centres

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))

    @staticmethod
    def concat(parts: Sequence["Detections"]) -> "Detections":
        if not parts:
            return Detections.empty()
        return Detections(np.concatenate([p.boxes for p in parts]),
                          np.concatenate([p.scores for p in parts]),
                          np.concatenate([p.landmarks for p in parts]))

    def take(self, idx: np.ndarray) -> "Detections":
        return Detections(self.boxes[idx], self.scores[idx], self.landmarks[idx])


def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Area averaging when shrinking, bilinear when enlarging (like OpenCV INTER_AREA)."""
    h, w = x.shape[-2:]
    if size[0] <= h and size[1] <= w:
        return F.adaptive_avg_pool2d(x, size)  # F.interpolate's "area", without its checks
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _nonzero_box(x: torch.Tensor) -> Optional[Tuple[int, int, int, int]]:
    """Rows r0..r1 and columns c0..c1 (half-open) of ``x`` (1x3xhxw, pixels >= 0) that
    hold every non-zero pixel; None if every pixel is zero."""
    nz = x[0].amax(dim=0) > 0
    rows = torch.nonzero(nz.any(dim=1)).flatten()
    if not len(rows):
        return None
    cols = torch.nonzero(nz.any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _cell_edges(n: torch.Tensor, m: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Start and end (exclusive) of each of the ``m`` cells that an area resize of ``n``
    pixels to ``m`` averages: floor(i n / m) and ceil((i + 1) n / m), torch's rule;
    ``n`` an int64 tensor of any shape, the results that shape plus (m,)."""
    i = torch.arange(m, dtype=torch.int64)
    n = n[..., None]
    return i * n // m, ((i + 1) * n + m - 1) // m


@functools.lru_cache(maxsize=4096)
def _cells(n: int, m: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`_cell_edges` of one side. Cached (callers never modify them): levels and
    crops of one size recur."""
    return _cell_edges(torch.tensor(n, dtype=torch.int64), m)


def _upsample2x(x: torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, scale 2, "bilinear", align_corners=False)`` of a 1x3xhxw tensor,
    written out: output row 2i is 0.75 x[i] + 0.25 x[i - 1] and row 2i + 1 is
    0.75 x[i] + 0.25 x[i + 1] (the edge rows repeat x's), then the same for columns.
    With pixels that are multiples of a unit u (< 2^24 u / 16) every product and sum is
    exact, so this is torch's result to the bit; 1.4-3x faster on one core (fewer
    operations per pixel than torch's general kernel)."""
    h, w = x.shape[-2:]
    q, t = x * 0.25, x * 0.75
    rows = x.new_empty((1, 3, 2 * h, w))
    torch.add(t[:, :, 1:], q[:, :, :-1], out=rows[:, :, 2::2])
    torch.add(t[:, :, :-1], q[:, :, 1:], out=rows[:, :, 1:-1:2])
    rows[:, :, 0], rows[:, :, -1] = x[:, :, 0], x[:, :, -1]
    q, t = rows * 0.25, rows * 0.75
    out = x.new_empty((1, 3, 2 * h, 2 * w))
    torch.add(t[..., 1:], q[..., :-1], out=out[..., 2::2])
    torch.add(t[..., :-1], q[..., 1:], out=out[..., 1:-1:2])
    out[..., 0], out[..., -1] = rows[..., 0], rows[..., -1]
    return out


@dataclass
class _Canvas:
    """An image that is black (zero) outside one block, kept without its black part.

    ``pixels`` (1x3xhxw float, NCHW) fills rows ``top``..``top + h`` and columns
    ``left``..``left + w`` of a ``size`` (H, W) frame. The photo padded with black by
    ``pad_ratio`` 0.5 is 2.25x the photo's pixels and its 2x copy 9x: the pyramid, the
    enlargement and the crops below read the block alone and give the values they would
    give on the whole frame. ``unit``: every pixel is a multiple of it (1 for a uint8
    photo, 1/16 for its 2x bilinear copy), None if unknown; it says when float32 sums
    of pixels are exact.
    """

    pixels: torch.Tensor
    top: int
    left: int
    size: Tuple[int, int]
    unit: Optional[float] = 1.0
    _rows: Optional[torch.Tensor] = None  # cumulative sums down the columns
    _nonzero: Optional[Tuple[int, int, int, int]] = None

    def nonzero_box(self) -> Tuple[int, int, int, int]:
        """Frame rows r0..r1 and columns c0..c1 (half-open) holding every non-zero
        pixel; empty (0, 0, 0, 0) for an all-black canvas."""
        if self._nonzero is None:
            box = _nonzero_box(self.pixels)
            self._nonzero = (0, 0, 0, 0) if box is None else (
                self.top + box[0], self.top + box[1], self.left + box[2], self.left + box[3])
        return self._nonzero

    def frame(self) -> torch.Tensor:
        """The whole frame, black part included."""
        h, w = self.pixels.shape[-2:]
        if (self.top, self.left, h, w) == (0, 0, *self.size):
            return self.pixels
        out = self.pixels.new_zeros((1, 3, *self.size))
        out[:, :, self.top:self.top + h, self.left:self.left + w] = self.pixels
        return out

    def enlarge(self, size: Tuple[int, int]) -> "_Canvas":
        """The frame resized bilinearly to ``size``; at an integer power-of-two factor
        only the block and a one-pixel black rim are resized (the rest stays zero, and
        the rim gives the block's edge pixels the same neighbours as in the frame)."""
        H, W = self.size
        k = size[0] / H
        if not (size == (H * k, W * k) and k >= 1 and math.log2(k).is_integer()):
            return _Canvas(F.interpolate(self.frame(), size=size, mode="bilinear",
                                         align_corners=False), 0, 0, size, None)
        h, w = self.pixels.shape[-2:]
        y0, x0 = max(self.top - 1, 0), max(self.left - 1, 0)
        y1, x1 = min(self.top + h + 1, H), min(self.left + w + 1, W)
        block = F.pad(self.pixels, (self.left - x0, x1 - self.left - w,
                                    self.top - y0, y1 - self.top - h))
        k = int(k)
        if k == 2 and self._exact32(16):
            up = _upsample2x(block)
        else:
            up = F.interpolate(block, size=(k * (y1 - y0), k * (x1 - x0)), mode="bilinear",
                               align_corners=False)
        # bilinear weights at 2^m x are multiples of 1 / 2^(m+1) in each axis
        unit = None if self.unit is None else self.unit / (2 * k) ** 2
        return _Canvas(up, k * y0, k * x0, size, unit)

    def column_sums(self) -> torch.Tensor:
        """(1, 3, h + 1, w), NHWC in memory: row r holds the block's column sums over
        its rows 0..r-1; float32 where those sums are exact, else float64 (made once
        per canvas). A zero row lies before and after it in memory, which
        :func:`_sum_crops` reads past the block's side edges."""
        if self._rows is None:
            px = self.pixels
            h, w = px.shape[-2:]
            dtype = torch.float32 if self._exact32(h) else torch.float64
            rows = torch.empty((1, 3, h + 3, w), dtype=dtype, device=px.device,
                               memory_format=torch.channels_last)
            rows[:, :, :2] = 0
            rows[:, :, -1] = 0
            sums = rows[:, :, 1:h + 2]
            if px.device.type != "cpu":
                sums[:, :, 1:] = torch.cumsum(px, 2, dtype=dtype)
            else:
                for r in range(h):  # row by row: vectorised along the row, unlike cumsum
                    torch.add(sums[:, :, r], px[:, :, r], out=sums[:, :, r + 1])
            self._rows = sums
        return self._rows

    def _exact32(self, pixels):
        """Whether float32 sums over up to ``pixels`` pixels are exact (an int, or an
        integer array for an array of answers when the unit is known)."""
        return self.unit is not None and pixels * 255.0 / self.unit < 2 ** 24

    def level(self, size: Tuple[int, int]) -> Tuple[torch.Tensor, int, int]:
        """Pyramid level: the frame area-resized to ``size`` (as ``_resize``), returned
        as (part, r0, c0): the level's cells that touch the canvas's non-zero box, at
        rows r0.. and columns c0.. of the level; every other cell is zero, and every
        row and column of ``part`` holds a non-zero cell (pixels are >= 0).

        A cell is the sum of its block pixels divided as torch's area resize divides
        (sum / kh / kw, float32). Rows: differences of cumulative sums down the columns
        (made once per canvas); columns: the rows' cells added up shift by shift. With
        integer pixels (or sixteenths, the 2x copy) every partial sum is exact in
        float32 while a cell holds fewer than 2^24 / 255 units, so the cells are
        torch's to the bit; coarser cells (the last levels of large photos) are added
        in float64, where torch's own running float32 sum rounds: there the two agree
        to float32 rounding, the canvas's cells within two float32 ulps of the mean.
        """
        H, W = self.size
        if size[0] > H or size[1] > W:  # an enlarging level (min_face_size < 12): rare
            lvl = _resize(self.frame(), size)
            box = _nonzero_box(lvl)
            if box is None:
                return lvl[:, :, :0, :0], 0, 0
            r0, r1, c0, c1 = box
            return lvl[:, :, r0:r1, c0:c1], r0, c0
        px = self.pixels
        h, w = px.shape[-2:]
        rs, re = _cells(H, size[0])
        cs, ce = _cells(W, size[1])
        y0, y1, x0, x1 = self.nonzero_box()
        rows = torch.nonzero((re > y0) & (rs < y1)).flatten()
        cols = torch.nonzero((ce > x0) & (cs < x1)).flatten()
        if not len(rows) or not len(cols):
            return px.new_zeros((1, 3, 0, 0)), 0, 0
        i0, i1, j0, j1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        a = (rs[i0:i1] - self.top).clamp(0, h)
        b = (re[i0:i1] - self.top).clamp(0, h)
        kh, kw = re[i0:i1] - rs[i0:i1], ce[j0:j1] - cs[j0:j1]
        exact = self._exact32(int(kh.max()) * int(kw.max()))
        table = self.column_sums().permute(0, 2, 3, 1).reshape(h + 1, 3 * w)  # a view: NHWC
        # (w, i1 - i0, 3): columns as rows, so each shift below copies whole rows; the
        # row gathers read whole rows, contiguous
        band = table.new_empty((w, len(b), 3), dtype=torch.float32 if exact else torch.float64)
        torch.sub(table.index_select(0, b).view(-1, w, 3).transpose(0, 1),
                  table.index_select(0, a).view(-1, w, 3).transpose(0, 1), out=band)
        a = (cs[j0:j1] - self.left).clamp(0, w)
        n = (ce[j0:j1] - self.left).clamp(0, w) - a
        sums = band.index_select(0, a)
        full = int(n.min())  # shifts every column takes; only the wider cells take the rest
        for t in range(1, int(n.max())):
            more = band.index_select(0, (a + t).clamp(max=w - 1))
            sums += more if t < full else more.mul_((n > t).view(-1, 1, 1))
        # laid out as (rows, cols, 3), P-Net's NHWC, then sum / kh / kw as torch divides
        # (over rows of cols x 3 values: vectorised)
        cells = sums.new_empty((i1 - i0, j1 - j0, 3), dtype=torch.float32)
        cells.copy_(sums.transpose(0, 1))  # float64 sums round to float32 here
        flat = cells.view(i1 - i0, -1)
        flat.div_(kh.float().view(-1, 1)).div_(kw.float().repeat_interleave(3).view(1, -1))
        return cells.permute(2, 0, 1)[None], i0, j0  # (1, 3, rows, cols), NHWC in memory


_MEAN, _SCALE = 127.5, 0.0078125  # MTCNN's input: (pixel - 127.5) / 128 (2^-7: exact)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - _MEAN) * _SCALE


def _square(b: np.ndarray) -> np.ndarray:
    """Grow each box to a square about its centre (the original ``rerec``)."""
    b = b.copy()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = np.maximum(w, h)
    b[:, 0] += (w - side) * 0.5
    b[:, 1] += (h - side) * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def _regress(b: np.ndarray, reg: np.ndarray, plus_one: bool = True) -> np.ndarray:
    b = b.copy()
    extra = 1.0 if plus_one else 0.0
    w = b[:, 2] - b[:, 0] + extra
    h = b[:, 3] - b[:, 1] + extra
    b[:, 0:4] += reg[:, 0:4] * np.stack([w, h, w, h], axis=1)
    return b


# Boxes per vectorised crop batch: about this many gathered (row-cell, column) values.
_SUM_BATCH = 1 << 18


def _sum_rows(canvas: _Canvas, rows: torch.Tensor, x0: torch.Tensor, width: int
              ) -> torch.Tensor:
    """(B, R, width, 3): for box b, the canvas's column sums at block rows ``rows[b]``
    (B, R; clamped to the block, so rows above it read 0 and rows below it the full
    sums), columns x0[b] .. x0[b] + width - 1. Each is one contiguous read of the NHWC
    sums; columns past the block's side (any box with width <= the block's width)
    read the neighbouring row or the zero rows around the sums, finite values that the
    caller masks."""
    h, w = canvas.pixels.shape[-2:]
    sums = canvas.column_sums()
    runs = torch.as_strided(sums, (sums.numel() // 3 + w, 3 * width), (3, 1),
                            sums.storage_offset() - 3 * w)  # a run from every pixel
    starts = rows.clamp(0, h).add_(1).mul_(w).add_(x0[:, None])
    return runs.index_select(0, starts.view(-1)).view(*rows.shape, width, 3)


def _sum_crops(canvas: _Canvas, y0: torch.Tensor, x0: torch.Tensor, ph: torch.Tensor,
               pw: torch.Tensor, size: int) -> torch.Tensor:
    """``_resize`` to size^2 of B boxes of the canvas's frame that it shrinks (ph, pw >=
    size, pw <= the block's width), at block rows ``y0`` and columns ``x0`` (int64; the
    box may reach past the block, where the frame is black), without reading their
    pixels and without grouping them by size.

    A box's row cells are differences of the canvas's column sums at its 2 x size cell
    edges (rows clamped to the block: black rows add nothing); each edge row's run of
    columns x0.. is one contiguous read of the NHWC sums (past the block's side it reads
    the neighbouring row or the zero rows around the sums). The column cells are then
    one product with the box's own 0/1 matrix, in which columns outside the block or
    the box weigh 0. The caller ensures the cells' sums are exact integers of units in
    float32 (:meth:`_Canvas._exact32`): every partial sum is then exact in any order,
    and dividing as torch does (sum / kh / kw) gives torch's bits."""
    w = canvas.pixels.shape[-1]
    (rs, re), (cs, ce) = _cell_edges(ph, size), _cell_edges(pw, size)  # (B, size) each
    n, width = len(x0), int(pw.max())
    band = _sum_rows(canvas, torch.cat([re, rs], 1) + y0[:, None], x0, width)
    band = (band[:, :size] - band[:, size:]).float()  # (B, size, width, 3) row cells
    j = torch.arange(width)
    x = x0[:, None] + j
    weight = (j[None, :, None] >= cs[:, None, :]) & (j[None, :, None] < ce[:, None, :]) \
        & ((x >= 0) & (x < w))[:, :, None]  # (B, width, size); j >= pw lies past ce
    out = torch.matmul(band.permute(0, 3, 1, 2).reshape(n, 3 * size, width), weight.float())
    out = out.view(n, 3, size, size)
    return out.div_((re - rs).float().view(-1, 1, size, 1)).div_((ce - cs).float().view(-1, 1, 1, size))


def _crops(canvas: _Canvas, boxes: np.ndarray, size: int) -> torch.Tensor:
    """Resize each 1-based inclusive integer box of the canvas's frame to size^2,
    normalised (:func:`_normalise`): R- and O-Net's input.

    Parts of a box outside the image are black (zero), as in the original MTCNN, so the
    crop keeps its aspect ratio at the border. Boxes that shrink with exact sums (almost
    all) are resized in batches from the canvas's column sums (:func:`_sum_crops`), in
    order of width so a batch pads little; the rest (enlarging boxes, or sums too large
    to be exact in float32) by torch's own kernel, boxes of one size together.
    """
    img, top, left = canvas.pixels, canvas.top, canvas.left
    h, w = img.shape[-2:]
    out = img.new_empty((len(boxes), 3, size, size))
    if not len(boxes):
        return out
    b = boxes.astype(np.int64)
    bx0, by0 = b[:, 0] - 1 - left, b[:, 1] - 1 - top  # the box in block coordinates
    bx1, by1 = b[:, 2] - left, b[:, 3] - top
    seen = (np.minimum(bx1, w) > np.maximum(bx0, 0)) & (np.minimum(by1, h) > np.maximum(by0, 0))
    ph, pw = by1 - by0, bx1 - bx0
    if not seen.all():  # wholly black boxes: the nets reject them
        out.index_fill_(0, torch.from_numpy(np.flatnonzero(~seen)), 0)
    # the largest cell of an n-pixel side cut in `size` cells spans ceil(n / size) + 1
    # pixels at most; exact when that many pixels' sums stay below 2^24 units
    summed = seen & (ph >= size) & (pw >= size) & (pw <= w) \
        & canvas._exact32((-(-ph // size) + 1) * (-(-pw // size) + 1))  # False: unit unknown
    idx = np.flatnonzero(summed)
    if len(idx):
        idx = idx[np.argsort(pw[idx], kind="stable")]
        order = torch.from_numpy(idx)
        y0, x0 = torch.from_numpy(by0[idx]), torch.from_numpy(bx0[idx])
        hh, ww = torch.from_numpy(ph[idx]), torch.from_numpy(pw[idx])
        # widths ascend, so a batch is as wide as its last box: n boxes from `start` on
        # gather n x 2 size x 3 x (the n-th box's width) values
        width = pw[idx] * (6 * size)
        start = 0
        while start < len(idx):
            need = np.arange(1, len(idx) - start + 1) * width[start:]  # ascending
            n = int(np.searchsorted(need, _SUM_BATCH, side="right"))
            stop = start + max(1, n)
            out.index_copy_(0, order[start:stop], _sum_crops(
                canvas, y0[start:stop], x0[start:stop], hh[start:stop], ww[start:stop], size))
            start = stop
    idx = np.flatnonzero(seen & ~summed)
    order = idx[np.lexsort((pw[idx], ph[idx]))]
    edges = np.flatnonzero(np.diff(ph[order]) | np.diff(pw[order])) + 1
    src = img[0]
    rows = dict(zip(idx.tolist(), np.stack([by0, by1, bx0, bx1], 1)[idx].tolist()))  # ints
    for group in np.split(order, edges) if len(order) else []:
        gh, gw = int(ph[group[0]]), int(pw[group[0]])
        batch = img.new_zeros((len(group), 3, gh, gw))
        for k, i in enumerate(group.tolist()):  # black outside the block
            y0, y1, x0, x1 = rows[i]
            sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
            batch[k, :, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = src[:, sy0:sy1, sx0:sx1]
        out.index_copy_(0, torch.from_numpy(group), _resize(batch, (size, size)))
    return out.sub_(_MEAN).mul_(_SCALE)  # _normalise, in place


def _pnet_stripes(pnet: PNet, x: torch.Tensor, cells: int = 36_000
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """P-Net over a level in horizontal stripes of about ``cells`` output cells, so
    that each stripe's activations stay in cache (one core: 0.39 s instead of 0.88 s
    for a 1382x2460 level). An output row r sees input rows 2r..2r+11, so a stripe of
    output rows r0..r1 reads input rows 2r0..2r1+9; the last stripe runs to the end, as
    ceil-mode pooling does there. Levels narrower than 512 px run in one pass: they fit
    the cache, and oneDNN's kernels for thin stripes round differently (~1e-7); the
    stripes of wider levels gave one pass's bits on every level measured."""
    H, W = x.shape[-2:]
    rows = max(8, cells // max(1, W // 2))
    if W < 512 or H <= 4 * rows + 10:  # narrow, or one or two stripes: no gain
        return pnet(x)
    regs, probs = [], []
    r = 0
    while 2 * (r + rows) + 10 < H:
        reg, prob = pnet(x[:, :, 2 * r:2 * (r + rows) + 10])
        regs.append(reg)
        probs.append(prob)
        r += rows
    reg, prob = pnet(x[:, :, 2 * r:])
    return torch.cat(regs + [reg], 2), torch.cat(probs + [prob], 2)


def _batched(net: nn.Module, x: torch.Tensor) -> Tuple[np.ndarray, ...]:
    x = x.contiguous(memory_format=torch.channels_last)
    n = _CHUNK[type(net).__name__]
    parts = [net(x[i:i + n]) for i in range(0, len(x), n)]
    return tuple(torch.cat(p, 0).double().cpu().numpy() for p in zip(*parts))


class MTCNN:
    """The three-stage MTCNN cascade on one HxWx3 uint8 RGB image at a time.

    ``pad_ratio``: before detection, grow the image by ``pad_ratio`` times its size,
    half on each side (0.5: a 250x250 photo becomes 375x375), filled per ``pad_mode``:
    'constant' (black, the value the cascade itself uses outside the image) or
    'replicate'. This lets P-Net find faces that fill the frame (tight crops); results
    are mapped back to the unpadded image. The landmark bias on tight crops noted in the
    data README comes mostly from clipping R/O-Net crops at the image border; this
    cascade pads them with black as the original MTCNN does, so padding matters less.
    ``upscales``: also run the detector on the image enlarged by each factor (bilinear)
    and merge all detections with NMS, to find faces smaller than ``min_face_size``;
    ``merge_threshold``/``merge_mode`` set that final NMS. With ``upscale_new_only`` an
    enlarged copy runs only the pyramid levels finer than those already searched (by
    more than half a pyramid step): at 2x, the faces of 10-20 px for ``min_face_size``
    20. Its coarser levels repeat the 1x search at nearly the same scales: 1.5x the
    photos/s of the default on the 32 crowd photos, but 2% fewer faces (28 of 1,663:
    those the 1x copy misses and the 2x copy's coarse levels find;
    benchmarks/mtcnn_crowd.py). Off by default: the same faces as before.

    Runs with torch's intra-op threads; the tensors are small, so one thread per process
    (and several processes) is faster than several threads on a loaded machine.
    """

    def __init__(self, weights_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
                 min_face_size: float = 20.0, factor: float = 0.709,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), pad_ratio: float = 0.0,
                 pad_mode: str = "constant", upscales: Sequence[float] = (1,),
                 merge_threshold: float = 0.7, merge_mode: str = "min",
                 device: Union[str, torch.device] = "cpu", upscale_new_only: bool = False) -> None:
        if min_face_size < 12 / 4:
            raise ConfigError(f"min_face_size must be >= 3 pixels, got {min_face_size}")
        if not 0.1 < factor < 1:
            raise ConfigError(f"pyramid factor must lie in (0.1, 1), got {factor}")
        if len(thresholds) != 3 or not all(0 <= t <= 1 for t in thresholds):
            raise ConfigError(f"thresholds must be three probabilities, got {thresholds}")
        if not pad_ratio >= 0:
            raise ConfigError(f"pad_ratio must be >= 0, got {pad_ratio}")
        if pad_mode not in PAD_MODES:
            raise ConfigError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        if not upscales or any(not u > 0 for u in upscales):
            raise ConfigError(f"upscales must be positive factors, got {upscales}")
        if merge_mode not in ("union", "min"):
            raise ConfigError(f"merge_mode must be 'union' or 'min', got {merge_mode!r}")
        self.min_face_size = float(min_face_size)
        self.factor = float(factor)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.pad_ratio = float(pad_ratio)
        self.pad_mode = pad_mode
        self.upscales = tuple(float(u) for u in upscales)
        self.merge_threshold = float(merge_threshold)
        self.merge_mode = merge_mode
        self.upscale_new_only = bool(upscale_new_only)
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = load_mtcnn_nets(weights_dir, self.device)
        with torch.inference_mode():  # P-Net's score of an all-black window
            black = _normalise(torch.zeros((1, 3, 12, 12), device=self.device))
            self._zero_prob = float(self.pnet(black.contiguous(memory_format=torch.channels_last))[1][0, 1].max())

    # -- public ----------------------------------------------------------------------
    @torch.inference_mode()
    def detect(self, img: np.ndarray) -> Detections:
        """Detect the faces of an HxWx3 (or HxW grey) uint8 RGB image."""
        arr = _check_image(img)
        H, W = arr.shape[:2]
        t = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)
        t = t.permute(2, 0, 1)[None].float().contiguous()
        pad_y, pad_x = round(self.pad_ratio * H / 2), round(self.pad_ratio * W / 2)
        Hp, Wp = H + 2 * pad_y, W + 2 * pad_x
        if self.pad_mode == "constant":  # the black margin is never materialised
            canvas = _Canvas(t, pad_y, pad_x, (Hp, Wp))
        else:
            canvas = _Canvas(F.pad(t, (pad_x, pad_x, pad_y, pad_y), mode=self.pad_mode),
                             0, 0, (Hp, Wp))
        found = []
        covered = 0.0  # finest scale (relative to the photo) searched so far
        order = sorted(self.upscales) if self.upscale_new_only else self.upscales
        for k in order:
            size = (max(1, round(Hp * k)), max(1, round(Wp * k)))
            scales = self._scales(*size)
            if self.upscale_new_only:
                scales = [s for s in scales if k * s > covered / math.sqrt(self.factor)]
                if not scales:
                    continue
                covered = max(covered, k * scales[0])
            det = self._cascade(canvas if size == (Hp, Wp) else canvas.enlarge(size), scales)
            if len(det):
                ry, rx = size[0] / Hp, size[1] / Wp
                boxes = det.boxes / np.array([rx, ry, rx, ry])  # edges scale about 0
                lms = (det.landmarks + 0.5) / np.array([rx, ry]) - 0.5  # centres don't
                found.append(Detections(boxes, det.scores, lms))
        if not found:
            return Detections.empty()
        det = Detections.concat(found)
        if len(found) > 1:
            det = det.take(nms(det.boxes, det.scores, self.merge_threshold,
                               self.merge_mode))
        else:
            det = det.take(np.argsort(-det.scores, kind="stable"))
        shift = np.array([pad_x, pad_y], dtype=np.float64)
        return Detections(det.boxes - np.tile(shift, 2), det.scores, det.landmarks - shift)

    __call__ = detect

    # -- the cascade -----------------------------------------------------------------
    def _scales(self, h: int, w: int) -> list:
        m = 12.0 / self.min_face_size
        side = min(h, w) * m
        scales = []
        while side >= 12:
            scales.append(m * self.factor ** len(scales))
            side *= self.factor
        return scales

    def _pnet_level(self, part: torch.Tensor, t1: float, origin: Tuple[int, int] = (0, 0),
                    size: Optional[Tuple[int, int]] = None, tight: bool = False
                    ) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """P-Net on one pyramid level: (rows, cols, face probabilities, box regressions)
        of the output cells scoring at least ``t1``, or None.

        ``part`` holds the level's rows and columns from ``origin`` on; the level is
        ``size`` (default: ``part`` is the whole level) and zero outside ``part``;
        ``tight``: every row and column of ``part`` holds a non-zero pixel (as
        :meth:`_Canvas.level` returns it), so its box need not be searched for.
        Runs only over the level's bounding box of non-zero pixels plus one 12-px window
        (cropped at an even offset, P-Net's stride): a window of zeros always scores
        ``self._zero_prob`` (0.0016 with the shipped weights), below ``t1``, so the cells
        left out could not pass. The cells kept score as on the whole level (up to the
        float rounding of the convolutions, ~1e-6); it skips the black margin that
        ``pad_ratio`` adds (0.5: 56% of the pixels) and any black border of the photo.
        """
        H, W = size if size is not None else part.shape[-2:]
        pr, pc = origin
        ph, pw = part.shape[-2:]
        if t1 <= self._zero_prob:
            r0, c0, r1, c1 = 0, 0, H, W
        else:
            box = ((0, ph, 0, pw) if ph and pw else None) if tight else _nonzero_box(part)
            if box is None:
                return None
            r0 = max(0, pr + box[0] - 11) // 2 * 2
            c0 = max(0, pc + box[2] - 11) // 2 * 2
            r1 = min(H, pr + box[1] + 12)
            c1 = min(W, pc + box[3] + 12)
        # P-Net's input, NHWC for the convolutions: _normalise of the zero-padded part,
        # as (x - _MEAN) then the exact scaling by _SCALE over the whole contiguous input
        x = torch.empty((1, 3, r1 - r0, c1 - c0), device=part.device,
                        memory_format=torch.channels_last).fill_(-_MEAN)
        a0, a1 = max(r0, pr), min(r1, pr + ph)
        b0, b1 = max(c0, pc), min(c1, pc + pw)
        if a1 > a0 and b1 > b0:
            torch.sub(part[:, :, a0 - pr:a1 - pr, b0 - pc:b1 - pc], _MEAN,
                      out=x[:, :, a0 - r0:a1 - r0, b0 - c0:b1 - c0])
        x.mul_(_SCALE)
        reg, prob = _pnet_stripes(self.pnet, x)
        # cells whose window runs past a cut edge (ceil-mode pooling) lie in zeros
        nh = prob.shape[2] if r1 == H else (r1 - r0 - 12) // 2 + 1
        nw = prob.shape[3] if c1 == W else (c1 - c0 - 12) // 2 + 1
        reg, prob = reg[:, :, :nh, :nw], prob[:, :, :nh, :nw]
        p = prob[0, 1].double().cpu().numpy()
        ys, xs = np.nonzero(p >= t1)
        if not len(xs):
            return None
        reg = reg[0].double().cpu().numpy()[:, ys, xs].T
        return ys + r0 // 2, xs + c0 // 2, p[ys, xs], reg

    def _cascade(self, img: _Canvas, scales: Optional[Sequence[float]] = None) -> Detections:
        H, W = img.size
        t1, t2, t3 = self.thresholds
        # Stage 1: P-Net over the pyramid -> candidate boxes in 1-based pixels.
        cands = []
        for s in (self._scales(H, W) if scales is None else scales):
            size = (math.ceil(H * s), math.ceil(W * s))
            part, r0, c0 = img.level(size)
            got = self._pnet_level(part, t1, (r0, c0), size, tight=True)
            if got is None:
                continue
            ys, xs, prob, reg = got
            q1 = np.floor((2.0 * np.stack([xs, ys], 1) + 1) / s)
            q2 = np.floor((2.0 * np.stack([xs, ys], 1) + 12) / s)
            b = np.concatenate([q1, q2, prob[:, None], reg], axis=1)
            cands.append(b[nms(b[:, :4], b[:, 4], 0.5, "union", 1.0)])
        if not cands:
            return Detections.empty()
        b = np.concatenate(cands)
        b = b[nms(b[:, :4], b[:, 4], 0.7, "union", 1.0)]
        boxes = np.trunc(_square(_regress(b[:, :4], b[:, 5:9], plus_one=False)))

        # Stage 2: R-Net on 24x24 crops.
        boxes = boxes[(boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])]
        if not len(boxes):
            return Detections.empty()
        reg, prob = _batched(self.rnet, _crops(img, boxes, 24))
        ok = prob[:, 1] > t2
        boxes, score, reg = boxes[ok], prob[ok, 1], reg[ok]
        keep = nms(boxes, score, 0.7, "union", 1.0)
        boxes = np.trunc(_square(_regress(boxes[keep], reg[keep])))

        # Stage 3: O-Net on 48x48 crops -> score, final box, landmarks.
        boxes = boxes[(boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])]
        if not len(boxes):
            return Detections.empty()
        reg, lm, prob = _batched(self.onet, _crops(img, boxes, 48))
        ok = prob[:, 1] > t3
        boxes, score, reg, lm = boxes[ok], prob[ok, 1], reg[ok], lm[ok]
        if not len(boxes):
            return Detections.empty()
        w = boxes[:, 2:3] - boxes[:, 0:1] + 1
        h = boxes[:, 3:4] - boxes[:, 1:2] + 1
        # 1-based box corner minus one = 0-based index of the crop's first pixel.
        lms = np.stack([boxes[:, 0:1] - 1 + w * lm[:, 0:5],
                        boxes[:, 1:2] - 1 + h * lm[:, 5:10]], axis=2)
        boxes = _regress(boxes, reg)
        keep = nms(boxes, score, 0.7, "min", 1.0)
        boxes, score, lms = boxes[keep], score[keep], lms[keep]
        # Inclusive 1-based pixels -> 0-based slice bounds.
        boxes = boxes - np.array([1.0, 1.0, 0.0, 0.0])
        return Detections(boxes, score, lms)


def _check_image(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB (or HxW grey) image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {arr.dtype}")
    if min(arr.shape[:2]) < 1:
        raise ValueError(f"empty image of shape {arr.shape}")
    if not arr.flags.writeable:
        arr = arr.copy()  # torch.from_numpy refuses read-only buffers without a warning
    return arr
