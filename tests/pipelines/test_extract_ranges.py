"""Long videos split into ranges of their segments, each decoded by its own task
(``extract.range_s``; docs/design.md, "Extraction"): every segment exactly once, the same
embeddings and videos row as one task per video, and a resume that finishes the ranges.
Fixed segments are cut into ranges at once; shot segments after their shots are detected
(once per video), on generated videos with hard cuts at known times."""

from __future__ import annotations

import itertools
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from lvmae.config import ExtractConfig
from lvmae.storage import read_segments, read_videos
from lvmae.video.decoding import container_duration
from lvmae.video.inputs import list_videos
from lvmae.video.samples import Scene, make_video
from lvmae.video.segments import Segment, fixed_segments, segment_ranges, split_plan
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


def test_merged_cut_short_ranges_stay_partial_with_the_error_once():
    """A file cut short: every range reports it (each opens the whole file). On a rerun
    its held segments are on disk, so no range decodes a clip; the video stays partial, as
    when kept whole, and the file's error is written once. An error some ranges share
    names them once."""
    cut = "the file is cut short: it holds 60 of the 120 frames its index lists"
    rerun = [{"status": "partial", "error": cut, "num_clips": 0, "num_segments": 3,
              "decode_s": 0.5, "part": i, "parts": 3} for i in range(3)]  # fmt: skip
    merged = merge_reports(rerun)
    assert (merged["status"], merged["error"], merged["num_clips"]) == ("partial", cut, 0)
    assert merge_reports([{**p, "num_clips": 1} for p in rerun])["status"] == "partial"
    failed = {"status": "failed", "error": "x", "num_clips": 0, "num_segments": 9}
    parts = [{**failed, "part": i, "parts": 4} for i in range(3)] + [
        {**failed, "status": "ok", "error": None, "part": 3, "parts": 4}
    ]
    merged = merge_reports(parts)
    assert (merged["status"], merged["error"]) == ("failed", "parts 1, 2 and 3 of 4: x")


def test_plan_ranges_reads_durations_from_headers(scene_video, wide_video):
    sources = list_videos(str(scene_video.parent), (".mp4",))
    config = ExtractConfig(segment_s=2.0, range_s=5.0)
    ranges = plan_ranges(sources, config)
    assert ranges[scene_video.name] == [(0, 2), (2, 4), (4, None)]  # 12 s: 3 ranges
    assert plan_ranges(sources, config.model_copy(update={"range_s": None})) == {}
    shots = config.model_copy(update={"segmenter": "shots", "range_s": 10.0})
    ranges = plan_ranges(sources, shots)  # cut after their shots are detected
    assert ranges[scene_video.name] is None and wide_video.name not in ranges  # 12 s, 7 s


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


@pytest.fixture(scope="module")
def cut_short(tmp_path_factory) -> Path:
    """An interrupted download whose frames end cleanly: 20 s in its header, the first
    10.1 s there (write_broken_videos' own 20 s ``testsrc2``)."""
    from lvmae.video.samples import write_broken_videos

    return write_broken_videos(tmp_path_factory.mktemp("cut-short"))["interrupted"]


@pytest.mark.slow
def test_a_split_cut_short_video_stays_partial_on_rerun_with_the_row_of_one_task(
    tmp_path, cut_short, broken_videos, ray_local
):
    """A file cut short is partial, whole or split (4 ranges of its 20 s header, every one
    reporting the missing frames), and so is its rerun (not ok, so redone: its held
    segments skipped, none decoded), with the same row whole and split, the error once.
    One whose last held frame does not decode either (its error is the decoder's, whole)
    stays partial on rerun too."""
    config = ExtractConfig(range_s=6.0, batch_size=4)
    assert len(plan_ranges(list_videos(str(cut_short), (".mp4",)), config)[cut_short.name]) == 4
    for attempt in (1, 2):
        rows = {}
        for range_s in (None, 6.0):
            out = tmp_path / f"split-{range_s}"
            config = ExtractConfig(range_s=range_s, batch_size=4)
            run_extraction(str(cut_short), str(out), config, progress=False, track=False)
            rows[range_s] = read_videos(str(out)).to_pylist()[0]
            assert read_segments(str(out))["segment_index"].to_pylist() == [0, 1]
        row = rows[6.0]
        assert row["status"] == "partial", attempt
        assert row["error"].startswith("the file is cut short: it holds 101 of the 200 frames")
        assert row["segments_written"] == (2 if attempt == 1 else 0)
        assert {k: row[k] for k in SAME} == {k: rows[None][k] for k in SAME}, attempt
    video = broken_videos["interrupted"]  # 12 s in its header, 9.2 s there
    for attempt in (1, 2):
        for range_s in (None, 5.0):
            _, _, row = _run(video, tmp_path / f"decode-{range_s}", range_s=range_s)
            assert row["status"] == "partial", (attempt, range_s, row["error"])
            assert (row["segments_written"] > 0) == (attempt == 1), (attempt, range_s)


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


# ----------------------------------------------------------------------------- shot segments


def _plan(lengths: list[float]) -> list[Segment]:
    edges = np.concatenate([[0.0], np.cumsum(lengths)]).tolist()
    return [Segment(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(edges))]


@pytest.mark.parametrize(
    "lengths, n_ranges",  # segment lengths in seconds (not timings), range_s 10 s
    [
        ([2.0, 3.0, 5.0], 1),  # 10 s of video: at the threshold
        ([2.0, 3.0, 4.5], 1),  # just below it
        ([2.0, 3.0, 0.5, 5.0], 2),  # just above it
        ([1.2, 2.7, 0.9, 3.3, 2.0, 1.1, 2.8, 3.0, 0.6, 2.4] * 18, 36),  # 6 min of shots
        ([30.0, 1.0, 1.0], 2),  # a span with no segment starting in it gives no range
    ],
)
def test_shot_plan_ranges_cover_every_segment_exactly_once(lengths, n_ranges):
    segments = _plan(lengths)
    ranges = split_plan(segments, range_s=10.0)
    assert len(ranges) == n_ranges
    owner = Counter()
    for start, stop in ranges:
        own = range(start, len(segments) if stop is None else stop)
        assert own, ranges  # none empty
        owner.update(own)
        # about range_s seconds each: its segments start within one range_s of each other
        assert segments[own[-1]].start_s - segments[own[0]].start_s < 10.0
    assert owner == Counter(range(len(segments)))  # each index once, none left out
    assert ranges[0][0] == 0 and ranges[-1][1] is None
    with pytest.raises(ValueError, match="range_s > 0"):
        split_plan(segments, range_s=0.0)


# 20 s, 8 hard cuts; the 0.6 and 0.8 s shots are merged, the 3.2-4 s ones split (shot_max_s 3)
SHOT_SCENES = [("smptebars", 1.6), ("mandelbrot", 3.2), ("life", 0.6), ("testsrc2", 2.4),
               ("perlin", 4.0), ("zoneplate", 1.2), ("cellauto", 2.8), ("gradients", 0.8),
               ("colorchart", 3.4)]  # fmt: skip
KNOWN_CUTS = np.cumsum([s for _, s in SHOT_SCENES])[:-1]


def _real_cuts(cuts_s: list[float]) -> bool:
    """Most of the known cuts found (the adaptive detector may miss the one before the
    0.6 s shot, its minimum scene length), and nothing else."""
    near = [np.abs(KNOWN_CUTS - c).min() < 0.15 for c in cuts_s]
    return len(cuts_s) >= len(KNOWN_CUTS) - 2 and all(near)


SHOTS = {"segmenter": "shots", "shot_detector": "adaptive", "shot_min_s": 1.0, "shot_max_s": 3.0}


@pytest.fixture(scope="module")
def shot_inputs(tmp_path_factory, broken_videos) -> Path:
    """A folder: ``cuts.mp4`` (SHOT_SCENES, 96x54 @ 25 fps) and ``garbled.mp4``, whose index
    is intact (its header gives 12 s) and whose frames are all random bytes, so its shot
    detection fails on the first frame."""
    folder = tmp_path_factory.mktemp("shot-ranges")
    scenes = [Scene(source, seconds) for source, seconds in SHOT_SCENES]
    make_video(folder / "cuts.mp4", scenes, width=96, height=54, fps=25)
    data = broken_videos["partial"].read_bytes()  # faststart: the index, then the frames
    at = data.index(b"mdat") + 64
    (folder / "garbled.mp4").write_bytes(data[:at] + random.Random(0).randbytes(len(data) - at))
    return folder


def _run_shots(inputs: Path, out: Path, **fields):
    config = ExtractConfig(batch_size=2, **SHOTS, **fields)
    summary = run_extraction(str(inputs), str(out), config, progress=False, track=False)
    rows = {r["video_id"]: r for r in read_videos(str(out)).to_pylist()}
    return summary, read_segments(str(out)), rows


@pytest.fixture(scope="module")
def shots_whole(tmp_path_factory, shot_inputs, ray_local):
    """The reference: every video one task (``range_s`` None)."""
    return _run_shots(shot_inputs, tmp_path_factory.mktemp("shots-whole") / "out", range_s=None)


def _raw_keys(out: Path) -> Counter:
    """(video_id, segment_index) of every segment row on disk, duplicates included."""
    raw = Counter()
    for path in (out / "segments").glob("*.parquet"):
        table = pq.read_table(path, columns=["video_id", "segment_index"])
        keys = table["video_id"].to_pylist(), table["segment_index"].to_pylist()
        raw.update(zip(*keys, strict=True))
    return raw


def _same_segments(got: pa.Table, want: pa.Table) -> None:
    for column in ["video_id", "segment_index", "start_s", "end_s", "frame_indices",
                   "frame_times_s"]:  # fmt: skip
        assert got[column].to_pylist() == want[column].to_pylist(), column
    np.testing.assert_allclose(
        np.array(got["embedding"].to_pylist()), np.array(want["embedding"].to_pylist()),
        atol=1e-6,
    )  # fmt: skip


def test_plan_shots_detects_once_and_ships_the_plan_to_each_range(shot_inputs, ray_local):
    from pipelines.extract import plan_shots

    config = ExtractConfig(**SHOTS, range_s=4.0)
    sources = list_videos(str(shot_inputs), (".mp4",))
    assert plan_ranges(sources, config) == {"cuts.mp4": None, "garbled.mp4": None}
    batch = {
        "video_id": np.array(["cuts.mp4"], dtype=object),
        "uri": np.array([str(shot_inputs / "cuts.mp4")], dtype=object),
        "done": np.array([[3, 4]]), "first": np.array([0]), "stop": np.array([-1]),
        "part": np.array([0]), "parts": np.array([1]), "split": np.array([True]),
        "plan": np.array([""], dtype=object),
    }  # fmt: skip
    rows = list(plan_shots(batch, config.model_dump_json()))
    assert len(rows) == 1  # one batch: a row per range
    (out,) = rows
    shipped = [json.loads(p) for p in out["plan"]]
    plan = shipped[0]["plan"]
    segments = [Segment(**s) for s in plan["segments"]]
    ranges = split_plan(segments, range_s=4.0)
    assert len(ranges) == 5  # 20 s of video in ranges of about 4 s
    assert out["first"].tolist() == [a for a, _ in ranges]
    assert out["stop"].tolist() == [-1 if b is None else b for _, b in ranges]
    assert (out["part"].tolist(), out["parts"].tolist()) == (list(range(5)), [5] * 5)
    assert all(s["plan"] == plan for s in shipped)  # the same plan for every range
    assert shipped[0]["plan_s"] > 0 and all(s["plan_s"] == 0 for s in shipped[1:])
    assert plan["shot_detector"] == "adaptive" and _real_cuts(plan["cuts_s"])
    assert out["done"].tolist() == [[3, 4]] * 5 and not out["split"].any()
    garbled = {**batch, "uri": np.array([str(shot_inputs / "garbled.mp4")], dtype=object)}
    (failed,) = plan_shots(garbled, config.model_dump_json())
    report = json.loads(failed["plan"][0])["report"]
    assert report["status"] == "failed" and "shot analysis" in report["error"]
    assert (failed["part"].tolist(), failed["parts"].tolist()) == ([0], [1])


def test_a_range_task_decodes_by_the_plan_it_is_given(shot_inputs, ray_local):
    """The decode task of a range uses the shipped plan and detects no shots: given a plan
    of fixed 2 s segments, its clips follow that plan, not the video's shots."""
    from lvmae.video.clips import SegmentPlan
    from pipelines.extract import decode_videos

    config = ExtractConfig(**SHOTS, range_s=4.0, batch_size=8)
    plan = SegmentPlan(fixed_segments(20.0, segment_s=2.0), cuts_s=[7.0], shot_detector="x")
    batch = {
        "video_id": np.array(["cuts.mp4"], dtype=object),
        "uri": np.array([str(shot_inputs / "cuts.mp4")], dtype=object),
        "done": np.array([[3]]), "first": np.array([2]), "stop": np.array([5]),
        "part": np.array([1]), "parts": np.array([4]), "split": np.array([False]),
        "plan": np.array([json.dumps({"plan_s": 0.0, "plan": plan.to_dict()})], dtype=object),
        "why_cpu": np.array([""], dtype=object),
    }  # fmt: skip
    clips, report = list(decode_videos(batch, config.model_dump_json()))
    assert clips["segment_index"].tolist() == [2, 4]  # its range, less the one on disk
    assert clips["start_s"].tolist() == [4.0, 8.0] and clips["end_s"].tolist() == [6.0, 10.0]
    report = json.loads(report["report"][0])
    assert (report["status"], report["num_segments"], report["num_clips"]) == ("ok", 10, 2)
    assert (report["cuts_s"], report["shot_detector"]) == ([7.0], "x")
    assert (report["part"], report["parts"]) == (1, 4)


@pytest.mark.slow
@pytest.mark.parametrize("below_s", [0.5, 16.0])  # range_s: just below the length; 4 s
def test_a_split_shot_video_gives_the_same_segments_and_row_as_one_task(
    tmp_path, shot_inputs, shots_whole, below_s
):
    _, whole, whole_rows = shots_whole
    range_s = container_duration(shot_inputs / "cuts.mp4") - below_s
    summary, split, rows = _run_shots(shot_inputs, tmp_path / "split", range_s=range_s)
    n = whole_rows["cuts.mp4"]["segments_planned"]
    assert (summary.videos_ok, summary.videos_failed, summary.segments_written) == (1, 1, n)
    assert _raw_keys(tmp_path / "split") == Counter(("cuts.mp4", i) for i in range(n))
    _same_segments(split, whole)
    for vid, want in whole_rows.items():  # the garbled video's failure row too
        fields = [*SAME, "cuts_s", "shot_detector"]
        assert {k: rows[vid][k] for k in fields} == {k: want[k] for k in fields}, vid
    assert whole_rows["garbled.mp4"]["status"] == "failed"
    assert _real_cuts(whole_rows["cuts.mp4"]["cuts_s"])


@pytest.mark.slow
def test_a_resume_finishes_the_shot_ranges_a_kill_left(tmp_path, shot_inputs, shots_whole):
    """What a kill during a split shot video leaves (some segments of some ranges on disk,
    no videos row): the rerun detects the shots again, decodes only the missing segments
    in their ranges, and every segment is on disk once."""
    _, whole, whole_rows = shots_whole
    starts, ends = whole["start_s"].to_pylist(), whole["end_s"].to_pylist()
    ranges = split_plan(_plan([b - a for a, b in zip(starts, ends, strict=True)]), range_s=4.0)
    n = len(starts)
    kept = [ranges[0][0] + 1, ranges[1][0], n - 1]  # 2nd of range 0, 1st of range 1, the last
    out = tmp_path / "out"
    (out / "segments").mkdir(parents=True)
    keep = whole.filter(pc.is_in(whole["segment_index"], pa.array(kept, pa.int32())))
    pq.write_table(keep, out / "segments" / "part-kept.parquet")
    again, back, rows = _run_shots(shot_inputs, out, range_s=4.0)
    assert (again.segments_resumed, again.segments_written) == (3, n - 3)
    assert _raw_keys(out) == Counter(("cuts.mp4", i) for i in range(n))
    _same_segments(back, whole)
    row = rows["cuts.mp4"]
    assert (row["status"], row["segments_planned"], row["segments_written"]) == ("ok", n, n - 3)
    assert row["cuts_s"] == whole_rows["cuts.mp4"]["cuts_s"]
    assert rows["garbled.mp4"]["status"] == "failed"
