import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lvmae.mae import sequences
from lvmae.mae.sequences import (
    SequenceStore,
    collate,
    epoch_batches,
    epoch_indices,
    index_batches,
    sample_window,
    seconds_to_tokens,
    sequence_table,
    sequences_from_table,
    split_of,
    windows_for_inference,
)
from lvmae.storage import read_segments, segment_schema, write_table_atomic
from tests.fresh import fresh_python

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
    rows.append(("a.mp4", 4, emb(9, 4)))  # a rerun's duplicates: the last row wins
    rows.append(("b.mp4", 0, emb(9, 0)))
    order = np.random.default_rng(0).permutation(len(rows))
    rows = [rows[i] for i in order]
    first = {}  # the row that wins: the last in table order
    for vid, idx, e in rows:
        first[(vid, idx)] = e

    got = list(sequences_from_table(segments_table(rows)))

    assert [vid for vid, _ in got] == ["a.mp4", "b.mp4"]
    assert any(e[0] == 9.0 for e in first.values())  # the shuffle put a duplicate last
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
    with pytest.raises(ValueError, match="val_fraction"):
        split_of("a", 1.5)


SPLITS_ELSEWHERE = """
import json, sys
from lvmae.mae.sequences import split_of
ids = [f"dir/video_{i:05d}.mp4" for i in range(2000)]
print(json.dumps({"hash": hash("dir/video_00000.mp4"),
                  "splits": [split_of(v, 0.1, seed=3) for v in ids]}))
"""


def test_split_is_the_same_in_another_interpreter_with_another_hash_salt():
    """Workers and reruns are other processes: a split made with Python's salted ``hash()``
    would differ there. Compared against a fresh interpreter whose ``PYTHONHASHSEED`` differs
    from this one's (checked: ``hash`` of a string really differs)."""
    ids = [f"dir/video_{i:05d}.mp4" for i in range(2000)]
    here = [split_of(v, 0.1, seed=3) for v in ids]
    salt = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    there = json.loads(fresh_python(SPLITS_ELSEWHERE, PYTHONHASHSEED=salt))
    assert there["hash"] != hash("dir/video_00000.mp4")  # another salt indeed
    assert there["splits"] == here


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
    for _ in range(2000):  # 2-s tokens, 4..16 s: floor(d / 2) in 2..8 tokens of a 40-token video
        s, e = sample_window(40, 8, rng, mode="random", min_window_s=4.0, segment_s=2.0)
        assert 0 <= s < e <= 40 and 2 <= e - s <= 8
        lengths.add(e - s)
    assert lengths == set(range(2, 9))
    assert sample_window(1, 16, rng, mode="random") == (0, 1)
    assert seconds_to_tokens(10.0, 5.0) == 2 and seconds_to_tokens(11.0, 5.0) == 3
    with pytest.raises(ValueError, match="mode"):
        sample_window(10, 4, rng, mode="nope")
    with pytest.raises(ValueError, match="length"):
        sample_window(0, 4, rng)
    with pytest.raises(ValueError, match="min_window_s"):
        sample_window(10, 4, rng, mode="random", min_window_s=25.0)  # cap is 4 x 5 s = 20 s


@pytest.mark.parametrize(
    ("length", "mean", "p_full", "tol"), [(20, 19.3, 0.93, 0.1), (100, 81.0, 0.61, 0.5)]
)
def test_random_windows_follow_the_reference_distribution(length, mean, p_full, tol):
    """The reference draws 10..1280 s (256 tokens of 5 s) and clips to the video: a
    20-token video is used whole 93 % of the time (mean 19.3 tokens), a 100-token one 61 %
    (mean 81). A uniform draw of the length would give 5 % and 1 %."""
    rng = np.random.default_rng(0)
    sizes = np.array([
        np.subtract(*sample_window(length, 256, rng, mode="random")[::-1]) for _ in range(20000)
    ])  # fmt: skip
    assert sizes.min() >= 2 and sizes.max() == length
    assert abs(sizes.mean() - mean) < tol
    assert abs((sizes == length).mean() - p_full) < 0.01


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


# --------------------------------------------------------------------------- epoch order


@pytest.mark.parametrize("n", [1, 2, 5, 12, 13])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_epoch_indices_follow_distributed_sampler(n, world):
    per_rank = -(-n // world)
    ranks = [epoch_indices(n, epoch=4, rank=r, world=world, seed=7) for r in range(world)]
    assert all(len(r) == per_rank and r.dtype == np.int64 for r in ranks)
    merged = np.empty(per_rank * world, dtype=np.int64)  # undo "rank r takes every world-th"
    for r, idx in enumerate(ranks):
        merged[r::world] = idx
    head, pad = merged[:n], merged[n:]
    assert sorted(head.tolist()) == list(range(n))  # every video once ...
    np.testing.assert_array_equal(pad, np.resize(head, len(pad)))  # ... then the head again
    if n % world == 0:
        assert len(pad) == 0
        assert len(set().union(*(r.tolist() for r in ranks))) == n  # disjoint ranks


def test_epoch_indices_change_every_epoch_and_repeat_for_the_same_seed():
    n = 40
    orders = [
        np.concatenate([epoch_indices(n, epoch=e, rank=r, world=2, seed=3) for r in (0, 1)])
        for e in range(3)
    ]
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    again = np.concatenate([epoch_indices(n, epoch=1, rank=r, world=2, seed=3) for r in (0, 1)])
    np.testing.assert_array_equal(orders[1], again)
    other = np.concatenate([epoch_indices(n, epoch=1, rank=r, world=2, seed=4) for r in (0, 1)])
    assert not np.array_equal(orders[1], other)
    assert len(epoch_indices(0, epoch=0, rank=0, world=2)) == 0
    for bad in ({"rank": 2, "world": 2}, {"rank": 0, "world": 0}, {"epoch": -1}):
        with pytest.raises(ValueError):
            epoch_indices(5, **{"epoch": 0, "rank": 0, "world": 2, **bad})


def test_index_batches_drop_the_incomplete_last_batch():
    got = index_batches(np.arange(7), 3)
    assert [b.tolist() for b in got] == [[0, 1, 2], [3, 4, 5]]
    assert index_batches(np.arange(2), 3) == []
    with pytest.raises(ValueError, match="batch_size"):
        index_batches(np.arange(3), 0)


def sequence_rows(ids: list[str], dim: int = D) -> pa.Table:
    """Sequence rows: video k (its number in the id) has k + 1 tokens whose values are k."""
    rows = [(v, i, [float(int(v[1:]))] * dim) for v in ids for i in range(int(v[1:]) + 1)]
    return sequence_table(segments_table(rows, dim))


def write_store(root, parts: list[list[str]], rows_per_group: int = 2):
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    for i, ids in enumerate(parts):  # file names in another order than the ids
        table = sequence_rows(ids).take(pa.array(np.arange(len(ids))[::-1]))
        pq.write_table(table, root / f"part-{9 - i}.parquet", row_group_size=rows_per_group)
    return root


def test_sequence_store_reads_rows_by_sorted_video_id(tmp_path):
    root = write_store(tmp_path / "train", [["v3", "v0", "v5"], ["v1", "v4"], ["v2", "v6"]])
    store = SequenceStore(str(root))
    assert len(store) == 7 and store.video_ids.tolist() == [f"v{k}" for k in range(7)]
    batch = store.batch([5, 0, 5, 3])
    assert batch["video_id"].tolist() == ["v5", "v0", "v5", "v3"]
    assert batch["length"].tolist() == [6, 1, 6, 4]
    assert batch["embedding"].dtype == object
    for vid, length, flat in zip(batch["video_id"], batch["length"], batch["embedding"],
                                 strict=True):  # fmt: skip
        assert flat.dtype == np.float32 and flat.shape == (length * D,)
        assert np.all(flat == float(vid[1:]))
    uri = SequenceStore(root.absolute().as_uri())  # a pyarrow filesystem URI (file://)
    assert uri.batch([6])["video_id"].tolist() == ["v6"]
    with pytest.raises(IndexError):
        store.batch([7])


def test_sequence_store_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        SequenceStore(str(tmp_path / "missing"))
    write_store(tmp_path / "dup", [["v1"], ["v1"]])
    with pytest.raises(ValueError, match="repeats video ids"):
        SequenceStore(str(tmp_path / "dup"))


def test_epoch_batches_cover_the_rank_share_and_skip_without_reading(tmp_path):
    ids = [f"v{k}" for k in range(10)]
    store = SequenceStore(str(write_store(tmp_path / "s", [ids[:4], ids[4:]])))
    seen, mine = [], {}
    for rank in (0, 1):
        batches = list(epoch_batches(store, epoch=2, rank=rank, world=2, batch_size=2, seed=1))
        assert len(batches) == 5 // 2  # ceil(10 / 2) // 2, the last incomplete batch dropped
        expect = epoch_indices(10, epoch=2, rank=rank, world=2, seed=1)[:4]
        mine[rank] = np.concatenate([b["video_id"] for b in batches]).tolist()
        assert mine[rank] == [ids[i] for i in expect]
        seen += mine[rank]
    assert len(set(seen)) == len(seen) == 8
    resumed = list(epoch_batches(store, epoch=2, rank=0, world=2, batch_size=2, seed=1, skip=1))
    assert set(resumed[0]) == {"video_id", "length"}  # lengths to replay draws, no embedding
    assert resumed[0]["video_id"].tolist() == mine[0][:2]
    first = epoch_indices(10, epoch=2, rank=0, world=2, seed=1)[:2]
    assert resumed[0]["length"].tolist() == store.lengths[first].tolist()
    assert resumed[1]["video_id"].tolist() == mine[0][2:4]


FDS = Path("/proc/self/fd")


@pytest.mark.skipif(not FDS.is_dir(), reason="counts open files in /proc")
def test_sequence_store_keeps_a_bounded_number_of_files_open(tmp_path, monkeypatch):
    """A store of one file per video keeps at most OPEN_FILES of them open over an epoch
    (the least recently read closed), and none after reading the footers."""
    monkeypatch.setattr(sequences, "OPEN_FILES", 3)
    ids = [f"v{k}" for k in range(10)]
    root = write_store(tmp_path / "s", [[v] for v in ids])

    def open_files() -> int:
        return len(list(FDS.iterdir()))

    before = open_files()
    store = SequenceStore(str(root))
    assert open_files() == before
    read = []
    for epoch in (0, 1):
        for batch in epoch_batches(store, epoch=epoch, rank=0, world=1, batch_size=2):
            read += batch["video_id"].tolist()
            assert [int(e[0]) for e in batch["embedding"]] == [
                int(v[1:]) for v in batch["video_id"]
            ]
            assert len(store._open) <= 3 and open_files() - before <= 3
    assert sorted(read) == sorted(ids * 2)
