"""The LV-MAE model and its reconstruction loss: shapes, padding invariance, training signal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lvmae.mae.losses import reconstruction_loss
from lvmae.mae.masking import random_mask
from lvmae.mae.model import LVMAE, PRESETS, LVMAEConfig, model_config, sincos_positions

D_IN = 32


def _batch(lengths: list[int], total: int | None = None, dim: int = D_IN, seed: int = 0):
    """Random L2-normalised ``x`` [B, total, dim] and prefix ``real`` [B, total]."""
    g = torch.Generator().manual_seed(seed)
    total = max(lengths) if total is None else total
    x = F.normalize(torch.randn(len(lengths), total, dim, generator=g), dim=-1)
    real = torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]
    return x, real


def _tiny(**overrides) -> LVMAE:
    torch.manual_seed(0)
    return LVMAE(model_config("tiny", input_dim=D_IN, **overrides))


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_forward_shapes_per_preset(preset):
    torch.manual_seed(0)
    model = LVMAE(model_config(preset, input_dim=D_IN, depth=1, decoder_depth=1))
    x, real = _batch([5, 9])
    mask = random_mask(real, 0.5, torch.Generator().manual_seed(0))
    latent, keep_index, keep_valid = model.forward_encoder(x, real, mask)
    V = int((real & ~mask).sum(1).max())
    W = model.config.width
    assert latent.shape == (2, 1 + V, W)
    assert keep_index.shape == keep_valid.shape == (2, V)
    assert keep_index.dtype == torch.long and keep_valid.dtype == torch.bool
    # The gathered positions are exactly each video's visible tokens, in time order.
    for i in range(2):
        expected = (real[i] & ~mask[i]).nonzero().flatten()
        assert torch.equal(keep_index[i][keep_valid[i]], expected)
    assert model(x, real, mask).shape == (2, 9, D_IN)
    cls, tokens = model.encode(x, real)
    assert cls.shape == (2, W) and tokens.shape == (2, 9, W)
    assert torch.equal(tokens[0, 5:], torch.zeros(4, W))


def test_paper_preset_parameter_count():
    cfg = model_config("paper")
    assert (cfg.input_dim, cfg.width, cfg.depth, cfg.heads) == (1024, 1024, 32, 16)
    assert cfg.mlp_ratio == 4.0
    assert (cfg.decoder_width, cfg.decoder_depth, cfg.decoder_heads) == (512, 8, 16)
    with torch.device("meta"):  # no memory, no init cost
        model = LVMAE(cfg)
    assert isinstance(model.input_proj, nn.Identity)
    assert sum(p.numel() for p in model.parameters()) == 429_352_960


def test_presets_and_overrides():
    assert set(PRESETS) == {"paper", "base", "small", "tiny"}
    cfg = model_config("tiny", input_dim=64, max_tokens=512)
    assert (cfg.input_dim, cfg.width, cfg.max_tokens) == (64, 64, 512)
    assert model_config("paper", input_dim=768).width == 768
    assert model_config("paper", input_dim=768, width=512).width == 512
    with pytest.raises(ValueError, match="valid presets"):
        model_config("huge")
    with pytest.raises(ValueError, match="unknown LVMAEConfig keys"):
        model_config("tiny", widht=3)
    with pytest.raises(ValueError, match="divisible"):
        model_config("tiny", heads=5)
    assert LVMAEConfig.from_dict(cfg.to_dict()) == cfg


def test_input_projection_only_when_widths_differ():
    assert isinstance(_tiny().input_proj, nn.Linear)
    model = LVMAE(model_config("tiny", input_dim=64))
    assert isinstance(model.input_proj, nn.Identity)


def test_sincos_positions():
    pos = sincos_positions(10, 8)
    assert pos.shape == (10, 8) and pos.dtype == torch.float32
    assert torch.allclose(pos[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert torch.allclose(pos[3, 0], torch.tensor(3.0).sin())
    with pytest.raises(ValueError, match="even"):
        sincos_positions(4, 7)


def test_padding_invariance():
    model = _tiny().eval()
    x, real = _batch([6, 15, 11], 20, seed=1)
    mask = random_mask(real, 0.5, torch.Generator().manual_seed(2))
    with torch.no_grad():
        pred = model(x, real, mask)
        cls, tokens = model.encode(x, real)
        for i, n in enumerate([6, 15, 11]):
            xi, ri, mi = x[i : i + 1, :n], real[i : i + 1, :n], mask[i : i + 1, :n]
            alone = model(xi, ri, mi)
            cls_i, tokens_i = model.encode(xi, ri)
            torch.testing.assert_close(pred[i : i + 1, :n], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(cls[i : i + 1], cls_i, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(tokens[i : i + 1, :n], tokens_i, atol=1e-5, rtol=1e-5)


def test_positions_matter():
    """Same tokens in another order give other outputs (the model sees time)."""
    model = _tiny().eval()
    x, real = _batch([8])
    with torch.no_grad():
        cls_a, _ = model.encode(x, real)
        cls_b, _ = model.encode(x.flip(1), real)
    assert not torch.allclose(cls_a, cls_b, atol=1e-4)


def test_too_many_tokens():
    model = _tiny(max_tokens=16)
    x, real = _batch([17])
    with pytest.raises(ValueError, match="max_tokens"):
        model.encode(x, real)
    with pytest.raises(ValueError, match="split"):
        model(x, real, torch.zeros_like(real))


def test_loss_counts_only_selected_tokens():
    x, real = _batch([6, 10])
    mask = random_mask(real, 0.5, torch.Generator().manual_seed(0))
    pred = torch.randn_like(x)
    base = reconstruction_loss(pred, x, mask)
    changed = pred.clone()
    changed[~mask] = float("nan")  # visible and pad tokens
    torch.testing.assert_close(reconstruction_loss(changed, x, mask), base)
    i, j = mask.nonzero()[0].tolist()
    changed[i, j] += 1.0
    assert not torch.isclose(reconstruction_loss(changed, x, mask), base)
    # The per-token MSE against the L2-normalised target, averaged over selected tokens.
    target = F.normalize(x, dim=-1)
    expected = ((pred - target) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(base, expected)
    torch.testing.assert_close(reconstruction_loss(pred, 3.0 * x, mask), base)


def test_cosine_loss_and_errors():
    x, real = _batch([6, 10])
    mask = random_mask(real, 0.5, torch.Generator().manual_seed(0))
    assert reconstruction_loss(x * 5.0, x, mask, kind="cosine").abs() < 1e-6
    assert torch.isclose(reconstruction_loss(-x, x, mask, kind="cosine"), torch.tensor(2.0))
    with pytest.raises(ValueError, match="unknown loss kind"):
        reconstruction_loss(x, x, mask, kind="l1")
    with pytest.raises(ValueError, match="no token selected"):
        reconstruction_loss(x, x, torch.zeros_like(mask))


def test_every_parameter_gets_a_gradient():
    model = _tiny(drop_path=0.1, dropout=0.1).train()
    x, real = _batch([5, 12, 9])
    mask = random_mask(real, 0.5, torch.Generator().manual_seed(0))
    reconstruction_loss(model(x, real, mask), x, mask).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.mask_token.grad.abs().sum() > 0
    assert model.cls_token.grad.abs().sum() > 0


def test_bf16_autocast_runs():
    model = _tiny()
    x, real = _batch([5, 12])
    mask = random_mask(real, 0.5, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = reconstruction_loss(model(x, real, mask), x, mask)
        cls, tokens = model.encode(x, real)
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert torch.isfinite(cls).all() and torch.isfinite(tokens).all()


@pytest.mark.slow
def test_tiny_model_overfits_a_tiny_batch():
    model = _tiny()
    x, real = _batch([16, 16, 12, 16], 16, seed=3)
    mask = random_mask(real, 0.5, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):  # the loss is below a tenth of its start after ~15 steps
        loss = reconstruction_loss(model(x, real, mask), x, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


@pytest.mark.parametrize("masking", ["random", "semantic"])
def test_packed_and_padded_forward_agree(masking):
    """The packed path (compute on real tokens only) gives the dense path's predictions and
    encodings to 1e-5, for lengths from 1 to the cap and both maskings, and the same loss
    gradients."""
    from lvmae.mae.masking import make_mask

    model = _tiny(max_tokens=24).train()  # dropout/drop_path are 0: train mode is deterministic
    lengths = [1, 2, 3, 7, 24, 13, 5]
    x, real = _batch(lengths, 24, seed=4)
    mask = make_mask(masking, x, real, 0.5, torch.Generator().manual_seed(5))
    dense = model(x, real, mask, packed=False)
    packed = model(x, real, mask)
    assert packed.shape == dense.shape == (len(lengths), 24, D_IN)
    torch.testing.assert_close(packed[real], dense[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(packed[~real], torch.zeros_like(packed[~real]))
    # Training signal: the same loss and the same gradient on every parameter.
    grads = []
    for out in (dense, packed):
        model.zero_grad()
        loss = reconstruction_loss(out, x, mask)
        loss.backward(retain_graph=True)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():
        cls_d, tok_d = model.encode(x, real, packed=False)
        cls_p, tok_p = model.encode(x, real)
    torch.testing.assert_close(cls_p, cls_d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tok_p, tok_d, atol=1e-5, rtol=1e-5)


def test_packed_drop_path_drops_whole_videos():
    """Stochastic depth in the packed layout draws once per video, as in the dense layout."""
    from lvmae.mae.model import DropPath

    torch.manual_seed(0)
    drop = DropPath(0.5).train()
    sample = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    out = drop(torch.ones(9, 4), sample)
    for b in range(3):
        rows = out[sample == b]
        assert torch.all(rows == rows[0, 0]) and rows[0, 0].item() in (0.0, 2.0)


def test_layer_norms_use_maes_epsilon():
    model = _tiny()
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)
