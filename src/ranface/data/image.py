"""Decoding of face images with explicit channel order and clear errors.

Every loader in ranface decodes through :func:`decode_image` so that grey images,
CMYK/palette images, corrupt and truncated files are handled the same everywhere.
Arrays are HxWx3 uint8 in the requested channel order ("rgb" or "bgr").
"""
from __future__ import annotations

import functools
import io
import os
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

COLOR_ORDERS = ("rgb", "bgr")
# Extensions PIL registers but that are no photos ranface can decode without external
# tools or at all (stub plugins, vector formats, MPEG streams that `identify` treats as video).
_NOT_PHOTOS = frozenset({".bufr", ".grib", ".h5", ".hdf", ".emf", ".wmf", ".eps", ".ps",
                         ".mpeg", ".mpg"})
# Stop PIL from allocating for absurd headers (a 2^31-pixel "image" in 40 bytes).
MAX_IMAGE_PIXELS = 64_000_000


@functools.lru_cache(maxsize=None)
def image_extensions() -> Tuple[str, ...]:
    """The one list of image file extensions (lower case, with the dot) every command
    accepts: every format this PIL can open (JPEG, PNG, BMP, WebP, TIFF, PGM/PPM/PBM, GIF,
    ...), minus stubs and vector formats."""
    Image.init()
    exts = {e.lower() for e, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return tuple(sorted(exts - _NOT_PHOTOS))


def is_image_file(name: str) -> bool:
    """``name`` ends with one of :func:`image_extensions` (case-insensitive)."""
    return name.lower().endswith(image_extensions())


def _check_order(color: str) -> str:
    color = color.lower()
    if color not in COLOR_ORDERS:
        raise ValueError(f"colour order must be one of {COLOR_ORDERS}, got {color!r}")
    return color


def pil_to_array(img: "Image.Image", color: str = "rgb") -> np.ndarray:
    """Convert any PIL image to HxWx3 uint8 in ``color`` order (grey replicated)."""
    color = _check_order(color)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, LA, P, CMYK, I;16 ... -> RGB, grey replicated
    arr = np.array(img, dtype=np.uint8)  # a writable copy (asarray is read-only)
    if color == "bgr":
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr)


def decode_image(data: bytes, source: Optional[str] = None, color: str = "rgb",
                 expect_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Decode encoded image bytes (JPEG/PNG/...) to HxWx3 uint8.

    ``source`` names the file/record for the error message; ``expect_size`` is
    (height, width) and, when given, a different size is an error.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DataError(source, f"image of {w}x{h} pixels is larger than the "
                                f"{MAX_IMAGE_PIXELS}-pixel limit")
            img.load()
            arr = pil_to_array(img, color)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        kind = "not a decodable image" if isinstance(exc, UnidentifiedImageError) \
            else f"corrupt or truncated image ({exc})"
        raise DataError(source, kind) from None
    if expect_size is not None and arr.shape[:2] != tuple(expect_size):
        raise DataError(source, f"image is {arr.shape[1]}x{arr.shape[0]}, expected "
                        f"{expect_size[1]}x{expect_size[0]} (aligned faces must all have "
                        "the model's input size)")
    return arr


def read_image(path: "os.PathLike[str] | str", color: str = "rgb",
               expect_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Read and decode an image file; see :func:`decode_image`."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block, /dev/zero never end
        raise DataError(path, "not a regular file")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.strerror or exc})") from None
    return decode_image(data, path, color, expect_size)


def encode_image(arr: np.ndarray, fmt: str = "jpeg", quality: int = 95,
                 color: str = "rgb") -> bytes:
    """Encode HxWx3 (or HxW) uint8 in ``color`` order to bytes."""
    color = _check_order(color)
    if arr.ndim == 3 and color == "bgr":
        arr = arr[:, :, ::-1]
    img = Image.fromarray(np.ascontiguousarray(arr))
    buf = io.BytesIO()
    if fmt.lower() in ("jpg", "jpeg"):
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format=fmt.upper())
    return buf.getvalue()


def to_tensor(arr: np.ndarray, mean: Sequence[float] = (127.5, 127.5, 127.5),
              std: Sequence[float] = (127.5, 127.5, 127.5)):
    """HxWx3 uint8 -> 3xHxW float32 tensor normalised as (x - mean) / std."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (t - m) / s
