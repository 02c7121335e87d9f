"""Pre-training optimisation: AdamW parameter groups and the per-iteration lr schedule.

The recipe is the paper's (Naiman et al., ICCV 2025, §4; docs/design.md "Reference facts")
as the authors' reference code runs it, which is MAE's (He et al., CVPR 2022): AdamW with
betas (0.9, 0.95) and weight decay 0.05 on every parameter of two or more dimensions —
weights and the [CLS] and mask tokens — but not on biases, norms or other 1-D parameters,
``lr = blr * global_batch / 256``
(:meth:`lvmae.config.PretrainConfig.effective_lr`), linear warm-up then half-cycle cosine
to ``min_lr``, updated every iteration (optimizer step), not every epoch.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split ``model``'s trainable parameters into AdamW groups ``[decay, no_decay]``.

    ``no_decay`` (weight decay 0) holds every parameter with ``ndim <= 1`` (biases,
    LayerNorm/BatchNorm weights, scalars) and names listed by ``model.no_weight_decay()``
    when the model defines it (the timm convention); ``decay`` (``weight_decay``) holds the
    rest: Linear/Conv weights and the [CLS] and mask tokens (``[1, 1, W]``), which MAE and
    the authors' reference code decay too (timm's ``add_weight_decay``). Frozen parameters
    (``requires_grad=False``, e.g. fixed sin-cos positions) are left out. Both groups are
    always returned (possibly empty) so optimizer state dicts have the same layout for
    every model; each group carries a ``"name"`` key.

    Raises:
        ValueError: ``weight_decay < 0``.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    skip = set()
    if callable(getattr(model, "no_weight_decay", None)):
        skip = set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.95),
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (paper / MAE: betas (0.9, 0.95), weight decay 0.05).

    Args:
        lr: the peak learning rate, e.g. ``PretrainConfig.effective_lr()``
            (``blr * global_batch / 256``); :func:`build_scheduler` scales it every step.

    Raises:
        ValueError: ``lr <= 0``, negative ``weight_decay``, or a model with no trainable
            parameters.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    groups = param_groups(model, weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    params = [p for g in groups for p in g["params"]]
    # the fused kernel: 0.09 s instead of 0.40 s per step for the 58M parameters of
    # benchmarks/bench_pretrain.py on one CPU thread; it needs float tensors on one device type
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) and (
        len({p.device.type for p in params}) == 1
    )
    return torch.optim.AdamW(
        groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused or None
    )


def lr_schedule(
    step: int, *, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0
) -> float:
    """Learning rate at optimizer step ``step`` (0-based), MAE's ``adjust_learning_rate`` per
    iteration.

    - ``step < warmup_steps``: ``base_lr * step / warmup_steps`` (0 at step 0).
    - then half-cycle cosine: ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2`` with
      ``t = (step - warmup_steps) / (total_steps - warmup_steps)``, reaching ``min_lr`` at
      ``total_steps`` and staying there after.

    Steps are optimizer steps: ``epochs * steps_per_epoch`` in total and
    ``warmup_epochs * steps_per_epoch`` of warm-up (paper: 40 of 150 epochs).

    Raises:
        ValueError: ``step < 0``, ``total_steps < 1``, ``warmup_steps`` outside
            ``[0, total_steps]``, or negative rates.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    if base_lr < 0 or min_lr < 0:
        raise ValueError(f"learning rates must be >= 0, got base_lr={base_lr}, min_lr={min_lr}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    t = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class _ScheduleFactor:
    """``lr_schedule(step) / base_lr`` for one param group: a plain-attribute callable, so
    ``LambdaLR.state_dict()`` saves (and restores) its settings as plain data."""

    def __init__(self, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float):
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.base_lr = float(base_lr)
        self.min_lr = float(min_lr)

    def __call__(self, step: int) -> float:
        if self.base_lr == 0.0:
            return 0.0
        lr = lr_schedule(
            step,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            base_lr=self.base_lr,
            min_lr=self.min_lr,
        )
        return lr / self.base_lr


class _ScheduleLR(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR that also puts the restored step's lr on the optimizer when loading state,
    whatever the order in which optimizer and scheduler were rebuilt and loaded."""

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        lrs = [
            base * fn(self.last_epoch)
            for fn, base in zip(self.lr_lambdas, self.base_lrs, strict=True)
        ]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = lrs


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    min_lr: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration :func:`lr_schedule` as a ``LambdaLR``: each param group's lr is its
    initial lr (the peak, ``base_lr``) times ``lr_schedule(step) / base_lr``.

    Call ``scheduler.step()`` after every ``optimizer.step()``; right after construction
    the lr is that of step 0 (0 with warm-up). ``state_dict()`` holds only plain data (step
    counter, base lrs, and the schedule's settings), loadable with
    ``torch.load(..., weights_only=True)``; ``load_state_dict`` restores the saved
    schedule, so a resumed run continues the schedule it started with, and sets each
    group's lr to the restored step's (so it does not matter whether the optimizer state is
    loaded before or after the scheduler is built).

    Args:
        total_steps: optimizer steps in the run (``epochs * steps_per_epoch``).
        warmup_steps: linear warm-up steps (``warmup_epochs * steps_per_epoch``).
        min_lr: final lr (absolute, same for every group; paper: 0).

    Raises:
        ValueError: bad step counts (see :func:`lr_schedule`).
    """
    lr_schedule(0, total_steps=total_steps, warmup_steps=warmup_steps, base_lr=0.0, min_lr=min_lr)
    factors = [
        _ScheduleFactor(total_steps, warmup_steps, group.get("initial_lr", group["lr"]), min_lr)
        for group in optimizer.param_groups
    ]
    return _ScheduleLR(optimizer, factors)
