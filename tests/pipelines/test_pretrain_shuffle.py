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
from pipelines.pretrain import batch_plan, sequence_dataset, write_sequence_stores

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
    stores = write_sequence_stores(
        sequence_dataset(str(write_segments(tmp_path / "emb")), config), tmp_path / "sequences"
    )
    assert set(stores) == {"train"}  # val_fraction 0: no validation store
    path = stores["train"]
    store = SequenceStore(path)
    assert len(store) == N_VIDEOS and len(store.video_ids) == len(set(store.video_ids))
    plan = batch_plan(config, len(store))
    per_worker_batch, steps_per_epoch = plan.per_worker_batch, plan.steps_per_epoch
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

    from pipelines import job_inputs

    root = write_segments(tmp_path / "emb")
    write_segments(root)  # a second file: every row twice, as after a killed run
    session = DataContext.get_current().shuffle_strategy
    sort = {ShuffleStrategy.SORT_SHUFFLE_PULL_BASED, ShuffleStrategy.SORT_SHUFFLE_PUSH_BASED}
    assert session not in sort  # Ray Data's default: a hash-partitioning shuffle
    expected = {f"v{k:02d}.mp4": 3 + k % 3 for k in range(N_VIDEOS)}

    def grouped(ds) -> dict[str, tuple[int, list[float]]]:
        return {r["video_id"]: (r["length"], list(r["embedding"])) for r in ds.take_all()}

    small = job_inputs.video_sequences(str(root))
    assert small.context.shuffle_strategy == ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    monkeypatch.setattr(job_inputs, "SORT_SHUFFLE_MAX_BYTES", 0)
    monkeypatch.setattr(job_inputs, "PARTITION_BYTES", 4096)
    large = job_inputs.video_sequences(str(root))
    assert large.context.shuffle_strategy == session != small.context.shuffle_strategy
    for got in (grouped(small), grouped(large)):
        assert {v: n for v, (n, _) in got.items()} == expected
        for v, (n, flat) in got.items():
            assert flat == [float(i) for i in range(n) for _ in range(D)], v
    assert DataContext.get_current().shuffle_strategy == session


@pytest.mark.slow
def test_token_budget_epochs_use_every_video_once_and_the_same_plan_on_two_ranks(
    ray_local, tmp_path
):
    """Token budgets on 2 ranks, read as ``train_loop_per_worker`` reads them: both ranks
    compute the same plan (the driver's step count), their micro-batches are disjoint and
    together use every training video exactly once per epoch, no micro-batch exceeds the
    visible-token budget, and every micro-batch of a step carries the same normaliser."""
    from lvmae.mae.sequences import keep_count, step_batches, token_epoch_plan

    config = PretrainConfig(preset="tiny", num_workers=2, batch_tokens=8, accumulate=2,
                            val_fraction=0.0, max_tokens=8, seed=5, epochs=2,
                            warmup_epochs=0)  # fmt: skip
    ds = sequence_dataset(str(write_segments(tmp_path / "emb")), config)
    store = SequenceStore(write_sequence_stores(ds, tmp_path / "sequences")["train"])
    plan = batch_plan(config, len(store), store.lengths)
    settings = {"batch_tokens": 8, "accumulate": 2, "ratio": 0.5, "decoder_fraction": 1.0,
                "max_tokens": 8, "mode": "cap", "min_window_s": 10.0, "segment_s": 5.0}
    for epoch in range(config.epochs):
        per_rank = []
        for rank in (0, 1):
            steps, scored = token_epoch_plan(store.lengths, epoch=epoch, world=2, seed=5,
                                             **settings)  # fmt: skip
            assert len(steps) == plan.epoch_starts[epoch + 1] - plan.epoch_starts[epoch]
            per_rank.append(list(step_batches(store, steps, scored, rank=rank, world=2)))
        seen = []
        for rank_steps in per_rank:
            for micro in rank_steps:
                assert len(micro) <= 2 and len({b["denom"] for b in micro}) <= 1
                for b in micro:
                    assert keep_count(b["end"] - b["start"], 0.5).sum() <= 8
                    seen += [str(v) for v in b["video_id"]]
        assert sorted(seen) == sorted(store.video_ids.tolist())
    assert plan.global_batch == len(store) * config.epochs / plan.epoch_starts[-1]
    assert plan.lr == pytest.approx(config.blr * plan.global_batch / 256)


@pytest.mark.slow
def test_the_stores_split_by_video_and_drop_short_videos(ray_local, tmp_path):
    """One write makes both stores: every video of at least ``min_tokens`` segments in
    exactly the store its ``split_of`` names, whole; shorter videos in neither."""
    from lvmae.mae.sequences import split_of

    config = PretrainConfig(preset="tiny", val_fraction=0.5, split_seed=1, min_tokens=4)
    ds = sequence_dataset(str(write_segments(tmp_path / "emb")), config)
    stores = {k: SequenceStore(v) for k, v in write_sequence_stores(ds, tmp_path / "seq").items()}
    long_enough = {f"v{k:02d}.mp4": 3 + k % 3 for k in range(N_VIDEOS) if 3 + k % 3 >= 4}
    expected = {
        split: sorted(v for v in long_enough if split_of(v, 0.5, 1) == split)
        for split in ("train", "val")
    }
    assert all(expected.values())  # both splits have videos (else the check is weaker)
    for split, store in stores.items():
        assert sorted(store.video_ids.tolist()) == expected[split]
        assert store.lengths.tolist() == [long_enough[v] for v in sorted(expected[split])]
    assert set(stores) == {"train", "val"}
