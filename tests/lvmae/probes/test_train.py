"""Training probes on frozen features with the paper's protocol: they learn, pick the best
validation epoch, report test scores of that epoch, train in target units for regression,
and reject bad inputs (LV-MAE §8, Tables 6–8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvmae.config import ProbeConfig
from lvmae.mae.model import LVMAE, model_config
from lvmae.probes.heads import AttentiveProbe, LinearProbe, TransformerBaseline
from lvmae.probes.metrics import regression_report
from lvmae.probes.train import VAL_METRIC, ProbeData, train_probe
from tests.lvmae.probes.tasks import N_CLASSES, W, mean_task, order_task


@pytest.fixture(scope="module")
def order_splits():
    return order_task(128, 0), order_task(64, 1), order_task(64, 2)


# ------------------------------------------------------------------------------- learning


def test_linear_probe_learns_mean_separable_task():
    train, val, test = mean_task(128, 0), mean_task(64, 1), mean_task(64, 2)
    config = ProbeConfig("linear", lr=1e-2, epochs=10)
    result = train_probe(train, val, test, config=config)
    assert result.test_metrics["top1"] >= 0.95
    assert result.metric == "val_top1"
    assert result.test_predictions.shape == (64,)
    assert result.test_scores is not None and result.test_scores.shape == (64, N_CLASSES)
    assert result.test_metrics["n"] == 64
    # Without pooled features the linear probe means the tokens itself: same result.
    no_pooled = [ProbeData(y=d.y, tokens=d.tokens) for d in (train, val, test)]
    again = train_probe(*no_pooled, config=config)
    assert again.test_metrics["top1"] == pytest.approx(result.test_metrics["top1"])


@pytest.mark.parametrize("kind", ["attentive", "pooler"])
def test_token_probes_solve_order_task_that_mean_pooling_cannot(order_splits, kind):
    train, val, test = order_splits
    linear = train_probe(train, val, test, config=ProbeConfig("linear", lr=1e-2, epochs=10))
    assert linear.test_metrics["top1"] < 0.5  # chance is 0.25: the mean has no signal
    lr = 3e-3 if kind == "attentive" else 1e-2
    config = ProbeConfig(kind, lr=lr, epochs=10, heads=4, cls_source="learned")
    result = train_probe(train, val, test, config=config)
    assert result.test_metrics["top1"] >= 0.9
    assert [h["epoch"] for h in result.history] == list(range(10))
    assert result.history[1]["lr"] == pytest.approx(3e-3 * 0.9 if kind == "attentive" else 9e-3)


def test_transformer_baseline_learns_order_from_raw_embeddings():
    """Raw segment embeddings carry no positions: a position-free attentive probe is
    permutation-invariant and stays at chance; the baseline adds its own positions."""
    splits = [order_task(n, s, positions=False) for n, s in ((128, 0), (64, 1), (64, 2))]
    config = ProbeConfig("attentive", lr=3e-3, epochs=5, heads=4, cls_source="learned")
    probe = train_probe(*splits, config=config)
    assert probe.test_metrics["top1"] < 0.5
    torch.manual_seed(0)
    model = TransformerBaseline(W, N_CLASSES, width=32, depth=1, heads=4)
    config = ProbeConfig("attentive", lr=5e-3, epochs=20, gamma=1.0)
    result = train_probe(*splits, config=config, model=model)
    assert result.test_metrics["top1"] >= 0.8
    assert result.model is model


def test_regression_learns_in_target_units():
    rng = np.random.default_rng(0)
    w = rng.normal(size=8)

    def split(n: int) -> ProbeData:
        x = rng.normal(size=(n, 8)).astype(np.float32)
        return ProbeData(y=1000.0 + 50.0 * (x @ w) + rng.normal(scale=5.0, size=n), pooled=x)

    train, val, test = split(256), split(64), split(64)
    config = ProbeConfig("linear", lr=3e-2, epochs=20)
    result = train_probe(train, val, test, config=config, task="regression")
    assert result.metric == "val_mse" and VAL_METRIC["regression"] == ("val_mse", "min")
    assert result.test_metrics["mse"] < 0.05 * np.var(test.y)
    manual = regression_report(result.test_predictions, test.y)
    assert result.test_metrics["mse"] == pytest.approx(manual["mse"])
    assert result.test_metrics["mae"] == pytest.approx(manual["mae"])
    assert result.test_scores is None
    vals = [h["val_mse"] for h in result.history]
    assert result.best_epoch == int(np.argmin(vals)) and result.val_metric == min(vals)


def _drift_task(n: int, seed: int, rule: str) -> ProbeData:
    x = np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32)
    score = {"x0": x[:, 0], "x1": x[:, 1], "x0+x1": x[:, 0] + x[:, 1]}[rule]
    return ProbeData(y=(score > 0).astype(np.int64), pooled=x)


def _drift_model() -> LinearProbe:
    """Starts at the rule sign(x0); training (labels sign(x1)) drifts it towards x1, passing
    the validation rule sign(x0 + x1) mid-way, so validation peaks before the last epoch."""
    model = LinearProbe(2, 2)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[1, 0], model.head.weight[0, 0] = 1.0, -1.0
    return model


def test_test_metrics_come_from_the_best_validation_epoch():
    train = _drift_task(64, 0, "x1")
    val, test = _drift_task(256, 1, "x0+x1"), _drift_task(256, 2, "x0+x1")
    config = ProbeConfig("linear", lr=0.02, epochs=12, seed=3)
    seen: list[tuple[int, dict]] = []
    result = train_probe(
        train,
        val,
        test,
        config=config,
        model=_drift_model(),
        on_epoch=lambda e, m: seen.append((e, m)),
    )
    val_top1 = [h["val_top1"] for h in result.history]
    assert result.best_epoch == int(np.argmax(val_top1))
    assert 0 < result.best_epoch < config.epochs - 1
    assert result.val_metric == val_top1[result.best_epoch] > val_top1[-1] + 0.05
    assert seen == [(h["epoch"], h) for h in result.history]
    assert result.test_metrics["top1"] == pytest.approx(np.mean(result.test_predictions == test.y))
    assert result.test_metrics["top1"] >= 0.85
    # A run stopped right after the best epoch (same seed: same trajectory) ends on the same
    # weights, so its test scores are those of the best epoch.
    short = config.model_copy(update={"epochs": result.best_epoch + 1})
    cut = train_probe(train, val, test, config=short, model=_drift_model())
    assert cut.history == result.history[: result.best_epoch + 1]
    assert cut.test_metrics == result.test_metrics
    np.testing.assert_array_equal(cut.test_predictions, result.test_predictions)


def test_attentive_probe_on_frozen_lvmae_outputs_with_encoder_cls():
    torch.manual_seed(0)
    encoder = LVMAE(model_config("tiny", input_dim=16)).eval()
    rng = np.random.default_rng(0)

    def split(n: int) -> ProbeData:
        lengths = rng.integers(2, 7, size=n)
        x = torch.from_numpy(rng.normal(size=(n, int(lengths.max()), 16)).astype(np.float32))
        real = torch.arange(x.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]
        with torch.no_grad():
            cls, tokens = encoder.encode(x, real)
        seqs = [tokens[i, : lengths[i]].numpy() for i in range(n)]
        return ProbeData(y=rng.integers(0, 3, size=n), tokens=seqs, cls=cls.numpy())

    train, val, test = split(24), split(8), split(8)
    config = ProbeConfig("attentive", epochs=2, cls_source="encoder")
    result = train_probe(train, val, test, config=config, n_classes=3)
    assert isinstance(result.model, AttentiveProbe) and result.model.wants_cls
    assert len(result.history) == 2 and result.test_scores.shape == (8, 3)
    with pytest.raises(ValueError, match="encoder"):
        train_probe(ProbeData(y=train.y, tokens=train.tokens), val, test, config=config)


# -------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("empty", ["train", "val", "test"])
def test_empty_split_raises(empty):
    splits = {name: mean_task(8, i) for i, name in enumerate(("train", "val", "test"))}
    splits[empty] = ProbeData(y=np.zeros(0, dtype=np.int64), pooled=np.zeros((0, W)))
    with pytest.raises(ValueError, match=f"{empty} split is empty"):
        train_probe(**splits, config=ProbeConfig("linear", epochs=1))


def test_bad_inputs_raise():
    train, val, test = mean_task(8, 0), mean_task(8, 1), mean_task(8, 2)
    config = ProbeConfig("linear", epochs=1)
    narrow = ProbeData(y=val.y, pooled=val.pooled[:, :8])
    with pytest.raises(ValueError, match="width mismatch"):
        train_probe(train, narrow, test, config=config)
    with pytest.raises(ValueError, match="expects 8-wide"):
        train_probe(train, val, test, config=config, model=LinearProbe(8, N_CLASSES))
    with pytest.raises(ValueError, match="class ids"):
        train_probe(train, val, test, config=config, n_classes=2)
    floaty = ProbeData(y=train.y.astype(np.float32), pooled=train.pooled)
    with pytest.raises(ValueError, match="integer class ids"):
        train_probe(floaty, val, test, config=config)
    with pytest.raises(ValueError, match="token sequences"):
        train_probe(
            ProbeData(y=train.y, pooled=train.pooled), val, test, config=ProbeConfig("pooler")
        )
    with pytest.raises(ValueError, match="task"):
        train_probe(train, val, test, config=config, task="ranking")
    with pytest.raises(ValueError, match="token sequences for"):
        ProbeData(y=train.y, tokens=train.tokens[:-1])
    with pytest.raises(ValueError, match="pooled"):
        ProbeData(y=train.y, pooled=train.pooled[:-1])


def test_a_collapsed_probe_predicts_no_test_video_right():
    """Zero features and one class-balanced batch: the probe's logits stay equal for every
    class (no gradient reaches it), so every test video is a tie. Its stored predictions,
    which the confusion matrix counts, agree with top-1: none is right."""
    y = np.arange(16) % N_CLASSES
    zeros = ProbeData(y=y, pooled=np.zeros((16, W), np.float32))
    result = train_probe(zeros, zeros, zeros, config=ProbeConfig("linear", epochs=2))
    assert result.test_metrics["top1"] == 0.0
    assert np.all(result.test_scores == result.test_scores[0, 0])  # every class tied
    assert not np.any(result.test_predictions == y)


def test_batch_norm_trains_on_a_last_batch_of_one_video():
    """17 training videos in batches of 16: the 17th joins the batch before it (a BatchNorm
    cannot train on one video); one training video with a BatchNorm is a clear error."""
    train, val = mean_task(17, 0), mean_task(8, 1)
    config = ProbeConfig("linear", batch_norm=True, epochs=3, batch_size=16)
    result = train_probe(train, val, val, config=config)
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert np.isfinite(result.history[-1]["train_loss"])
    with pytest.raises(ValueError, match="at least 2 training videos"):
        train_probe(mean_task(1, 2), val, val, config=config)


def test_training_is_reproducible_and_leaves_the_global_rng_alone():
    train, val, test = order_task(32, 0), order_task(16, 1), order_task(16, 2)
    config = ProbeConfig("pooler", lr=1e-2, epochs=3, batch_size=8, heads=4, dropout=0.2, seed=7)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = train_probe(train, val, test, config=config)
    assert torch.equal(torch.get_rng_state(), state)
    again = train_probe(train, val, test, config=config)
    assert again.history == first.history and again.test_metrics == first.test_metrics
    np.testing.assert_array_equal(again.test_scores, first.test_scores)
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    other = train_probe(train, val, test, config=config.model_copy(update={"seed": 8}))
    assert other.history != first.history
    with pytest.raises(ValueError, match="ProbeConfig"):
        train_probe(train, val, test, config=config.to_dict())
