"""Synthetic feature tasks with known answers, shared by the probe tests."""

from __future__ import annotations

import numpy as np

from lvmae.mae.model import sincos_positions
from lvmae.probes.train import ProbeData

W = 32
N_CLASSES = 4


def order_task(n: int, seed: int, *, positions: bool = True) -> ProbeData:
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


def mean_task(n: int, seed: int) -> ProbeData:
    """Classes defined by the mean direction of the tokens (order irrelevant)."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * np.random.default_rng(7).normal(size=(N_CLASSES, W))
    y = rng.integers(0, N_CLASSES, size=n)
    tokens = [
        (centres[c] + rng.normal(size=(int(rng.integers(2, 9)), W))).astype(np.float32) for c in y
    ]
    pooled = np.stack([t.mean(axis=0) for t in tokens])
    return ProbeData(y=y, pooled=pooled, tokens=tokens)
