"""Reading videos (a file, or a folder of frames in name order) and writing H.264 MP4, with PyAV.

PyAV rather than OpenCV: OpenCV's VideoWriter has no H.264 encoder in its PyPI wheels (browsers and
editors do not play its mp4v files), and its reader ends a damaged file early without saying so, where
PyAV reports the stream's declared frame count and raises on corrupt data. Every failure here is one
:class:`InputError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import Fit3dmmError, InputError
from .files import IMAGE_SUFFIXES, check_file, max_image_pixels, read_image, reason

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".webm", ".mkv", ".m4v")
#: Frame rate of a folder of frames (it has none of its own) unless the caller gives one.
FOLDER_FPS = 25.0
#: A file that decodes to fewer frames than its header declares, by more than this fraction, is
#: truncated (containers round their counts, and some declare one frame too many).
TRUNCATED_FRACTION = 0.02


def _natural_key(path: Path):
    """frame2 before frame10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: index from 0, time in seconds, (H, W, 3) uint8 RGB."""

    index: int
    time: float
    image: np.ndarray


class VideoReader:
    """The frames of a video file or of a folder of images, in order; nothing is decoded until asked.

    ``fps``, ``width`` and ``height`` are known on opening; the frame count only after :meth:`count`,
    which decodes the whole video once (container headers are not reliable) and refuses a truncated one.
    """

    def __init__(self, path: str | os.PathLike, fps: float | None = None, limit: int | None = None):
        self.path = Path(path)
        self.limit = limit  # read only the first ``limit`` frames
        self.is_folder = self.path.is_dir()
        if self.is_folder:
            self._files = sorted((p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                                 key=_natural_key)
            if not self._files:
                raise InputError(f"{self.path}: a folder with no image frames")
            first = read_image(self._files[0])
            self.height, self.width = first.shape[:2]
            self.fps = float(fps or FOLDER_FPS)
            self.declared = len(self._files) if limit is None else min(limit, len(self._files))
            return
        check_file(self.path)
        with self._open() as (container, stream):
            ctx = stream.codec_context
            self.width, self.height = int(ctx.width), int(ctx.height)
            rate = stream.average_rate or stream.guessed_rate or Fraction(int(fps or FOLDER_FPS))
            self.fps = float(fps or rate)
            self.declared = int(stream.frames or 0)
            if limit is not None:
                self.declared = min(self.declared, limit) if self.declared else 0
        if self.width < 2 or self.height < 2:
            raise InputError(f"{self.path}: no picture in the video stream ({self.width} x {self.height})")
        if self.width * self.height > max_image_pixels():
            raise InputError(f"{self.path}: {self.width} x {self.height} frames, more than the limit of "
                             f"{max_image_pixels():,} pixels (set FIT3DMM_MAX_IMAGE_PIXELS to raise it)")

    @contextlib.contextmanager
    def _open(self):
        """(container, its first video stream), closed on leaving; InputError if FFmpeg cannot read the file."""
        import av

        try:
            container = av.open(str(self.path), "r")
        except Exception as e:  # noqa: BLE001 - FFmpeg's errors for whatever the file holds
            raise InputError(f"{self.path}: not a readable video ({reason(e)})") from None
        try:
            if not container.streams.video:
                raise InputError(f"{self.path}: holds no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            yield container, stream
        finally:
            container.close()

    def frames(self, stop: int | None = None) -> Iterator[VideoFrame]:
        """Frames from the first, up to ``stop`` (exclusive) if given; decoding errors are InputErrors."""
        if self.limit is not None:
            stop = self.limit if stop is None else min(stop, self.limit)
        if self.is_folder:
            for i, path in enumerate(self._files[:stop]):
                image = read_image(path)
                if image.shape[:2] != (self.height, self.width):
                    raise InputError(f"{path}: {image.shape[1]} x {image.shape[0]} pixels, unlike the folder's "
                                     f"first frame ({self.width} x {self.height})")
                yield VideoFrame(i, i / self.fps, image)
            return
        with self._open() as (container, stream):
            i = 0
            decoded = container.decode(stream)
            while stop is None or i < stop:
                try:
                    frame = next(decoded)
                except StopIteration:
                    return
                except Fit3dmmError:
                    raise
                except Exception as e:  # noqa: BLE001 - a corrupt packet
                    raise InputError(f"{self.path}: unreadable at frame {i} ({reason(e)})") from None
                time = frame.time if frame.time is not None else i / self.fps
                yield VideoFrame(i, float(time), frame.to_ndarray(format="rgb24"))
                i += 1

    def count(self) -> int:
        """Decode the whole video once: its frame count. InputError if it has none, or fewer than its
        header declares (a truncated file)."""
        n = sum(1 for _ in self.frames())
        self.check_count(n)
        return n

    def check_count(self, n: int) -> None:
        """InputError unless ``n`` frames, decoded to the end, are the whole video: none at all, or fewer
        than the header declares (a truncated file)."""
        if not self.is_folder and self.declared and n < self.declared * (1 - TRUNCATED_FRACTION) - 1:
            raise InputError(f"{self.path}: truncated: {n} frames decode, of the {self.declared} it declares")
        if n == 0:
            raise InputError(f"{self.path}: the video has no frames")


def is_video(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES


class H264Writer:
    """Writes RGB frames of one size to an H.264 MP4 (yuv420p, so browsers and editors play it; an odd
    width or height loses its last pixel row or column, which yuv420p cannot hold)."""

    def __init__(self, path: str | os.PathLike, fps: float, width: int, height: int, crf: int = 20):
        import av

        self.width, self.height = width - width % 2, height - height % 2
        # faststart: the index before the frames, so a browser plays the file while it loads.
        self._container = av.open(str(path), "w", format="mp4", options={"movflags": "faststart"})
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast"}

    def write(self, image: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: self.height, : self.width]), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> "H264Writer":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._container.close()
