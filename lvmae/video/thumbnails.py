"""Segment thumbnails: one small JPEG per segment, made on first view and cached on disk.

A thumbnail is the frame nearest to the middle of the frames the encoder saw for the segment
(its ``frame_times_s``), decoded by :mod:`lvmae.video.decoding` (PyAV, resized at decode time
to :data:`SHORT_SIDE` pixels on the short side, aspect kept) and encoded as baseline JPEG by
FFmpeg's ``mjpeg`` encoder through PyAV, so neither Pillow nor a system library is needed.

Why on first view and not during extraction: the extraction's decode workers see only
224-px centre crops, so a thumbnail of the whole frame would mean another decode path and a
new column or folder with its own resume rules in the extraction; and most segments of an
archive are never looked at. ``benchmarks/bench_thumbnails.py`` measures both costs
(``benchmarks/RESULTS.md``, "Thumbnails").

The cache (:class:`ThumbnailCache`) keys a thumbnail by the extraction's ``config_id``, the
``video_id``, the ``segment_index`` and :data:`SPEC` (size, format, quality), so each is made
once: a per-key lock stops two requests in one process from both making it, and the file is
written under a temporary name and renamed, so a reader (or another process) never sees half
a file. Pure Python + PyAV; no Ray.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from lvmae.video.decoding import DecodeError, PyAVReader, VideoReader

SHORT_SIDE = 160  # pixels on the thumbnail's short side
QUALITY = 5  # FFmpeg mjpeg qscale (2 best .. 31 worst): ~5 KiB at 213x160
SPEC = f"jpeg-s{SHORT_SIDE}-q{QUALITY}-v1"
"""What a cached thumbnail was made with; part of its key (a change makes new files)."""
MEDIA_TYPE = "image/jpeg"


def thumbnail_time(frame_times_s: Sequence[float] | None, start_s: float, end_s: float) -> float:
    """Seconds into the video of a segment's thumbnail: the middle one of the frames the
    encoder saw (``frame_times_s``), or the segment's midpoint when they are not recorded."""
    if frame_times_s is not None and len(frame_times_s):
        return float(frame_times_s[len(frame_times_s) // 2])
    return (float(start_s) + float(end_s)) / 2


def encode_jpeg(frame: np.ndarray, quality: int = QUALITY) -> bytes:
    """``frame [H, W, 3]`` uint8 RGB as baseline JPEG bytes (FFmpeg's mjpeg encoder, full
    range YUV 4:2:0; ``quality`` is its qscale, 2..31, lower is better).

    Raises:
        ValueError: not an ``[H, W, 3]`` uint8 array.
    """
    import av  # PyAV: loaded only where thumbnails are made

    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected [H, W, 3] uint8 RGB, got {frame.shape} {frame.dtype}")
    h, w = frame.shape[:2]
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = w - w % 2, h - h % 2
    codec.pix_fmt = "yuvj420p"
    codec.time_base = Fraction(1, 25)
    codec.options = {"qmin": str(quality), "qmax": str(quality)}  # fixed quality
    rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[: codec.height, : codec.width]))
    packets = codec.encode(rgb.reformat(format="yuvj420p")) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)


def make_thumbnail(reader: VideoReader, time_s: float, quality: int = QUALITY) -> bytes:
    """JPEG of the frame of ``reader`` nearest to ``time_s`` (seconds from the first frame),
    at the reader's output size.

    Raises:
        DecodeError: the frame cannot be decoded.
    """
    times = reader.frame_times_s
    i = int(np.clip(np.searchsorted(times, time_s), 0, len(times) - 1))
    if i > 0 and abs(times[i - 1] - time_s) <= abs(times[i] - time_s):
        i -= 1
    return encode_jpeg(reader.get_frames(np.array([i]))[0], quality)


def cache_key(config_id: str, video_id: str, segment_index: int, spec: str = SPEC) -> str:
    """The file name stem of a cached thumbnail: SHA-1 of everything that determines it."""
    text = f"{spec}\0{config_id}\0{video_id}\0{int(segment_index)}"
    return hashlib.sha1(text.encode()).hexdigest()


@dataclass
class _Entry:
    """One video's slot in :class:`ThumbnailCache`: the lock that serialises work on its
    reader, the reader (None until opened) and how many requests hold or wait for the lock
    (an entry in use is never evicted)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    reader: VideoReader | None = None
    users: int = 0


class ThumbnailCache:
    """Thumbnails made on first request and kept under ``directory / SPEC / config_id``.

    Open readers are kept for the ``max_readers`` most recently used videos (a video page asks
    for every segment of one video in time order: one open and one forward decode pass), and
    one lock per video serialises the work on a reader, which is not thread-safe. A video's
    entry is evicted (its reader closed) only when no request holds or waits for it, so open
    readers number at most ``max_readers`` plus the videos being worked on at that moment;
    every reader opened is kept in its entry and closed on eviction or :meth:`close`.

    Args:
        directory: cache root (created on first write).
        max_readers: open readers kept (one per video).
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_readers: int = 8) -> None:
        self.directory = Path(directory)
        self.max_readers = max_readers
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._guard = threading.Lock()
        self.made = 0  # thumbnails made (decoded and encoded) by this instance

    def path(self, config_id: str, video_id: str, segment_index: int) -> Path:
        key = cache_key(config_id, video_id, segment_index)
        return self.directory / SPEC / config_id / key[:2] / f"{key}.jpg"

    def get(
        self, config_id: str, video_id: str, segment_index: int, source: str, time_s: float
    ) -> bytes:
        """The thumbnail's bytes: from the cache, else decoded from ``source`` (a local file)
        at ``time_s``, written to the cache and returned.

        Raises:
            DecodeError: the video cannot be opened or the frame decoded (nothing cached).
        """
        target = self.path(config_id, video_id, segment_index)
        if target.is_file():
            return target.read_bytes()
        entry = self._acquire(video_id)
        try:
            with entry.lock:
                if target.is_file():  # made while this request waited for the lock
                    return target.read_bytes()
                if entry.reader is None:
                    if not Path(source).is_file():
                        raise DecodeError(f"not a readable file: {source}")
                    entry.reader = PyAVReader(source, short_side=SHORT_SIDE)
                try:
                    data = make_thumbnail(entry.reader, time_s)
                except DecodeError:
                    entry.reader.close()
                    entry.reader = None
                    raise
                _write_atomic(target, data)
                self.made += 1
                return data
        finally:
            self._release(video_id, entry)

    def _acquire(self, video_id: str) -> _Entry:
        """``video_id``'s entry (made if needed), marked in use and most recently used."""
        with self._guard:
            entry = self._entries.get(video_id)
            if entry is None:
                entry = self._entries[video_id] = _Entry()
            entry.users += 1
            self._entries.move_to_end(video_id)
            idle = self._evict()
        _close(idle)
        return entry

    def _release(self, video_id: str, entry: _Entry) -> None:
        """End a request's use of ``entry``; close its reader if the entry was dropped from the
        cache meanwhile (:meth:`close`), and evict what is over ``max_readers``."""
        with self._guard:
            entry.users -= 1
            orphan = entry.users == 0 and self._entries.get(video_id) is not entry
            idle = self._evict()
            if orphan and entry.reader is not None:
                idle.append(entry.reader)
                entry.reader = None
        _close(idle)

    def _evict(self) -> list[VideoReader]:
        """Drop the least recently used entries not in use while more than ``max_readers``
        are kept (caller holds the guard); returns their readers, to close."""
        readers = []
        excess = len(self._entries) - self.max_readers
        for video_id in list(self._entries):
            if excess <= 0:
                break
            entry = self._entries[video_id]
            if entry.users == 0:
                del self._entries[video_id]
                excess -= 1
                if entry.reader is not None:
                    readers.append(entry.reader)
                    entry.reader = None
        return readers

    def close(self) -> None:
        """Close every open reader (one in use is closed when its request ends)."""
        with self._guard:
            entries = list(self._entries.values())
            self._entries.clear()
            idle = []
            for entry in entries:
                if entry.users == 0 and entry.reader is not None:
                    idle.append(entry.reader)
                    entry.reader = None
        _close(idle)


def _close(readers: list[VideoReader]) -> None:
    for reader in readers:
        reader.close()


def _write_atomic(target: Path, data: bytes) -> None:
    """``data`` into ``target`` through a temporary sibling and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
