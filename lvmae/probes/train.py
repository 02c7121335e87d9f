"""Training probes on cached frozen features, with the paper's protocol (LV-MAE §8).

:func:`train_probe` trains any head of :mod:`lvmae.probes.heads` on :class:`ProbeData`
splits: Adam, an optional per-epoch ExponentialLR, a validation pass after every epoch, and
test scores reported at the best validation epoch (:class:`ProbeFit`). The encoder never
runs inside the probe's epochs: its outputs are cached once per video.

Token batches are padded per batch (:func:`lvmae.mae.sequences.collate`); pads are masked out
of attention.

Sources: Naiman et al., "LV-MAE", ICCV 2025, §8 and Tables 6–8 (probe protocol and recipes;
the authors' public ``test_lp_movie_clip.py`` / ``test_ap_movie_clip.py`` for details the
paper leaves open); docs/design.md "Reference facts".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvmae.config import ProbeConfig
from lvmae.labels import TASKS
from lvmae.mae.sequences import collate
from lvmae.probes.heads import build_probe
from lvmae.probes.kinds import kind_spec
from lvmae.probes.metrics import predicted_classes, regression_report, top_k_accuracy

__all__ = ["VAL_METRIC", "ProbeData", "ProbeFit", "resolve_device", "train_probe"]

VAL_METRIC: dict[str, tuple[str, str]] = {
    "classification": ("val_top1", "max"),
    "regression": ("val_mse", "min"),
}
"""Per task, the validation metric that picks the best epoch and whether higher
(``"max"``) or lower (``"min"``) is better (e.g. for Ray Tune's ``metric=`` / ``mode=``)."""

_EVAL_BATCH = 64  # videos per forward pass when scoring val/test (no effect on results)

EpochCallback = Callable[[int, dict[str, float]], None]
"""``on_epoch(epoch, metrics)``: the 0-based epoch and that epoch's history row."""


def resolve_device(device: str, *, holds_gpu: bool) -> str:
    """The torch device a probe trains on.

    ``"auto"``: ``"cuda"`` when the caller holds a GPU (a Ray task or trial that reserved
    one) and CUDA is available, else ``"cpu"``. Any other value is returned unchanged.

    Raises:
        ValueError: an explicit CUDA device without CUDA on this machine.
    """
    if device == "auto":
        return "cuda" if holds_gpu and torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return device


# ------------------------------------------------------------------------------------ data


@dataclass
class ProbeData:
    """One split of cached frozen features and their targets.

    Attributes:
        y: ``[N]`` int64 class ids (classification) or float targets (regression).
        pooled: float32 ``[N, W]`` mean-pooled features (linear probe), or None; when None,
            the linear probe uses the mean of each ``tokens`` sequence.
        tokens: N float32 arrays ``[L_i, W]`` (real tokens only, ``L_i >= 1``) for token
            probes, or None.
        cls: float32 ``[N, W]`` the encoder's [CLS] per video, or None; needed only by an
            attentive probe with ``cls_source="encoder"``.

    Raises:
        ValueError: no features at all, or row counts / shapes that disagree with ``y``.
    """

    y: np.ndarray
    pooled: np.ndarray | None = None
    tokens: list[np.ndarray] | None = None
    cls: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y)
        if self.y.ndim != 1:
            raise ValueError(f"y must be [N]; got shape {self.y.shape}")
        n = self.y.shape[0]
        if self.pooled is None and self.tokens is None:
            raise ValueError("ProbeData needs pooled features, token sequences, or both")
        for name in ("pooled", "cls"):
            value = getattr(self, name)
            if value is None:
                continue
            arr = np.asarray(value, dtype=np.float32)
            if arr.ndim != 2 or arr.shape[0] != n:
                raise ValueError(f"{name} must be [N={n}, W]; got shape {arr.shape}")
            setattr(self, name, arr)
        if self.tokens is not None:
            seqs = [np.asarray(t, dtype=np.float32) for t in self.tokens]
            if len(seqs) != n:
                raise ValueError(f"got {len(seqs)} token sequences for {n} targets")
            for i, s in enumerate(seqs):
                if s.ndim != 2 or s.shape[0] == 0:
                    raise ValueError(f"token sequence {i} must be [L >= 1, W]; got {s.shape}")
            if len({s.shape[1] for s in seqs}) > 1:
                raise ValueError("token sequences have different widths W")
            self.tokens = seqs

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def pooled_features(self) -> np.ndarray:
        """``[N, W]``: ``pooled`` if given, else the mean of each token sequence."""
        if self.pooled is not None:
            return self.pooled
        assert self.tokens is not None  # guaranteed by __post_init__
        if not self.tokens:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([s.mean(axis=0) for s in self.tokens]).astype(np.float32)


@dataclass
class ProbeFit:
    """What :func:`train_probe` returns.

    Attributes:
        best_epoch: 0-based epoch with the best validation metric (the first, on ties).
        val_metric: that epoch's validation metric (:data:`VAL_METRIC`: ``val_top1`` for
            classification, ``val_mse`` in target units for regression).
        test_metrics: test scores of the best-validation-epoch weights (the paper's
            protocol): ``top1`` (+ ``top5`` when ≥ 5 classes), ``loss``, ``n`` for
            classification; ``mse``, ``mae``, ``n`` for regression.
        history: per epoch, ``epoch``, ``lr``, ``train_loss`` and the validation metrics
            (``val_loss``, ``val_top1``, ``val_top5`` / ``val_mse``, ``val_mae``).
        test_predictions: ``[N_test]`` predicted class ids (int64; a tie for the top score
            is a wrong class, :func:`lvmae.probes.metrics.predicted_classes`) or values
            (float64, target units) at the best epoch.
        test_scores: ``[N_test, C]`` float32 test logits at the best epoch (classification;
            None for regression).
        metric: the name of ``val_metric``.
        model: the trained probe, best-epoch weights loaded.
    """

    best_epoch: int
    val_metric: float
    test_metrics: dict[str, float]
    history: list[dict[str, float]]
    test_predictions: np.ndarray
    test_scores: np.ndarray | None = None
    metric: str = "val_top1"
    model: nn.Module | None = field(default=None, repr=False)


# -------------------------------------------------------------------------------- training


class _Split:
    """A split's model inputs, ready to batch: pooled ``[N, W]`` or token sequences."""

    def __init__(self, name: str, data: ProbeData, input_kind: str, wants_cls: bool) -> None:
        if len(data) == 0:
            raise ValueError(f"the {name} split is empty: every split needs at least one video")
        self.name = name
        self.pooled: np.ndarray | None = None
        self.tokens: list[np.ndarray] | None = None
        self.cls: np.ndarray | None = None
        if input_kind == "pooled":
            self.pooled = data.pooled_features()
            self.width = self.pooled.shape[1]
        else:
            if data.tokens is None:
                raise ValueError(
                    f"the {name} split has no token sequences, which token probes need"
                )
            self.tokens = data.tokens
            self.width = self.tokens[0].shape[1]
            self.lengths = np.array([len(t) for t in self.tokens])
            if wants_cls:
                if data.cls is None:
                    raise ValueError(
                        f"the {name} split has no encoder [CLS] features (ProbeData.cls), "
                        "which an attentive probe with cls_source='encoder' needs"
                    )
                if data.cls.shape[1] != self.width:
                    raise ValueError(
                        f"{name}: cls width {data.cls.shape[1]} != token width {self.width}"
                    )
                self.cls = data.cls
        self.n = len(data)

    def batch(self, idx: np.ndarray, device: torch.device) -> tuple[Tensor, ...]:
        """Model inputs for rows ``idx``: ``(pooled,)`` or ``(tokens, real[, cls])``."""
        if self.pooled is not None:
            return (torch.from_numpy(self.pooled[idx]).to(device),)
        assert self.tokens is not None
        x, real = collate([self.tokens[i] for i in idx])
        out = [torch.from_numpy(x).to(device), torch.from_numpy(real).to(device)]
        if self.cls is not None:
            out.append(torch.from_numpy(self.cls[idx]).to(device))
        return tuple(out)

    def eval_order(self) -> np.ndarray:
        """Row order for scoring: by length, so each batch carries little padding."""
        if self.tokens is None:
            return np.arange(self.n)
        return np.argsort(self.lengths, kind="stable")


def _call(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    if len(inputs) == 3:
        return model(inputs[0], inputs[1], cls=inputs[2])
    return model(*inputs)


@torch.no_grad()
def _predict(model: nn.Module, split: _Split, device: torch.device) -> np.ndarray:
    """Model outputs ``[N, n_out]`` float32 for the whole split, in the split's row order."""
    model.eval()
    order = split.eval_order()
    outputs = []
    for start in range(0, split.n, _EVAL_BATCH):
        idx = order[start : start + _EVAL_BATCH]
        outputs.append(_call(model, split.batch(idx, device)).float().cpu().numpy())
    out = np.empty((split.n, outputs[0].shape[1]), dtype=np.float32)
    out[order] = np.concatenate(outputs)
    return out


def _targets(name: str, y: np.ndarray, task: str, n_classes: int | None) -> np.ndarray:
    if task == "classification":
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"{name}: classification targets must be integer class ids, got dtype "
                f"{y.dtype}; use task='regression' for real-valued targets"
            )
        y = y.astype(np.int64)
        if n_classes is not None and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(
                f"{name}: class ids must be in [0, {n_classes}); got min {y.min()}, max {y.max()}"
            )
        return y
    y = y.astype(np.float64)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name}: regression targets must be finite")
    return y


def _classification_metrics(logits: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
    C = logits.shape[1]
    loss = F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(y)).item()
    metrics = {f"{prefix}loss": float(loss), f"{prefix}top1": top_k_accuracy(logits, y, 1)}
    if C >= 5:
        metrics[f"{prefix}top5"] = top_k_accuracy(logits, y, 5)
    return metrics


@dataclass
class _Targets:
    """The three splits' targets and how model outputs map to them.

    Classification: ``n_out`` classes, outputs are logits. Regression: one output, trained
    on targets standardised with the training split's ``mean`` and ``std``; outputs map back
    to target units as ``out * std + mean``.
    """

    task: str
    ys: dict[str, np.ndarray]
    n_out: int
    train_y: Tensor
    mean: float = 0.0
    std: float = 1.0

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        if self.task == "classification":
            return F.cross_entropy(out, target)
        return F.mse_loss(out[:, 0], target)

    def values(self, out: np.ndarray) -> np.ndarray:
        """Regression outputs ``[N, 1]`` → ``[N]`` float64 in target units."""
        return out[:, 0].astype(np.float64) * self.std + self.mean

    def score(self, out: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
        if self.task == "classification":
            return _classification_metrics(out, y, prefix)
        report = regression_report(self.values(out), y)
        return {f"{prefix}mse": report["mse"], f"{prefix}mae": report["mae"]}


def _task_targets(named: Mapping[str, ProbeData], task: str, n_classes: int | None) -> _Targets:
    ys = {name: _targets(name, data.y, task, n_classes) for name, data in named.items()}
    if task == "classification":
        if n_classes is None:
            n_classes = 1 + max(int(y.max()) for y in ys.values())
        if n_classes < 2:
            raise ValueError(f"classification needs at least 2 classes; got {n_classes}")
        return _Targets(task, ys, n_classes, torch.from_numpy(ys["train"]))
    mean = float(ys["train"].mean())
    std = float(ys["train"].std()) or 1.0
    train_y = torch.from_numpy((ys["train"] - mean) / std).float()
    return _Targets(task, ys, 1, train_y, mean, std)


def _model_inputs(config: ProbeConfig, model: nn.Module | None) -> tuple[str, bool]:
    """What the probe is fed: ``"pooled"`` or ``"tokens"``, and whether it wants [CLS]."""
    spec = kind_spec(config.kind)
    default_input = spec.inputs
    default_cls = spec.reads_cls and config.cls_source == "encoder"
    input_kind = getattr(model, "input_kind", default_input) if model is not None else default_input
    wants_cls = bool(getattr(model, "wants_cls", False)) if model is not None else default_cls
    if input_kind not in ("pooled", "tokens"):
        raise ValueError(f"model.input_kind must be 'pooled' or 'tokens'; got {input_kind!r}")
    return input_kind, wants_cls


def _model_splits(
    named: Mapping[str, ProbeData], config: ProbeConfig, model: nn.Module | None
) -> dict[str, _Split]:
    """The splits as model inputs; checks that their widths agree with each other and with
    ``model``."""
    input_kind, wants_cls = _model_inputs(config, model)
    splits = {name: _Split(name, data, input_kind, wants_cls) for name, data in named.items()}
    width = splits["train"].width
    for name, split in splits.items():
        if split.width != width:
            raise ValueError(
                f"feature width mismatch: train has W={width}, {name} has W={split.width}"
            )
    in_features = getattr(model, "in_features", width) if model is not None else width
    if in_features != width:
        raise ValueError(f"the model expects {in_features}-wide features; the data has {width}")
    return splits


def _train_epoch(
    probe: nn.Module,
    split: _Split,
    targets: _Targets,
    optimizer: torch.optim.Optimizer,
    *,
    order: np.ndarray,
    batch_size: int,
    device: torch.device,
    epoch: int,
) -> float:
    """One pass over ``split`` in ``order``; returns the mean training loss per video.

    A probe with a BatchNorm (the linear probe's ``batch_norm``) cannot train on a batch of
    one video, so a last batch of one joins the batch before it (no video is left out).

    Raises:
        ValueError: a probe with a BatchNorm and a training split of one video.
        FloatingPointError: a non-finite training loss.
    """
    probe.train()
    starts = list(range(0, split.n, batch_size))
    if split.n % batch_size == 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                         for m in probe.modules()):  # fmt: skip
        if split.n == 1:
            raise ValueError("a probe with batch_norm needs at least 2 training videos")
        starts.pop()  # the last video joins the batch before it
    ends = [*starts[1:], split.n]
    total, seen = 0.0, 0
    for start, end in zip(starts, ends, strict=True):
        idx = order[start:end]
        out = _call(probe, split.batch(idx, device))
        loss = targets.loss(out, targets.train_y[idx].to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at epoch {epoch}; lower the lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        seen += len(idx)
    return total / seen


@dataclass
class _Best:
    """The best validation epoch so far (the first, on ties) and a copy of its weights."""

    mode: str
    epoch: int = -1
    value: float = math.nan
    state: dict[str, Tensor] | None = None

    def offer(self, epoch: int, value: float, probe: nn.Module) -> None:
        better = value > self.value if self.mode == "max" else value < self.value
        if self.state is None or better:
            self.epoch, self.value = epoch, value
            self.state = {k: v.detach().clone() for k, v in probe.state_dict().items()}


def _fit(
    probe: nn.Module,
    config: ProbeConfig,
    splits: Mapping[str, _Split],
    targets: _Targets,
    *,
    device: torch.device,
    on_epoch: EpochCallback | None,
) -> tuple[list[dict[str, float]], _Best]:
    """The epoch loop: Adam (+ ExponentialLR), a validation pass after every epoch, the
    best epoch's weights kept. Draws from the global torch RNG (the caller seeds it)."""
    params = [p for p in probe.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.gamma)
        if config.gamma is not None
        else None
    )
    rng = np.random.default_rng(config.seed)
    metric_name, mode = VAL_METRIC[targets.task]
    history: list[dict[str, float]] = []
    best = _Best(mode)
    train = splits["train"]
    for epoch in range(config.epochs):
        lr = optimizer.param_groups[0]["lr"]
        order = rng.permutation(train.n)
        loss = _train_epoch(
            probe, train, targets, optimizer,
            order=order, batch_size=config.batch_size, device=device, epoch=epoch,
        )  # fmt: skip
        if scheduler is not None:
            scheduler.step()
        row: dict[str, float] = {"epoch": epoch, "lr": lr, "train_loss": loss}
        row.update(targets.score(_predict(probe, splits["val"], device), targets.ys["val"], "val_"))
        history.append(row)
        best.offer(epoch, row[metric_name], probe)
        if on_epoch is not None:
            on_epoch(epoch, dict(row))
    return history, best


def _test_fit(
    probe: nn.Module,
    best: _Best,
    history: list[dict[str, float]],
    test: _Split,
    targets: _Targets,
    *,
    device: torch.device,
) -> ProbeFit:
    """Load the best epoch's weights back and score them on the test split."""
    assert best.state is not None  # epochs >= 1
    probe.load_state_dict(best.state)
    test_out = _predict(probe, test, device)
    test_metrics = targets.score(test_out, targets.ys["test"], "")
    test_metrics["n"] = test.n
    if targets.task == "classification":
        predictions = predicted_classes(test_out, targets.ys["test"])  # ties are wrong
        scores: np.ndarray | None = test_out
    else:
        predictions = targets.values(test_out)
        scores = None
    return ProbeFit(
        best_epoch=best.epoch,
        val_metric=float(best.value),
        test_metrics=test_metrics,
        history=history,
        test_predictions=predictions,
        test_scores=scores,
        metric=VAL_METRIC[targets.task][0],
        model=probe,
    )


def train_probe(
    train: ProbeData,
    val: ProbeData,
    test: ProbeData,
    *,
    config: ProbeConfig,
    task: str = "classification",
    n_classes: int | None = None,
    device: str | torch.device = "cpu",
    on_epoch: EpochCallback | None = None,
    model: nn.Module | None = None,
) -> ProbeFit:
    """Train a probe on cached frozen features; report test scores at the best val epoch.

    The paper's protocol (LV-MAE §8, Tables 6–8): Adam (``config.lr``, ``weight_decay``),
    an optional per-epoch ExponentialLR (``config.gamma``), ``config.epochs`` passes over
    shuffled training batches of ``config.batch_size`` videos, a validation pass after every
    epoch; the weights of the best validation epoch (the first, on ties) are kept, loaded
    back at the end, and scored on the test split. Token batches are padded per batch
    (:func:`lvmae.mae.sequences.collate`); pads are masked out of attention.

    - ``task="classification"``: cross-entropy on ``n_classes`` logits; the validation
      metric is top-1 accuracy (higher is better).
    - ``task="regression"``: MSE on targets standardised with the training split's mean and
      std (one output); validation and test MSE/MAE are reported in the targets' own units;
      the validation metric is MSE (lower is better).

    Deterministic given ``config.seed`` on a given device (the probe's init, shuffling and
    dropout draw from generators seeded here; the caller's global RNG state is restored).

    Args:
        train, val, test: the splits. ``linear`` probes read ``pooled`` (or the mean of
            ``tokens``); attentive / pooler probes read ``tokens`` (and ``cls`` for
            ``cls_source="encoder"``).
        config: the recipe; ``config.kind`` picks the probe unless ``model`` is given.
        task: ``"classification"`` or ``"regression"``.
        n_classes: number of classes; default: 1 + the largest class id in any split.
        device: where to train (``"cpu"``, ``"cuda"``, ...).
        on_epoch: called after each epoch as ``on_epoch(epoch, metrics)`` with the 0-based
            epoch and that epoch's history row (e.g. to ``ray.tune.report`` it for ASHA).
        model: a probe to train instead of ``build_probe(config, W, n_out)`` (e.g. a
            :class:`~lvmae.probes.heads.TransformerBaseline`); it is trained in place and
            must output ``[B, n_out]``. Its ``input_kind`` (``"pooled"`` / ``"tokens"``) and
            ``wants_cls`` attributes, when present, say what it is fed.

    Returns:
        A :class:`ProbeFit`.

    Raises:
        ValueError: unknown ``task``, an empty split, missing features, feature widths
            differing between splits or from the model, bad targets (non-integer or
            out-of-range class ids, fewer than 2 classes, non-finite values).
        FloatingPointError: a non-finite training loss.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    if not isinstance(config, ProbeConfig):
        raise ValueError(f"config must be a ProbeConfig; got {type(config).__name__}")
    dev = torch.device(device)
    named = {"train": train, "val": val, "test": test}
    splits = _model_splits(named, config, model)
    targets = _task_targets(named, task, n_classes)
    devices = []
    if dev.type == "cuda":
        devices = [dev.index if dev.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        probe = (
            model
            if model is not None
            else build_probe(config, splits["train"].width, targets.n_out)
        )
        probe.to(dev)
        history, best = _fit(probe, config, splits, targets, device=dev, on_epoch=on_epoch)
    return _test_fit(probe, best, history, splits["test"], targets, device=dev)
