import itertools
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lvmae.config import ExtractConfig
from lvmae.video.clips import Clip, VideoReport, read_clips, read_clips_bounded
from lvmae.video.decoding import DecodeError, center_crop, open_video, resized_shape


def test_resized_shape_keeps_aspect_and_short_side():
    assert resized_shape(320, 180, 224) == (398, 224)
    assert resized_shape(120, 160, 224) == (224, 299)
    assert resized_shape(224, 224, 224) == (224, 224)


def test_center_crop_takes_the_middle():
    frames = np.arange(1 * 4 * 6 * 1).reshape(1, 4, 6, 1)
    assert center_crop(frames, 2)[0, :, :, 0].tolist() == [[8, 9], [14, 15]]


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_readers_report_metadata_and_decode_resized_frames(decoder, wide_video):
    with open_video(wide_video, decoder=decoder, short_side=224) as reader:
        info = reader.info
        assert info.decoder == decoder
        assert (info.width, info.height, info.num_frames) == (320, 180, 175)
        assert info.fps == pytest.approx(25.0)
        assert info.duration_s == pytest.approx(7.0, abs=0.05)
        assert reader.frame_times_s[0] == 0.0
        assert np.allclose(np.diff(reader.frame_times_s), 0.04, atol=1e-3)
        frames = reader.get_frames(np.array([0, 50, 174]))
        assert frames.shape == (3, 224, 398, 3) and frames.dtype == np.uint8
        assert frames.std() > 10  # real picture content, not a blank frame


def test_decoders_agree_on_timestamps_and_roughly_on_pixels(scene_video):
    with (
        open_video(scene_video, decoder="decord") as a,
        open_video(scene_video, decoder="pyav") as b,
    ):
        assert np.allclose(a.frame_times_s, b.frame_times_s)
        idx = np.array([3, 45, 46, 119])
        fa, fb = a.get_frames(idx).astype(int), b.get_frames(idx).astype(int)
        assert np.abs(fa - fb).mean() < 12  # different scalers, same pictures


def test_pyav_reader_seeks_backwards_and_repeats(scene_video):
    with open_video(scene_video, decoder="pyav") as reader:
        forward = reader.get_frames(np.array([10, 90, 91]))
        backward = reader.get_frames(np.array([91, 10, 10, 90]))
    assert np.array_equal(backward[0], forward[2])
    assert np.array_equal(backward[1], forward[0]) and np.array_equal(backward[2], forward[0])
    assert np.array_equal(backward[3], forward[1])


def test_variable_frame_rate_times_come_from_timestamps(vfr_video):
    for decoder in ("decord", "pyav"):
        with open_video(vfr_video, decoder=decoder) as reader:
            steps = np.diff(reader.frame_times_s)
            assert reader.info.duration_s == pytest.approx(8.0, abs=0.1)
            assert steps[:10] == pytest.approx(0.2, abs=0.01)  # 5 fps part
            assert steps[-10:] == pytest.approx(0.04, abs=0.01)  # 25 fps part
            assert reader.info.num_frames == 20 + 100


def test_unknown_decoder_is_a_value_error(scene_video):
    with pytest.raises(ValueError, match="unknown decoder"):
        open_video(scene_video, decoder="opencv")


@pytest.mark.parametrize("kind", ["zero_byte", "truncated", "text", "audio_only", "unreadable"])
def test_unopenable_files_raise_decode_error_naming_both_decoders(kind, broken_videos):
    with pytest.raises(DecodeError) as err:  # decord, then PyAV as its fallback
        open_video(broken_videos[kind], decoder="decord")
    if kind != "unreadable":
        assert "decord" in str(err.value) and "pyav" in str(err.value)
    with pytest.raises(DecodeError) as err:  # the default, PyAV
        open_video(broken_videos[kind])
    if kind != "unreadable":
        assert "pyav" in str(err.value)


def clips_and_report(path, **overrides):
    items = list(read_clips(path, ExtractConfig(**overrides)))
    assert isinstance(items[-1], VideoReport)
    assert all(isinstance(c, Clip) for c in items[:-1])
    return items[:-1], items[-1]


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_clips_are_deterministic_square_and_uniform(decoder, wide_video):
    clips, report = clips_and_report(wide_video, decoder=decoder, segment_s=2.0)
    assert report.status == "ok" and report.error is None
    assert report.num_segments == report.num_clips == len(clips) == 4  # 2+2+2+1 s
    for c in clips:
        assert c.frames.shape == (8, 224, 224, 3) and c.frames.dtype == np.uint8
        assert np.all((c.frame_times_s >= c.segment.start_s) & (c.frame_times_s < c.segment.end_s))
    assert clips[0].frame_indices.tolist() == [3, 9, 15, 21, 28, 34, 40, 46]
    again, _ = clips_and_report(wide_video, decoder=decoder, segment_s=2.0)
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(clips, again, strict=True))


def test_shot_plan_cuts_at_scene_changes(scene_video):
    clips, report = clips_and_report(
        scene_video, segmenter="shots", shot_min_s=1.0, shot_max_s=10.0
    )
    assert report.status == "ok"
    bounds = [x for c in clips for x in (c.segment.start_s, c.segment.end_s)]
    # TransNetV2 may place a cut one frame late on generated scenes (10 fps here)
    assert bounds == pytest.approx([0, 4, 4, 8, 8, 12], abs=0.15)
    assert report.shot_detector == "transnetv2"
    assert report.cuts_s == pytest.approx([4, 8], abs=0.15)


def test_shot_plan_splits_shots_longer_than_the_maximum(scene_video):
    clips, _ = clips_and_report(scene_video, segmenter="shots", shot_min_s=1.0, shot_max_s=2.5)
    assert len(clips) == 6 and all(c.segment.duration_s <= 2.5 for c in clips)


@pytest.mark.parametrize("kind", ["zero_byte", "truncated", "text", "audio_only", "unreadable"])
def test_bad_files_become_failed_reports(kind, broken_videos):
    clips, report = clips_and_report(broken_videos[kind])
    assert clips == [] and report.status == "failed" and report.error


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_partly_decodable_file_yields_its_good_clips_then_a_partial_report(decoder, broken_videos):
    clips, report = clips_and_report(broken_videos["partial"], decoder=decoder)
    assert report.status == "partial"
    assert report.error and 0 < len(clips) < report.num_segments


def test_a_rerun_of_a_partly_decodable_file_stays_partial(broken_videos):
    """A rerun skips the segments the first read left on disk and meets the same error
    before any clip: the video is still partial (its segments are there), not failed; a
    range of it with nothing on disk is failed."""
    config = ExtractConfig(decoder="pyav")
    *clips, first = read_clips(broken_videos["partial"], config)
    assert first.status == "partial" and clips
    held = frozenset(c.segment.index for c in clips)
    *again, report = read_clips(broken_videos["partial"], config, held)
    assert (again, report.status, report.num_clips) == ([], "partial", 0) and report.error
    after = (max(held) + 1, None)
    *again, report = read_clips(broken_videos["partial"], config, held, after)
    assert (again, report.status, report.num_clips) == ([], "failed", 0)


@pytest.mark.parametrize(
    ("decoder", "mode"), [("decord", "exact"), ("pyav", "exact"), ("pyav", "fast")]
)
def test_a_file_cut_short_keeps_what_it_holds_and_is_partial(decoder, mode, broken_videos):
    """An interrupted download: the index lists 120 frames (12 s), the file holds the first
    92. The segments of what is there are planned and read (decord cannot open it and falls
    back to PyAV); the report is ``partial`` and says how much is missing, not ``ok``."""
    config = ExtractConfig(decoder=decoder, decode_mode=mode)
    *clips, report = read_clips(broken_videos["interrupted"], config)
    assert report.status == "partial"
    assert report.error == (
        "the file is cut short: it holds 92 of the 120 frames its index lists "
        "(the first 9.2 s were read)"
    )
    assert report.num_segments == report.num_clips == len(clips) == 2  # 0-5 s, 5-9.2 s
    assert report.info.num_frames == 92 and report.info.decoder == "pyav"


def test_time_limit_ends_a_slow_video_with_a_recorded_failure(scene_video):
    config = ExtractConfig(video_time_limit_s=0.001, decoder="pyav", segment_s=0.5)
    items = list(read_clips_bounded(scene_video, config))
    report = items[-1]
    assert isinstance(report, VideoReport)
    assert report.status in {"failed", "partial"}
    assert "time limit" in report.error


def test_time_limit_holds_while_the_decoder_keeps_the_queue_fed(scene_video):
    """A slow consumer (the encoder) and a decoder that keeps the queue full: the limit
    still ends the stream, with one report that keeps what the decoder found (its info
    and plan), so the videos row keeps duration_s and segments_planned."""
    config = ExtractConfig(video_time_limit_s=4.0, decoder="pyav", segment_s=0.5,
                           max_clips_in_flight=1)  # fmt: skip
    items = []
    for item in read_clips_bounded(scene_video, config):
        items.append(item)
        if isinstance(item, Clip):
            time.sleep(0.5)  # 24 clips would take 12 s: far past the limit
    reports = [i for i in items if isinstance(i, VideoReport)]
    assert len(reports) == 1 and items[-1] is reports[0]
    report, clips = reports[0], len(items) - 1
    assert 0 < clips < 24
    assert (report.status, report.num_clips) == ("partial", clips)
    assert report.error == f"time limit of 4 s exceeded after {clips} clips"
    assert report.num_segments == 24 and report.info.duration_s == pytest.approx(12.0)
    assert report.info.decoder == "pyav"


def test_closing_the_stream_early_stops_its_decode_thread(wide_video):
    """A caller that stops reading (an error downstream) ends the decode thread, also when
    the decoder had finished and filled the queue: nothing is left blocked on it."""
    config = ExtractConfig(segment_s=1.0, max_clips_in_flight=7)  # 7 clips and the report
    before = set(threading.enumerate())
    stream = read_clips_bounded(wide_video, config)
    assert isinstance(next(stream), Clip)
    (worker,) = [t for t in set(threading.enumerate()) - before if t.name.startswith("decode:")]
    time.sleep(3.0)  # the decoder finishes: 6 clips and its report fill the queue
    stream.close()
    worker.join(timeout=30.0)
    assert not worker.is_alive()


def test_bounded_reader_matches_the_plain_one(wide_video):
    config = ExtractConfig(segment_s=1.0, max_clips_in_flight=1)
    plain = list(read_clips(wide_video, config))
    bounded = list(read_clips_bounded(wide_video, config))
    assert len(plain) == len(bounded) == 8
    for a, b in zip(plain[:-1], bounded[:-1], strict=True):
        assert np.array_equal(a.frames, b.frames)
    assert bounded[-1].status == "ok"


# ------------------------------------------------------------------ decode_mode: fast

BFRAMES, FPS = 3, 25


@pytest.fixture(scope="module")
def bframe_video(media_dir):
    """20 s of H.264 with B-frames in a pyramid and a 5-s GOP, as camera and web files are."""
    from lvmae.video.samples import Scene, make_video

    return make_video(
        media_dir / "bframes.mp4",
        [Scene("mandelbrot", 6.0), Scene("testsrc2", 6.0), Scene("life", 8.0)],
        width=320, height=240, fps=FPS, keyint_s=5.0, bframes=BFRAMES,
    )  # fmt: skip


def _pict_types(path):
    import av

    with av.open(str(path)) as container:
        return [str(f.pict_type) for f in container.decode(video=0)]


def test_fast_mode_takes_the_nearest_decodable_frame_to_each_planned_time(bframe_video):
    from lvmae.encoders.models import build_encoder

    assert _pict_types(bframe_video).count("3") > 100  # really has B-frames ("3" = B)
    exact = list(read_clips(bframe_video, ExtractConfig(decode_mode="exact")))
    fast = list(read_clips(bframe_video, ExtractConfig(decode_mode="fast")))
    assert exact[-1].status == fast[-1].status == "ok"
    exact, fast = exact[:-1], fast[:-1]
    # the same plan, every segment present
    assert [c.segment for c in fast] == [c.segment for c in exact] and len(fast) == 4
    for e, f in zip(exact, fast, strict=True):
        # within the spacing of the frames a skipping decoder still outputs
        assert np.abs(f.frame_times_s - e.frame_times_s).max() <= (BFRAMES + 1) / FPS + 1e-6
        assert np.all(np.diff(f.frame_indices) >= 0)
        assert f.frames.shape == e.frames.shape
    # frames really were skipped: some planned frames were replaced by decodable neighbours
    changed = sum(
        int((e.frame_indices != f.frame_indices).sum()) for e, f in zip(exact, fast, strict=True)
    )
    assert changed >= 8
    encoder = build_encoder("tiny")
    a = encoder.encode(np.stack([c.frames for c in exact]))
    b = encoder.encode(np.stack([c.frames for c in fast]))
    assert float((a * b).sum(axis=1).mean()) >= 0.98


def test_nearest_frames_skips_non_reference_frames_and_picks_the_nearest(bframe_video):
    from lvmae.video.decoding import PyAVReader

    types = np.array(_pict_types(bframe_video))
    with PyAVReader(bframe_video, short_side=32, fast=True) as reader:
        times = reader.frame_times_s
        targets = np.array([0.0, 1.01, 1.02, 7.5, 19.99, 50.0])
        got = list(reader.nearest_frames(targets))
    assert [k for k, _, _ in got] == list(range(len(targets)))
    chosen = np.array([i for _, i, _ in got])
    # brute force over the frames that are never skipped (I and P): the chosen frame is at
    # least as near as the nearest of them
    never_skipped = times[types != "3"]
    for t, i in zip(targets, chosen, strict=True):
        assert abs(times[i] - t) <= np.abs(never_skipped - t).min() + 1e-9
    assert chosen[-1] == len(times) - 1 or types[-1] == "3"  # past the end: the last output
    # asking for every frame: I and P frames come back as themselves, and some B-frames
    # are never decoded, so their neighbours stand in
    with PyAVReader(bframe_video, short_side=32, fast=True) as reader:
        every = np.array([i for _, i, _ in reader.nearest_frames(times)])
    ip = np.flatnonzero(types != "3")
    assert np.array_equal(every[ip], ip)
    assert len(set(every.tolist())) < len(times) - 100
    assert got[0][2].shape == (32, 43, 3)


def test_nearest_frames_needs_sorted_targets(bframe_video):
    from lvmae.video.decoding import PyAVReader

    with (
        PyAVReader(bframe_video, short_side=32, fast=True) as reader,
        pytest.raises(ValueError, match="non-decreasing"),
    ):
        list(reader.nearest_frames(np.array([2.0, 1.0])))


@pytest.mark.parametrize("kind", ["zero_byte", "truncated", "text"])
def test_fast_mode_records_bad_files_as_failures(kind, broken_videos):
    *clips, report = read_clips(broken_videos[kind], ExtractConfig(decode_mode="fast"))
    assert clips == [] and report.status == "failed" and report.error


def test_fast_mode_on_a_partly_decodable_file_keeps_its_good_clips(broken_videos):
    """The second half of the file's coded frames is garbage: fast mode, like exact mode,
    keeps the clips before the damage (the same frames) and reports the rest as a failure
    (``partial``, PyAV's error), never ``ok`` with the last good frame copied into the
    damaged segments."""
    *clips, report = read_clips(broken_videos["partial"], ExtractConfig(decode_mode="fast"))
    *exact, exact_report = read_clips(broken_videos["partial"], ExtractConfig(decoder="pyav"))
    assert report.status == exact_report.status == "partial"
    assert report.error.startswith("PyAV failed to decode: ")
    assert report.num_segments == exact_report.num_segments
    assert len(clips) == report.num_clips == len(exact) == 1 < report.num_segments
    assert clips[0].segment == exact[0].segment
    assert clips[0].frame_indices.tolist() == exact[0].frame_indices.tolist()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="PyAV's automatic threads are one here")
def test_pyav_converts_frames_in_its_own_thread_with_one_context(scene_video):
    """PyAV >= 17 converts a frame with a thread per CPU, made and joined for each frame,
    unless asked otherwise: the reader keeps one single-threaded libswscale context, and its
    frames are the ones ``frame.reformat`` gives."""
    import av

    indices = np.arange(0, 120, 2)  # 60 of the 120 frames
    with open_video(scene_video, decoder="pyav", short_side=64) as reader:
        reader.get_frames(indices[:2])  # the decoder's own threads, made once
        last_pid = Path("/proc/sys/kernel/ns_last_pid")
        before = int(last_pid.read_text())
        frames = reader.get_frames(indices)
        new_ids = int(last_pid.read_text()) - before  # processes and threads made meanwhile
        width, height = reader.out_size
    assert new_ids < len(indices) // 2, f"{new_ids} threads for {len(indices)} frames"
    with av.open(str(scene_video)) as container:
        decoded = list(itertools.islice(container.decode(video=0), indices[-1] + 1))
    expected = [
        decoded[i].reformat(width=width, height=height, format="rgb24").to_ndarray()
        for i in indices
    ]
    np.testing.assert_array_equal(frames, np.stack(expected))


# ---------------------------------------------- exact mode: no frame that nothing needs


@pytest.fixture(scope="module")
def hevc_bframe_video(bframe_video, media_dir):
    """``bframe_video`` re-encoded as HEVC (libx265, B-frames, its default reference
    structure)."""
    import subprocess

    from lvmae.video.ffmpeg import ffmpeg_exe

    out = media_dir / "bframes_hevc.mp4"
    if not out.exists():
        subprocess.run(
            [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(bframe_video),
             "-c:v", "libx265", "-preset", "fast", "-x265-params", "log-level=error:bframes=4",
             "-tag:v", "hvc1", str(out)],
            check=True,
        )  # fmt: skip
    return out


def _exact_indices(reader, config):
    from lvmae.video.segments import fixed_segments, sample_frame_indices

    segments = fixed_segments(reader.info.duration_s, segment_s=config.segment_s)
    starts = np.array([s.start_s for s in segments])
    ends = np.array([s.end_s for s in segments])
    return sample_frame_indices(reader.frame_times_s, starts, ends, config.frames_per_segment)


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_exact_decoding_leaves_unreferenced_frames_undecoded_with_the_same_pixels(
    codec, bframe_video, hevc_bframe_video
):
    """Told which frames will be asked for, the PyAV reader does not decode the
    non-reference frames among the others, and every frame it returns is the one a decoder
    that decodes every frame returns."""
    from lvmae.video.decoding import PyAVReader

    path = bframe_video if codec == "h264" else hevc_bframe_video
    config = ExtractConfig(segment_s=2.0)
    with PyAVReader(path, short_side=64) as plain, PyAVReader(path, short_side=64) as told:
        assert told.info.num_frames == 500
        indices = _exact_indices(told, config)  # [10 segments, 8 frames]
        told.will_read(indices.ravel())
        for idx in indices:
            np.testing.assert_array_equal(told.get_frames(idx), plain.get_frames(idx))
        # the plain reader decoded nearly every frame (it jumps to a keyframe past the
        # frames between two segments' samples); the told one skipped most B-frames (the
        # sampled B-frames themselves were decoded)
        assert plain.frames_decoded > 450
        assert told.frames_decoded < 0.75 * plain.frames_decoded, (
            told.frames_decoded, plain.frames_decoded)  # fmt: skip


def test_a_frame_not_named_in_will_read_is_still_exact(bframe_video):
    from lvmae.video.decoding import PyAVReader

    types = np.array(_pict_types(bframe_video))
    with (
        PyAVReader(bframe_video, short_side=64) as plain,
        PyAVReader(bframe_video, short_side=64) as told,
    ):
        told.will_read(np.arange(0, 500, 25))  # every 25th frame, all I or P here
        told.get_frames(np.array([0, 25, 50]))
        b_frames = np.flatnonzero(types == "3")
        others = b_frames[(b_frames > 60) & (b_frames < 140)][:5]  # not named, B, forward
        assert others.size == 5
        np.testing.assert_array_equal(told.get_frames(others), plain.get_frames(others))
        # and the named ones after them are still right
        np.testing.assert_array_equal(
            told.get_frames(np.array([150, 175])), plain.get_frames(np.array([150, 175]))
        )


def test_exact_clips_are_those_of_a_reader_that_decodes_every_frame(bframe_video):
    """``read_clips`` (exact, PyAV) names its frames to the reader; its clips are the
    centre-cropped frames of a reader told nothing."""
    from lvmae.video.decoding import PyAVReader

    config = ExtractConfig(segment_s=2.0)
    got = list(read_clips(bframe_video, config))
    assert got[-1].status == "ok" and len(got) == 11
    with PyAVReader(bframe_video, short_side=config.image_size) as plain:
        for clip in got[:-1]:
            expected = center_crop(plain.get_frames(clip.frame_indices), config.image_size)
            np.testing.assert_array_equal(clip.frames, expected)
