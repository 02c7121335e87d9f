"""Extraction on one GPU node: LanguageBind ViT-L/14 segments/s with decoding in the loop,
and which stage bounds it — the decode stage alone, the encoder alone and the two together,
measured in the same run.

The node's cores are split as ``lvmae extract`` splits them: the encoder (one GPU and a
quarter of a core, :meth:`lvmae.config.ExtractConfig.encoder_cpu_share`) in one process, and
``cores - 1`` decode processes, each running :func:`lvmae.video.clips.read_clips` (decode → plan →
sample 8 frames per 5-s segment → 224 px) one video at a time, as the decode tasks do. The
decode processes hand batches of ``batch_size`` clips (uint8 ``[B, 8, 224, 224, 3]``) to the
encoder through a bounded queue (pickled through a pipe; backpressure, as Ray Data's object
store gives). The encoder is :class:`lvmae.encoders.models.LanguageBindEncoder` on the real-size
``LanguageBind_Video_FT`` architecture with RANDOM weights (no download: speed does not
depend on the weight values), bf16 autocast as in extraction.

Stages, each on the same videos, after the processes have started and imported:

1. decode alone: the decode processes, clips dropped (segments/s of CPU decoding);
2. encoder alone: pre-decoded frames held on the host (segments/s of the GPU);
3. the pipeline: decode processes → queue → GPU, for ``--modes`` (``exact`` and ``fast``);
   the encoder's busy fraction says whether the GPU waits for decoding.

Ray is not in this loop (its place is the scheduling, measured on CPU by
``bench_extraction.py``): the decode and encode work are the project's own code.

    python benchmarks/bench_extraction_gpu.py --clip work/bench/clip720.mp4 --videos 60
    python benchmarks/bench_extraction_gpu.py --device cpu --depth 1 --videos 2 --decoders 1

Without CUDA (and no ``--device cpu``) it says so and exits 0. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    parser.add_argument(
        "--clip",
        type=Path,
        default=None,
        help="H.264 file to repeat (default: bench_extraction's 60-s 720p clip, made by ffmpeg)",
    )
    parser.add_argument("--videos", type=int, default=60, help="copies of the clip per stage")
    parser.add_argument(
        "--decoders", type=int, default=None, help="decode processes (default: cores - 1)"
    )
    parser.add_argument("--modes", default="exact,fast", help="decode modes for the pipeline")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--depth", type=int, default=None, help="vision layers (smoke runs)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "work" / "bench_gpu")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    return parser.parse_args(argv)


def library(args: argparse.Namespace) -> list[Path]:
    """``--videos`` hard links (copies where links fail) of one clip: the decoder's work per
    frame is what matters, and the page cache serves every copy alike."""
    clip = args.clip
    if clip is None:
        from bench_extraction import FPS, SOURCES, H, W  # needs ffmpeg

        from lvmae.video.samples import Scene, make_video  # needs ffmpeg

        clip = args.workdir / "clip720.mp4"
        if not clip.exists():
            clip.parent.mkdir(parents=True, exist_ok=True)
            make_video(
                clip, [Scene(s, 20.0) for s in SOURCES], width=W, height=H, fps=FPS,
                keyint_s=5.0, bframes=3,
            )  # fmt: skip
    folder = args.workdir / "library"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.videos):
        path = folder / f"v{i}{clip.suffix}"
        if not path.exists():
            try:
                os.link(clip, path)
            except OSError:
                path.write_bytes(clip.read_bytes())
        paths.append(path)
    return paths


def decode_worker(jobs, out, ready, go, *, mode: str, batch_size: int, send: bool) -> None:
    """One decode process: videos from ``jobs`` until ``None``; batches of clips to ``out``
    (dropped unless ``send``), then ``("done", segments, video_s, cpu_s)`` to ``out``."""
    torch.set_num_threads(1)
    from lvmae.config import ExtractConfig  # imported in the child
    from lvmae.video.clips import Clip, read_clips  # imported in the child

    config = ExtractConfig(decoder="pyav", decode_mode=mode)
    ready.release()
    go.wait()
    c0, segments, video_s = time.process_time(), 0, 0.0
    batch: list[np.ndarray] = []
    for path in iter(jobs.get, None):
        for item in read_clips(path, config):
            if not isinstance(item, Clip):
                assert item.status == "ok", item.error
                video_s += item.info.duration_s
                continue
            segments += 1
            batch.append(item.frames)
            if len(batch) == batch_size:
                if send:
                    out.put(np.stack(batch))
                batch = []
    if batch and send:
        out.put(np.stack(batch))
    out.put(("done", segments, video_s, time.process_time() - c0))


def run_stage(paths, *, mode: str, decoders: int, batch_size: int, encoder=None) -> dict:
    """Decode ``paths`` with ``decoders`` processes, embedding on ``encoder`` when given.
    Timed from the moment every process has imported and is waiting."""
    ctx = mp.get_context("spawn")
    jobs, out = ctx.Queue(), ctx.Queue(maxsize=2 * decoders)
    ready, go = ctx.Semaphore(0), ctx.Event()
    send = encoder is not None
    procs = [
        ctx.Process(
            target=decode_worker,
            args=(jobs, out, ready, go),
            kwargs={"mode": mode, "batch_size": batch_size, "send": send},
            daemon=True,
        )
        for _ in range(decoders)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    for path in paths:
        jobs.put(str(path))
    for _ in procs:
        jobs.put(None)
    t0 = time.perf_counter()
    go.set()
    done, busy_s, embedded = [], 0.0, 0
    while len(done) < decoders:
        item = out.get()
        if isinstance(item, tuple):
            done.append(item)
            continue
        e0 = time.perf_counter()
        encoder.encode(item)
        busy_s += time.perf_counter() - e0
        embedded += len(item)
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    segments = sum(d[1] for d in done)
    video_s = sum(d[2] for d in done)
    return {
        "mode": mode,
        "decoders": decoders,
        "segments": segments,
        "embedded": embedded,
        "wall_s": wall,
        "segments_per_s": segments / wall,
        "video_s_per_s": video_s / wall,
        "decode_cpu_s": sum(d[3] for d in done),
        "encoder_busy": busy_s / wall if send else None,
    }


def encoder_alone(encoder, batch_size: int, *, iters: int = 20) -> dict:
    """Segments/s of ``encoder.encode`` on host-held uint8 frames, after 3 warm-up calls."""
    rng = np.random.default_rng(0)
    shape = (batch_size, encoder.frames_per_segment, encoder.image_size, encoder.image_size, 3)
    frames = torch.from_numpy(rng.integers(0, 256, size=shape, dtype=np.uint8))
    for _ in range(3):
        encoder.encode(frames)
    t0 = time.perf_counter()
    for _ in range(iters):
        encoder.encode(frames)  # returns numpy: synchronises with the device
    wall = time.perf_counter() - t0
    return {"segments_per_s": batch_size * iters / wall, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here: nothing to benchmark (see --device cpu).")
        return 0
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from lvmae.config import ExtractConfig  # after sys.path
    from lvmae.encoders.models import (  # after sys.path
        VIT_L14_ARCH,
        LanguageBindEncoder,
        build_languagebind_random,
    )

    batch_size = args.batch_size or ExtractConfig().batch_size
    decoders = args.decoders or max(1, (os.cpu_count() or 2) - 1)
    modes = [m for m in args.modes.split(",") if m]
    paths = library(args)
    arch = VIT_L14_ARCH
    if args.depth is not None:
        arch = dataclasses.replace(arch, num_hidden_layers=args.depth)
    model = build_languagebind_random(arch, seed=0)
    encoder = LanguageBindEncoder(model, name="random-vit-l14", checkpoint="random", device=device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{len(paths)} copies of {paths[0].stat().st_size / 2**20:.1f}-MiB clip, "
        f"{decoders} decode processes on {os.cpu_count()} cores, batch {batch_size}, "
        f"{arch.num_hidden_layers}-layer ViT-L/14 ({encoder.precision}) on {device} ({gpu}), "
        f"torch {torch.__version__}"
    )
    alone = encoder_alone(encoder, batch_size)
    rows = []
    for mode in modes:
        dec = run_stage(paths, mode=mode, decoders=decoders, batch_size=batch_size)
        pipe = run_stage(
            paths, mode=mode, decoders=decoders, batch_size=batch_size, encoder=encoder
        )
        rows.append({"mode": mode, "decode_alone": dec, "pipeline": pipe})
    print()
    print(
        "| mode | decode alone, seg/s | encoder alone, seg/s | pipeline, seg/s "
        "| pipeline ÷ slower stage | GPU busy | video-s per wall-s | bound by |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        dec, pipe = row["decode_alone"], row["pipeline"]
        slower = min(dec["segments_per_s"], alone["segments_per_s"])
        bound = "decoding" if dec["segments_per_s"] < alone["segments_per_s"] else "encoder"
        print(
            f"| {row['mode']} | {dec['segments_per_s']:.1f} | {alone['segments_per_s']:.1f} "
            f"| {pipe['segments_per_s']:.1f} | {pipe['segments_per_s'] / slower:.2f} "
            f"| {pipe['encoder_busy']:.0%} | {pipe['video_s_per_s']:.0f} | {bound} |"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "device": gpu,
                    "cores": os.cpu_count(),
                    "decoders": decoders,
                    "batch_size": batch_size,
                    "arch": dataclasses.asdict(arch),
                    "encoder_alone": alone,
                    "rows": rows,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
