"""Video decoding behind one small reader interface: PyAV (default) and decord.

Readers expose every frame's presentation time (read from the container's index, no
decoding) and decode only the frames asked for, resized at decode time so that the short
side equals the requested size. Nothing here holds more than the frames of one request, so
memory does not grow with the video's length. PyAV is the default (it reads 1.02-1.85x what
decord does per CPU-second, more the longer the file: ``benchmarks/RESULTS.md``, "One long
video alone"); decord is selectable, and PyAV is its fallback when it cannot open a file
(docs/design.md, "Environment facts").
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from lvmae.errors import LvmaeError

DecoderName = Literal["decord", "pyav"]
DECODERS: tuple[str, ...] = ("decord", "pyav")


class DecodeError(LvmaeError, RuntimeError):
    """A video cannot be opened or a frame cannot be decoded."""


@dataclass(frozen=True)
class VideoInfo:
    """What a reader learnt about a video: ``duration_s`` (seconds, from the frame
    timestamps), average ``fps``, source ``width``/``height`` (pixels), ``num_frames``, and
    the ``decoder`` that opened it."""

    duration_s: float
    fps: float
    width: int
    height: int
    num_frames: int
    decoder: str

    def to_dict(self) -> dict:
        return asdict(self)


def rgb_converter() -> Callable[[Any, int, int], np.ndarray]:
    """A PyAV frame → ``[height, width, 3]`` uint8 RGB converter, ``convert(frame, width,
    height)`` (pixels), for one decoding loop: one libswscale context for every frame,
    single-threaded. PyAV >= 17 gives each frame's own reformatter ``threads=0``, a thread per
    CPU made and joined for every frame: twice the conversion's CPU here, and a one-CPU decode
    task oversubscribed (``benchmarks/RESULTS.md``, "PyAV's frame conversion"; the same
    pixels)."""
    import av

    reformatter = av.video.reformatter.VideoReformatter()

    def convert(frame: Any, width: int, height: int) -> np.ndarray:
        return reformatter.reformat(
            frame, width=width, height=height, format="rgb24", threads=1
        ).to_ndarray()

    return convert


def resized_shape(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled so the short side is ``short_side`` pixels, aspect kept
    (each side rounded, never below ``short_side``)."""
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Central ``size`` × ``size`` crop of ``[N, H, W, C]`` frames (``H, W >= size``)."""
    h, w = frames.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return frames[:, top : top + size, left : left + size]


def _duration_from_times(times: np.ndarray, fps_hint: float) -> float:
    """Duration = last frame's time + that frame's display time (median frame interval)."""
    step = float(np.median(np.diff(times))) if times.size > 1 else 1.0 / max(fps_hint, 1e-3)
    return float(times[-1] + step)


class VideoReader(abc.ABC):
    """Random access to a video's frames by index (presentation order).

    Attributes:
        info: :class:`VideoInfo` of the source.
        frame_times_s: ``[F]`` float64 presentation time of each frame in seconds, starting
            at 0, non-decreasing.
        out_size: ``(width, height)`` of returned frames, pixels.
        missing_frames: frames the container's index lists but the file does not hold (a
            file cut short, such as an interrupted download); 0 when none are missing or the
            container gives no frame count.
    """

    info: VideoInfo
    frame_times_s: np.ndarray
    out_size: tuple[int, int]
    missing_frames: int = 0

    @abc.abstractmethod
    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        """Decode the frames at ``indices`` (``[N]`` ints in ``[0, F)``).

        Returns:
            ``[N, out_h, out_w, 3]`` uint8 RGB.

        Raises:
            DecodeError: a frame cannot be decoded (a damaged or truncated file).
        """

    def will_read(self, indices: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Name every frame (``[N]`` indices) that :meth:`get_frames` will be asked for from
        now on, so that a reader may leave the others undecoded where that changes no
        returned pixel. A hint: frames not named are still returned exactly."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the decoder's resources."""

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def probe_size(path: str | Path) -> tuple[int, int]:
    """Source ``(width, height)`` in pixels from the container's stream header (PyAV, no
    decoding). Raises :class:`DecodeError` when the file has no readable video stream."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError("no video stream")
            ctx = container.streams.video[0].codec_context
            if not ctx.width or not ctx.height:
                raise DecodeError("video stream has no frame size")
            return int(ctx.width), int(ctx.height)
    except DecodeError:
        raise
    except Exception as exc:  # PyAV raises a family of FFmpegError / OSError subclasses
        raise DecodeError(f"cannot read the stream header: {exc}") from exc


class DecordReader(VideoReader):
    """decord reader; frames resized by decord's scaler at decode time."""

    def __init__(self, path: str | Path, *, short_side: int, threads: int = 1) -> None:
        import decord

        decord.logging.set_level(decord.logging.QUIET)  # its errors reach us as exceptions
        width, height = probe_size(path)
        self.out_size = resized_shape(width, height, short_side)
        try:
            self._vr = decord.VideoReader(
                str(path),
                ctx=decord.cpu(0),
                width=self.out_size[0],
                height=self.out_size[1],
                num_threads=threads,
            )
            n = len(self._vr)
            if n == 0:
                raise DecodeError("no frames")
            stamps = self._vr.get_frame_timestamp(np.arange(n))[:, 0].astype(np.float64)
        except DecodeError:
            raise
        except Exception as exc:  # decord raises DECORDError (a RuntimeError) and others
            raise DecodeError(f"decord cannot open the file: {exc}") from exc
        self.frame_times_s = stamps - stamps[0]
        fps = float(self._vr.get_avg_fps())
        self.info = VideoInfo(
            _duration_from_times(self.frame_times_s, fps), fps, width, height, n, "decord"
        )

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        try:
            return self._vr.get_batch([int(i) for i in indices]).asnumpy()
        except Exception as exc:
            raise DecodeError(
                f"decord failed to decode frames {[int(i) for i in indices]}: {exc}"
            ) from exc

    def close(self) -> None:
        self._vr = None


SKIPS_UNREFERENCED = frozenset({"h264", "hevc"})
"""Codecs whose FFmpeg decoder reads ``skip_frame`` for each packet it is sent and drops a
packet at ``NONREF`` only when no other frame refers to it (libdav1d, for one, reads it once
when it opens)."""


class PyAVReader(VideoReader):
    """PyAV reader: timestamps from demuxed packets; frames decoded forward from the nearest
    keyframe and converted (and resized) by libswscale.

    With ``fast=True`` the decoder skips non-reference frames and the deblocking (loop)
    filter, where the codec allows (H.264, HEVC): frames it still outputs are slightly
    softer, and only :meth:`nearest_frames` makes sense (the frame at an exact index may
    never be decoded).

    Exact frames, less decoding: after :meth:`will_read` names the frames that will be asked
    for, a non-reference frame outside them is not decoded (H.264, HEVC:
    ``skip_frame=NONREF`` set per packet, so no other frame's pixels change: nothing refers to
    it). On 720p H.264 with B-frames that leaves about half the frames undecoded
    (``benchmarks/RESULTS.md``, "Exact decoding without the frames nothing needs").
    ``frames_decoded`` counts the frames the decoder has output so far (skipped ones not).

    ``path`` may also be a binary file object (seekable; e.g.
    :meth:`lvmae.video.remote.RemoteVideo.open`, an object still downloading). Then the
    frame timestamps come from the container's index (``stream.index_entries``: an mp4's
    ``moov`` box) when it lists every frame and agrees with the first demuxed packets (no
    frame reordering), so opening does not read the whole file; otherwise every packet is
    demuxed as for a path.
    """

    def __init__(
        self, path: str | Path | BinaryIO, *, short_side: int, threads: int = 1,
        fast: bool = False,
    ) -> None:  # fmt: skip
        import av

        self._file = path if hasattr(path, "read") else None
        try:
            self._container = av.open(self._file if self._file is not None else str(path))
        except Exception as exc:
            if self._file is not None:
                self._file.close()
            raise DecodeError(f"PyAV cannot open the file: {exc}") from exc
        self.fast = fast
        self._convert = rgb_converter()
        try:
            self._init_stream(short_side, threads)
        except Exception as exc:
            self.close()
            if isinstance(exc, DecodeError):
                raise
            raise DecodeError(f"PyAV cannot read the video stream: {exc}") from exc

    def _init_stream(self, short_side: int, threads: int) -> None:
        if not self._container.streams.video:
            raise DecodeError("no video stream")
        stream = self._stream = self._container.streams.video[0]
        stream.codec_context.thread_count = threads
        if self.fast:  # set before the first packet opens the decoder
            stream.codec_context.skip_frame = "NONREF"
            stream.codec_context.options = {"skip_loop_filter": "all"}
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise DecodeError("video stream has no frame size")
        found = self._index_pts(stream) if self._file is not None else None
        pts, keys = found if found is not None else self._demux_pts(stream)
        if not pts:
            raise DecodeError("no frames")
        # mp4/mov list every frame in their index; a file cut short holds fewer packets
        self.missing_frames = max(0, int(stream.frames or 0) - len(pts))
        self._pts = np.sort(np.asarray(pts, dtype=np.int64))
        self._key_pts = np.sort(np.asarray(keys or pts[:1], dtype=np.int64))
        time_base = float(stream.time_base)
        self.frame_times_s = (self._pts - self._pts[0]).astype(np.float64) * time_base
        fps = float(stream.average_rate or 0.0) or (len(pts) / max(self.frame_times_s[-1], 1e-3))
        self.out_size = resized_shape(width, height, short_side)
        self.info = VideoInfo(
            _duration_from_times(self.frame_times_s, fps), fps, width, height, len(pts), "pyav"
        )
        self._frames = None  # decoding iterator, positioned after self._current
        self._current = None  # last decoded av.VideoFrame
        self._wanted: frozenset[int] | None = None  # pts asked for; None: decode every frame
        self.frames_decoded = 0  # frames the decoder output (get_frames), skipped ones not

    def _demux_pts(self, stream) -> tuple[list[int], list[int]]:
        """Every packet's pts, and the keyframes', by demuxing the whole stream."""
        pts, keys = [], []
        for packet in self._container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
        return pts, keys

    def _index_pts(self, stream, check: int = 48) -> tuple[list[int], list[int]] | None:
        """Frame and keyframe timestamps from the container's index, or None when it does
        not list every frame (``stream.frames``) or its first ``check`` timestamps differ
        from the first demuxed packets' pts (B-frames: the index holds dts). Leaves the
        container positioned at the start."""
        entries = stream.index_entries
        n = len(entries)
        if n == 0 or (stream.frames and n != stream.frames):
            return None
        ts = [e.timestamp for e in entries]
        keys = [e.timestamp for e in entries if e.is_keyframe]
        first = []
        for packet in self._container.demux(stream):
            if packet.pts is not None and packet.size:
                first.append(packet.pts)
                if len(first) >= min(check, n):
                    break
        self._container.seek(int(ts[0]), stream=stream, backward=True)
        if first != ts[: len(first)] or bool(np.any(np.diff(ts) <= 0)):
            self._container.seek(int(ts[0]), stream=stream, backward=True)
            return None
        return ts, keys

    def will_read(self, indices: np.ndarray) -> None:
        """Name every frame that :meth:`get_frames` will be asked for from now on (``[N]``
        frame indices, any order). Non-reference frames outside them are then not decoded
        where the codec honours that per packet (H.264, HEVC); a frame asked for that was
        not named is still returned exactly (decoding from its keyframe again, skipping
        nothing from then on)."""
        if self.fast or self._stream.codec_context.name not in SKIPS_UNREFERENCED:
            return
        self._wanted = frozenset(self._pts[np.asarray(indices, dtype=np.int64)].tolist())
        self._frames = None  # packets already sent were decided without this

    def _decoded(self) -> Iterator[Any]:
        """Frames in presentation order from the container's position; with a wanted set,
        each packet outside it is sent with ``skip_frame=NONREF`` (the decoder drops it only
        if no frame refers to it)."""
        cc, wanted = self._stream.codec_context, self._wanted
        if not self.fast and cc.is_open:
            cc.skip_frame = "DEFAULT"
        for packet in self._container.demux(self._stream):
            if wanted is not None and cc.is_open:  # opened with every frame decodable
                cc.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
            for frame in packet.decode():
                self.frames_decoded += 1
                yield frame

    def _seek(self, target_pts: int) -> None:
        self._container.seek(int(target_pts), stream=self._stream, backward=True)
        self._frames = self._decoded()
        self._current = None

    def _frame_at(self, target_pts: int):
        cur = self._current
        if cur is not None and cur.pts == target_pts:
            return cur
        if self._wanted is not None and target_pts not in self._wanted:
            self._wanted, self._frames = None, None  # not named: decode every frame again
        key = self._key_pts[max(np.searchsorted(self._key_pts, target_pts, side="right") - 1, 0)]
        if self._frames is None or cur is None or target_pts < cur.pts or key > cur.pts:
            self._seek(target_pts)
        for frame in self._frames:
            if frame.pts is None:
                continue
            self._current = frame
            if frame.pts >= target_pts:
                if frame.pts != target_pts and self._wanted is not None:
                    # the frame asked for did not come out of the skipping decoder: every
                    # frame from its keyframe on, as without will_read
                    self._wanted, self._frames = None, None
                    return self._frame_at(target_pts)
                return frame
        raise DecodeError("the stream ended before the frame")

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), self.out_size[1], self.out_size[0], 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            try:
                out[k] = self._rgb(self._frame_at(int(self._pts[int(i)])))
            except DecodeError as exc:
                raise DecodeError(f"PyAV failed to decode frame {int(i)}: {exc}") from exc
            except Exception as exc:
                raise DecodeError(f"PyAV failed to decode frame {int(i)}: {exc}") from exc
        return out

    def nearest_frames(self, targets_s: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        """One forward pass over the video: for each target time, the decoded frame nearest
        to it (the earlier one on a tie). In fast mode that is the nearest *decodable* frame.

        Args:
            targets_s: ``[K]`` target times in seconds from the first frame, non-decreasing.

        Yields:
            ``(k, frame_index, frame)`` for ``k = 0..K-1`` in order: the frame's index in
            :attr:`frame_times_s` and the frame, ``[out_h, out_w, 3]`` uint8 RGB. Memory holds
            two decoded frames whatever the video's length.

        Raises:
            ValueError: targets not sorted.
            DecodeError: the stream cannot be decoded (or yields no frame at all).
        """
        targets = np.asarray(targets_s, dtype=np.float64)
        if targets.size > 1 and np.any(np.diff(targets) < 0):
            raise ValueError("targets_s must be non-decreasing")
        cache: dict[int, np.ndarray] = {}

        def pick(frame) -> tuple[int, np.ndarray]:
            index = int(np.clip(np.searchsorted(self._pts, frame.pts), 0, len(self._pts) - 1))
            if index not in cache:
                cache.clear()  # the same frame often serves consecutive targets
                cache[index] = self._rgb(frame)
            return index, cache[index]

        k, prev, prev_t = 0, None, -np.inf
        try:
            # From the last keyframe at or before the first target (the start of the video
            # for a whole pass; later for a range or a resumed video): every frame from
            # there on is decoded as in a pass from the start, and none before it can be
            # nearer to a target.
            first = self._pts[0] + (targets[0] if targets.size else 0.0) / float(
                self._stream.time_base
            )
            keys = self._key_pts[self._key_pts <= first]
            self._seek(int(keys[-1]) if keys.size else int(self._pts[0]))
            for frame in self._frames:
                if frame.pts is None:
                    continue
                t = float(frame.pts - self._pts[0]) * float(self._stream.time_base)
                while k < targets.size and targets[k] <= t:
                    earlier = prev is not None and targets[k] - prev_t <= t - targets[k]
                    best = prev if earlier else frame
                    yield (k, *pick(best))
                    k += 1
                if k == targets.size:
                    return
                prev, prev_t = frame, t
        except DecodeError:
            raise
        except Exception as exc:  # PyAV's FFmpegError family on a damaged stream
            raise DecodeError(f"PyAV failed to decode: {exc}") from exc
        if prev is None and k < targets.size:
            raise DecodeError("PyAV decoded no frame")
        for j in range(k, targets.size):  # targets after the last decodable frame
            yield (j, *pick(prev))

    def _rgb(self, frame) -> np.ndarray:
        return self._convert(frame, *self.out_size)

    def close(self) -> None:
        self._frames = None
        self._current = None
        self._container.close()
        if self._file is not None:
            self._file.close()


_READERS: dict[str, type[VideoReader]] = {"decord": DecordReader, "pyav": PyAVReader}


def container_duration(source: Any) -> float | None:
    """The duration in seconds that a video's container header gives (PyAV; reads the
    header only, not the packets), or None when the header has none or the file cannot be
    opened. ``source``: a path or a binary file object (e.g. fsspec's, for object storage).
    An estimate for planning work (:func:`~lvmae.video.segments.segment_ranges`); readers
    time segments on the packets' own timestamps."""
    import av

    try:
        with av.open(source) as container:
            if container.duration:
                return container.duration / av.time_base
            for stream in container.streams.video:
                if stream.duration and stream.time_base:
                    return float(stream.duration * stream.time_base)
    except Exception:  # unreadable: the decode task records why
        return None
    return None


def open_video(
    path: str | Path,
    *,
    decoder: str = "pyav",
    short_side: int = 224,
    threads: int = 1,
    fallback: bool = True,
) -> VideoReader:
    """Open a local video file for frame access.

    Args:
        path: local file path.
        decoder: ``"pyav"`` (default) or ``"decord"``.
        short_side: frames come back resized so their short side is this many pixels.
        threads: decoder threads (1 matches one Ray CPU per decode task).
        fallback: when decord cannot open the file, try PyAV before giving up.

    Returns:
        A :class:`VideoReader`; ``reader.info.decoder`` says which decoder opened it.

    Raises:
        ValueError: an unknown decoder name.
        DecodeError: no decoder can open the file (the message gives each one's reason).
    """
    if decoder not in _READERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"not a readable file: {path}")
    order = [decoder] + (["pyav"] if fallback and decoder == "decord" else [])
    reasons = []
    for name in order:
        try:
            return _READERS[name](path, short_side=short_side, threads=threads)
        except DecodeError as exc:
            reasons.append(f"{name}: {exc}")
    raise DecodeError("; ".join(reasons))
