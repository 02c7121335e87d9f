"""Segment plans: how a long video is cut into short segments, and which frames of each
segment the frozen encoder sees.

LV-MAE's first stage (Naiman et al., ICCV 2025, §3.1) cuts every video into short
segments — 5 s, no overlap, by default — and embeds each with a frozen video encoder from
8 frames sampled uniformly over the segment. Plans here work in seconds on the video's own
frame timestamps, so variable-frame-rate videos come out right. Pure NumPy; no decoding.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

_EPS = 1e-6


@dataclass(frozen=True)
class Segment:
    """One segment of a video: ``index`` (0-based, in time order) and its span
    ``[start_s, end_s)`` in seconds from the first frame."""

    index: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def fixed_segments(
    duration_s: float,
    *,
    segment_s: float = 5.0,
    stride_s: float | None = None,
    min_segment_s: float = 1.0,
) -> list[Segment]:
    """Fixed windows of ``segment_s`` seconds starting every ``stride_s`` seconds.

    ``stride_s`` defaults to ``segment_s`` (no overlap, the paper's setting); a smaller stride
    overlaps windows, a larger one leaves gaps. After the last full window, the trailing
    remainder becomes one shorter segment ``[last_start + stride_s, duration_s)`` when it
    adds at least ``min_segment_s`` seconds; a video shorter than one window gives one
    segment covering all of it.

    Args:
        duration_s: video duration in seconds (> 0).
        segment_s: window length in seconds (> 0).
        stride_s: seconds between window starts (> 0), default ``segment_s``.
        min_segment_s: shortest trailing remainder kept, in seconds (>= 0).

    Returns:
        The segments in time order, indices 0..S-1.

    Raises:
        ValueError: a non-positive duration, window or stride, or a negative minimum.
    """
    stride_s = segment_s if stride_s is None else stride_s
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if not segment_s > 0 or not stride_s > 0:
        raise ValueError(f"segment_s and stride_s must be > 0, got {segment_s}, {stride_s}")
    if min_segment_s < 0:
        raise ValueError(f"min_segment_s must be >= 0, got {min_segment_s}")
    if duration_s < segment_s - _EPS:
        return [Segment(0, 0.0, float(duration_s))]
    n_full = int(np.floor((duration_s - segment_s) / stride_s + _EPS)) + 1
    starts = np.arange(n_full) * stride_s
    segments = [Segment(i, float(s), float(s + segment_s)) for i, s in enumerate(starts)]
    covered = segments[-1].end_s
    tail_start = float(starts[-1] + stride_s)
    if (
        duration_s - covered > _EPS
        and tail_start < duration_s - _EPS
        and duration_s - tail_start >= min_segment_s - _EPS
    ):
        segments.append(Segment(n_full, tail_start, float(duration_s)))
    return segments


def sample_frame_indices(
    frame_times_s: np.ndarray, starts_s: np.ndarray, ends_s: np.ndarray, num_frames: int
) -> np.ndarray:
    """Frames sampled uniformly over each segment, by timestamp.

    For segment ``[a, b)`` the target times are ``a + (j + 0.5) (b - a) / N`` for
    ``j = 0..N-1`` (the centres of N equal sub-spans), and each picks the frame on screen at
    that time: the last frame whose timestamp is ``<=`` the target. Deterministic; correct for
    variable frame rates. A segment with fewer than N frames repeats frames.

    Args:
        frame_times_s: ``[F]`` presentation time of every frame, seconds, non-decreasing.
        starts_s, ends_s: ``[S]`` segment bounds, seconds.
        num_frames: N, frames per segment (8 in the paper, following LanguageBind).

    Returns:
        ``[S, N]`` int64 frame indices into ``frame_times_s``, non-decreasing along each row.

    Raises:
        ValueError: no frames, or ``num_frames < 1``.
    """
    frame_times_s = np.asarray(frame_times_s, dtype=np.float64)
    if frame_times_s.size == 0:
        raise ValueError("the video has no frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    starts = np.asarray(starts_s, dtype=np.float64)[:, None]
    ends = np.asarray(ends_s, dtype=np.float64)[:, None]
    offsets = (np.arange(num_frames, dtype=np.float64) + 0.5) / num_frames
    targets = starts + offsets[None, :] * (ends - starts)
    idx = np.searchsorted(frame_times_s, targets + _EPS, side="right") - 1
    return np.clip(idx, 0, frame_times_s.size - 1).astype(np.int64)


def histogram_distance(a: np.ndarray, b: np.ndarray, bins: int = 8) -> float:
    """Half the L1 distance between the joint-normalised per-channel colour histograms of two
    frames (``[H, W, 3]`` uint8): 0 for identical colour content, 1 for disjoint."""
    return _distance(_colour_histogram(a, bins), _colour_histogram(b, bins))


def _distance(ha: np.ndarray, hb: np.ndarray) -> float:
    return float(0.5 * np.abs(ha - hb).sum() / 3.0)


def _colour_histogram(frame: np.ndarray, bins: int) -> np.ndarray:
    q = (frame.reshape(-1, 3).astype(np.int32) * bins) // 256
    counts = np.stack([np.bincount(q[:, c], minlength=bins) for c in range(3)])
    return counts / max(q.shape[0], 1)


def detect_cuts(
    frames: Iterable[tuple[float, np.ndarray]], *, threshold: float = 0.3
) -> list[float]:
    """Shot boundaries from a stream of low-resolution frames.

    A cut is placed at the time of a frame whose colour histogram differs from the previous
    frame's by more than ``threshold`` (see :func:`histogram_distance`). Streams: holds only
    the previous frame, so memory does not grow with the video's length.

    Args:
        frames: ``(time_s, frame)`` pairs in time order; frames ``[H, W, 3]`` uint8, any size
            (a short side of 32–64 px is plenty).
        threshold: distance in ``[0, 1]`` above which consecutive frames are a cut.

    Returns:
        Cut times in seconds, increasing.
    """
    cuts: list[float] = []
    prev_hist = None
    for time_s, frame in frames:
        hist = _colour_histogram(frame, 8)
        if prev_hist is not None and _distance(hist, prev_hist) > threshold:
            cuts.append(float(time_s))
        prev_hist = hist
    return cuts


def shot_segments(
    cut_times_s: Iterable[float],
    duration_s: float,
    *,
    min_segment_s: float = 2.0,
    max_segment_s: float = 10.0,
) -> list[Segment]:
    """Shot-based plan: segments follow the video's shots, then are brought within bounds.

    Shots (spans between consecutive cuts) shorter than ``min_segment_s`` are merged into the
    following shot (the last one into its predecessor); shots longer than ``max_segment_s``
    are split into the fewest equal parts no longer than ``max_segment_s``.

    Args:
        cut_times_s: cut times in seconds (any order; those outside ``(0, duration_s)`` are
            ignored).
        duration_s: video duration in seconds (> 0).
        min_segment_s, max_segment_s: bounds in seconds, ``0 <= min <= max``, ``max > 0``.

    Returns:
        Contiguous segments covering ``[0, duration_s)`` in time order.

    Raises:
        ValueError: a non-positive duration or inconsistent bounds.
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if not (0 <= min_segment_s <= max_segment_s and max_segment_s > 0):
        raise ValueError(
            f"need 0 <= min_segment_s <= max_segment_s and max_segment_s > 0, "
            f"got {min_segment_s}, {max_segment_s}"
        )
    cuts = sorted(c for c in cut_times_s if _EPS < c < duration_s - _EPS)
    bounds = [0.0, *cuts, float(duration_s)]
    merged = [bounds[0]]
    for b in bounds[1:-1]:
        if b - merged[-1] >= min_segment_s - _EPS:
            merged.append(b)
    merged.append(bounds[-1])
    if len(merged) > 2 and merged[-1] - merged[-2] < min_segment_s - _EPS:
        del merged[-2]  # the last shot is too short: merge it into its predecessor
    spans: list[tuple[float, float]] = []
    for a, b in itertools.pairwise(merged):
        parts = max(1, int(np.ceil((b - a) / max_segment_s - _EPS)))
        edges = np.linspace(a, b, parts + 1)
        spans.extend(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))
    return [Segment(i, float(a), float(b)) for i, (a, b) in enumerate(spans)]
