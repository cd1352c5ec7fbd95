"""Reading and writing videos with PyAV: open and check a file (``open_video``,
``probe_video``), decode its frames as RGB (``read_frames``), encode an MP4
(``OverlayWriter``). Every problem with a file is a ``VideoError`` naming it: corrupt or
truncated data, no frames, an unknown codec, no video stream.

Needs the ``video`` extra: ``pip install 'ovseg[video]'``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

DEFAULT_RATE = Fraction(25)  # when a video declares no frame rate


class VideoError(ValueError):
    """A video that cannot be segmented; the message names the file and what is wrong."""


def _av():
    try:
        import av
    except ImportError as error:
        raise ImportError(
            "video input needs PyAV: pip install 'ovseg[video]' (or pip install av)"
        ) from error
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream.

    Attributes:
        width, height: frame size in pixels.
        rate: frames per second (``DEFAULT_RATE`` when the file declares none).
        frames: the frame count in the header, or None when the container has none.
        codec: the decoder's name.
        packets: the video packets in the file (``probe_video`` only), else None.
    """

    width: int
    height: int
    rate: Fraction
    frames: int | None
    codec: str
    packets: int | None = None

    @property
    def seconds(self) -> float | None:
        """The video's length from its packet (or header frame) count and frame rate."""
        count = self.packets if self.packets is not None else self.frames
        return None if count is None else float(count / self.rate)


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: its index in the source, time (s) and (H, W, 3) uint8 RGB pixels."""

    index: int
    time: float
    rgb: np.ndarray


def open_video(path: str | os.PathLike):
    """``(container, stream, VideoInfo)`` for the first video stream of ``path``; the caller
    closes the container. Raises ``VideoError`` naming the file."""
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video: {path}")
    try:
        container = av.open(str(path))
    except EOFError:
        raise VideoError(
            f"{path}: the video has no frames (the file ends after its header)"
        ) from None
    except av.error.FFmpegError as error:
        raise VideoError(
            f"{path}: corrupt or truncated video, cannot be opened ({error})"
        ) from None
    try:
        kinds = [s.type for s in container.streams]
        if not container.streams.video:
            if "audio" in kinds:
                raise VideoError(f"{path}: no video stream (the file holds only audio)")
            raise VideoError(
                f"{path}: no video stream found (streams: {', '.join(kinds) or 'none'}); "
                "the file may be corrupt or truncated"
            )
        stream = container.streams.video[0]
        context = stream.codec_context
        if context is None or context.codec is None:
            raise VideoError(
                f"{path}: unknown video codec (FFmpeg has no decoder for stream 0 of this "
                "file); re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4"
            )
        rate = stream.average_rate or stream.guessed_rate or DEFAULT_RATE
        info = VideoInfo(
            width=int(context.width),
            height=int(context.height),
            rate=Fraction(rate),
            frames=int(stream.frames) if stream.frames else None,
            codec=context.name,
        )
        if info.width < 1 or info.height < 1:
            raise VideoError(f"{path}: the video stream has no frame size ({context.name})")
    except BaseException:
        container.close()
        raise
    return container, stream, info


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """``VideoInfo`` of ``path`` after reading its video packets (no decoding): a file whose
    header declares more frames than it holds packets for (truncated), or that holds none,
    raises ``VideoError`` before any work starts."""
    av = _av()
    container, stream, info = open_video(path)
    packets, end = 0, 0.0
    try:
        for packet in container.demux(stream):
            if packet.size > 0:
                packets += 1
                if packet.pts is not None and packet.time_base is not None:
                    stop = (packet.pts + (packet.duration or 0)) * packet.time_base
                    end = max(end, float(stop))
        declared = container.duration / 1e6 if container.duration else None
        alone = len(container.streams) == 1  # another stream may outlast the video
    except av.error.FFmpegError as error:
        raise VideoError(
            f"{path}: corrupt or truncated video: reading failed after {packets} frame(s) ({error})"
        ) from None
    finally:
        container.close()
    _check_count(path, info, packets, "the file holds")
    if info.frames is None and alone and declared and end < declared - 2 / info.rate:
        raise VideoError(
            f"{path}: truncated video: its header declares {declared:.2f} s, its frames end "
            f"at {end:.2f} s"
        )
    return dataclasses.replace(info, packets=packets)


def _check_count(path, info: VideoInfo, count: int, verb: str) -> None:
    """No frames, or fewer than the header declares: a ``VideoError``."""
    if count == 0:
        raise VideoError(f"{path}: the video has no frames ({verb} 0)")
    if info.frames is not None and count < info.frames:
        raise VideoError(
            f"{path}: truncated video: its header declares {info.frames} frames, {verb} {count}"
        )


def read_frames(path: str | os.PathLike, last: int | None = None) -> Iterator[VideoFrame]:
    """Decode ``path``'s frames in order (RGB, as ``frame.to_ndarray(format="rgb24")``),
    stopping after index ``last`` (None: all of them).

    Raises ``VideoError`` when decoding fails, when no frame decodes, or when fewer frames
    decode than the header declares (a truncated file) - after yielding those that did.
    """
    av = _av()
    container, stream, info = open_video(path)
    count = 0
    try:
        try:
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                if rgb.shape[:2] != (info.height, info.width):
                    raise VideoError(
                        f"{path}: frame {count} is {rgb.shape[1]}x{rgb.shape[0]}, the video "
                        f"{info.width}x{info.height}; frames that change size are not supported"
                    )
                time = float(frame.time) if frame.time is not None else count / info.rate
                yield VideoFrame(count, time, rgb)
                count += 1
                if last is not None and count > last:
                    return
        except av.error.FFmpegError as error:
            raise VideoError(
                f"{path}: corrupt or truncated video: decoding failed after {count} frame(s) "
                f"({error})"
            ) from None
    finally:
        container.close()
    _check_count(path, info, count, "decoded")


class OverlayWriter:
    """Encodes RGB frames to an H.264 MP4 at a given size and frame rate (PyAV, libx264;
    4:2:0 chroma when both sides are even, else 4:4:4 so that the size stays exact).

    Use as a context manager; the file is complete once the ``with`` block exits normally.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, rate: Fraction):
        av = _av()
        self.container = av.open(str(path), "w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = width, height
        even = width % 2 == 0 and height % 2 == 0
        self.stream.pix_fmt = "yuv420p" if even else "yuv444p"
        self.count = 0

    def write(self, rgb: np.ndarray) -> None:
        av = _av()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.count
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.count += 1

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
        else:
            self.container.close()
