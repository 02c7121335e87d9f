"""Masking for LV-MAE pre-training: counts, pads, randomness, semantic choice, dual masking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lvmae.mae.masking import decoder_subset, make_mask, mask_counts, random_mask, semantic_mask


def _real(lengths: list[int], total: int | None = None) -> torch.Tensor:
    total = max(lengths) if total is None else total
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


def _expected_count(n: int, ratio: float) -> int:
    """The authors' reference code: ``int(n * (1 - ratio))`` tokens stay visible (at least
    one here), the rest are masked."""
    if n == 0:
        return 0
    return n - max(int(n * (1 - ratio)), 1)


LENGTHS = [0, 1, 2, 3, 5, 7, 10, 16, 33, 64]


@pytest.mark.parametrize("ratio", [0.05, 0.25, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("kind", ["random", "semantic"])
def test_counts_per_video_and_pads(kind, ratio):
    real = _real(LENGTHS, 70)
    x = F.normalize(torch.randn(*real.shape, 8), dim=-1)
    mask = make_mask(kind, x, real, ratio, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == real.shape
    assert not (mask & ~real).any(), "pads are never masked"
    counts = mask.sum(dim=1).tolist()
    assert counts == [_expected_count(n, ratio) for n in LENGTHS]
    assert mask_counts(real, ratio).tolist() == counts
    visible = real & ~mask
    assert all(v >= 1 for v, n in zip(visible.sum(1).tolist(), LENGTHS, strict=True) if n >= 1)


@pytest.mark.parametrize("kind", ["random", "semantic"])
def test_mask_counts_follow_the_reference_code(kind):
    """The reference keeps int(n * (1 - r)) visible, so it masks ceil(n * r): an odd n at
    ratio 0.5 masks one more than it keeps; a 1-token video keeps its token."""
    lengths = [1, 2, 3, 5, 9, 17, 256]
    real = _real(lengths)
    x = F.normalize(torch.randn(*real.shape, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    mask = make_mask(kind, x, real, 0.5, torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [0, 1, 2, 3, 5, 9, 128]
    assert [math.ceil(n * 0.5) for n in lengths[1:]] == [1, 2, 3, 5, 9, 128]
    assert mask_counts(_real([10]), 0.3).tolist() == [3]  # int(10 * 0.7) = 7 visible
    assert mask_counts(_real([10]), 0.75).tolist() == [8]  # int(2.5) = 2 visible


def test_random_masks_reproducible_and_varied():
    real = _real([40, 25, 40])
    a = random_mask(real, 0.5, torch.Generator().manual_seed(7))
    b = random_mask(real, 0.5, torch.Generator().manual_seed(7))
    c = random_mask(real, 0.5, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Rows with the same length draw different positions within one batch.
    assert not torch.equal(a[0], a[2])


def test_random_mask_is_roughly_uniform_over_positions():
    real = _real([10] * 2000)
    mask = random_mask(real, 0.5, torch.Generator().manual_seed(0))
    freq = mask.float().mean(dim=0)
    assert torch.allclose(freq, torch.full_like(freq, 0.5), atol=0.05)


def _scenes(lengths: list[int], dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Scenes of near-identical embeddings: [sum(lengths), dim], L2-normalised rows."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        center = torch.randn(dim, generator=g)
        rows.append(center + 0.01 * torch.randn(n, dim, generator=g))
    return F.normalize(torch.cat(rows), dim=-1)


def test_semantic_mask_keeps_scene_changes_visible():
    x = _scenes([4, 4, 4])[None]  # scene changes at tokens 0, 4, 8
    real = torch.ones(1, 12, dtype=torch.bool)
    mask = semantic_mask(x, real, 0.75)  # 9 masked, 3 visible
    visible = (real & ~mask)[0].nonzero().flatten().tolist()
    assert visible == [0, 4, 8]


def test_semantic_mask_ignores_pads_and_is_deterministic():
    x = _scenes([3, 5, 2], seed=1)
    L = 14
    batch = torch.zeros(2, L, x.shape[1])
    batch[0, :10] = x
    batch[1, :10] = x
    batch[1, 10:] = x[:4]  # junk after the real tokens of row 1 must not matter
    real = _real([10, 10], L)
    mask = semantic_mask(batch, real, 0.7)  # 7 masked, 3 visible
    assert torch.equal(mask, semantic_mask(batch, real, 0.7))
    assert torch.equal(mask[0], mask[1])
    assert not mask[:, 10:].any()
    assert (real & ~mask)[0].nonzero().flatten().tolist() == [0, 3, 8]
    alone = semantic_mask(x[None], torch.ones(1, 10, dtype=torch.bool), 0.7)
    assert torch.equal(alone[0], mask[0, :10])


def test_semantic_mask_ties_break_by_position():
    x = F.normalize(torch.ones(1, 6, 4), dim=-1)  # every score ties except token 0
    mask = semantic_mask(x, torch.ones(1, 6, dtype=torch.bool), 0.5)
    assert mask[0].tolist() == [False, False, False, True, True, True]


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.99])
def test_decoder_subset_counts_and_subset(fraction):
    real = _real(LENGTHS, 70)
    mask = random_mask(real, 0.6, torch.Generator().manual_seed(3))
    sub = decoder_subset(mask, fraction, torch.Generator().manual_seed(4))
    assert not (sub & ~mask).any()
    expected = [max(math.ceil(fraction * m - 1e-9), 1) if m else 0 for m in mask.sum(1).tolist()]
    assert sub.sum(1).tolist() == expected
    again = decoder_subset(mask, fraction, torch.Generator().manual_seed(4))
    assert torch.equal(sub, again)


def test_decoder_subset_full_fraction_returns_mask():
    real = _real([9, 4])
    mask = random_mask(real, 0.5)
    assert torch.equal(decoder_subset(mask, 1.0), mask)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_bad_ratio(ratio):
    real = _real([5])
    with pytest.raises(ValueError, match="ratio"):
        random_mask(real, ratio)
    with pytest.raises(ValueError, match="ratio"):
        semantic_mask(torch.randn(1, 5, 4), real, ratio)


def test_bad_kind_fraction_and_inputs():
    real = _real([5])
    with pytest.raises(ValueError, match="unknown mask kind"):
        make_mask("block", torch.randn(1, 5, 4), real, 0.5)
    with pytest.raises(ValueError, match="fraction"):
        decoder_subset(real, 0.0)
    with pytest.raises(ValueError, match="bool"):
        random_mask(real.long(), 0.5)
    with pytest.raises(ValueError, match="x must be"):
        semantic_mask(torch.randn(1, 4, 4), real, 0.5)
