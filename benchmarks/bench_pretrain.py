"""LV-MAE training-step throughput: tokens per second, step time and peak memory per preset,
against PyTorch's own ``nn.TransformerEncoder`` of the same width/depth/heads measured in the
same run (the baseline: the same work through the reference implementation).

On an NVIDIA GPU the ``paper`` preset at batch 16 runs in bf16 and the model-FLOPs
utilisation (achieved FLOP/s over the GPU's dense bf16 peak) is printed.

    .venv/bin/python benchmarks/bench_pretrain.py                       # CPU: tiny/small/base
    python benchmarks/bench_pretrain.py --device cuda --presets paper --batch 16
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvmae.losses import reconstruction_loss
from lvmae.masking import random_mask
from lvmae.model import LVMAE, model_config

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM


def train_flops(cfg, batch: int, tokens: int, mask_ratio: float) -> float:
    """Model FLOPs of one training step (forward + backward = 3 × forward), counting the
    matmuls: encoder over (1 - mask_ratio) L + 1 tokens, decoder over L + 1 tokens."""

    def stack(width, depth, n, mlp):
        per_token = 2 * (4 * width * width + 2 * mlp * width * width)  # qkv+proj, MLP
        attn = 2 * 2 * n * n * width  # QK^T and AV
        return depth * (batch * n * per_token + batch * attn)

    n_enc = int(tokens * (1 - mask_ratio)) + 1
    n_dec = tokens + 1
    fwd = stack(cfg.width, cfg.depth, n_enc, cfg.mlp_ratio)
    fwd += stack(cfg.decoder_width, cfg.decoder_depth, n_dec, cfg.mlp_ratio)
    fwd += 2 * batch * tokens * (cfg.input_dim * cfg.width + cfg.width * cfg.decoder_width)
    fwd += 2 * batch * tokens * cfg.decoder_width * cfg.input_dim
    return 3.0 * fwd


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(step, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def bench_lvmae(cfg, batch, tokens, *, device, dtype, steps, warmup):
    model = LVMAE(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = nn.functional.normalize(torch.randn(batch, tokens, cfg.input_dim, device=device), dim=-1)
    real = torch.ones(batch, tokens, dtype=torch.bool, device=device)
    gen = torch.Generator().manual_seed(0)
    mask = random_mask(real.cpu(), 0.5, gen).to(device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            pred = model(x, real, mask)
        loss = reconstruction_loss(pred.float(), x, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return time_steps(step, steps, warmup, device)


def bench_reference(cfg, batch, tokens, *, device, dtype, steps, warmup):
    """nn.TransformerEncoder stacks of the same shapes over the same token counts."""

    def layers(width, depth, heads):
        layer = nn.TransformerEncoderLayer(
            width, heads, int(width * cfg.mlp_ratio), dropout=0.0, batch_first=True,
            norm_first=True, activation="gelu",
        )  # fmt: skip
        return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    enc = layers(cfg.width, cfg.depth, cfg.heads).to(device)
    dec = layers(cfg.decoder_width, cfg.decoder_depth, cfg.decoder_heads).to(device)
    proj = nn.Linear(cfg.width, cfg.decoder_width).to(device)
    head = nn.Linear(cfg.decoder_width, cfg.input_dim).to(device)
    params = [*enc.parameters(), *dec.parameters(), *proj.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    xe = torch.randn(batch, tokens // 2 + 1, cfg.width, device=device)
    xd = torch.randn(batch, tokens + 1, cfg.decoder_width, device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = head(dec(xd + proj(enc(xe)).mean(1, keepdim=True)))
        loss = out.float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return time_steps(step, steps, warmup, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--presets", default=None, help="comma list (default: tiny,small,base on "
                    "CPU; paper on CUDA)")  # fmt: skip
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--input-dim", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gpu", default="H100", choices=sorted(PEAK_BF16_TFLOPS))
    args = ap.parse_args()
    device = torch.device(args.device)
    presets = (args.presets or ("paper" if device.type == "cuda" else "tiny,small,base")).split(",")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    print(f"device {device}, dtype {dtype}, batch {args.batch}, {args.tokens} tokens/video, "
          f"D_in {args.input_dim}, mask ratio 0.5, {torch.get_num_threads()} threads")  # fmt: skip
    print()
    mem_head = "peak MiB (GPU)" if device.type == "cuda" else "max RSS so far, MiB"
    print(f"| preset | params | step (s) | tokens/s | × nn.TransformerEncoder | {mem_head} | MFU |")
    print("|---|---|---|---|---|---|---|")
    for name in presets:
        cfg = model_config(name, input_dim=args.input_dim, max_tokens=args.tokens)
        n_params = sum(p.numel() for p in LVMAE(cfg).parameters())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run = {"device": device, "dtype": dtype, "steps": args.steps, "warmup": args.warmup}
        t_ours = bench_lvmae(cfg, args.batch, args.tokens, **run)
        mem = peak_memory_mib(device)
        t_ref = bench_reference(cfg, args.batch, args.tokens, **run)
        tokens_s = args.batch * args.tokens / t_ours
        mfu = "–"
        if device.type == "cuda":
            flops = train_flops(cfg, args.batch, args.tokens, 0.5) / t_ours
            mfu = f"{flops / (PEAK_BF16_TFLOPS[args.gpu] * 1e12):.1%}"
        print(f"| {name} | {n_params / 1e6:.1f} M | {t_ours:.3f} | {tokens_s:,.0f} | "
              f"{t_ref / t_ours:.2f} | {mem:,.0f} | {mfu} |")  # fmt: skip


if __name__ == "__main__":
    main()
