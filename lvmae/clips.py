"""From one video file to its stream of clips: the sampled, preprocessed frames of each
segment, ready for the frozen encoder.

A clip is what the encoder sees of one segment: ``frames_per_segment`` frames spread
uniformly over the segment (8 in the paper, after LanguageBind), short side resized to
``image_size`` then centre-cropped to ``image_size`` × ``image_size`` — deterministic, no
random flip or crop (docs/design.md, "Environment facts"). Memory is bounded whatever the
video's length: the reader holds only the frame timestamps, and at most
``max_clips_in_flight`` clips exist at once. Every problem becomes data: the stream always
ends with one :class:`VideoReport`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvmae.config import ExtractConfig
from lvmae.decoding import DecodeError, VideoInfo, VideoReader, center_crop, open_video
from lvmae.segments import (
    Segment,
    detect_cuts,
    fixed_segments,
    sample_frame_indices,
    shot_segments,
)

ANALYSIS_SHORT_SIDE = 32  # pixels; frames for cut detection


@dataclass
class Clip:
    """The encoder's input for one segment.

    Attributes:
        segment: the :class:`~lvmae.segments.Segment` (index, start/end seconds).
        frame_indices: ``[T]`` int64 frame indices in the source video.
        frame_times_s: ``[T]`` float64 their presentation times, seconds.
        frames: ``[T, S, S, 3]`` uint8 RGB, ``S = image_size``.
    """

    segment: Segment
    frame_indices: np.ndarray
    frame_times_s: np.ndarray
    frames: np.ndarray


@dataclass
class VideoReport:
    """How reading one video went. ``status`` is ``"ok"`` (every planned segment read),
    ``"partial"`` (some clips read, then an error) or ``"failed"`` (no clip); ``error`` says
    why when not ok; ``num_segments`` is the plan's length, ``num_clips`` the clips emitted;
    ``decode_s`` wall seconds spent."""

    status: str
    error: str | None = None
    info: VideoInfo | None = None
    num_segments: int = 0
    num_clips: int = 0
    decode_s: float = 0.0
    extra: dict = field(default_factory=dict)


def plan_segments(reader: VideoReader, path: str | Path, config: ExtractConfig) -> list[Segment]:
    """The segment plan of an opened video under ``config.segmenter``.

    ``fixed``: :func:`~lvmae.segments.fixed_segments` with ``segment_s``/``stride_s``/
    ``min_segment_s``. ``shots``: cuts detected on frames decoded at
    ``ANALYSIS_SHORT_SIDE`` px and ``shot_analysis_fps`` frames per second, then
    :func:`~lvmae.segments.shot_segments` within ``[shot_min_s, shot_max_s]``.

    Raises:
        DecodeError: the analysis pass cannot decode the video.
    """
    duration = reader.info.duration_s
    if config.segmenter == "fixed":
        return fixed_segments(
            duration,
            segment_s=config.segment_s,
            stride_s=config.stride_s,
            min_segment_s=config.min_segment_s,
        )
    times = reader.frame_times_s
    grid = np.arange(0.0, duration, 1.0 / config.shot_analysis_fps)
    indices = np.unique(np.clip(np.searchsorted(times, grid, side="right") - 1, 0, None))
    with open_video(
        path,
        decoder=reader.info.decoder,
        short_side=ANALYSIS_SHORT_SIDE,
        threads=config.decode_threads,
        fallback=False,
    ) as low:

        def frames():
            for chunk in np.array_split(indices, max(1, len(indices) // 64)):
                for i, frame in zip(chunk, low.get_frames(chunk), strict=True):
                    yield float(times[i]), frame

        cuts = detect_cuts(frames(), threshold=config.shot_threshold)
    return shot_segments(
        cuts, duration, min_segment_s=config.shot_min_s, max_segment_s=config.shot_max_s
    )


def read_clips(path: str | Path, config: ExtractConfig) -> Iterator[Clip | VideoReport]:
    """Decode a video into clips, in segment order, then one :class:`VideoReport`.

    Opens with ``config.decoder`` (PyAV as the fallback for decord), plans the segments,
    samples ``frames_per_segment`` frames per segment (:func:`sample_frame_indices`) and
    yields a :class:`Clip` per segment. Never raises for a bad video: open and decode
    errors end the stream with a ``"failed"`` or ``"partial"`` report.
    """
    t0 = time.perf_counter()
    report = VideoReport(status="failed")
    try:
        with open_video(
            path,
            decoder=config.decoder,
            short_side=config.image_size,
            threads=config.decode_threads,
        ) as reader:
            report.info = reader.info
            segments = plan_segments(reader, path, config)
            report.num_segments = len(segments)
            starts = np.array([s.start_s for s in segments])
            ends = np.array([s.end_s for s in segments])
            indices = sample_frame_indices(
                reader.frame_times_s, starts, ends, config.frames_per_segment
            )
            for segment, idx in zip(segments, indices, strict=True):
                frames = center_crop(reader.get_frames(idx), config.image_size)
                yield Clip(segment, idx, reader.frame_times_s[idx], np.ascontiguousarray(frames))
                report.num_clips += 1
        report.status = "ok"
    except DecodeError as exc:
        report.error = str(exc)
        report.status = "partial" if report.num_clips else "failed"
    except Exception as exc:  # any library's surprise on a bad file is still a recorded failure
        report.error = f"{type(exc).__name__}: {exc}"
        report.status = "partial" if report.num_clips else "failed"
    report.decode_s = time.perf_counter() - t0
    yield report


_DONE = object()


def read_clips_bounded(path: str | Path, config: ExtractConfig) -> Iterator[Clip | VideoReport]:
    """:func:`read_clips` under a time limit, with bounded memory.

    Decoding runs in a daemon thread that hands clips over through a queue of
    ``config.max_clips_in_flight`` places, so at most that many clips (plus the one being
    decoded) exist at once. When ``config.video_time_limit_s`` seconds pass, the stream ends
    with a ``"failed"``/``"partial"`` report naming the limit; the thread is told to stop
    (a decoder hung inside native code is abandoned, not waited for).
    """
    q: queue.Queue = queue.Queue(maxsize=config.max_clips_in_flight)
    stop = threading.Event()

    def produce() -> None:
        gen = read_clips(path, config)
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        finally:
            gen.close()
            if not stop.is_set():
                q.put(_DONE)

    t0 = time.perf_counter()
    deadline = t0 + config.video_time_limit_s
    worker = threading.Thread(target=produce, name=f"decode:{Path(path).name}", daemon=True)
    worker.start()
    clips = 0
    try:
        while True:
            try:
                item = q.get(timeout=max(deadline - time.perf_counter(), 0.0))
            except queue.Empty:
                yield VideoReport(
                    status="partial" if clips else "failed",
                    error=f"time limit of {config.video_time_limit_s:g} s exceeded "
                    f"after {clips} clips",
                    num_clips=clips,
                    decode_s=time.perf_counter() - t0,
                )
                return
            if item is _DONE:
                return
            if isinstance(item, Clip):
                clips += 1
            yield item
    finally:
        stop.set()
