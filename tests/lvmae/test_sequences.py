import numpy as np
import pyarrow as pa
import pytest

from lvmae.sequences import (
    collate,
    sample_window,
    seconds_to_tokens,
    sequences_from_table,
    split_of,
    windows_for_inference,
)
from lvmae.storage import read_segments, segment_schema, write_table_atomic

D = 4


def emb(video: int, index: int, dim: int = D) -> list[float]:
    """A recognisable embedding: video in the first value, segment index in the second."""
    return [float(video), float(index)] + [0.5] * (dim - 2)


def segments_table(rows: list[tuple[str, int, list[float]]], dim: int = D) -> pa.Table:
    schema = segment_schema(dim)
    return pa.Table.from_pydict(
        {
            "video_id": [r[0] for r in rows],
            "segment_index": [r[1] for r in rows],
            "start_s": [5.0 * r[1] for r in rows],
            "end_s": [5.0 * r[1] + 5.0 for r in rows],
            "frame_indices": [[0] for _ in rows],
            "frame_times_s": [[0.0] for _ in rows],
            "embedding": [r[2] for r in rows],
            "encoder": ["tiny"] * len(rows),
            "config_id": ["c"] * len(rows),
        },
        schema=schema,
    )


def test_sequences_are_ordered_and_deduplicated():
    rows = [("b.mp4", i, emb(2, i)) for i in range(3)] + [("a.mp4", i, emb(1, i)) for i in range(5)]
    rows.append(("a.mp4", 4, emb(9, 4)))  # a rerun's duplicates: the first row wins
    rows.append(("b.mp4", 0, emb(9, 0)))
    order = np.random.default_rng(0).permutation(len(rows))
    rows = [rows[i] for i in order]
    first = {}
    for vid, idx, e in rows:
        first.setdefault((vid, idx), e)

    got = list(sequences_from_table(segments_table(rows)))

    assert [vid for vid, _ in got] == ["a.mp4", "b.mp4"]
    assert any(e[0] == 9.0 for e in first.values())  # the shuffle put a duplicate first
    for vid, x in got:
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == D
        np.testing.assert_array_equal(x[:, 1], np.arange(len(x)))  # segment order
        expect = np.array([first[(vid, i)] for i in range(len(x))], dtype=np.float32)
        np.testing.assert_array_equal(x, expect)
    assert [len(x) for _, x in got] == [5, 3]


def test_sequences_from_storage_round_trip_and_gaps(tmp_path):
    rows = [("v", i, emb(0, i)) for i in (0, 1, 3, 7)]  # gaps are not errors
    write_table_atomic(segments_table(rows[2:]), str(tmp_path), "segments")
    write_table_atomic(segments_table(rows[:2]), str(tmp_path), "segments")
    ((vid, x),) = list(sequences_from_table(read_segments(str(tmp_path))))
    assert vid == "v"
    np.testing.assert_array_equal(x[:, 1], [0, 1, 3, 7])


def test_sequences_errors():
    mixed = pa.table(
        {
            "video_id": ["a", "b"],
            "segment_index": pa.array([0, 0], pa.int32()),
            "embedding": pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]], pa.list_(pa.float32())),
        }
    )
    with pytest.raises(ValueError, match="mixed embedding dims"):
        sequences_from_table(mixed)
    with pytest.raises(ValueError, match="lacks column"):
        sequences_from_table(mixed.drop_columns(["segment_index"]))
    assert list(sequences_from_table(segments_table([]))) == []
    # same width in a variable-size list column is fine
    ok = mixed.slice(0, 1)
    ((_, x),) = list(sequences_from_table(ok))
    np.testing.assert_array_equal(x, [[1.0, 2.0]])


def test_split_is_stable_and_near_the_fraction():
    ids = [f"dir/video_{i:05d}.mp4" for i in range(2000)]
    splits = [split_of(v, 0.1, seed=3) for v in ids]
    assert splits == [split_of(v, 0.1, seed=3) for v in ids]
    assert set(splits) == {"train", "val"}
    assert 150 <= splits.count("val") <= 250
    assert splits != [split_of(v, 0.1, seed=4) for v in ids]  # the seed matters
    assert {split_of(v, 0.0) for v in ids} == {"train"}
    # a fixed id's split never changes (not Python's salted hash())
    assert [split_of(f"v{i}", 0.5) for i in range(8)] == [split_of(f"v{i}", 0.5) for i in range(8)]
    with pytest.raises(ValueError, match="val_fraction"):
        split_of("a", 1.5)


def test_sample_window_cap_mode():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        s, e = sample_window(40, 16, rng)
        assert s >= 0 and e <= 40 and e - s == 16
        starts.add(s)
    assert len(starts) > 10 and min(starts) >= 0 and max(starts) <= 24
    assert sample_window(5, 16, rng) == (0, 5)  # shorter than the cap: the whole video


def test_sample_window_random_mode():
    rng = np.random.default_rng(1)
    lengths = set()
    for _ in range(500):
        s, e = sample_window(40, 16, rng, mode="random", min_tokens=2)
        assert 0 <= s < e <= 40 and 2 <= e - s <= 16
        lengths.add(e - s)
    assert lengths == set(range(2, 17))
    assert sample_window(1, 16, rng, mode="random", min_tokens=2) == (0, 1)
    for _ in range(50):
        s, e = sample_window(3, 16, rng, mode="random", min_tokens=5)
        assert (s, e) == (0, 3)
    assert seconds_to_tokens(10.0, 5.0) == 2 and seconds_to_tokens(11.0, 5.0) == 3
    with pytest.raises(ValueError, match="mode"):
        sample_window(10, 4, rng, mode="nope")
    with pytest.raises(ValueError, match="length"):
        sample_window(0, 4, rng)
    with pytest.raises(ValueError, match="min_tokens"):
        sample_window(10, 4, rng, mode="random", min_tokens=5)


@pytest.mark.parametrize("length", [0, 1, 7, 16, 17, 33, 100])
def test_windows_for_inference_tile_exactly(length):
    windows = windows_for_inference(length, 16)
    assert len(windows) == -(-length // 16)
    covered = [i for s, e in windows for i in range(s, e)]
    assert covered == list(range(length))  # consecutive, non-overlapping, complete
    assert all(0 < e - s <= 16 for s, e in windows)
    if windows:
        sizes = [e - s for s, e in windows]
        assert max(sizes) - min(sizes) <= 1  # balanced, no stub window


def test_collate_pads_with_a_real_prefix():
    a = np.ones((3, D), np.float64)
    b = np.full((5, D), 2.0, np.float32)
    x, real = collate([a, b])
    assert x.shape == (2, 5, D) and x.dtype == np.float32
    assert real.dtype == np.bool_
    np.testing.assert_array_equal(real, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(x[0, :3], 1.0)
    np.testing.assert_array_equal(x[0, 3:], 0.0)
    np.testing.assert_array_equal(x[1], 2.0)
    x, real = collate([b], max_tokens=5)
    assert real.all()


def test_collate_errors():
    with pytest.raises(ValueError, match="max_tokens=4"):
        collate([np.zeros((3, D)), np.zeros((5, D))], max_tokens=4)
    with pytest.raises(ValueError, match="at least one"):
        collate([])
    with pytest.raises(ValueError, match="mixed"):
        collate([np.zeros((3, D)), np.zeros((3, D + 1))])
    with pytest.raises(ValueError, match="empty"):
        collate([np.zeros((0, D))])
