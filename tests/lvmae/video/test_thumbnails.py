"""Segment thumbnails on a real ffmpeg-made mp4: the frame chosen, the JPEG, the cache's key
and its exactly-once making under concurrent requests."""

from __future__ import annotations

import contextlib
import gc
import io
import shutil
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from lvmae.video.decoding import DecodeError, PyAVReader
from lvmae.video.thumbnails import (
    SHORT_SIDE,
    ThumbnailCache,
    cache_key,
    encode_jpeg,
    make_thumbnail,
    thumbnail_time,
)


def decode_jpeg(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data), format="image2pipe") as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def test_thumbnail_time_is_the_middle_frame_the_encoder_saw():
    assert thumbnail_time([1.0, 2.0, 3.0, 4.0], 0.0, 5.0) == 3.0
    assert thumbnail_time(None, 10.0, 15.0) == 12.5
    assert thumbnail_time([], 10.0, 15.0) == 12.5


def test_jpeg_round_trips_a_frame():
    frame = np.zeros((160, 214, 3), np.uint8)
    frame[:, :107] = (255, 0, 0)
    back = decode_jpeg(encode_jpeg(frame))
    assert back.shape == (160, 214, 3)
    assert np.abs(back.astype(int) - frame).mean() < 8
    with pytest.raises(ValueError, match="uint8"):
        encode_jpeg(frame.astype(np.float32))


def test_thumbnail_shows_the_scene_at_its_time(scene_video):
    """The scenes video: smptebars 0–4 s, mandelbrot 4–8 s, life 8–12 s."""
    with PyAVReader(scene_video, short_side=SHORT_SIDE) as reader:
        thumbs = [decode_jpeg(make_thumbnail(reader, t)) for t in (2.0, 6.0, 10.0, 2.0)]
    assert min(thumbs[0].shape[:2]) == SHORT_SIDE
    assert np.abs(thumbs[0].astype(int) - thumbs[3]).mean() < 1  # same time, same frame
    assert np.abs(thumbs[0].astype(int) - thumbs[1]).mean() > 20  # another scene
    assert np.abs(thumbs[1].astype(int) - thumbs[2]).mean() > 20


def test_cache_makes_each_thumbnail_once_even_when_asked_at_once(scene_video, tmp_path):
    cache = ThumbnailCache(tmp_path)
    got: list[bytes] = []
    threads = [threading.Thread(target=lambda: got.append(
        cache.get("cfg", "scenes.mp4", 1, str(scene_video), 6.0))) for _ in range(8)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.made == 1 and len(set(got)) == 1 and len(got) == 8
    assert cache.path("cfg", "scenes.mp4", 1).read_bytes() == got[0]
    assert not list(tmp_path.rglob("*.tmp"))
    # the key covers the config and the segment: another config is another thumbnail
    assert cache_key("cfg", "scenes.mp4", 1) != cache_key("other", "scenes.mp4", 1)
    assert cache_key("cfg", "scenes.mp4", 1) != cache_key("cfg", "scenes.mp4", 2)
    cache.get("other", "scenes.mp4", 1, str(scene_video), 6.0)
    assert cache.made == 2
    with pytest.raises(DecodeError):
        cache.get("cfg", "gone.mp4", 0, str(tmp_path / "gone.mp4"), 1.0)
    assert not cache.path("cfg", "gone.mp4", 0).exists()
    cache.close()


def open_files_under(root) -> int:
    """How many of this process's file descriptors name a file under ``root`` (Linux)."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            count += fd.readlink().is_relative_to(root)
    return count


def test_concurrent_requests_keep_open_readers_bounded_and_close_them(scene_video, tmp_path):
    """Many threads over more videos than ``max_readers``: no reader is left open beyond the
    bound (an entry in use is never evicted, so no reader is opened outside the cache), and
    :meth:`ThumbnailCache.close` closes them all."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(12):
        shutil.copy(scene_video, videos / f"v{i}.mp4")
    cache = ThumbnailCache(tmp_path / "cache", max_readers=3)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for s in range(4):
                v = (i + s) % 12
                cache.get("cfg", f"v{v}.mp4", s, str(videos / f"v{v}.mp4"), 1.0 + 2 * s)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    gc.disable()  # a reader dropped without close() must show as an open file, not be collected
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert cache.made == 48
        assert open_files_under(videos) <= 3
        cache.close()
        assert open_files_under(videos) == 0
    finally:
        gc.enable()
