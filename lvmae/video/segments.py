"""Segment plans: how a long video is cut into short segments, and which frames of each
segment the frozen encoder sees.

LV-MAE's first stage (Naiman et al., ICCV 2025, §3.1) cuts every video into short
segments — 5 s, no overlap, by default — and embeds each with a frozen video encoder from
8 frames sampled uniformly over the segment. Plans here work in seconds on the video's own
frame timestamps, so variable-frame-rate videos come out right. Pure NumPy; no decoding.
"""

from __future__ import annotations

import heapq
import itertools
import math
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


def segment_ranges(
    duration_s: float, *, range_s: float, stride_s: float
) -> list[tuple[int, int | None]]:
    """Split a video's fixed segments (:func:`fixed_segments`, index ``k`` starting at
    ``k * stride_s`` seconds) into ranges of segment indices that separate tasks decode.

    A video of at most ``range_s`` seconds is one range. A longer one is ``n = ceil(duration_s
    / range_s)`` ranges of ``ceil(ceil(duration_s / stride_s) / n)`` segments each; the last
    range is open (``stop`` None), so the ranges cover every index whatever the decoder's own
    count of segments turns out to be (``duration_s`` is the container's estimate).

    Args:
        duration_s: the video's duration in seconds (>= 0; an estimate is fine).
        range_s: the longest video kept whole, and the target range length, in seconds (> 0).
        stride_s: seconds between segment starts (> 0).

    Returns:
        ``[(start, stop), ...]``: segment indices ``start <= k < stop`` (``stop`` None: to
        the end), in order, disjoint, covering ``[0, inf)``.

    Raises:
        ValueError: a negative duration or a non-positive ``range_s`` / ``stride_s``.
    """
    if duration_s < 0 or not range_s > 0 or not stride_s > 0:
        raise ValueError(
            f"need duration_s >= 0, range_s > 0, stride_s > 0; got {duration_s}, {range_s}, "
            f"{stride_s}"
        )
    if duration_s <= range_s + _EPS:
        return [(0, None)]
    n = math.ceil(duration_s / range_s - _EPS)
    per = math.ceil(math.ceil(duration_s / stride_s - _EPS) / n)
    starts = [i * per for i in range(n)]
    return [*itertools.pairwise(starts), (starts[-1], None)]


def split_plan(segments: list[Segment], *, range_s: float) -> list[tuple[int, int | None]]:
    """Split a planned video (its segments, any lengths: a shot plan) into ranges of segment
    indices that separate tasks decode, each about ``range_s`` seconds of video.

    The plan's span ``[0, D)`` (``D``: the last segment's end) is cut into ``n = ceil(D /
    range_s)`` equal spans of time, and range ``i`` holds the segments that start in span
    ``i``; a span where no segment starts (a segment longer than ``D / n``) gives no range,
    so there may be fewer than ``n``. A plan of at most ``range_s`` seconds is one range.
    The last range is open (``stop`` None), as in :func:`segment_ranges`.

    Args:
        segments: the plan, indices ``0..S-1`` in time order (``S >= 1``).
        range_s: the target range length in seconds (> 0).

    Returns:
        ``[(start, stop), ...]``: segment indices ``start <= k < stop`` (``stop`` None: to
        the end), in order, disjoint, non-empty, covering ``[0, inf)``.

    Raises:
        ValueError: an empty plan or a non-positive ``range_s``.
    """
    if not segments or not range_s > 0:
        raise ValueError(f"need segments and range_s > 0; got {len(segments)} segments, {range_s}")
    span = max(s.end_s for s in segments)
    n = max(1, math.ceil(span / range_s - _EPS))
    starts_s = np.array([s.start_s for s in segments])
    cuts = np.searchsorted(starts_s, np.arange(1, n) * (span / n) - _EPS, side="left")
    starts = sorted({0, *(int(c) for c in cuts if c < len(segments))})
    return [*itertools.pairwise(starts), (starts[-1], None)]


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


def shot_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two shot descriptors (0 when either is all zeros)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(np.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else 0.0


def _shots(
    cut_times_s: Iterable[float], duration_s: float, shot_features: np.ndarray | None
) -> tuple[list[tuple[float, float]], np.ndarray | None]:
    """The shots ``[(start, end)]`` between the cuts, with their descriptors; cuts outside
    ``(0, duration_s)`` and the empty shots they would make are dropped."""
    cuts = [float(c) for c in cut_times_s]
    if shot_features is None:
        cuts.sort()
    elif any(b < a for a, b in itertools.pairwise(cuts)):
        raise ValueError("with shot_features, cut_times_s must be in increasing order")
    bounds = [0.0, *(min(max(c, 0.0), float(duration_s)) for c in cuts), float(duration_s)]
    keep = [i for i, (a, b) in enumerate(itertools.pairwise(bounds)) if b - a > _EPS]
    spans = [(bounds[i], bounds[i + 1]) for i in keep]
    if shot_features is None:
        return spans, None
    features = np.asarray(shot_features, dtype=np.float64)
    if features.ndim != 2 or len(features) != len(cuts) + 1:
        raise ValueError(
            f"shot_features must be [len(cut_times_s) + 1, D] = [{len(cuts) + 1}, D], "
            f"got shape {features.shape}"
        )
    return spans, features[keep]


def merge_short_shots(
    spans: list[tuple[float, float]], features: np.ndarray | None, min_segment_s: float
) -> list[tuple[float, float]]:
    """Merge every shot shorter than ``min_segment_s`` into a neighbour, shortest first.

    A short shot joins the neighbour whose descriptor is most similar to its own (cosine of
    the duration-weighted mean descriptor of each merged group; the following neighbour on
    a tie, and always when ``features`` is None); the first and last shots have one
    neighbour. Only a cut next to a short group is ever removed, so a cut between two shots
    that are both at least ``min_segment_s`` long always stays. Stops when every group is
    long enough or one group is left.

    Args:
        spans: contiguous ``(start_s, end_s)`` shots in time order.
        features: ``[len(spans), D]`` shot descriptors, or None.
        min_segment_s: the shortest group kept on its own, seconds.

    Returns:
        The merged groups' ``(start_s, end_s)`` in time order.
    """
    n = len(spans)
    start = [a for a, _ in spans]
    end = [b for _, b in spans]
    weight = [b - a for a, b in spans]
    feat = None if features is None else [f * w for f, w in zip(features, weight, strict=True)]
    prev = list(range(-1, n - 1))
    nxt = [*range(1, n), -1]
    alive = [True] * n
    heap = [(end[i] - start[i], i) for i in range(n)]
    heapq.heapify(heap)
    groups = n
    while heap and groups > 1:
        length, i = heapq.heappop(heap)
        if not alive[i] or length != end[i] - start[i]:
            continue  # merged away, or grown since it was queued
        if length >= min_segment_s - _EPS:
            break
        left, right = prev[i], nxt[i]
        into = right
        if right < 0 or (
            left >= 0
            and feat is not None
            and shot_similarity(feat[i], feat[left]) > shot_similarity(feat[i], feat[right])
        ):
            into = left
        # absorb i into its neighbour ``into``; the survivor keeps the index ``into``
        start[into], end[into] = min(start[into], start[i]), max(end[into], end[i])
        weight[into] += weight[i]
        if feat is not None:
            feat[into] = feat[into] + feat[i]
        alive[i] = False
        if into == left:
            nxt[left] = right
            if right >= 0:
                prev[right] = left
        else:
            prev[right] = left
            if left >= 0:
                nxt[left] = right
        groups -= 1
        heapq.heappush(heap, (end[into] - start[into], into))
    return sorted((start[i], end[i]) for i in range(n) if alive[i])


def shot_segments(
    cut_times_s: Iterable[float],
    duration_s: float,
    *,
    min_segment_s: float = 2.0,
    max_segment_s: float = 10.0,
    shot_features: np.ndarray | None = None,
) -> list[Segment]:
    """Shot-based plan: segments follow the video's shots, then are brought within bounds.

    Shots (spans between consecutive cuts) shorter than ``min_segment_s`` join the
    neighbour they are most similar to (:func:`merge_short_shots`; without
    ``shot_features``, the following shot, the last one its predecessor); a cut between two
    shots that are both at least ``min_segment_s`` long is never removed. Then shots longer
    than ``max_segment_s`` are split into the fewest equal parts no longer than
    ``max_segment_s``. Every segment is then at most ``max_segment_s`` long, and at least
    ``min_segment_s`` when ``min_segment_s <= max_segment_s / 2`` (a split part is longer
    than half the maximum) — except a video shorter than ``min_segment_s``, which is one
    segment.

    Args:
        cut_times_s: cut times in seconds: the start of each new shot. Those outside
            ``(0, duration_s)`` are ignored. Any order without ``shot_features``;
            increasing with them.
        duration_s: video duration in seconds (> 0).
        min_segment_s, max_segment_s: bounds in seconds, ``0 <= min <= max``, ``max > 0``.
        shot_features: optional ``[len(cut_times_s) + 1, D]`` descriptor of each shot (row
            ``i`` is the shot that ends at cut ``i``), e.g. its mean colour histogram.

    Returns:
        Contiguous segments covering ``[0, duration_s)`` in time order.

    Raises:
        ValueError: a non-positive duration, inconsistent bounds, or features that do not
            match the cuts.
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if not (0 <= min_segment_s <= max_segment_s and max_segment_s > 0):
        raise ValueError(
            f"need 0 <= min_segment_s <= max_segment_s and max_segment_s > 0, "
            f"got {min_segment_s}, {max_segment_s}"
        )
    spans, features = _shots(cut_times_s, duration_s, shot_features)
    merged = merge_short_shots(spans, features, min_segment_s)
    out: list[tuple[float, float]] = []
    for a, b in merged:
        parts = max(1, int(np.ceil((b - a) / max_segment_s - _EPS)))
        edges = np.linspace(a, b, parts + 1)
        out.extend(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))
    return [Segment(i, float(a), float(b)) for i, (a, b) in enumerate(out)]
