"""LV-MAE training-step throughput on variable-length batches: real tokens per second of the
packed model (compute on real tokens only), of its dense path (padded to the batch's longest
video), of a baseline that follows the authors' reference scheme, and of PyTorch's own
``nn.TransformerEncoder`` — all measured in the same run on the same batches.

The reference-scheme baseline is written from its description (dense; the encoder padded to
``cap + 1`` = [CLS] + cap slots and the decoder to ``cap + 1``; masks, position gathers and
the decoder's un-shuffle built per sample in a Python loop; attention as explicit
``softmax(QKᵀ/√d)V`` with ``-inf`` at pads, as in the authors' reference code). The
``nn.TransformerEncoder`` baseline runs the same widths/depths/heads over the encoder's and
decoder's token counts padded to the batch's longest video, with a key-padding mask.

Lengths are drawn uniformly in ``[2, cap]`` per video (seeded); every row of the table
counts only real tokens (the videos' lengths) per second of a full training step
(forward + backward + AdamW), median over the timed steps; the models take turns step by step.

The optimizer is ``torch.optim.AdamW`` as :func:`lvmae.mae.optim.build_optimizer` builds it
(PyTorch's default implementation: a per-parameter loop on CPU); ``--optimizer fused`` uses
its fused kernel instead, for every model alike. ``--threads`` sets ``torch.set_num_threads``
(default: PyTorch's choice). On a shared machine, wall time with several threads mostly
measures OpenMP threads waiting for each other; ``--threads 1 --clock cpu`` (process CPU
time, one thread) is the setting least sensitive to other jobs.

The fixed-shape packed training step (``lvmae.mae.step.PackedStep``, the one training uses) is
the model ``step``: on CPU eager at exact shapes (``split`` attention); on CUDA compiled per
block, captured once per capacity bucket and replayed, bf16, varlen attention, fused AdamW.
On CUDA the command also runs it at token budgets (``--budgets``, visible tokens per step)
and prints, for every model, the step time, real tokens/s, MFU against the dense bf16 peak,
peak GPU memory, warm-up + compile seconds and the compiles after warm-up.

    .venv/bin/python benchmarks/bench_pretrain.py                          # the CPU config
    .venv/bin/python benchmarks/bench_pretrain.py --threads 1 --clock cpu   # shared machine
    python benchmarks/bench_pretrain.py --device cuda     # paper preset, bf16: the GPU table
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvmae.mae.losses import reconstruction_loss
from lvmae.mae.masking import random_mask
from lvmae.mae.model import LVMAE, model_config, sincos_positions
from lvmae.mae.packing import (
    bucket_capacities,
    needed_capacity,
    pack_windows,
    packed_loss,
    token_budget_capacity,
)
from lvmae.mae.sequences import keep_count, plan_token_batches
from lvmae.mae.step import PackedStep, compile_counters

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM


def make_batches(n: int, batch: int, cap: int, dim: int, *, seed: int, device) -> list[tuple]:
    """``n`` batches ``(x [B, cap, dim], real [B, cap], mask [B, cap], lengths)`` with lengths
    uniform in [2, cap] and random masks at ratio 0.5 (same batches for every model)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(2, cap + 1, (batch,), generator=g)
        x = F.normalize(torch.randn(batch, cap, dim, generator=g), dim=-1)
        real = torch.arange(cap)[None, :] < lengths[:, None]
        mask = random_mask(real, 0.5, g)
        out.append((x.to(device), real.to(device), mask.to(device), lengths.tolist()))
    return out


def train_flops(cfg, lengths: list[int], mask_ratio: float = 0.5) -> float:
    """Useful model FLOPs of one training step (3 × forward matmuls) over the real tokens:
    encoder over [CLS] + the visible tokens, decoder over [CLS] + every real token."""

    def stack(width, depth, n):
        per_token = 2 * (4 * width * width + 2 * cfg.mlp_ratio * width * width)
        return depth * (n * per_token + 2 * 2 * n * n * width)

    fwd = 0.0
    for n in lengths:
        n_enc = int(n * (1 - mask_ratio)) + 1
        fwd += stack(cfg.width, cfg.depth, n_enc) + stack(
            cfg.decoder_width, cfg.decoder_depth, n + 1
        )
        proj = cfg.input_dim * cfg.width if cfg.input_dim != cfg.width else 0
        fwd += 2 * n * (proj + cfg.width * cfg.decoder_width + cfg.decoder_width * cfg.input_dim)
    return 3.0 * fwd


# ------------------------------------------------------------------ reference-scheme baseline


class _RefAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, pad):  # pad: bool [B, N], True = padding
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * self.scale
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        return self.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))


class _RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = _RefAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x, pad):
        x = x + self.attn(self.norm1(x), pad)
        return x + self.mlp(self.norm2(x))


class ReferenceScheme(nn.Module):
    """Dense masked autoencoder in the authors' scheme: every sample padded to the cap."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cap = cfg.max_tokens
        self.embed = nn.Linear(cfg.input_dim, cfg.width) if cfg.input_dim != cfg.width else None
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.register_buffer("pos", sincos_positions(cfg.max_tokens + 1, cfg.width))
        self.blocks = nn.ModuleList(
            _RefBlock(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.dec_embed = nn.Linear(cfg.width, cfg.decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_width))
        self.register_buffer("dec_pos", sincos_positions(cfg.max_tokens + 1, cfg.decoder_width))
        self.dec_blocks = nn.ModuleList(
            _RefBlock(cfg.decoder_width, cfg.decoder_heads, cfg.mlp_ratio)
            for _ in range(cfg.decoder_depth)
        )
        self.dec_norm = nn.LayerNorm(cfg.decoder_width, eps=1e-6)
        self.head = nn.Linear(cfg.decoder_width, cfg.input_dim)

    def forward(self, x, lengths, ratio: float = 0.5):
        B, cap, device = x.shape[0], self.cap, x.device
        h = x if self.embed is None else self.embed(x)
        enc_in, enc_pad, keeps, restores = [], [], [], []
        for i, n in enumerate(lengths):  # per-sample masking, as a dataset item would
            keep = int(n * (1 - ratio))
            shuffle = torch.argsort(torch.rand(n, device=device))
            restores.append(torch.argsort(shuffle))
            keeps.append(keep)
            ids = shuffle[:keep]
            rows = h[i, ids] + self.pos[1 + ids]
            enc_in.append(torch.cat([rows, rows.new_zeros(cap - keep, rows.shape[1])]))
            enc_pad.append(torch.arange(cap + 1, device=device) > keep)
        cls = (self.cls + self.pos[:1]).expand(B, -1, -1)
        z = torch.cat([cls, torch.stack(enc_in)], dim=1)  # [B, cap + 1, W]
        pad = torch.stack(enc_pad)
        for block in self.blocks:
            z = block(z, pad)
        z = self.dec_embed(self.norm(z))
        dec_in, dec_pad = [], []
        for i, n in enumerate(lengths):  # per-sample un-shuffle with mask tokens
            seq = torch.cat([z[i, 1 : 1 + keeps[i]], self.mask_token[0].expand(n - keeps[i], -1)])
            seq = seq[restores[i]] + self.dec_pos[1 : n + 1]
            seq = torch.cat([z[i, :1], seq, seq.new_zeros(cap - n, seq.shape[1])])
            dec_in.append(seq)
            dec_pad.append(torch.arange(cap + 1, device=device) > n)
        d, pad = torch.stack(dec_in), torch.stack(dec_pad)
        for block in self.dec_blocks:
            d = block(d, pad)
        return self.head(self.dec_norm(d))[:, 1:]


# ------------------------------------------------------------------ nn.TransformerEncoder


class TorchEncoders(nn.Module):
    """PyTorch's ``nn.TransformerEncoder`` stacks of the model's shapes, padded to the batch's
    longest video (encoder: [CLS] + visible; decoder: [CLS] + all real), key-padding mask."""

    def __init__(self, cfg) -> None:
        super().__init__()

        def stack(width, depth, heads):
            layer = nn.TransformerEncoderLayer(
                width, heads, int(width * cfg.mlp_ratio), dropout=0.0, batch_first=True,
                norm_first=True, activation="gelu", layer_norm_eps=1e-6,
            )  # fmt: skip
            return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

        self.enc = stack(cfg.width, cfg.depth, cfg.heads)
        self.dec = stack(cfg.decoder_width, cfg.decoder_depth, cfg.decoder_heads)
        self.proj = nn.Linear(cfg.width, cfg.decoder_width)
        self.head = nn.Linear(cfg.decoder_width, cfg.input_dim)
        self.width = cfg.width

    def forward(self, x, real, mask):
        B, device = x.shape[0], x.device
        visible = real & ~mask
        V, L = int(visible.sum(1).max()), int(real.sum(1).max())
        order = torch.sort((~visible).to(torch.uint8), dim=1, stable=True).indices[:, :V]
        kept = x[..., : self.width].gather(1, order[..., None].expand(-1, -1, self.width))
        ones = torch.ones(B, 1, dtype=torch.bool, device=device)
        enc_pad = ~torch.cat([ones, torch.arange(V, device=device) < visible.sum(1)[:, None]], 1)
        z = self.enc(
            torch.cat([kept.new_zeros(B, 1, self.width), kept], 1), src_key_padding_mask=enc_pad
        )
        dec_in = self.proj(z).mean(1, keepdim=True).expand(-1, L + 1, -1)
        dec_pad = ~torch.cat([ones, real[:, :L]], 1)
        return self.head(self.dec(dec_in, src_key_padding_mask=dec_pad))[:, 1:]


# ------------------------------------------------------------------ timing


def time_models(
    models: dict, batches, *, device, dtype, steps, warmup, fused: bool = False, clock=None
) -> dict[str, float]:
    """Seconds per training step of each ``(model, step_fn)`` in ``models``, median over
    ``steps`` after ``warmup``. The models take turns step by step (round robin), so a load
    change on a shared machine hits all of them alike and the ratios stay comparable.
    ``fused``: AdamW's fused kernel instead of PyTorch's default implementation; ``clock``:
    the timer (default ``time.perf_counter``; ``time.process_time`` for CPU time)."""
    clock = clock or time.perf_counter
    kwargs = {"fused": True} if fused else {}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, **kwargs) for k, (m, _) in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(warmup + steps):
        for key, (model, step_fn) in models.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = clock()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = step_fn(model, *batches[i % len(batches)])
            opts[key].zero_grad(set_to_none=True)
            loss.backward()
            opts[key].step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[key].append(clock() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def _lvmae_step(packed: bool):
    def fn(model, x, real, mask, lengths):
        L = max(lengths)
        x, real, mask = x[:, :L], real[:, :L], mask[:, :L]  # a batch padded to its longest
        return reconstruction_loss(model(x, real, mask, packed=packed).float(), x, mask)

    return fn


def _packed_step_eager(model, x, real, mask, lengths):
    """The fixed-shape packed step, eager at exact shapes (the CPU training path): windows
    packed on the host (mask noise drawn there), mask and loss on the device."""
    windows = [x[i, :n].cpu().numpy() for i, n in enumerate(lengths)]
    batch = pack_windows(windows, _RNG, ratio=0.5)
    t = [torch.from_numpy(a).to(x.device) for a in (batch.x, batch.lengths, batch.noise,
                                                    batch.subset_noise)]  # fmt: skip
    err, count = packed_loss(model, *t, capacity=batch.capacity, kind="random", ratio=0.5,
                             host_lengths=batch.host_lengths(0.5))  # fmt: skip
    return err / count


_RNG = np.random.default_rng(0)


def _ref_step(model, x, real, mask, lengths):
    pred = model(x, lengths)
    return reconstruction_loss(pred.float(), x, mask)


def _torch_step(model, x, real, mask, lengths):
    L = max(lengths)
    x, real, mask = x[:, :L], real[:, :L], mask[:, :L]
    return reconstruction_loss(model(x, real, mask).float(), x, mask)


def _windows_pool(n_rows: int, dim: int, seed: int) -> np.ndarray:
    """A host pool of L2-normalised random embeddings ``[n_rows, dim]`` to cut windows from."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n_rows, dim, generator=g), dim=-1).numpy()


def _budget_windows(pool, budget: int, cap: int, rng) -> list[np.ndarray]:
    """Windows of lengths uniform in [2, cap] (views of ``pool``) filling ``budget`` visible
    tokens as the token-budget planner would (the first micro-batch of the stream)."""
    lengths = rng.integers(2, cap + 1, size=4 * budget // 2 + 8)
    first = plan_token_batches(lengths, budget, 0.5)[0]
    starts = rng.integers(0, len(pool) - cap, size=len(first))
    return [pool[s : s + lengths[i]] for s, i in zip(starts, first, strict=True)]


def bench_cuda_step(cfg, groups, *, device, steps: int, graphs: bool, compile_: bool, gpu: str):
    """Time the packed step on CUDA (bf16, fused AdamW) for each ``(label, batches,
    capacities)`` of ``groups`` with one model; returns a row per group."""
    torch.manual_seed(0)
    model = LVMAE(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    step = PackedStep(model, kind="random", ratio=0.5, device=device, precision="bf16",
                      graphs=graphs, compile=compile_)  # fmt: skip
    rng = np.random.default_rng(1)
    rows = []
    for group in groups:
        try:
            rows.append(_time_group(step, opt, cfg, group, rng, steps=steps, graphs=graphs,
                                    gpu=gpu))  # fmt: skip
        except torch.cuda.OutOfMemoryError as exc:
            print(f"  {group[0]}: out of GPU memory ({str(exc).splitlines()[0]})", flush=True)
            torch.cuda.empty_cache()
    del step, model, opt
    torch.cuda.empty_cache()
    return rows


def _time_group(step, opt, cfg, group, rng, *, steps, graphs, gpu):
    """Warm up and time one ``(label, windows, capacities, accumulate)`` group of
    :func:`bench_cuda_step`: each optimizer step runs ``accumulate`` micro-batches."""
    label, windows_list, capacities, accumulate = group
    packed = [pack_windows(w, rng, ratio=0.5, capacities=capacities) for w in windows_list]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if graphs:
        step.warmup(capacities)
    else:  # eager: the first steps are the warm-up (compile, allocator)
        for b in packed[:2]:
            step(b)
        step.zero_grad()
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    after_warmup = compile_counters()
    for b in packed[:1]:  # one untimed step with the optimizer
        step(b)
        opt.step()
        step.zero_grad()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        for j in range(accumulate):
            step(packed[(i * accumulate + j) % len(packed)])
        opt.step()
        step.zero_grad()
    torch.cuda.synchronize()
    t = (time.perf_counter() - t0) / steps
    lengths = [[len(w) for w in ws] for ws in windows_list]
    used = [[n for j in range(accumulate) for n in lengths[(i * accumulate + j) % len(lengths)]]
            for i in range(steps)]  # fmt: skip
    real = sum(map(sum, used)) / steps
    flops = sum(train_flops(cfg, ls) for ls in used) / steps
    recompiles = compile_counters()["unique_graphs"] - after_warmup["unique_graphs"]
    fill = np.mean([b.real_tokens / b.capacity.tokens for b in packed])
    print(f"  {label}: {t * 1e3:.1f} ms/step, warm-up {warm:.1f} s", flush=True)
    return {
        "label": label, "t": t, "real": real, "mfu": flops / t / (PEAK_BF16_TFLOPS[gpu] * 1e12),
        "mem": torch.cuda.max_memory_allocated() / 2**30, "warm": warm,
        "recompiles": recompiles, "fill": fill,
        "visible": np.mean([keep_count(np.asarray(ls), 0.5).sum() for ls in used]),
    }  # fmt: skip


def _profile(cfg, group, device) -> None:
    """Print the CUDA kernels that take the most time in two eager (compiled) steps."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = LVMAE(cfg).to(device)
    step = PackedStep(model, kind="random", ratio=0.5, device=device, precision="bf16",
                      compile=True)  # fmt: skip
    batch = pack_windows(group[1][0], np.random.default_rng(0), ratio=0.5, capacities=group[2])
    for _ in range(3):
        step(batch)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step(batch)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18,
                                      max_name_column_width=70)  # fmt: skip
    print(table)
    del step, model
    torch.cuda.empty_cache()


def main_cuda(args, cfg, device) -> None:
    """The GPU table: reference scheme, dense model and the packed step at ``--batch`` videos
    per step, then the packed step at each of ``--budgets`` visible tokens per step."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    batches = make_batches(4, args.batch, args.cap, args.input_dim, seed=0, device=device)
    video_windows = [[x[i, :n].cpu().numpy() for i, n in enumerate(ls)]
                     for x, _, _, ls in batches]  # fmt: skip
    real_tokens = sum(sum(b[3]) for b in batches) / len(batches)
    flops = sum(train_flops(cfg, b[3]) for b in batches) / len(batches)
    peak = PEAK_BF16_TFLOPS[args.gpu] * 1e12
    print(f"device {torch.cuda.get_device_name()}, bf16 autocast, preset {args.preset or 'paper'}"
          f" (width {cfg.width}, depth {cfg.depth}; decoder {cfg.decoder_width} x "
          f"{cfg.decoder_depth}), {args.batch} videos/step with lengths uniform 2..{args.cap} "
          f"(mean real tokens/step {real_tokens:.0f}), mask 0.5, fused AdamW, TF32 on, "
          f"torch {torch.__version__}", flush=True)  # fmt: skip
    table = []
    builders = {"reference": (ReferenceScheme, _ref_step, "reference scheme (dense, cap + 1)"),
                "dense": (LVMAE, _lvmae_step(False), "LV-MAE dense, eager")}  # fmt: skip
    ref_t = None
    for key, (cls, fn, label) in builders.items():
        torch.manual_seed(0)
        model = cls(cfg).to(device)
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        times = time_models({key: (model, fn)}, batches, device=device, dtype=torch.bfloat16,
                            steps=args.steps, warmup=1, fused=True)  # fmt: skip
        t = times[key]
        ref_t = ref_t or t
        table.append({"label": label, "t": t, "real": real_tokens, "mfu": flops / t / peak,
                      "mem": torch.cuda.max_memory_allocated() / 2**30,
                      "warm": time.perf_counter() - t0 - t * args.steps, "recompiles": "–",
                      "fill": "–", "visible": "–"})  # fmt: skip
        print(f"  {label}: {t * 1e3:.1f} ms/step", flush=True)
        del model
        torch.cuda.empty_cache()
    videos_caps = bucket_capacities(needed_capacity([args.cap] * args.batch, 0.5), args.buckets)
    variants = [v for v in args.variants.split(",") if v]
    names = {"eager": (False, False), "graphs": (True, False), "compile": (False, True),
             "compile+graphs": (True, True)}  # fmt: skip
    for variant in variants:
        graphs, compile_ = names[variant]
        table += bench_cuda_step(
            cfg, [(f"packed step, {variant}, {args.batch} videos", video_windows, videos_caps, 1)],
            device=device, steps=args.steps * 5, graphs=graphs, compile_=compile_, gpu=args.gpu,
        )  # fmt: skip
    budgets = [int(b) for b in args.budgets.split(",") if b]
    if budgets:
        rng = np.random.default_rng(2)
        pool = _windows_pool(max(budgets) * 4 + args.cap, args.input_dim, seed=3)
        groups = []
        for budget in budgets:
            accumulate = max(1, -(-budget // args.max_micro_tokens))
            micro = budget // accumulate
            caps = bucket_capacities(token_budget_capacity(micro, args.cap, 0.5), args.buckets)
            windows = [_budget_windows(pool, micro, args.cap, rng) for _ in range(2 * accumulate)]
            label = f"packed step, compile+graphs, {budget // 1024}k visible tokens"
            if accumulate > 1:
                label += f" ({accumulate} × {micro // 1024}k accumulated)"
            groups.append((label, windows, caps, accumulate))
        if args.profile:
            _profile(cfg, groups[0], device)
        for group in groups:  # a fresh model and step per budget: one run has one budget
            table += bench_cuda_step(cfg, [group], device=device, steps=args.steps, graphs=True,
                                     compile_=True, gpu=args.gpu)  # fmt: skip
    print()
    print("| model | visible tokens/step | step (ms) | real tokens/s | × reference scheme | MFU "
          "| peak GPU memory (GiB) | warm-up + compile (s) | compiles after warm-up "
          "| tokens / capacity |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ref_rate = real_tokens / ref_t
    for r in table:
        rate = r["real"] / r["t"]
        vis = r["visible"] if isinstance(r["visible"], str) else f"{r['visible']:,.0f}"
        fill = r["fill"] if isinstance(r["fill"], str) else f"{r['fill']:.2f}"
        print(f"| {r['label']} | {vis} | {r['t'] * 1e3:.1f} | {rate:,.0f} | {rate / ref_rate:.2f} "
              f"| {r['mfu']:.1%} | {r['mem']:.1f} | {r['warm']:.1f} | {r['recompiles']} "
              f"| {fill} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default=None, help="model preset (default: the CPU config "
                    "width 1024 depth 4 heads 16, decoder 512 x 2; 'paper' on CUDA)")  # fmt: skip
    ap.add_argument("--batch", type=int, default=None,
                    help="videos per step (lengths 2..cap; default 8 on CPU, 16 on CUDA)")
    ap.add_argument("--budgets", default="16384,32768,65536,131072",
                    help="CUDA: visible tokens per step for the token-budget rows")
    ap.add_argument("--buckets", type=int, default=4, help="CUDA: capacity buckets")
    ap.add_argument("--max-micro-tokens", type=int, default=65536,
                    help="CUDA: larger budgets run as accumulated micro-batches of this size")
    ap.add_argument("--profile", action="store_true",
                    help="CUDA: top kernels of one compiled step at the first budget")
    ap.add_argument("--variants", default="eager,graphs,compile+graphs",
                    help="CUDA: packed-step variants at --batch videos")
    ap.add_argument("--cap", type=int, default=256, help="token cap (max_tokens)")
    ap.add_argument("--input-dim", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--models", default="reference,torch,dense,packed,step")
    ap.add_argument("--cuda-models", action="store_true",
                    help="CUDA: the --models comparison (round robin) instead of the GPU table")
    ap.add_argument("--gpu", default="H100", choices=sorted(PEAK_BF16_TFLOPS))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--optimizer", default="default", choices=("default", "fused"),
                    help="AdamW implementation, the same for every model")  # fmt: skip
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                    help="wall: perf_counter; cpu: process CPU time (use 1 thread)")  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.batch = args.batch or (16 if device.type == "cuda" else 8)
    preset = args.preset or ("paper" if device.type == "cuda" else None)
    if preset is None:
        cfg = model_config("small", input_dim=args.input_dim, max_tokens=args.cap, width=1024,
                           depth=4, heads=16, decoder_width=512, decoder_depth=2,
                           decoder_heads=16)  # fmt: skip
    else:
        cfg = model_config(preset, input_dim=args.input_dim, max_tokens=args.cap)
    if device.type == "cuda" and not args.cuda_models:
        main_cuda(args, cfg, device)
        return
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batches = make_batches(4, args.batch, args.cap, args.input_dim, seed=0, device=device)
    real_tokens = sum(sum(b[3]) for b in batches) / len(batches)
    print(f"device {device}, {dtype}, preset {preset or 'cpu-bench'} (width {cfg.width}, depth "
          f"{cfg.depth}, heads {cfg.heads}; decoder {cfg.decoder_width} x {cfg.decoder_depth}), "
          f"batch {args.batch}, lengths uniform 2..{args.cap} (mean real tokens/step "
          f"{real_tokens:.0f}), mask 0.5, {torch.get_num_threads()} threads, "
          f"{args.steps} timed steps after {args.warmup}, AdamW {args.optimizer}, "
          f"{args.clock} clock")  # fmt: skip
    builders = {
        "reference": (ReferenceScheme, _ref_step, "reference scheme (dense, cap + 1)"),
        "torch": (TorchEncoders, _torch_step, "nn.TransformerEncoder (batch max)"),
        "dense": (LVMAE, _lvmae_step(False), "LV-MAE dense, packed=False (batch max)"),
        "packed": (LVMAE, _lvmae_step(True), "LV-MAE packed (real tokens)"),
        "step": (LVMAE, _packed_step_eager, "LV-MAE fixed-shape packed step, eager"),
    }
    keys = args.models.split(",")
    models = {}
    for key in keys:
        torch.manual_seed(0)
        models[key] = (builders[key][0](cfg).to(device), builders[key][1])
    times = time_models(
        models, batches, device=device, dtype=dtype, steps=args.steps, warmup=args.warmup,
        fused=args.optimizer == "fused",
        clock=time.process_time if args.clock == "cpu" else time.perf_counter,
    )  # fmt: skip
    flops = sum(train_flops(cfg, b[3]) for b in batches) / len(batches)
    print()
    print(
        "| model | step (s) | real tokens/s | × reference scheme | × nn.TransformerEncoder | MFU |"
    )
    print("|---|---|---|---|---|---|")
    for key in keys:
        t = times[key]
        ratio = {b: f"{times[b] / t:.2f}" if b in times else "–" for b in ("reference", "torch")}
        mfu = "–"
        if device.type == "cuda":
            mfu = f"{flops / t / (PEAK_BF16_TFLOPS[args.gpu] * 1e12):.1%}"
        print(f"| {builders[key][2]} | {t:.3f} | {real_tokens / t:,.0f} | {ratio['reference']} "
              f"| {ratio['torch']} | {mfu} |")  # fmt: skip


if __name__ == "__main__":
    main()
