import numpy as np
import pytest

from lvmae.segments import (
    detect_cuts,
    fixed_segments,
    histogram_distance,
    sample_frame_indices,
    shot_segments,
)


def spans(segments):
    return [(s.index, round(s.start_s, 6), round(s.end_s, 6)) for s in segments]


def test_fixed_windows_without_overlap_keep_a_long_enough_tail():
    assert spans(fixed_segments(12.0)) == [(0, 0, 5), (1, 5, 10), (2, 10, 12)]


def test_fixed_windows_drop_a_tail_shorter_than_the_minimum():
    assert spans(fixed_segments(10.5)) == [(0, 0, 5), (1, 5, 10)]
    assert spans(fixed_segments(10.5, min_segment_s=0.5)) == [(0, 0, 5), (1, 5, 10), (2, 10, 10.5)]


def test_exact_multiple_has_no_tail():
    assert spans(fixed_segments(15.0)) == [(0, 0, 5), (1, 5, 10), (2, 10, 15)]


def test_video_shorter_than_one_window_gives_one_segment():
    assert spans(fixed_segments(0.4)) == [(0, 0, 0.4)]
    assert spans(fixed_segments(3.0)) == [(0, 0, 3)]


def test_overlapping_stride():
    got = spans(fixed_segments(12.0, segment_s=5, stride_s=2.5))
    assert got == [(0, 0, 5), (1, 2.5, 7.5), (2, 5, 10), (3, 7.5, 12)]


def test_stride_longer_than_window_leaves_gaps():
    assert spans(fixed_segments(20.0, segment_s=2, stride_s=5)) == [
        (0, 0, 2), (1, 5, 7), (2, 10, 12), (3, 15, 17),
    ]  # fmt: skip


@pytest.mark.parametrize("kwargs", [{"segment_s": 0}, {"stride_s": -1}, {"min_segment_s": -0.1}])
def test_fixed_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        fixed_segments(10.0, **kwargs)
    with pytest.raises(ValueError):
        fixed_segments(0.0)


def test_sampling_is_uniform_over_the_segment_at_constant_rate():
    times = np.arange(100) / 10.0  # 10 fps, 10 s
    idx = sample_frame_indices(times, np.array([0.0, 5.0]), np.array([5.0, 10.0]), 5)
    # centres of five 1-s sub-spans: 0.5, 1.5, ... → frames 5, 15, ...
    assert idx.tolist() == [[5, 15, 25, 35, 45], [55, 65, 75, 85, 95]]
    assert np.array_equal(idx, sample_frame_indices(times, [0.0, 5.0], [5.0, 10.0], 5))


def test_sampling_follows_timestamps_for_variable_frame_rate():
    # 2 s at 5 fps, then 2 s at 20 fps
    times = np.concatenate([np.arange(10) / 5.0, 2.0 + np.arange(40) / 20.0])
    idx = sample_frame_indices(times, [0.0], [4.0], 4)[0]
    # targets 0.5, 1.5, 2.5, 3.5 s → the frames on screen then
    assert times[idx].tolist() == [0.4, 1.4, 2.5, 3.5]


def test_sampling_repeats_frames_when_a_segment_has_fewer_frames():
    times = np.array([0.0, 1.0])
    assert sample_frame_indices(times, [0.0], [2.0], 4)[0].tolist() == [0, 0, 1, 1]


def test_histogram_cut_detection_finds_colour_changes_only():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 220
    blue = np.zeros((16, 16, 3), np.uint8)
    blue[..., 2] = 220
    noisy_red = np.clip(
        red.astype(int) + np.random.default_rng(0).integers(-5, 5, red.shape), 0, 255
    )
    frames = [(0.0, red), (0.5, noisy_red.astype(np.uint8)), (1.0, blue), (1.5, blue), (2.0, red)]
    assert detect_cuts(frames, threshold=0.3) == [1.0, 2.0]
    assert histogram_distance(red, red) == 0.0
    assert histogram_distance(red, blue) == pytest.approx(2 / 3)


def test_shot_plan_merges_short_and_splits_long_shots():
    segs = shot_segments([1.0, 12.0, 25.0, 25.5], 30.0, min_segment_s=2.0, max_segment_s=10.0)
    # shots: [0,1) short → merged into [0,12) → split in two; [12,25) → two; [25,25.5) short
    # → merged forward into [25,30)
    assert spans(segs) == [(0, 0, 6), (1, 6, 12), (2, 12, 18.5), (3, 18.5, 25), (4, 25, 30)]
    assert all(s.duration_s <= 10.0 for s in segs)


def test_shot_plan_merges_a_short_last_shot_backwards_and_handles_no_cuts():
    assert spans(shot_segments([8.0], 9.0, min_segment_s=2.0, max_segment_s=10.0)) == [(0, 0, 9)]
    assert spans(shot_segments([], 4.0)) == [(0, 0, 4)]
    with pytest.raises(ValueError):
        shot_segments([], 4.0, min_segment_s=5, max_segment_s=3)
