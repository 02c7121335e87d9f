"""The Ray-free pre-training engine: one epoch lowers the loss on a toy set, a non-finite
loss stops loudly, resuming mid-epoch skips the done batches, validation is reproducible."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lvmae.config import PretrainConfig
from lvmae.mae.engine import batch_loss, evaluate, train_one_epoch, window_batch
from lvmae.mae.model import LVMAE, model_config
from lvmae.mae.optim import build_optimizer, build_scheduler
from lvmae.mae.sequences import (
    SequenceStore,
    epoch_batches,
    keep_count,
    step_batches,
    token_epoch_plan,
)
from lvmae.mae.step import PackedStep

DIM = 16


def toy_batches(n_batches: int = 6, batch: int = 4, seed: int = 0) -> list[dict]:
    """Smooth sequences (each token close to its neighbours): learnable from context."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        lengths = rng.integers(6, 12, size=batch)
        flats = []
        for length in lengths:
            base = rng.normal(size=(1, DIM))
            drift = np.cumsum(rng.normal(scale=0.1, size=(length, DIM)), axis=0)
            flats.append((base + drift).astype(np.float32).ravel())
        out.append({"embedding": np.array(flats, dtype=object), "length": lengths})
    return out


def setup(lr: float = 3e-3, **fields):
    config = PretrainConfig(
        preset="tiny", max_tokens=16, epochs=10, warmup_epochs=0, lr=lr, batch_size=4, **fields
    )
    torch.manual_seed(0)
    model = LVMAE(model_config("tiny", input_dim=DIM, max_tokens=16))
    runner = PackedStep(model, kind=config.masking, ratio=config.mask_ratio,
                        device=torch.device("cpu"))  # fmt: skip
    optimizer = build_optimizer(model, lr=config.effective_lr(), weight_decay=0.0)
    scheduler = build_scheduler(optimizer, total_steps=1000, warmup_steps=0)
    return config, runner, optimizer, scheduler


def val_loss(model, config, batches):
    total, count, _ = evaluate(
        model, batches, config, rng=np.random.default_rng(7), dim=DIM, device=torch.device("cpu")
    )
    return total / count


@pytest.mark.slow
def test_training_epochs_lower_the_validation_loss():
    config, runner, optimizer, scheduler = setup()
    model = runner.model
    data, held_out = toy_batches(seed=0), toy_batches(n_batches=3, seed=1)
    before = val_loss(model, config, held_out)
    step = 0
    for epoch in range(5):
        result = train_one_epoch(
            runner, optimizer, scheduler, data, config, epoch=epoch, step=step,
            first_step=step, steps_in_epoch=len(data), rng=np.random.default_rng(epoch), dim=DIM,
        )  # fmt: skip
        assert result.step == step + len(data) and len(result.losses) == len(data)
        step = result.step
    after = val_loss(model, config, held_out)
    assert after < 0.8 * before, (before, after)


def test_a_non_finite_loss_stops_training_loudly():
    config, runner, optimizer, scheduler = setup()
    data = toy_batches(n_batches=2)
    data[1]["embedding"][0][:] = np.nan
    with pytest.raises(FloatingPointError, match=r"non-finite training loss .* at step 2"):
        train_one_epoch(
            runner, optimizer, scheduler, data, config, epoch=0, step=0, first_step=0,
            steps_in_epoch=2, rng=np.random.default_rng(0), dim=DIM,
        )  # fmt: skip


def test_resuming_mid_epoch_skips_the_done_batches_and_calls_back_each_step():
    config, runner, optimizer, scheduler = setup()
    data = toy_batches(n_batches=5)
    seen = []
    result = train_one_epoch(
        runner, optimizer, scheduler, data, config, epoch=1, step=5 + 3, first_step=5,
        steps_in_epoch=5, rng=np.random.default_rng(0), dim=DIM,
        on_step=lambda step, loss, tokens, last: seen.append((step, tokens > 0, last)),
    )  # fmt: skip
    assert result.step == 10 and len(result.losses) == 2
    assert seen == [(9, True, False), (10, True, True)]


def test_validation_is_reproducible_and_windows_respect_the_cap():
    config, runner, _, _ = setup()
    model = runner.model
    data = toy_batches(n_batches=2)
    assert val_loss(model, config, data) == val_loss(model, config, data)
    x, real = window_batch(
        data[0], DIM, config.model_copy(update={"max_tokens": 4}), np.random.default_rng(0)
    )
    assert x.shape[1] <= 4 and real.sum(1).min() >= 2
    loss, tokens = batch_loss(
        model, data[0], config, np.random.default_rng(0), dim=DIM, device=torch.device("cpu"),
        train=False,
    )  # fmt: skip
    assert tokens == int(sum(min(n, 16) for n in data[0]["length"]))
    assert torch.isfinite(loss)


def test_accumulated_micro_batches_train_like_one_batch():
    """A step of two micro-batches (gradients added in the flat buffer, normalised by both
    micro-batches' tokens) moves the weights as one step over the same windows as one batch
    (semantic masks and whole-video windows: nothing random; plain SGD, so the update is the
    gradient itself)."""
    data = toy_batches(n_batches=2, batch=2, seed=3)
    merged = {k: np.concatenate([data[0][k], data[1][k]]) for k in ("embedding", "length")}
    finals = []
    for steps in ([[data[0], data[1]]], [merged]):
        config, runner, _, _ = setup(masking="semantic")
        optimizer = torch.optim.SGD(runner.model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        seen = []
        train_one_epoch(
            runner, optimizer, scheduler, steps, config, epoch=0, step=0, first_step=0,
            steps_in_epoch=1, rng=np.random.default_rng(0), dim=DIM,
            on_step=lambda step, loss, tokens, last, seen=seen: seen.append((step, tokens, last)),
        )  # fmt: skip
        assert seen == [(1, int(sum(merged["length"])), True)]
        finals.append(torch.cat([p.detach().flatten() for p in runner.model.parameters()]))
    torch.testing.assert_close(finals[0], finals[1], atol=1e-6, rtol=1e-5)


def test_planned_windows_and_normaliser_are_used():
    """Token-budget micro-batches carry their windows and the step's normaliser: the engine
    trains on exactly those windows, and the reported tokens are theirs."""
    config, runner, optimizer, scheduler = setup()
    batch = dict(toy_batches(n_batches=1, batch=3, seed=4)[0])
    batch["start"] = np.array([0, 1, 2])
    batch["end"] = np.array([4, 5, 3 + 2])
    batch["denom"] = 3.0
    seen = []
    train_one_epoch(
        runner, optimizer, scheduler, [[batch]], config, epoch=0, step=0, first_step=0,
        steps_in_epoch=1, rng=np.random.default_rng(0), dim=DIM,
        on_step=lambda step, loss, tokens, last: seen.append(tokens),
    )  # fmt: skip
    assert seen == [4 + 4 + 3]


def test_validation_sums_over_masked_tokens_and_skips_batches_with_none():
    """A batch whose windows are all 1 token has no masked token: validation adds nothing
    for it instead of failing, and the loss is a sum over every masked token with their
    count (semantic masks and whole-video windows: the same whatever the rng)."""
    config, runner, _, _ = setup(masking="semantic")
    model = runner.model
    ones = {"embedding": np.array([np.ones(DIM, np.float32)] * 2, dtype=object),
            "length": np.array([1, 1])}  # fmt: skip
    a, b = toy_batches(n_batches=2, batch=3, seed=5)
    rng = np.random.default_rng(0)
    cpu = torch.device("cpu")
    assert evaluate(model, [ones], config, rng=rng, dim=DIM, device=cpu) == (0.0, 0, [])
    sums = [evaluate(model, batches, config, rng=rng, dim=DIM, device=cpu)[:2]
            for batches in ([a], [b], [ones, a, ones, b])]  # fmt: skip
    masked = [int(sum(n - keep_count(n, 0.5) for n in batch["length"])) for batch in (a, b)]
    assert [count for _, count in sums] == [*masked, sum(masked)]
    assert sums[2][0] == pytest.approx(sums[0][0] + sums[1][0], rel=1e-6)


def write_store(root, n_videos: int = 20) -> SequenceStore:
    """A real Parquet sequence store of ``n_videos`` videos of 8–30 tokens (D = DIM)."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(8, 31, size=n_videos)
    table = pa.table({
        "video_id": [f"v{k:02d}" for k in range(n_videos)],
        "length": pa.array(lengths, pa.int32()),
        "embedding": pa.array([rng.normal(size=n * DIM).astype(np.float32) for n in lengths],
                              pa.list_(pa.float32())),
    })  # fmt: skip
    root.mkdir()
    pq.write_table(table, root / "part-0.parquet", row_group_size=4)
    return SequenceStore(str(root))


@pytest.mark.parametrize("budget", [None, 40])
def test_a_run_resumed_mid_epoch_draws_what_the_uninterrupted_run_drew(tmp_path, budget):
    """Resuming at step 2 of 4 (from the state after step 2) ends with the weights of the
    uninterrupted run: the skipped steps' windows and mask noise are drawn again from their
    lengths (random windows, random masks, 2 micro-batches per step; with a token budget the
    windows are planned and only the noise is drawn), as the worker loop feeds the engine."""
    store = write_store(tmp_path / "train")
    config = setup(masking="random")[0].model_copy(
        update={"window": "random", "batch_size": 2, "accumulate": 2, "batch_tokens": budget}
    )

    def steps(skip: int):
        if budget is None:
            videos = epoch_batches(store, epoch=0, rank=0, world=1, batch_size=2, seed=0,
                                   skip=skip * 2)  # fmt: skip
            return step_batches(store, rank=0, world=1, videos=videos, accumulate=2)
        plan, scored = token_epoch_plan(
            store.lengths, epoch=0, world=1, seed=0, batch_tokens=budget, accumulate=2,
            ratio=0.5, decoder_fraction=1.0, max_tokens=16, mode="random",
        )  # fmt: skip
        return step_batches(store, plan, scored, rank=0, world=1, skip=skip)

    def train(step: int, stop: int, state=None):
        _, runner, optimizer, scheduler = setup(masking="random")
        if state is not None:
            runner.model.load_state_dict(state[0])
            optimizer.load_state_dict(state[1])
            scheduler.load_state_dict(state[2])
        train_one_epoch(
            runner, optimizer, scheduler, steps(step), config, epoch=0, step=step,
            first_step=0, steps_in_epoch=stop, rng=np.random.default_rng([0, 0, 0]), dim=DIM,
        )  # fmt: skip
        return runner.model, optimizer, scheduler

    whole = train(0, 4)[0]
    model, optimizer, scheduler = train(0, 2)  # the run that stopped after step 2
    saved = [copy.deepcopy(o.state_dict()) for o in (model, optimizer, scheduler)]
    resumed = train(2, 4, saved)[0]
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
