"""Long videos split into ranges of their segments, each decoded by its own task
(``extract.range_s``; docs/design.md, "Extraction"): every segment exactly once, the same
embeddings and videos row as one task per video, and a resume that finishes the ranges."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from lvmae.config import ExtractConfig
from lvmae.storage import read_segments, read_videos
from lvmae.video.inputs import list_videos
from lvmae.video.segments import fixed_segments, segment_ranges
from pipelines.extract import merge_reports, plan_ranges, run_extraction

# the row fields that must not depend on how the video was split
SAME = ["status", "error", "duration_s", "fps", "width", "height", "num_frames",
        "segments_planned", "segments_written", "decoder"]  # fmt: skip


@pytest.mark.parametrize("stride", [2.0, 5.0, 1.5])
@pytest.mark.parametrize(
    "video_s, n_ranges",  # a video's length in seconds (not a timing) and its range count
    [(9.5, 1), (10.0, 1), (10.5, 2), (37.0, 4), (600.0, 60), (3600.0, 360)],
)
def test_ranges_cover_every_segment_exactly_once(video_s, n_ranges, stride):
    range_s = 10.0  # at, just below and just above it, then long videos
    ranges = segment_ranges(video_s, range_s=range_s, stride_s=stride)
    assert len(ranges) == n_ranges
    n = len(fixed_segments(video_s, segment_s=stride, stride_s=stride))
    owner = Counter()
    for start, stop in ranges:
        owner.update(range(start, n if stop is None else min(stop, n)))
    assert owner == Counter(range(n))  # each index once, none left out
    assert ranges[-1][1] is None and ranges[0][0] == 0
    if len(ranges) > 1:  # equal shares, each about range_s seconds or less
        sizes = {stop - start for start, stop in ranges[:-1]}
        assert len(sizes) == 1 and sizes.pop() * stride <= range_s + stride


def test_bad_range_arguments_are_refused():
    with pytest.raises(ValueError, match="range_s > 0"):
        segment_ranges(10.0, range_s=0.0, stride_s=1.0)
    with pytest.raises(ValueError, match="duration_s >= 0"):
        segment_ranges(-1.0, range_s=5.0, stride_s=1.0)


def test_merged_report_sums_ranges_and_names_the_failed_one():
    ok = {"status": "ok", "error": None, "num_clips": 3, "num_segments": 9, "decode_s": 1.0,
          "info": {"duration_s": 45.0}}  # fmt: skip
    parts = [{**ok, "part": 0, "parts": 3}, {**ok, "part": 2, "parts": 3},
             {**ok, "part": 1, "parts": 3}]  # fmt: skip
    merged = merge_reports(parts)
    assert (merged["status"], merged["num_clips"], merged["decode_s"]) == ("ok", 9, 3.0)
    assert merged["error"] is None and "part" not in merged
    parts[1] = {**ok, "part": 2, "parts": 3, "status": "partial", "num_clips": 1,
                "error": "PyAV failed to decode frame 7"}  # fmt: skip
    merged = merge_reports(parts)
    assert (merged["status"], merged["num_clips"]) == ("partial", 7)
    assert merged["error"] == "part 3/3: PyAV failed to decode frame 7"
    failed = [{**p, "status": "failed", "num_clips": 0, "error": "x"} for p in parts]
    assert merge_reports(failed)["status"] == "failed"
    assert merge_reports([ok]) is ok  # a video kept whole: its own report


def test_plan_ranges_reads_durations_from_headers(scene_video, wide_video):
    sources = list_videos(str(scene_video.parent), (".mp4",))
    config = ExtractConfig(segment_s=2.0, range_s=5.0)
    ranges = plan_ranges(sources, config)
    assert ranges[scene_video.name] == [(0, 2), (2, 4), (4, None)]  # 12 s: 3 ranges
    assert plan_ranges(sources, config.model_copy(update={"range_s": None})) == {}
    shots = config.model_copy(update={"segmenter": "shots"})
    assert plan_ranges(sources, shots) == {}  # shot plans need the whole video


def _run(video, out, **fields):
    config = ExtractConfig(segment_s=2.0, batch_size=2, **fields)
    summary = run_extraction(str(video), str(out), config, progress=False, track=False)
    return summary, read_segments(str(out)), read_videos(str(out)).to_pylist()[0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_a_split_video_gives_the_same_segments_and_row_as_one_task(
    tmp_path, scene_video, ray_local, mode
):
    _, whole, whole_row = _run(scene_video, tmp_path / "whole", decode_mode=mode, range_s=None)
    summary, split, split_row = _run(scene_video, tmp_path / "split", decode_mode=mode,
                                     range_s=5.0)  # fmt: skip
    assert summary.videos_ok == 1 and summary.segments_written == 6
    assert split["segment_index"].to_pylist() == list(range(6))
    for column in ["start_s", "end_s", "frame_indices", "frame_times_s"]:
        assert split[column].to_pylist() == whole[column].to_pylist(), column
    np.testing.assert_allclose(
        np.array(split["embedding"].to_pylist()), np.array(whole["embedding"].to_pylist()),
        atol=1e-6,
    )  # fmt: skip
    assert {k: split_row[k] for k in SAME} == {k: whole_row[k] for k in SAME}


@pytest.mark.slow
def test_a_resume_finishes_the_ranges_a_kill_left(tmp_path, scene_video, ray_local):
    """What a kill during a split video leaves (some segments of some ranges on disk, no
    videos row): the rerun decodes only the missing segments, in their ranges, and every
    segment is on disk once."""
    out = tmp_path / "out"
    _, full, _ = _run(scene_video, out, range_s=5.0)
    shutil.rmtree(out / "videos")
    shutil.rmtree(out / "segments")
    kept = [1, 2, 5]  # the second of range 0, the first of range 1, the last of range 2
    (out / "segments").mkdir()
    keep = full.filter(pc.is_in(full["segment_index"], pa.array(kept, pa.int32())))
    pq.write_table(keep, out / "segments" / "part-kept.parquet")
    again, back, row = _run(scene_video, out, range_s=5.0)
    assert (again.segments_resumed, again.segments_written) == (3, 3)
    raw = Counter()
    for path in (out / "segments").glob("*.parquet"):
        raw.update(pq.read_table(path, columns=["segment_index"])["segment_index"].to_pylist())
    assert raw == Counter(range(6))
    assert back["segment_index"].to_pylist() == list(range(6))
    np.testing.assert_allclose(
        np.array(back["embedding"].to_pylist()), np.array(full["embedding"].to_pylist()),
        atol=1e-6,
    )  # fmt: skip
    assert (row["status"], row["segments_planned"], row["segments_written"]) == ("ok", 6, 3)
