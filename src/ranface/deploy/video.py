"""Video in and out for ``ranface identify`` (PyAV, an optional dependency), and the
annotation of frames with boxes and names (Pillow)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..errors import ConfigError, DataError, RanfaceError

__all__ = ["VIDEO_EXTS", "is_video", "require_av", "VideoFrame", "iter_video_frames",
           "VideoWriter", "annotate"]

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
              ".flv", ".ts", ".3gp")


def is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTS


def require_av() -> Any:
    """The ``av`` (PyAV) module, or a :class:`RanfaceError` saying what to install."""
    try:
        import av  # noqa: PLC0415  (optional dependency)
    except ImportError:
        raise RanfaceError("reading or writing video needs the optional package av (PyAV): "
                           "pip install -r requirements-deploy.txt (or av)") from None
    return av


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: its index in the stream, time in seconds (None if the
    container has no timestamps) and the HxWx3 uint8 RGB pixels."""

    index: int
    time_s: Optional[float]
    image: np.ndarray


def _av_errors(av: Any) -> tuple:
    base = getattr(av, "FFmpegError", None) or getattr(getattr(av, "error", None), "FFmpegError", None)
    return tuple(e for e in (base, OSError, ValueError, EOFError) if e is not None)


def iter_video_frames(path: str, every: int = 1, max_frames: int = 0) -> Iterator[VideoFrame]:
    """Decode every ``every``-th frame of ``path`` (0, every, 2*every, ...), at most
    ``max_frames`` of them (0: all). A file that cannot be opened or decoded is a
    :class:`DataError` naming it; a decode error after some frames names the frame."""
    if every < 1:
        raise ConfigError(f"every must be >= 1, got {every}")
    av = require_av()
    errors = _av_errors(av)
    try:
        container = av.open(os.fspath(path))
    except errors as exc:
        raise DataError(path, f"cannot open video ({_short(exc)})") from None
    with container:
        if not container.streams.video:
            raise DataError(path, "file holds no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        i = -1
        taken = 0
        try:
            for frame in container.decode(stream):
                i += 1
                if i % every:
                    continue
                t = float(frame.time) if frame.time is not None else None
                yield VideoFrame(i, t, frame.to_ndarray(format="rgb24"))
                taken += 1
                if max_frames and taken >= max_frames:
                    return
        except errors as exc:
            raise DataError(path, f"cannot decode video ({_short(exc)})",
                            where=f"after frame {i}" if i >= 0 else None) from None
        if i < 0:
            raise DataError(path, "video has no decodable frame")


def video_rate(path: str) -> Optional[float]:
    """Frames per second of the first video stream, or None when unknown."""
    av = require_av()
    try:
        with av.open(os.fspath(path)) as c:
            rate = c.streams.video[0].average_rate if c.streams.video else None
    except _av_errors(av):
        return None
    return float(rate) if rate else None


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:160]


class VideoWriter:
    """Frames (HxWx3 uint8 RGB, all one size) -> a video file, written atomically: the
    frames go to a temporary file beside ``path``, renamed on :meth:`close`; an
    exception inside ``with`` leaves no file. Odd sizes are padded to even (yuv420p)."""

    def __init__(self, path: str, fps: float = 25.0, codec: str = ""):
        self.av = require_av()
        self.path = os.fspath(path)
        self.fps = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(25)
        if not codec:
            codec = "libx264" if "libx264" in self.av.codecs_available else "mpeg4"
        self.codec = codec
        self._container = None
        self._stream = None
        self._tmp: Optional[str] = None
        self.frames = 0

    def _open(self, h: int, w: int) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        ext = os.path.splitext(self.path)[1] or ".mp4"
        fd, self._tmp = tempfile.mkstemp(prefix="." + os.path.basename(self.path) + ".",
                                         suffix=ext, dir=directory)
        os.close(fd)
        try:
            self._container = self.av.open(self._tmp, "w")
            self._stream = self._container.add_stream(self.codec, rate=self.fps)
        except _av_errors(self.av) as exc:
            self._discard()
            raise DataError(self.path, f"cannot write video ({_short(exc)})") from None
        self._stream.width = w + (w % 2)
        self._stream.height = h + (h % 2)
        self._stream.pix_fmt = "yuv420p"

    def write(self, image: np.ndarray) -> None:
        img = np.ascontiguousarray(image, dtype=np.uint8)
        if self._stream is None:
            self._open(img.shape[0], img.shape[1])
        h, w = self._stream.height, self._stream.width
        if img.shape[:2] != (h, w):
            if img.shape[0] > h or img.shape[1] > w:
                raise ValueError(f"frame {self.frames} is {img.shape[1]}x{img.shape[0]}, the "
                                 f"video {w}x{h}")
            img = np.pad(img, ((0, h - img.shape[0]), (0, w - img.shape[1]), (0, 0)))
        frame = self.av.VideoFrame.from_ndarray(img, format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
            os.replace(self._tmp, self.path)
            self._tmp = None
        finally:
            self._discard()

    def _discard(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard()


# Box colours by face status.
_COLOURS = {"match": (40, 200, 60), "unknown": (230, 50, 40), "too_small": (240, 200, 0),
            "no_threshold": (60, 140, 255)}


def annotate(image: np.ndarray, faces: Sequence[Any]) -> np.ndarray:
    """A copy of ``image`` with each face's box and label drawn (green: identified,
    red: unknown, yellow: too small to identify, blue: no threshold set). ``faces`` are
    :class:`ranface.deploy.identify.FaceResult`."""
    from PIL import Image, ImageDraw  # noqa: PLC0415

    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(im)
    width = max(1, round(max(im.size) / 640))
    for f in faces:
        x1, y1, x2, y2 = (float(v) for v in f.box)
        colour = _COLOURS.get(f.status, (255, 255, 255))
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        label = f.label()
        if label:
            tx, ty = x1, max(0.0, y1 - 11)
            box = draw.textbbox((tx, ty), label)
            draw.rectangle(box, fill=(0, 0, 0))
            draw.text((tx, ty), label, fill=colour)
    return np.asarray(im)
