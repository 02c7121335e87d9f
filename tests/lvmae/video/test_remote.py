"""Videos read from a real S3-compatible server (tests/s3server.py) while they download:
the same clips as from the local file, temporary files bounded, named and cleaned up, and
transient errors mid-read retried by the client, then recorded with the object's URI."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from lvmae.config import ExtractConfig, StorageConfig
from lvmae.storage import use_object_store
from lvmae.video.clips import Clip, read_clips
from lvmae.video.inputs import video_source
from lvmae.video.remote import PREFIX, RemoteVideo, remove_stale


def _clips(source, config):
    items = list(read_clips(source, config))
    return [c for c in items if isinstance(c, Clip)], items[-1]


@pytest.mark.parametrize(
    ("fields", "stream"),
    [({"decoder": "pyav"}, True), ({"decode_mode": "fast"}, True), ({"decoder": "decord"}, False)],
)
def test_an_object_decodes_to_the_same_clips_as_the_local_file(  # noqa: PLR0917
    fields, stream, s3_archive, s3_env, scene_video, tmp_path
):
    """PyAV streaming the object, or decord on its whole copy (``storage.stream: false``):
    the clips of the local file, bit for bit."""
    storage = StorageConfig(fetch_dir=str(tmp_path), stream=stream)
    config = ExtractConfig(**fields, storage=storage)
    local, local_report = _clips(scene_video, config)
    with video_source("s3://videos/scenes.mp4", config.storage) as remote:
        assert isinstance(remote, RemoteVideo)
        assert remote.local_path.parent == tmp_path and remote.local_path.name.startswith(PREFIX)
        got, report = _clips(remote, config)
    assert report.status == local_report.status == "ok"
    assert report.info == local_report.info
    assert len(got) == len(local) == 3
    for a, b in zip(got, local, strict=True):
        assert np.array_equal(a.frame_indices, b.frame_indices)
        assert np.array_equal(a.frames, b.frames)
    assert not list(tmp_path.iterdir())  # the temporary copy is gone


def test_remote_videos_stream_through_pyav_by_default(s3_archive, s3_env, tmp_path):
    """``decoder: decord`` with ``storage.stream`` (default): the object is decoded by PyAV
    as it downloads; the report says so."""
    config = ExtractConfig(decoder="decord", storage=StorageConfig(fetch_dir=str(tmp_path)))
    assert config.storage.stream
    with video_source("s3://videos/scenes.mp4", config.storage) as remote:
        clips, report = _clips(remote, config)
    assert report.status == "ok" and report.info.decoder == "pyav" and len(clips) == 3


def test_pyav_reads_the_frame_index_from_the_container_not_by_demuxing(
    s3_archive, s3_env, scene_video, tmp_path
):
    """Opened from a file object, PyAV takes the timestamps from the mp4 index: the same
    frame times as a full demux of the local file."""
    from lvmae.video.decoding import PyAVReader

    with PyAVReader(scene_video, short_side=64) as by_demux:
        expected = by_demux.frame_times_s
    with (
        RemoteVideo("s3://videos/scenes.mp4", StorageConfig(fetch_dir=str(tmp_path))) as rv,
        PyAVReader(rv.open(), short_side=64) as reader,
    ):
        assert reader._index_pts(reader._stream) is not None  # the index path is taken
        assert np.array_equal(reader.frame_times_s, expected)


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = tmp_path / f"{PREFIX}{proc.pid}-aaaaaaaaaaaa.mp4"
    mine = tmp_path / f"{PREFIX}{os.getpid()}-bbbbbbbbbbbb.mp4"
    alive = tmp_path / f"{PREFIX}1-cccccccccccc.mp4"  # pid 1 always runs
    other = tmp_path / "somebody-elses.mp4"
    for p in (dead, mine, alive, other):
        p.write_bytes(b"x")
    assert remove_stale(tmp_path) == [dead]
    assert {p.name for p in tmp_path.iterdir()} == {mine.name, alive.name, other.name}


class FlakyProxy:
    """A TCP relay to ``target`` that cuts the first ``cuts`` connections' responses after
    ``after`` bytes (the connection reset mid-body, as a flaky network does)."""

    def __init__(self, target: tuple[str, int], cuts: int, after: int = 2000) -> None:
        self.target, self.cuts, self.after = target, cuts, after
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.cut_count = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            cut = self.cut_count < self.cuts
            self.cut_count += cut
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(
                target=self._pipe, args=(server, client, self.after if cut else None), daemon=True
            ).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(("cuts", "attempts", "ok"), [(2, 5, True), (1000, 2, False)])
def test_reads_cut_mid_body_are_retried_then_recorded_with_the_uri(  # noqa: PLR0917
    cuts, attempts, ok, s3_archive, s3_env, scene_video, tmp_path, monkeypatch
):
    """Through a relay that resets connections mid-response: a few cuts are absorbed by
    the client's retries (the clips come out whole); with cuts on every connection the
    video's report is a failure naming the object's URI, and nothing is left on disk."""
    host, port = s3_env.endpoint.removeprefix("http://").split(":")
    proxy = FlakyProxy((host, int(port)), cuts)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    storage = StorageConfig(fetch_dir=str(tmp_path), max_attempts=attempts, read_timeout_s=5)
    use_object_store(storage)
    config = ExtractConfig(decoder="pyav", storage=storage)
    uri = "s3://videos/scenes.mp4"
    try:
        try:
            with video_source(uri, storage) as remote:
                clips, report = _clips(remote, config)
            error = report.error
        except OSError as exc:  # the object's size could not even be read
            clips, error = [], str(exc)
    finally:
        proxy.close()
    assert proxy.cut_count >= min(cuts, 1)
    if ok:
        assert error is None and len(clips) == 3
    else:
        assert error is not None and uri in error, error
    assert not list(Path(tmp_path).iterdir())
