"""Throughput of the frozen LanguageBind video encoder: bf16 autocast vs fp32, same run.

Builds the real-size ``LanguageBind/LanguageBind_Video_FT`` architecture (ViT-L/14 video tower
with time attention, 8 frames, 224 px, 768-d projection; ``--arch vit-h14`` for the paper's
Huge) with RANDOM weights — no download; speed does not depend on the weight values — and
embeds pre-decoded random uint8 frames held on the host, as a Ray Data batch arrives, through
:class:`lvmae.encoders.models.LanguageBindEncoder` (host→device copy, normalisation, forward,
L2-normalise, back to numpy). For each batch size it prints segments/second for the fp32
baseline and for bf16 autocast, their ratio, peak GPU memory, and how closely the two agree.

    python benchmarks/bench_encoder_gpu.py                       # CUDA, full ViT-L/14
    python benchmarks/bench_encoder_gpu.py --arch vit-h14 --batch-sizes 8,16,32
    python benchmarks/bench_encoder_gpu.py --device cpu --batch-sizes 1 --depth 1 --iters 1

Without CUDA (and no ``--device cpu``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

SEGMENT_S = 5.0  # paper default segment length: seconds of video per segment


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    parser.add_argument(
        "--arch",
        choices=("vit-l14", "vit-h14"),
        default="vit-l14",
        help="vit-l14: LanguageBind_Video_FT; vit-h14: Video_Huge_V1.5_FT",
    )
    parser.add_argument(
        "--batch-sizes", default="8,16,32,64", help="comma-separated segments per encode call"
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=None,
        help="vision layers (default: the architecture's; lower for smoke runs)",
    )
    parser.add_argument("--iters", type=int, default=10, help="timed calls per setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per setting")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    return parser.parse_args(argv)


def time_encode(encoder, frames: np.ndarray, *, iters: int, warmup: int) -> dict:
    """Segments/second and peak device memory of ``encoder.encode(frames)``."""
    cuda = encoder.device.type == "cuda"
    for _ in range(warmup):
        encoder.encode(frames)
    if cuda:
        torch.cuda.synchronize(encoder.device)
        torch.cuda.reset_peak_memory_stats(encoder.device)
    start = time.perf_counter()
    for _ in range(iters):
        emb = encoder.encode(frames)  # returns numpy: synchronises with the device
    seconds = time.perf_counter() - start
    return {
        "segments_per_s": len(frames) * iters / seconds,
        "peak_mem_gib": torch.cuda.max_memory_allocated(encoder.device) / 2**30 if cuda else None,
        "embeddings": emb,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "CUDA is not available here: nothing to benchmark (use --device cpu --batch-sizes 1 "
            "--depth 1 --iters 1 for a smoke run)."
        )
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
    from lvmae.encoders.models import (
        VIT_H14_ARCH,
        VIT_L14_ARCH,
        LanguageBindEncoder,
        build_languagebind_random,
    )

    arch = VIT_L14_ARCH if args.arch == "vit-l14" else VIT_H14_ARCH
    if args.depth is not None:
        arch = dataclasses.replace(arch, num_hidden_layers=args.depth)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]

    t0 = time.perf_counter()
    model = build_languagebind_random(arch, seed=0)
    n_vision = sum(p.numel() for p in model.vision_model.parameters())
    label = f"random-{args.arch}-depth{arch.num_hidden_layers}"
    baseline = LanguageBindEncoder(
        model, name=label, checkpoint="random-seed0", device=device, precision="fp32"
    )
    bf16 = LanguageBindEncoder(
        model, name=label, checkpoint="random-seed0", device=device, precision="bf16"
    )
    cpu_name = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name
    print(
        f"{label}: vision tower {n_vision / 1e6:.0f}M params, D={baseline.embedding_dim}, "
        f"T={baseline.frames_per_segment}, {baseline.image_size}px; built in "
        f"{time.perf_counter() - t0:.1f}s; device {device} ({gpu}); torch {torch.__version__}; "
        f"TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'} for fp32"
    )
    print(
        f"{'batch':>5} {'fp32 seg/s':>11} {'bf16 seg/s':>11} {'bf16/fp32':>9} "
        f"{'bf16 x realtime':>15} {'fp32 GiB':>8} {'bf16 GiB':>8} {'min cos':>8}"
    )

    rows = []
    rng = np.random.default_rng(0)
    for batch in batch_sizes:
        frames = rng.integers(
            0,
            256,
            size=(batch, baseline.frames_per_segment, baseline.image_size, baseline.image_size, 3),
            dtype=np.uint8,
        )
        row: dict = {"batch": batch}
        try:
            fp32 = time_encode(baseline, frames, iters=args.iters, warmup=args.warmup)
            low = time_encode(bf16, frames, iters=args.iters, warmup=args.warmup)
        except torch.cuda.OutOfMemoryError:
            print(f"{batch:>5} out of device memory")
            row["error"] = "oom"
            rows.append(row)
            torch.cuda.empty_cache()
            continue
        ratio = low["segments_per_s"] / fp32["segments_per_s"]
        min_cos = float(np.min(np.sum(low["embeddings"] * fp32["embeddings"], axis=1)))
        row.update(
            fp32_segments_per_s=fp32["segments_per_s"],
            bf16_segments_per_s=low["segments_per_s"],
            ratio=ratio,
            fp32_peak_mem_gib=fp32["peak_mem_gib"],
            bf16_peak_mem_gib=low["peak_mem_gib"],
            min_cosine_bf16_vs_fp32=min_cos,
        )
        rows.append(row)

        def gib(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        print(
            f"{batch:>5} {fp32['segments_per_s']:>11.2f} {low['segments_per_s']:>11.2f} "
            f"{ratio:>8.2f}x {low['segments_per_s'] * SEGMENT_S:>14.0f}x "
            f"{gib(fp32['peak_mem_gib']):>8} {gib(low['peak_mem_gib']):>8} {min_cos:>8.4f}"
        )

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "benchmark": "encoder",
                    "arch": dataclasses.asdict(arch),
                    "label": label,
                    "device": str(device),
                    "device_name": gpu,
                    "torch": torch.__version__,
                    "iters": args.iters,
                    "warmup": args.warmup,
                    "segment_s": SEGMENT_S,
                    "rows": rows,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
