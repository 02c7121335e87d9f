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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lvmae.config import ExtractConfig
from lvmae.video.decoding import (
    DecodeError,
    PyAVReader,
    VideoInfo,
    VideoReader,
    center_crop,
    open_video,
)
from lvmae.video.nvdec import CPU_FALLBACK, DecoderChoice, NvdecReader, choose_decoder, video_codec
from lvmae.video.remote import RemoteVideo
from lvmae.video.segments import Segment, fixed_segments, sample_frame_indices, shot_segments
from lvmae.video.shots import detect_config_shots


@dataclass
class Clip:
    """The encoder's input for one segment.

    Attributes:
        segment: the :class:`~lvmae.video.segments.Segment` (index, start/end seconds).
        frame_indices: ``[T]`` int64 frame indices in the source video.
        frame_times_s: ``[T]`` float64 their presentation times, seconds.
        frames: ``[T, S, S, 3]`` uint8 RGB, ``S = image_size``: a numpy array, or a torch
            tensor on the GPU where NVDEC decoded it (:class:`~lvmae.video.nvdec.NvdecReader`).
    """

    segment: Segment
    frame_indices: np.ndarray
    frame_times_s: np.ndarray
    frames: np.ndarray


@dataclass
class VideoReport:
    """How reading one video went. ``status`` is ``"ok"`` (every planned segment read),
    ``"partial"`` (some clips read, or held on disk from an earlier run and skipped, then
    an error; or a file cut short, with fewer frames than its index lists: the segments of
    the frames it holds are planned and read, and ``error`` says how many frames are
    missing) or ``"failed"`` (no clip, none held); ``error`` says
    why when not ok; ``num_segments`` is the plan's length, ``num_clips`` the clips emitted;
    ``decode_s`` wall seconds spent; ``decoder_reason`` why the decoder differs from the
    configured one (``decoder: auto`` without NVDEC, :mod:`lvmae.video.nvdec`). With
    ``segmenter: shots``, ``cuts_s`` holds the detected cut times (seconds; the start of
    every shot but the first) and ``shot_detector`` the detector's name; both are None for
    fixed segments."""

    status: str
    error: str | None = None
    info: VideoInfo | None = None
    num_segments: int = 0
    num_clips: int = 0
    decode_s: float = 0.0
    cuts_s: list[float] | None = None
    shot_detector: str | None = None
    decoder_reason: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoReport:
        """The report that :func:`dataclasses.asdict` turned into ``data`` (JSON-ready)."""
        info = data.get("info")
        return cls(**{**data, "info": VideoInfo(**info) if info else None})


@dataclass
class SegmentPlan:
    """A video's segment plan and, for shot plans, what the shot detector found:
    ``cuts_s`` (seconds), ``shot_detector``, ``shot_threshold``, ``analysis_s`` (wall
    seconds of the detection), ``analysis_device`` and ``analysis_error`` (why the analysis
    stopped early: a decoding error part-way, after which no cut was looked for)."""

    segments: list[Segment]
    cuts_s: list[float] | None = None
    shot_detector: str | None = None
    shot_threshold: float | None = None
    analysis_s: float = 0.0
    analysis_device: str | None = None
    analysis_error: str | None = None

    def annotate(self, report: VideoReport) -> None:
        """Copy the plan's shot results into ``report`` (``cuts_s``, ``shot_detector``;
        the threshold, analysis time, device and any analysis error into
        ``report.extra``)."""
        report.cuts_s = self.cuts_s
        report.shot_detector = self.shot_detector
        if self.shot_detector is not None:
            report.extra.update(
                shot_threshold=self.shot_threshold,
                shot_analysis_s=round(self.analysis_s, 3),
                shot_device=self.analysis_device,
            )
            if self.analysis_error:
                report.extra["shot_analysis_error"] = self.analysis_error

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (segments as ``{index, start_s, end_s}``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentPlan:
        """The plan :meth:`to_dict` gave (seconds round-trip exactly through JSON)."""
        segments = [Segment(**s) for s in data["segments"]]
        return cls(**{**data, "segments": segments})


def _local_path(path: str | Path | RemoteVideo) -> str | Path:
    """A path a decoder can open: ``path``, or a remote video's complete local copy."""
    return path.wait() if isinstance(path, RemoteVideo) else path


def plan_video(
    reader: VideoReader, path: str | Path | RemoteVideo, config: ExtractConfig
) -> SegmentPlan:
    """The segment plan of an opened video under ``config.segmenter``.

    ``fixed``: :func:`~lvmae.video.segments.fixed_segments` with ``segment_s``/``stride_s``/
    ``min_segment_s``. ``shots``: cuts found by ``config.shot_detector``
    (:func:`lvmae.video.shots.detect_shots`, one streamed pass over the file), then
    :func:`~lvmae.video.segments.shot_segments` within ``[shot_min_s, shot_max_s]``, a short shot
    joining its most similar neighbour (mean colour histograms).

    Raises:
        DecodeError: the analysis pass cannot decode the start of the video or runs past
            ``video_time_limit_s`` (a decoding error later ends the analysis early:
            ``analysis_error``).
        ShotDetectorError: the detector's package or weights are missing.
    """
    duration = reader.info.duration_s
    if config.segmenter == "fixed":
        segments = fixed_segments(
            duration,
            segment_s=config.segment_s,
            stride_s=config.stride_s,
            min_segment_s=config.min_segment_s,
        )
        return SegmentPlan(segments)
    found = detect_config_shots(_local_path(path), config, fps=reader.info.fps)
    segments = shot_segments(
        found.cuts_s,
        duration,
        min_segment_s=config.shot_min_s,
        max_segment_s=config.shot_max_s,
        shot_features=found.shot_features,
    )
    return SegmentPlan(
        segments,
        cuts_s=found.cuts_s,
        shot_detector=found.detector,
        shot_threshold=found.threshold,
        analysis_s=found.seconds,
        analysis_device=found.device,
        analysis_error=found.error,
    )


def plan_segments(reader: VideoReader, path: str | Path, config: ExtractConfig) -> list[Segment]:
    """The segments of :func:`plan_video` (without what the shot detector found)."""
    return plan_video(reader, path, config).segments


def _open_reader(path: str | Path | RemoteVideo, config: ExtractConfig) -> VideoReader:
    """``config.decoder`` for ``decode_mode: exact``; PyAV with frame skipping for ``fast``.
    A remote video is read while it downloads by PyAV (``storage.stream``, ``decoder: pyav``
    or ``fast``); otherwise ``decoder`` (decord, or NVDEC on the process's GPU:
    :class:`~lvmae.video.nvdec.NvdecReader`) opens its local copy once complete."""
    if isinstance(path, RemoteVideo):
        streams = config.storage.stream and config.decoder != "nvdec"
        if streams or config.decode_mode == "fast" or config.decoder == "pyav":
            return PyAVReader(
                path.open(), short_side=config.image_size, threads=config.decode_threads,
                fast=config.decode_mode == "fast",
            )  # fmt: skip
        path = path.wait()
    if config.decode_mode == "fast":
        return PyAVReader(
            path, short_side=config.image_size, threads=config.decode_threads, fast=True
        )
    if config.decoder == "nvdec":
        return NvdecReader(path, short_side=config.image_size)
    return open_video(
        path, decoder=config.decoder, short_side=config.image_size, threads=config.decode_threads
    )


def _sampled_clips(
    reader: VideoReader, segments: list[Segment], config: ExtractConfig
) -> Iterator[Clip]:
    """The clips of ``segments`` in order. ``exact``: the frames
    :func:`~lvmae.video.segments.sample_frame_indices` picks. ``fast``: for each of those planned
    times, the nearest frame the skipping decoder outputs (:meth:`PyAVReader.nearest_frames`,
    one forward pass), with its real index and time."""
    starts = np.array([s.start_s for s in segments])
    ends = np.array([s.end_s for s in segments])
    times = reader.frame_times_s
    indices = sample_frame_indices(times, starts, ends, config.frames_per_segment)
    if config.decode_mode == "exact":
        reader.will_read(indices.ravel())  # PyAV: leaves the frames nothing needs undecoded
        on_device = getattr(reader, "device_frames", None)  # NVDEC: frames stay on the GPU
        for segment, idx in zip(segments, indices, strict=True):
            if on_device is not None:
                frames = center_crop(on_device(idx), config.image_size).contiguous()
            else:
                frames = np.ascontiguousarray(
                    center_crop(reader.get_frames(idx), config.image_size)
                )
            yield Clip(segment, idx, times[idx], frames)
        return
    planned = times[indices].ravel()  # [S*T] seconds
    order = np.argsort(planned, kind="stable")  # overlapping segments interleave
    per = config.frames_per_segment
    got_index = np.zeros(planned.size, dtype=np.int64)
    got: dict[int, np.ndarray] = {}
    ready = 0  # segments emitted so far
    for k, index, frame in reader.nearest_frames(planned[order]):
        got_index[order[k]], got[int(order[k])] = index, frame
        while ready < len(segments) and all(
            p in got for p in range(ready * per, (ready + 1) * per)
        ):
            span = range(ready * per, (ready + 1) * per)
            idx = got_index[span.start : span.stop].copy()
            frames = center_crop(np.stack([got.pop(p) for p in span]), config.image_size)
            yield Clip(segments[ready], idx, times[idx], np.ascontiguousarray(frames))
            ready += 1


def read_clips(
    path: str | Path | RemoteVideo,
    config: ExtractConfig,
    skip: frozenset[int] = frozenset(),
    index_range: tuple[int, int | None] = (0, None),
    gpus: Sequence[object] = (),
    *,
    plan: SegmentPlan | None = None,
    plan_only: bool = False,
    cpu_reason: str | None = None,
    report: VideoReport | None = None,
) -> Iterator[Clip | SegmentPlan | VideoReport]:
    """Decode a video into clips, in segment order, then one :class:`VideoReport`.

    Opens with ``config.decoder`` (PyAV as the fallback for decord; PyAV with frame
    skipping under ``decode_mode: fast``), plans the segments, samples
    ``frames_per_segment`` frames per segment (:func:`sample_frame_indices`) and yields a
    :class:`Clip` per segment, except the segments whose index is in ``skip`` (already on
    disk from an interrupted run: they are neither decoded nor counted in ``num_clips``)
    or outside ``index_range`` (``start <= index < stop``, stop None: to the end; one task's
    share of a long video, :func:`~lvmae.video.segments.segment_ranges`). The report's
    ``num_segments`` counts the whole plan. Never raises for a bad video: open and decode
    errors end the stream with a ``"failed"`` or ``"partial"`` report. ``decoder: nvdec`` /
    ``auto`` are resolved first against ``gpus``, the GPU ids this worker holds
    (:func:`lvmae.video.nvdec.choose_decoder`; the reason for a CPU decoder goes to
    ``report.decoder_reason``).

    ``plan``: the video's plan, made earlier by a ``plan_only`` read of the same file with
    the same config (a long shot-segmented video split across tasks plans once), used
    instead of planning again. ``plan_only``: open and plan, yield the
    :class:`SegmentPlan`, then the report (``num_clips`` 0); no clip is decoded.
    ``cpu_reason``: ``decoder: auto`` was resolved for the whole run to the CPU fallback,
    for this reason (:func:`pipelines.extract.nvdec_route`), and is not checked again.
    With NVDEC, clips hold their frames on the GPU. ``report``: the report to fill in as
    reading goes (``info``, ``num_segments``, ``decoder_reason`` and shot results as soon as
    they are known, ``num_clips`` as clips are yielded) and yield last; another thread may
    read it meanwhile (:func:`read_clips_bounded`'s time limit). Default: a new one.
    """
    start, stop = index_range
    t0 = time.perf_counter()
    report = VideoReport(status="failed") if report is None else report
    on_disk = 0
    try:
        source = path.open if isinstance(path, RemoteVideo) else lambda: path
        if cpu_reason is not None and config.decoder in ("nvdec", "auto"):
            choice = DecoderChoice(CPU_FALLBACK, cpu_reason)  # decided for the whole run
        else:
            choice = choose_decoder(config.decoder, gpus, lambda: video_codec(source()))
        report.decoder_reason = choice.reason
        if choice.decoder != config.decoder:
            config = config.model_copy(update={"decoder": choice.decoder})
        with _open_reader(path, config) as reader:
            report.info = reader.info
            plan = plan_video(reader, path, config) if plan is None else plan
            plan.annotate(report)  # cuts_s, shot_detector (shot plans)
            segments = plan.segments
            report.num_segments = len(segments)
            mine = [] if plan_only else segments[start:stop]  # indices: positions 0..S-1
            if plan_only:
                yield plan
            todo = [seg for seg in mine if seg.index not in skip]
            on_disk = len(mine) - len(todo)  # held from an earlier run: count for partial
            for clip in _sampled_clips(reader, todo, config) if todo else ():
                yield clip
                report.num_clips += 1
            held, missing = len(reader.frame_times_s), reader.missing_frames
        if missing:  # planned over what is there (also when skip held it all); the rest is lost
            report.status = "partial"
            report.error = (
                f"the file is cut short: it holds {held} of the {held + missing} frames its "
                f"index lists (the first {report.info.duration_s:.1f} s were read)"
            )
        else:
            report.status = "ok"
    except DecodeError as exc:
        report.error = str(exc)
        report.status = "partial" if report.num_clips or on_disk else "failed"
    except Exception as exc:  # any library's surprise on a bad file is still a recorded failure
        report.error = f"{type(exc).__name__}: {exc}"
        report.status = "partial" if report.num_clips or on_disk else "failed"
    report.decode_s = time.perf_counter() - t0
    yield report


_DONE = object()


def _on_disk(
    report: VideoReport,
    skip: frozenset[int] = frozenset(),
    index_range: tuple[int, int | None] = (0, None),
    **_: Any,
) -> int:
    """How many segments of the read's range (``report.num_segments`` planned so far) are
    held on disk from an earlier run (``skip``), as :func:`read_clips` counts them."""
    start, stop = index_range
    end = report.num_segments if stop is None else min(stop, report.num_segments)
    return sum(start <= i < end for i in skip)


def read_clips_bounded(
    path: str | Path | RemoteVideo, config: ExtractConfig, **which: Any
) -> Iterator[Clip | SegmentPlan | VideoReport]:
    """:func:`read_clips` (``which``: its ``skip``, ``index_range``, ``gpus``, ``plan``,
    ``plan_only`` and ``cpu_reason``) under a time limit, with bounded memory.

    Decoding runs in a daemon thread that hands clips over through a queue of
    ``config.max_clips_in_flight`` places, so at most that many clips (plus the one being
    decoded) exist at once. The stream ends with exactly one :class:`VideoReport`: the
    decoder's, or, once ``config.video_time_limit_s`` seconds (wall clock, from the call)
    have passed before it (nothing came in time, or a clip came after the limit), a
    ``"failed"``/``"partial"`` one naming the limit (partial: clips yielded, or segments of
    its range held on disk, ``skip``), with ``num_clips`` the clips yielded and whatever
    the decoder had found by then (``info``, ``num_segments``, ``decoder_reason``, shot
    results). The limit is checked before each clip is yielded, so a decoder that keeps
    the queue fed does not outrun it.
    The thread is then told to stop (a decoder hung inside native code is abandoned, not
    waited for); it also stops when the caller closes the stream early.
    """
    q: queue.Queue = queue.Queue(maxsize=config.max_clips_in_flight)
    stop = threading.Event()
    found = VideoReport(status="failed")  # filled in by the decoder as it goes

    def hand_over(item: object) -> bool:
        """Queue ``item`` unless the consumer has stopped (never blocks past that)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        gen = read_clips(path, config, **which, report=found)
        try:
            for item in gen:
                if not hand_over(item):
                    return
        finally:
            gen.close()
            hand_over(_DONE)  # read_clips ended without a report (it always gives one)

    t0 = time.perf_counter()
    deadline = t0 + config.video_time_limit_s
    name = path.name if isinstance(path, RemoteVideo) else Path(path).name
    worker = threading.Thread(target=produce, name=f"decode:{name}", daemon=True)
    worker.start()
    clips = 0
    try:
        while True:
            try:
                item = q.get(timeout=max(deadline - time.perf_counter(), 0.0))
            except queue.Empty:
                item = None
            if item is _DONE:
                return
            if item is None or (isinstance(item, Clip) and time.perf_counter() > deadline):
                yield replace(
                    found,
                    status="partial" if clips or _on_disk(found, **which) else "failed",
                    error=f"time limit of {config.video_time_limit_s:g} s exceeded "
                    f"after {clips} clips",
                    num_clips=clips,
                    decode_s=time.perf_counter() - t0,
                    extra=dict(found.extra),
                )
                return
            if isinstance(item, Clip):
                clips += 1
            yield item
            if isinstance(item, VideoReport):
                return
    finally:
        stop.set()
