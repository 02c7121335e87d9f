import itertools

import numpy as np
import pytest

from lvmae.video.segments import fixed_segments, sample_frame_indices, shot_segments


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


def one_hot(*rows):
    return np.eye(4)[list(rows)]


def test_a_short_shot_joins_the_neighbour_it_is_most_similar_to():
    # shots [0,5) A, [5,6) short B-like, [6,12) B, [12,13) short A-like, [13,20) B
    cuts = [5.0, 6.0, 12.0, 13.0]
    features = one_hot(0, 1, 1, 0, 1)
    segs = shot_segments(cuts, 20.0, min_segment_s=2.0, max_segment_s=10.0, shot_features=features)
    assert spans(segs) == [(0, 0, 5), (1, 5, 12), (2, 12, 20)]
    features = one_hot(0, 0, 1, 1, 2)  # now the short shots look like what is before them
    segs = shot_segments(cuts, 20.0, min_segment_s=2.0, max_segment_s=10.0, shot_features=features)
    assert spans(segs) == [(0, 0, 6), (1, 6, 13), (2, 13, 20)]


def test_short_shots_merge_into_each_other_until_long_enough():
    # three 0.5 s shots between long ones: they group with their similar neighbours
    cuts = [4.0, 4.5, 5.0, 5.5, 10.0]
    features = one_hot(0, 0, 2, 1, 1, 3)
    segs = shot_segments(cuts, 14.0, min_segment_s=1.5, max_segment_s=10.0, shot_features=features)
    assert spans(segs) == [(0, 0, 4.5), (1, 4.5, 10), (2, 10, 14)]


@pytest.mark.parametrize("seed", range(20))
def test_shot_plan_properties_on_random_shots(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.choice([0.2, 0.7, 1.5, 3.0, 7.0, 16.0], size=rng.integers(1, 30))
    cuts = np.cumsum(lengths)[:-1].tolist()
    duration = float(lengths.sum())
    features = rng.random((len(cuts) + 1, 8))
    lo, hi = 2.0, 6.0
    segs = shot_segments(cuts, duration, min_segment_s=lo, max_segment_s=hi, shot_features=features)
    starts = [s.start_s for s in segs]
    assert starts[0] == 0.0 and segs[-1].end_s == pytest.approx(duration)
    assert all(a.end_s == b.start_s for a, b in itertools.pairwise(segs))  # contiguous
    assert all(s.duration_s <= hi + 1e-9 for s in segs)
    if duration >= lo:
        assert all(s.duration_s >= lo - 1e-9 for s in segs)
    # a cut between two shots that are both >= the minimum is a segment boundary
    for k, c in enumerate(cuts):
        if lengths[k] >= lo and lengths[k + 1] >= lo:
            assert min(abs(np.array(starts) - c)) < 1e-9


def test_shot_features_must_match_the_cuts():
    with pytest.raises(ValueError, match="shot_features"):
        shot_segments([1.0, 2.0], 5.0, shot_features=np.ones((2, 4)))
    with pytest.raises(ValueError, match="increasing"):
        shot_segments([2.0, 1.0], 5.0, shot_features=np.ones((3, 4)))
    # cuts outside the video are dropped with their empty shots
    segs = shot_segments([0.0, 3.0, 7.0], 5.0, min_segment_s=1, shot_features=np.eye(4))
    assert spans(segs) == [(0, 0, 3), (1, 3, 5)]
