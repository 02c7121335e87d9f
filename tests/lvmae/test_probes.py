"""Probes on frozen features and their metrics: they learn, pick the best validation epoch,
ignore padding, and the metrics match brute-force counts (LV-MAE §8, Tables 6–8)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lvmae.metrics import (
    classification_report,
    confusion_matrix,
    per_class_accuracy,
    plot_confusion_matrix,
    regression_report,
    top_k_accuracy,
)
from lvmae.model import LVMAE, model_config, sincos_positions
from lvmae.probes import (
    PROBE_KINDS,
    VAL_METRIC,
    AttentiveProbe,
    LinearProbe,
    PoolerProbe,
    ProbeConfig,
    ProbeData,
    TransformerBaseline,
    mean_pool,
    train_probe,
)

W = 32
N_CLASSES = 4


def _order_task(n: int, seed: int, *, positions: bool = True) -> ProbeData:
    """Classes defined only by token ORDER: class c is the cycle (a, b, c, d) shifted by c,
    repeated 1-3 times (L in {4, 8, 12}), plus noise. Every class holds each content vector
    equally often, so the mean over tokens carries no class information. With
    ``positions``, tokens carry sin-cos positions, as frozen LV-MAE outputs do."""
    rng = np.random.default_rng(seed)
    content = np.random.default_rng(123).normal(size=(N_CLASSES, W)).astype(np.float32)
    pos = 2.0 * sincos_positions(12, W).numpy()
    y = rng.integers(0, N_CLASSES, size=n)
    tokens = []
    for c in y:
        L = 4 * int(rng.integers(1, 4))
        t = content[(np.arange(L) + c) % 4] + rng.normal(scale=0.3, size=(L, W))
        tokens.append((t + pos[:L] if positions else t).astype(np.float32))
    return ProbeData(y=y, tokens=tokens)


def _mean_task(n: int, seed: int) -> ProbeData:
    """Classes defined by the mean direction of the tokens (order irrelevant)."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * np.random.default_rng(7).normal(size=(N_CLASSES, W))
    y = rng.integers(0, N_CLASSES, size=n)
    tokens = [
        (centres[c] + rng.normal(size=(int(rng.integers(2, 9)), W))).astype(np.float32) for c in y
    ]
    pooled = np.stack([t.mean(axis=0) for t in tokens])
    return ProbeData(y=y, pooled=pooled, tokens=tokens)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is faster, and immune to a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def order_splits():
    return _order_task(128, 0), _order_task(64, 1), _order_task(64, 2)


# ------------------------------------------------------------------------------- learning


def test_linear_probe_learns_mean_separable_task():
    train, val, test = _mean_task(128, 0), _mean_task(64, 1), _mean_task(64, 2)
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
    config = ProbeConfig(kind, lr=lr, epochs=10, heads=4)
    result = train_probe(train, val, test, config=config)
    assert result.test_metrics["top1"] >= 0.9
    assert [h["epoch"] for h in result.history] == list(range(10))
    assert result.history[1]["lr"] == pytest.approx(3e-3 * 0.9 if kind == "attentive" else 9e-3)


def test_transformer_baseline_learns_order_from_raw_embeddings():
    """Raw segment embeddings carry no positions: a position-free attentive probe is
    permutation-invariant and stays at chance; the baseline adds its own positions."""
    splits = [_order_task(n, s, positions=False) for n, s in ((128, 0), (64, 1), (64, 2))]
    probe = train_probe(*splits, config=ProbeConfig("attentive", lr=3e-3, epochs=5, heads=4))
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
    short = dataclasses.replace(config, epochs=result.best_epoch + 1)
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


# -------------------------------------------------------------------------------- padding


def _token_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "attentive": AttentiveProbe(W, 3, heads=4),
        "attentive-encoder-cls": AttentiveProbe(W, 3, heads=4, cls_source="encoder"),
        "pooler": PoolerProbe(W, 3, heads=4, num_queries=2),
        "baseline": TransformerBaseline(W, 3, width=32, depth=2, heads=4),
    }


@pytest.mark.parametrize("name", list(_token_models()))
def test_padding_does_not_change_token_probe_outputs(name):
    model = _token_models()[name].eval()
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([3, 5, 1])
    tight = torch.randn(3, 5, W, generator=g)
    loose = torch.randn(3, 11, W, generator=g) * 100.0  # garbage at the pads
    loose[:, :5] = tight
    real_tight = torch.arange(5)[None, :] < lengths[:, None]
    loose[:, :5][~real_tight] = 1e3
    real_loose = torch.arange(11)[None, :] < lengths[:, None]
    kwargs = {"cls": torch.randn(3, W, generator=g)} if model.wants_cls else {}
    with torch.no_grad():
        a = model(tight, real_tight, **kwargs)
        b = model(loose, real_loose, **kwargs)
        alone = model(tight[1:2, :5], real_tight[1:2], **{k: v[1:2] for k, v in kwargs.items()})
    assert a.shape == (3, 3)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[1:2], alone, atol=1e-5, rtol=1e-5)


def test_mean_pool_ignores_pads():
    tokens = torch.randn(2, 4, 3)
    real = torch.tensor([[True, True, False, False], [True, True, True, True]])
    pooled = mean_pool(tokens, real)
    torch.testing.assert_close(pooled[0], tokens[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], tokens[1].mean(0))
    with pytest.raises(ValueError, match="real token"):
        mean_pool(tokens, torch.zeros(2, 4, dtype=torch.bool))


# ------------------------------------------------------------------------- config, errors


def test_paper_configs():
    linear, attentive, pooler = (ProbeConfig.paper(k) for k in PROBE_KINDS)
    assert (linear.lr, linear.epochs, linear.batch_size, linear.gamma) == (1e-4, 30, 16, None)
    assert (attentive.lr, attentive.epochs, attentive.batch_size) == (1e-3, 20, 16)
    assert attentive.gamma == 0.9 and pooler.gamma == 0.9
    assert (linear.weight_decay, linear.dropout, linear.seed) == (0.0, 0.0, 0)
    assert ProbeConfig("attentive", lr=3e-4).gamma == 0.9
    assert ProbeConfig.from_dict(attentive.to_dict()) == attentive
    with pytest.raises(ValueError, match="kind"):
        ProbeConfig("mlp")
    with pytest.raises(ValueError, match="unknown ProbeConfig keys"):
        ProbeConfig.from_dict({"kind": "linear", "momentum": 0.9})
    with pytest.raises(ValueError, match="gamma"):
        ProbeConfig("attentive", gamma=1.5)


@pytest.mark.parametrize("empty", ["train", "val", "test"])
def test_empty_split_raises(empty):
    splits = {name: _mean_task(8, i) for i, name in enumerate(("train", "val", "test"))}
    splits[empty] = ProbeData(y=np.zeros(0, dtype=np.int64), pooled=np.zeros((0, W)))
    with pytest.raises(ValueError, match=f"{empty} split is empty"):
        train_probe(**splits, config=ProbeConfig("linear", epochs=1))


def test_bad_inputs_raise():
    train, val, test = _mean_task(8, 0), _mean_task(8, 1), _mean_task(8, 2)
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


# -------------------------------------------------------------------------------- metrics


def test_top_k_accuracy_matches_brute_force():
    rng = np.random.default_rng(0)
    scores, y = rng.normal(size=(50, 7)), rng.integers(0, 7, size=50)
    for k in range(1, 8):
        hits = [y[i] in np.argsort(-scores[i])[:k] for i in range(50)]
        assert top_k_accuracy(scores, y, k) == pytest.approx(np.mean(hits))
    assert top_k_accuracy(torch.from_numpy(scores), torch.from_numpy(y), 7) == 1.0
    assert top_k_accuracy(np.zeros((3, 4)), [0, 1, 2], 1) == 1.0  # ties favour the sample
    with pytest.raises(ValueError, match="k must be"):
        top_k_accuracy(scores, y, 8)
    with pytest.raises(ValueError, match="outside"):
        top_k_accuracy(scores, np.full(50, 7), 1)
    with pytest.raises(ValueError, match="at least one"):
        top_k_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int), 1)


def test_per_class_accuracy_and_confusion_matrix_match_brute_force():
    rng = np.random.default_rng(1)
    C = 5
    y = rng.choice([0, 1, 2, 4], size=60)  # class 3 absent
    pred = rng.integers(0, C, size=60)
    acc = per_class_accuracy(pred, y, C)
    assert np.isnan(acc[3])
    for c in (0, 1, 2, 4):
        assert acc[c] == pytest.approx(np.mean(pred[y == c] == c))
    cm = confusion_matrix(pred, y, C)
    brute = np.zeros((C, C), dtype=np.int64)
    for t, p in zip(y, pred, strict=True):
        brute[t, p] += 1
    np.testing.assert_array_equal(cm, brute)
    assert cm.dtype == np.int64 and cm.sum() == 60
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(y, minlength=C))
    assert np.trace(cm) == np.sum(pred == y)
    with pytest.raises(ValueError, match="entries"):
        confusion_matrix(pred[:-1], y, C)
    with pytest.raises(ValueError, match="outside"):
        per_class_accuracy(pred, y, 4)


def test_reports():
    rng = np.random.default_rng(2)
    logits, y = rng.normal(size=(40, 6)), rng.integers(0, 5, size=40)  # class 5 absent
    names = [f"c{i}" for i in range(6)]
    report = classification_report(logits, y, names)
    assert report["top1"] == top_k_accuracy(logits, y, 1)
    assert report["top5"] == top_k_accuracy(logits, y, 5)
    assert report["n"] == 40 and np.isnan(report["per_class"]["c5"])
    per_class = per_class_accuracy(logits.argmax(1), y, 6)
    assert report["mean_class_accuracy"] == pytest.approx(np.nanmean(per_class))
    assert "top5" not in classification_report(logits[:, :4], y % 4, names[:4])
    reg = regression_report(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 1.0]))
    assert reg == {"mse": pytest.approx(10 / 3), "mae": pytest.approx(4 / 3), "n": 3}


@pytest.mark.parametrize("n_classes", [12, 50])
def test_confusion_matrix_plot_writes_png(tmp_path, n_classes):
    C = n_classes
    rng = np.random.default_rng(3)
    y = rng.integers(0, C, size=400)
    pred = np.where(rng.random(400) < 0.7, y, rng.integers(0, C, size=400))
    cm = confusion_matrix(pred, y, C)
    names = [f"class_{i}" for i in range(C)]
    path = plot_confusion_matrix(cm, names, tmp_path / "plots" / "cm.png", title="test")
    assert path == tmp_path / "plots" / "cm.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix(cm, names[:-1], tmp_path / "bad.png")
