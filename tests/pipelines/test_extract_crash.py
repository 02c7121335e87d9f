"""A decode worker that dies on one file (a native crash in the decoder, the out-of-memory
killer): the video is recorded as failed after ``extract.task_retries`` more tries, and the
run goes on and ends. Ray Data alone retries such a task forever."""

from __future__ import annotations

import shutil

import pytest

from lvmae.config import ExtractConfig
from lvmae.progress import Progress
from lvmae.storage import read_segments, read_videos
from lvmae.video.inputs import VideoSource
from pipelines.extract import ExtractionSummary, OutputWriter, _Bookkeeping, run_extraction
from tests.crash import KillWhoOpens


@pytest.fixture(scope="module")
def crash_archive(tmp_path_factory, scene_video):
    """A good video and one (60 s, so it stays open a while) whose decoding kills."""
    from lvmae.video.samples import Scene, make_video

    root = tmp_path_factory.mktemp("crash")
    shutil.copy(scene_video, root / "good.mp4")
    make_video(root / "crash.mp4", [Scene("testsrc2", 60.0)], width=64, height=48, fps=10)
    return root


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """8 min of 320x180 (96 segments, under ``range_s``): about 2 s to decode and embed
    here, a window for a kill after its first segments are on disk."""
    from lvmae.video.samples import Scene, make_video

    path = tmp_path_factory.mktemp("long") / "long.mp4"
    return make_video(path, [Scene("testsrc2", 480.0)], width=320, height=180, fps=25)


def test_a_video_whose_decoder_dies_is_recorded_failed_and_the_run_ends(
    crash_archive, tmp_path, ray_local
):
    out = tmp_path / "out"
    killer = KillWhoOpens(crash_archive / "crash.mp4")
    killer.start()
    try:
        summary = run_extraction(
            str(crash_archive), str(out), ExtractConfig(task_retries=1), progress=False,
            track=False,
        )  # fmt: skip
    finally:
        killer.stop.set()
        killer.join()
    assert killer.kills == 2  # the first try and one retry, nothing more
    rows = {r["video_id"]: r for r in read_videos(str(out)).to_pylist()}
    assert rows["good.mp4"]["status"] == "ok"
    assert rows["crash.mp4"]["status"] == "failed"
    assert "after 2 tries" in rows["crash.mp4"]["error"]
    assert summary.videos_ok == 1 and summary.videos_failed == 1
    written = read_segments(str(out), columns=["video_id"])["video_id"].to_pylist()
    assert set(written) == {"good.mp4"}
    assert len(written) == rows["good.mp4"]["segments_written"] > 0


def test_a_task_retried_after_a_kill_mid_video_writes_each_segment_once(
    long_video, tmp_path, ray_local
):
    """Killed once while it decodes, after some of its segments are on disk (small batches,
    written at once), the task runs again from the start; the driver still writes every
    segment exactly once."""
    out = tmp_path / "out"
    written = lambda: any((out / "segments").glob("*.parquet"))  # noqa: E731
    killer = KillWhoOpens(long_video, limit=1, ready=written)
    killer.start()
    try:
        run_extraction(
            str(long_video), str(out), ExtractConfig(batch_size=2, flush_s=0.01),
            progress=False, track=False,
        )  # fmt: skip
    finally:
        killer.stop.set()
        killer.join()
    assert killer.kills == 1
    (row,) = read_videos(str(out)).to_pylist()
    assert row["status"] == "ok" and row["error"] is None
    index = read_segments(str(out), columns=["segment_index"])["segment_index"].to_pylist()
    assert sorted(index) == list(range(row["segments_planned"]))


def test_a_ranged_video_names_each_range_that_never_reported(tmp_path):
    """Ranges 1 and 3 of 3 reported (one of them an error); range 2's task died."""
    config = ExtractConfig(task_retries=2)
    source = VideoSource("long.mp4", "/videos/long.mp4")
    writer = OutputWriter(str(tmp_path), flush_s=60.0, rows_per_file=100)
    summary = ExtractionSummary(videos_total=1)
    book = _Bookkeeping(
        [source], config, summary, writer, progress=Progress(1, "extract", "videos", enabled=False),
        on_flush=None,
    )  # fmt: skip
    book.received["long.mp4"] = 10
    book.part_reports["long.mp4"] = {
        0: {"status": "ok", "num_clips": 6, "part": 0, "parts": 3, "error": None},
        2: {"status": "partial", "num_clips": 4, "part": 2, "parts": 3, "error": "bad packet"},
    }
    book.finish_missing()
    writer.flush()
    (row,) = read_videos(str(tmp_path)).to_pylist()
    assert row["status"] == "partial" and row["segments_written"] == 10
    assert row["error"].startswith("part 3/3: bad packet; part 2/3: no result")
    assert "after 3 tries" in row["error"]
    assert summary.failures["long.mp4"] == row["error"]


def test_a_video_whose_segments_were_lost_after_decoding_says_so(tmp_path):
    """Its task reported 6 clips but 4 arrived (an encoder actor died with a batch)."""
    source = VideoSource("v.mp4", "/videos/v.mp4")
    writer = OutputWriter(str(tmp_path), flush_s=60.0, rows_per_file=100)
    summary = ExtractionSummary(videos_total=1)
    book = _Bookkeeping(
        [source], ExtractConfig(), summary, writer,
        progress=Progress(1, "extract", "videos", enabled=False), on_flush=None,
    )  # fmt: skip
    book.received["v.mp4"] = 4
    report = {"status": "ok", "num_clips": 6, "part": 0, "parts": 1, "error": None}
    book.part_reports["v.mp4"][0] = book.reports["v.mp4"] = report
    book.finish_missing()
    writer.flush()
    (row,) = read_videos(str(tmp_path)).to_pylist()
    assert row["status"] == "partial" and row["segments_written"] == 4
    assert row["error"].startswith("4 of 6 decoded segments arrived")


def test_a_video_decoded_again_keeps_the_segments_it_had_sent(tmp_path):
    """The NVDEC route's second pass (``_decode_lost_alone``): a video whose actor died after
    sending segments 0 and 1 is decoded again with those two marked done (beside the 5 on
    disk from an earlier run), and its row counts them with the ones the second pass sends."""
    source = VideoSource("v.mp4", "/videos/v.mp4")
    writer = OutputWriter(str(tmp_path), flush_s=60.0, rows_per_file=100)
    book = _Bookkeeping(
        [source], ExtractConfig(), ExtractionSummary(videos_total=1), writer,
        progress=Progress(1, "extract", "videos", enabled=False), on_flush=None,
    )  # fmt: skip
    book.indices = {"v.mp4": {0, 1}}
    book.received["v.mp4"] = 2
    assert book.lost() == ["v.mp4"]
    assert book.decode_again(["v.mp4"], {"v.mp4": [5]}) == {"v.mp4": [0, 1, 5]}
    assert book.received["v.mp4"] == 0 and book.indices == {}
    book.received["v.mp4"] = 3  # the second pass: segments 2, 3 and 4
    book.finish("v.mp4", {"status": "ok", "num_clips": 3, "num_segments": 6, "error": None})
    writer.flush()
    (row,) = read_videos(str(tmp_path)).to_pylist()
    assert row["status"] == "ok" and row["segments_written"] == 5
    assert book.lost() == []
