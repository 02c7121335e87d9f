"""Pre-training's batch plan (:func:`pipelines.pretrain.batch_plan`), without Ray: the steps
it counts are the steps each rank's data path yields from a real Parquet sequence store,
and its peak lr is the one ``min_lr`` is checked against."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lvmae.config import PretrainConfig
from lvmae.mae.sequences import SequenceStore, epoch_batches, step_batches
from pipelines.pretrain import PretrainError, batch_plan

D = 4


def write_store(root, n_videos: int) -> SequenceStore:
    """A real Parquet sequence store of ``n_videos`` videos of 6 tokens (D = 4)."""
    table = pa.table({
        "video_id": [f"v{k:02d}" for k in range(n_videos)],
        "length": pa.array([6] * n_videos, pa.int32()),
        "embedding": pa.array([np.full(6 * D, k, np.float32) for k in range(n_videos)],
                              pa.list_(pa.float32())),
    })  # fmt: skip
    root.mkdir()
    pq.write_table(table, root / "part-0.parquet", row_group_size=4)
    return SequenceStore(str(root))


@pytest.mark.parametrize(  # videos, workers, batch_size, accumulate -> the plan's accumulate
    "case",
    [(10, 1, 4, 4, 2), (10, 2, 4, 4, 1), (7, 2, 16, 3, 1), (40, 2, 4, 4, 4), (9, 1, 2, 8, 4)],
)
def test_every_step_the_plan_counts_is_one_each_rank_takes(tmp_path, caplog, case):
    """A training set too small for ``batch_size x accumulate`` per worker gets fewer
    micro-batches per step (said in the plan's log line), never a step that no rank can fill:
    each rank's ``step_batches`` yields exactly the plan's steps, of full steps."""
    n_videos, workers, batch_size, accumulate, lowered = case
    store = write_store(tmp_path / "train", n_videos)
    config = PretrainConfig(
        preset="tiny", max_tokens=8, epochs=2, warmup_epochs=0, batch_size=batch_size,
        accumulate=accumulate, num_workers=workers,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="pipelines.pretrain"):
        plan = batch_plan(config, len(store))
    assert plan.accumulate == lowered
    assert plan.global_batch == plan.per_worker_batch * workers * lowered
    if lowered < accumulate:
        assert f"accumulate {accumulate} -> {lowered}" in caplog.text
    for epoch in range(config.epochs):
        for rank in range(workers):
            videos = epoch_batches(store, epoch=epoch, rank=rank, world=workers,
                                   batch_size=plan.per_worker_batch, seed=config.seed)  # fmt: skip
            steps = list(step_batches(store, rank=rank, world=workers, videos=videos,
                                      accumulate=plan.accumulate))  # fmt: skip
            assert len(steps) == plan.steps_per_epoch >= 1
            assert all(len(step) == plan.accumulate for step in steps)


def test_min_lr_is_checked_against_the_plans_peak_lr():
    """The run's peak lr is the plan's: a batch lowered to fit 4 videos lowers it below a
    ``min_lr`` the config's nominal lr allows, which is refused before any training; under
    token budgets a peak lr above the nominal one admits a higher ``min_lr``."""
    config = PretrainConfig(preset="tiny", epochs=10, warmup_epochs=2, min_lr=5e-6)
    assert config.min_lr < config.effective_lr()  # 16 windows per step, nominally
    with pytest.raises(PretrainError, match=r"min_lr \(5e-06\) exceeds this run's peak lr"):
        batch_plan(config, n_train=4)
    assert batch_plan(config, n_train=64).lr == config.effective_lr()

    lengths = np.full(100, 4)  # 2 visible tokens each: one micro-batch holds all 100 windows
    budget = PretrainConfig(preset="tiny", epochs=2, warmup_epochs=0, batch_tokens=4096,
                            min_lr=2e-5)  # fmt: skip
    assert budget.min_lr > budget.effective_lr()  # batch_size's nominal lr
    plan = batch_plan(budget, len(lengths), lengths)
    assert plan.global_batch == 100 and plan.lr > budget.min_lr
