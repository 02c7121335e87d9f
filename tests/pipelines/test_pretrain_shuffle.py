"""Pre-training's data path on real Ray Data: the driver's Parquet sequence store, each
rank's epoch batches from the global seeded permutation (lvmae.mae.sequences.epoch_batches) as
``train_loop_per_worker`` builds them, and the per-video grouping under either shuffle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lvmae.config import PretrainConfig
from lvmae.mae.sequences import SequenceStore, epoch_batches
from lvmae.storage import segment_schema, write_table_atomic
from pipelines.pretrain import batch_plan, sequence_datasets, write_sequence_store

D = 8
N_VIDEOS = 10


def write_segments(root: Path) -> Path:
    """A segments table of N_VIDEOS videos of 3–5 segments (D = 8), rows shuffled."""
    rows = [(f"v{k:02d}.mp4", i) for k in range(N_VIDEOS) for i in range(3 + k % 3)]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    table = pa.table(
        {
            "video_id": [v for v, _ in rows],
            "segment_index": pa.array([i for _, i in rows], pa.int32()),
            "start_s": [5.0 * i for _, i in rows],
            "end_s": [5.0 * i + 5.0 for _, i in rows],
            "frame_indices": [[0] for _ in rows],
            "frame_times_s": [[0.0] for _ in rows],
            "embedding": [[float(i)] * D for _, i in rows],
            "encoder": ["tiny"] * len(rows),
            "config_id": ["c"] * len(rows),
        },
        schema=segment_schema(D),
    )
    write_table_atomic(table, str(root), "segments")
    return root


@pytest.mark.slow
def test_each_epoch_is_a_new_global_permutation_over_two_ranks(ray_local, tmp_path):
    """The store the driver writes with Ray Data, read as each of 2 DDP ranks reads it in
    ``train_loop_per_worker`` (``epoch_batches`` at its rank and world size): the batch
    plan matches what a rank gets, each epoch covers every video once over the ranks, and
    each epoch has a new order. (Ray Train's ranks themselves: test_pretrain.py.)"""
    config = PretrainConfig(
        preset="tiny", num_workers=2, batch_size=1, val_fraction=0.0, max_tokens=8, seed=5
    )
    train_ds, _ = sequence_datasets(str(write_segments(tmp_path / "emb")), config)
    path = write_sequence_store(train_ds, tmp_path / "sequences" / "train")
    store = SequenceStore(path)
    assert len(store) == N_VIDEOS and len(store.video_ids) == len(set(store.video_ids))
    per_worker_batch, _, _, steps_per_epoch = batch_plan(config, len(store))
    orders = []
    for epoch in (0, 1):
        ranks = [
            [[str(v) for v in b["video_id"]] for b in epoch_batches(
                SequenceStore(path), epoch=epoch, rank=rank, world=2,
                batch_size=per_worker_batch, seed=config.seed)]
            for rank in (0, 1)
        ]  # fmt: skip
        for batches in ranks:
            assert len(batches) == steps_per_epoch  # the plan matches what a rank gets
            assert all(len(batch) == per_worker_batch for batch in batches)
        flat = [[v for batch in batches for v in batch] for batches in ranks]
        assert sorted(flat[0] + flat[1]) == sorted(store.video_ids.tolist())  # each once
        orders.append(flat)
    assert orders[0] != orders[1]  # a new order every epoch


@pytest.mark.slow
def test_video_sequences_are_the_same_under_either_shuffle(ray_local, tmp_path, monkeypatch):
    """Small tables group by the sort-based shuffle, large ones by the hash shuffle with
    partitions sized to the bytes; both give every video's ordered sequence, and the
    session's own Ray Data context is left alone."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    from pipelines import pretrain

    root = write_segments(tmp_path / "emb")
    write_segments(root)  # a second file: every row twice, as after a killed run
    session = DataContext.get_current().shuffle_strategy
    sort = {ShuffleStrategy.SORT_SHUFFLE_PULL_BASED, ShuffleStrategy.SORT_SHUFFLE_PUSH_BASED}
    assert session not in sort  # Ray Data's default: a hash-partitioning shuffle
    expected = {f"v{k:02d}.mp4": 3 + k % 3 for k in range(N_VIDEOS)}

    def grouped(ds) -> dict[str, tuple[int, list[float]]]:
        return {r["video_id"]: (r["length"], list(r["embedding"])) for r in ds.take_all()}

    small = pretrain.video_sequences(str(root))
    assert small.context.shuffle_strategy == ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    monkeypatch.setattr(pretrain, "SORT_SHUFFLE_MAX_BYTES", 0)
    monkeypatch.setattr(pretrain, "PARTITION_BYTES", 4096)
    large = pretrain.video_sequences(str(root))
    assert large.context.shuffle_strategy == session != small.context.shuffle_strategy
    for got in (grouped(small), grouped(large)):
        assert {v: n for v, (n, _) in got.items()} == expected
        for v, (n, flat) in got.items():
            assert flat == [float(i) for i in range(n) for _ in range(D)], v
    assert DataContext.get_current().shuffle_strategy == session
