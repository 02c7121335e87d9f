"""The packed layout of :mod:`lvmae.mae.model`: block-diagonal attention over real tokens only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lvmae.mae.losses import reconstruction_loss
from lvmae.mae.masking import random_mask
from lvmae.mae.model import LVMAE, Block, Packing, model_config

D_IN = 32


def _batch(lengths: list[int], total: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(len(lengths), total, D_IN, generator=g), dim=-1)
    real = torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]
    return x, real


def test_packing_from_counts_layout():
    packing = Packing.from_counts(torch.tensor([2, 0, 3, 1]))
    assert packing.lengths == (2, 0, 3, 1)
    assert packing.offsets.tolist() == [0, 2, 2, 5]
    assert (packing.batch, packing.width) == (4, 3)
    assert packing.index.tolist() == [0, 1, 6, 7, 8, 9]
    assert packing.sample.tolist() == [0, 0, 2, 2, 2, 3]
    x = torch.arange(12.0).view(6, 2)
    padded = packing.pad(x)
    assert padded.shape == (4, 3, 2) and torch.equal(padded[1], torch.zeros(3, 2))
    assert torch.equal(packing.unpad(padded), x)


def test_packed_block_is_block_diagonal_attention():
    """A block on the packed rows equals the same block on the padded batch with a key mask,
    at every real row, with the same input gradients (lengths 1 and the longest included)."""
    torch.manual_seed(0)
    block = Block(16, 4, 2.0).train()
    lengths = [1, 6, 3, 9]
    packing = Packing.from_counts(torch.tensor(lengths))
    rows = torch.randn(sum(lengths), 16, requires_grad=True)
    padded = packing.pad(rows.detach()).requires_grad_()
    out_packed = block(rows, None, packing)
    out_dense = block(padded, packing.attend)
    torch.testing.assert_close(out_packed, packing.unpad(out_dense), atol=1e-6, rtol=1e-5)
    grad = torch.randn_like(out_packed)
    out_packed.backward(grad)
    out_dense.backward(packing.pad(grad))
    torch.testing.assert_close(rows.grad, packing.unpad(padded.grad), atol=1e-6, rtol=1e-5)


def test_packed_matches_dense_with_empty_and_single_videos():
    """A video with no real token, a one-token video and extra padding columns: packed and
    dense predictions agree at real tokens, packed pads are zeros."""
    torch.manual_seed(0)
    model = LVMAE(model_config("tiny", input_dim=D_IN, max_tokens=16)).eval()
    x, real = _batch([0, 1, 9, 4], 12, seed=1)
    mask = random_mask(real, 0.5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        packed = model(x, real, mask)
        dense = model(x, real, mask, packed=False)
        one = model(x[2:3, :9], real[2:3, :9], mask[2:3, :9])  # a batch of one video
    torch.testing.assert_close(packed[real], dense[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[2:3, :9], one, atol=1e-5, rtol=1e-5)
    assert torch.equal(packed[~real], torch.zeros_like(packed[~real]))


def test_packed_training_step_matches_dense_under_bf16_autocast():
    """bf16 autocast (the GPU recipe) runs the packed attention, close to the dense path."""
    torch.manual_seed(0)
    model = LVMAE(model_config("tiny", input_dim=D_IN, max_tokens=16))
    x, real = _batch([5, 16, 2], 16, seed=2)
    mask = random_mask(real, 0.5, torch.Generator().manual_seed(0))
    losses = []
    for packed in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses.append(reconstruction_loss(model(x, real, mask, packed=packed), x, mask))
    losses[0].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(losses[0], losses[1], atol=2e-2, rtol=2e-2)
