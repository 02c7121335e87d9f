"""The fixed-shape packed training step (lvmae.mae.packing, lvmae.mae.step): the same loss and
gradients as the [B, L] model path, masks equal to lvmae.mae.masking's, gradient accumulation in
the flat buffer, token-budget batches; on a GPU, a replayed CUDA graph with no host sync."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lvmae.mae.losses import reconstruction_loss
from lvmae.mae.masking import decoder_subset, mask_counts, random_mask, semantic_mask
from lvmae.mae.model import LVMAE, model_config
from lvmae.mae.packing import (
    Capacity,
    bucket_capacities,
    needed_capacity,
    pack_windows,
    packed_loss,
    packed_mask,
    pick_capacity,
    token_budget_capacity,
)
from lvmae.mae.sequences import collate, keep_count, plan_token_batches
from lvmae.mae.step import PackedStep

D = 32
CAP = 16
LENGTHS = [3, 16, 1, 7, 2, 9, 16, 5]

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _windows(lengths=LENGTHS, seed=0, dim=D):
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(n, dim, generator=g), dim=-1).numpy() for n in lengths]


def _tensors(batch, device="cpu"):
    return [torch.from_numpy(a).to(device)
            for a in (batch.x, batch.lengths, batch.noise, batch.subset_noise)]  # fmt: skip


def _to_rows(flat: torch.Tensor, lengths) -> torch.Tensor:
    """Packed bool [N] → [B, L] (L = max length)."""
    out = torch.zeros(len(lengths), max(lengths), dtype=flat.dtype)
    offset = 0
    for i, n in enumerate(lengths):
        out[i, :n] = flat[offset : offset + n]
        offset += n
    return out


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return LVMAE(model_config("tiny", input_dim=D, max_tokens=CAP, **kw))


@pytest.mark.parametrize("kind", ["random", "semantic"])
@pytest.mark.parametrize("backend", ["split", "padded"])
@pytest.mark.parametrize("bucketed", [False, True])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_fixed_shape_step_equals_the_model_path(kind, backend, bucketed, fraction):
    """fp32 on CPU: loss and every parameter gradient of the packed step equal those of
    LVMAE.forward + reconstruction_loss on the same windows and mask (to 1e-5), with exact
    shapes or padded to a bucket capacity, with either attention backend."""
    model = _model().train()
    windows = _windows()
    caps = bucket_capacities(needed_capacity([CAP] * len(LENGTHS), 0.5), 4) if bucketed else None
    batch = pack_windows(windows, np.random.default_rng(1), ratio=0.5,
                         decoder_fraction=fraction, capacities=caps)  # fmt: skip
    if bucketed:
        assert batch.capacity in caps and batch.capacity.tokens > sum(LENGTHS)
    x, lengths, noise, subset = _tensors(batch)
    err, count = packed_loss(model, x, lengths, noise, subset, capacity=batch.capacity,
                             kind=kind, ratio=0.5, decoder_fraction=fraction, backend=backend,
                             host_lengths=batch.host_lengths(0.5))  # fmt: skip
    assert int(count) == batch.scored_tokens
    (err / count).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}

    real, visible, scored = packed_mask(x, lengths, noise, subset, kind=kind, ratio=0.5,
                                        decoder_fraction=fraction)  # fmt: skip
    xb, rb = (torch.from_numpy(a) for a in collate(windows))
    mask = _to_rows(real & ~visible, LENGTHS)
    weight = _to_rows(scored, LENGTHS)
    model.zero_grad()
    reference = reconstruction_loss(model(xb, rb, mask).float(), xb, weight)
    reference.backward()
    torch.testing.assert_close(err / count, reference, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_masks_equal_the_batch_masks():
    """Given the same noise per token, the packed masks are lvmae.mae.masking's: random (exact
    counts), semantic (scene changes kept) and the decoder subset."""
    windows = _windows()
    batch = pack_windows(windows, np.random.default_rng(3), ratio=0.5, decoder_fraction=0.4)
    x, lengths, noise, subset = _tensors(batch)
    xb, rb = (torch.from_numpy(a) for a in collate(windows))
    _, visible, _ = packed_mask(x, lengths, noise, subset, kind="semantic", ratio=0.5)
    assert torch.equal(_to_rows(~visible, LENGTHS) & rb, semantic_mask(xb, rb, 0.5))

    real, visible, scored = packed_mask(x, lengths, noise, subset, kind="random", ratio=0.5,
                                        decoder_fraction=0.4)  # fmt: skip
    mask = _to_rows(real & ~visible, LENGTHS)
    assert torch.equal(mask.sum(1), mask_counts(rb, 0.5))
    # the same noise laid out [B, L] gives the same random mask
    g = torch.Generator().manual_seed(0)
    expected = random_mask(rb, 0.5, g)  # shape/count sanity against the batch function
    assert torch.equal(expected.sum(1), mask.sum(1))
    weight = _to_rows(scored, LENGTHS)
    assert torch.equal(weight & ~mask, torch.zeros_like(mask))
    assert torch.equal(weight.sum(1), decoder_subset(mask, 0.4, g).sum(1))
    assert not bool((real & ~visible)[sum(LENGTHS):].any())  # unused rows never masked


def test_step_accumulates_micro_batches_into_the_flat_gradient():
    """Two micro-batches through PackedStep with a shared normaliser give the gradient of the
    mean over both batches' scored tokens; the .grad tensors are views of one buffer."""
    model = _model(drop_path=0.0)
    step = PackedStep(model, kind="random", ratio=0.5, device=torch.device("cpu"))
    assert all(p.grad.data_ptr() >= step.flat_grad.data_ptr() for p in model.parameters())
    rng = np.random.default_rng(0)
    a = pack_windows(_windows(LENGTHS[:4], seed=1), rng, ratio=0.5)
    b = pack_windows(_windows(LENGTHS[4:], seed=2), rng, ratio=0.5)
    total = a.scored_tokens + b.scored_tokens
    ea, ca = step(a, denom=total)
    eb, cb = step(b, denom=total)
    accumulated = step.flat_grad.clone()
    step.zero_grad()
    assert float(step.flat_grad.abs().sum()) == 0.0
    # the same objective in one autograd pass
    ta, tb = _tensors(a), _tensors(b)
    sa, _ = packed_loss(model, *ta, capacity=a.capacity, kind="random", ratio=0.5)
    sb, _ = packed_loss(model, *tb, capacity=b.capacity, kind="random", ratio=0.5)
    ((sa + sb) / total).backward()
    torch.testing.assert_close(accumulated, step.flat_grad, atol=1e-6, rtol=1e-5)
    assert int(ca + cb) == total
    torch.testing.assert_close(ea + eb, (sa + sb).detach())


def test_a_normaliser_below_one_scales_the_gradient_by_its_inverse():
    """Under token budgets the normaliser is a step's scored tokens / workers, below 1 on a
    short last step (2 tokens over 8 workers: 0.25): the gradient is that of err_sum / denom,
    not clamped to err_sum; a step with nothing scored (denom 0) adds nothing."""
    step = PackedStep(_model(), kind="random", ratio=0.5, device=torch.device("cpu"))
    batch = pack_windows(_windows([3], seed=5), np.random.default_rng(0), ratio=0.5)
    step(batch, denom=1.0)
    unit = step.flat_grad.clone()
    assert float(unit.abs().sum()) > 0
    step.zero_grad()
    step(batch, denom=0.25)
    torch.testing.assert_close(step.flat_grad, 4.0 * unit)
    step.zero_grad()
    step(batch, denom=0.0)
    assert float(step.flat_grad.abs().sum()) == 0.0


def test_buckets_cover_the_largest_batch_and_pick_the_smallest():
    largest = needed_capacity([256] * 16, 0.5)
    caps = bucket_capacities(largest, 4)
    assert len(caps) == 4 and caps[-1].fits(largest)
    assert all(c.tokens % 64 == 0 and c.enc_rows % 64 == 0 for c in caps)
    small = needed_capacity([10] * 16, 0.5)
    assert pick_capacity(small, caps) == caps[0]
    assert pick_capacity(small, None) == small
    with pytest.raises(ValueError, match="fits none"):
        pick_capacity(needed_capacity([256] * 17, 0.5), caps)


@pytest.mark.parametrize("budget", [128, 500, 4096])
def test_token_batches_exactly_once_within_budget(budget):
    """Every window in exactly one micro-batch, in order; no micro-batch over the visible-token
    budget or its window limit, and each fits the budget's largest capacity."""
    rng = np.random.default_rng(budget)
    lengths = rng.integers(2, 257, size=300)
    batches = plan_token_batches(lengths, budget, 0.5)
    assert np.array_equal(np.concatenate(batches), np.arange(300))
    largest = token_budget_capacity(budget, 256, 0.5)
    for idx in batches:
        assert keep_count(lengths[idx], 0.5).sum() <= budget
        assert largest.fits(needed_capacity(lengths[idx], 0.5))
    assert plan_token_batches(lengths, budget, 0.5)[1].tolist() == batches[1].tolist()
    with pytest.raises(ValueError, match="more than batch_tokens"):
        plan_token_batches([300], 100, 0.5)


def test_capacity_is_ordered_and_hashable():
    a, b = Capacity(64, 8, 64, 128), Capacity(128, 8, 64, 192)
    assert a < b and len({a, b, Capacity(64, 8, 64, 128)}) == 2


# ------------------------------------------------------------------------------------ GPU


def _paper_like(device):
    torch.manual_seed(0)
    cfg = model_config("small", input_dim=256, max_tokens=64, width=256, depth=4, heads=4,
                       decoder_width=128, decoder_depth=2, decoder_heads=4)  # fmt: skip
    return LVMAE(cfg).to(device)


@pytest.mark.gpu
@cuda
def test_gpu_replayed_step_has_no_host_sync_and_matches_eager():
    """A captured step replays under torch.cuda.set_sync_debug_mode("error") (optimizer step
    and gradient clipping included), and its gradients equal the eager step's (bf16)."""
    device = torch.device("cuda")
    lengths = [64, 3, 40, 17, 1, 64, 33, 9]
    windows = _windows(lengths, seed=4, dim=256)
    caps = bucket_capacities(needed_capacity([64] * 8, 0.5), 4)
    batch = pack_windows(windows, np.random.default_rng(0), ratio=0.5, capacities=caps)

    eager = PackedStep(_paper_like(device), kind="semantic", ratio=0.5, device=device,
                       precision="bf16")  # fmt: skip
    e_err, _ = eager(batch)
    graphed_model = _paper_like(device)
    graphed = PackedStep(graphed_model, kind="semantic", ratio=0.5, device=device,
                         precision="bf16", graphs=True, compile=True)  # fmt: skip
    graphed.warmup(caps)
    opt = torch.optim.AdamW(graphed_model.parameters(), lr=1e-4, fused=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        g_err, count = graphed(batch)
        first = graphed.flat_grad.clone()
        torch.nn.utils.clip_grad_norm_(graphed_model.parameters(), 1.0)
        opt.step()
        graphed.zero_grad()
        graphed(batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert graphed.stats.recompiles_since_warmup() == 0
    torch.testing.assert_close(g_err, e_err, atol=2e-2, rtol=2e-2)
    cos = F.cosine_similarity(eager.flat_grad, first, dim=0)
    assert float(cos) > 0.999
    assert int(count) == batch.scored_tokens


@pytest.mark.gpu
@cuda
def test_gpu_bf16_loss_within_tolerance_of_fp32():
    """The bf16 step's loss is within 2 % of the fp32 step's on the same weights and batch
    (varlen attention in bf16, padded attention in fp32)."""
    device = torch.device("cuda")
    windows = _windows([64, 20, 5, 64, 48], seed=5, dim=256)
    batch = pack_windows(windows, np.random.default_rng(0), ratio=0.5)
    losses = {}
    for precision in ("fp32", "bf16"):
        step = PackedStep(_paper_like(device), kind="random", ratio=0.5, device=device,
                          precision=precision)  # fmt: skip
        err, count = step(batch)
        losses[precision] = float(err / count)
    assert abs(losses["bf16"] - losses["fp32"]) <= 0.02 * losses["fp32"], losses


@pytest.mark.gpu
@cuda
def test_gpu_fp32_step_equals_cpu():
    """fp32 on CUDA (padded attention) equals fp32 on CPU (split attention) to 1e-4."""
    windows = _windows(seed=6)
    batch = pack_windows(windows, np.random.default_rng(0), ratio=0.5)
    out = {}
    for device in ("cpu", "cuda"):
        step = PackedStep(_model().to(device), kind="random", ratio=0.5,
                          device=torch.device(device))  # fmt: skip
        err, count = step(batch)
        out[device] = (float(err / count), step.flat_grad.cpu())
    assert abs(out["cpu"][0] - out["cuda"][0]) < 1e-4
    torch.testing.assert_close(out["cpu"][1], out["cuda"][1], atol=1e-4, rtol=1e-3)
