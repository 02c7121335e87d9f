"""Extraction throughput and memory, against baselines measured in the same run.

1. Throughput (CPU): seconds of video per CPU-second for decode → sample → tiny encoder,
   per decoder, against a plain ``ffmpeg -threads 1 -i X -f null -`` full decode of the
   same files (the cost of touching every frame once).
2. The Ray Data pipeline end to end on local Ray: seconds of video per wall second.
3. Peak memory (max RSS of a fresh process) extracting a 60-minute video against a 1-minute
   one of the same resolution, per decoder.

    .venv/bin/python benchmarks/bench_extraction.py [--workdir work/bench] [--quick]

Prints a Markdown table to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvmae.ffmpeg import ffmpeg_exe  # noqa: E402
from lvmae.samples import PALETTE, Scene, make_video  # noqa: E402


def long_video(path: Path, minutes: float, width: int, height: int, fps: int) -> Path:
    if path.exists():  # written atomically by make_video: an existing file is complete
        return path
    names = sorted(PALETTE)
    n = max(1, round(minutes * 60 / 30))
    scenes = [Scene(names[i % len(names)], minutes * 60 / n) for i in range(n)]
    return make_video(path, scenes, width=width, height=height, fps=fps)


def ffmpeg_decode_cpu_s(path: Path) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [
            ffmpeg_exe(),
            "-nostdin",
            "-loglevel",
            "error",
            "-threads",
            "1",
            "-i",
            str(path),
            "-f",
            "null",
            "-",
        ],
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


WORKER = r"""
import json, resource, sys, time
import numpy as np
from lvmae.clips import Clip, read_clips_bounded
from lvmae.config import ExtractConfig
from lvmae.encoders import build_encoder
path, decoder = sys.argv[1], sys.argv[2]
config = ExtractConfig(decoder=decoder)
enc = build_encoder("tiny", device="cpu")
import torch; torch.set_num_threads(1)
t0, c0 = time.perf_counter(), time.process_time()
batch, n, duration = [], 0, 0.0
for item in read_clips_bounded(path, config):
    if isinstance(item, Clip):
        batch.append(item.frames)
        if len(batch) == config.batch_size:
            enc.encode(np.stack(batch)); n += len(batch); batch = []
    else:
        assert item.status == "ok", item.error
        duration = item.info.duration_s
if batch:
    enc.encode(np.stack(batch)); n += len(batch)
print(json.dumps({"segments": n, "duration_s": duration, "cpu_s": time.process_time() - c0,
                  "wall_s": time.perf_counter() - t0,
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_worker(path: Path, decoder: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, str(path), decoder],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=str(ROOT / "work" / "bench"))
    ap.add_argument("--quick", action="store_true", help="10-minute long video, fewer files")
    args = ap.parse_args()
    work = Path(args.workdir)
    (work / "throughput").mkdir(parents=True, exist_ok=True)
    w, h, fps = 320, 240, 25

    print(f"# generating videos under {work} (cached) ...", flush=True)
    files = [
        long_video(work / "throughput" / f"v{i}.mp4", 2.0, w, h, fps)
        for i in range(2 if args.quick else 4)
    ]
    long_minutes = 10.0 if args.quick else 60.0
    mem_minutes = (1.0, 3.0, long_minutes)
    mem_videos = [long_video(work / f"mem_{int(m)}min.mp4", m, w, h, fps) for m in mem_minutes]

    rows = []
    base_cpu = sum(ffmpeg_decode_cpu_s(p) for p in files)
    video_s = 120.0 * len(files)
    base_rate = video_s / base_cpu
    rows.append(("ffmpeg -threads 1 full decode (baseline)", f"{base_rate:.1f}", "1.00"))
    for decoder in ("decord", "pyav"):
        res = [run_worker(p, decoder) for p in files]
        cpu = sum(r["cpu_s"] for r in res)
        rate = sum(r["duration_s"] for r in res) / cpu
        rows.append(
            (
                f"decode+sample+tiny encoder, {decoder}, 1 thread",
                f"{rate:.1f}",
                f"{rate / base_rate:.2f}",
            )
        )

    # the Ray Data pipeline end to end (2 CPUs here)
    import ray

    from lvmae.config import ExtractConfig
    from pipelines.extract import run_extraction

    ray.init(include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_extraction(str(work / "throughput"), tmp, ExtractConfig(), progress=False)
        wall = time.perf_counter() - t0
    ray.shutdown()
    cpus = os.cpu_count()
    rows.append(
        (
            f"Ray Data pipeline, tiny encoder, local Ray ({cpus} CPUs), per wall-second",
            f"{summary.video_seconds / wall:.1f}",
            f"{summary.video_seconds / wall / base_rate:.2f}",
        )
    )

    print(f"\n## Throughput ({len(files)} videos × 2 min, {w}x{h} @ {fps} fps, H.264)\n")
    print("| what | seconds of video per CPU-second | × ffmpeg decode |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")

    print(f"\n## Peak memory ({w}x{h} @ {fps} fps; max RSS of the extracting process)\n")
    heads = " | ".join(f"{m:g} min" for m in mem_minutes)
    print(f"| decoder | {heads} | {long_minutes:g} min / 1 min | {long_minutes:g} min / 3 min |")
    print("|---|---|---|---|---|---|")
    for decoder in ("decord", "pyav"):
        rss = [run_worker(v, decoder)["max_rss_mib"] for v in mem_videos]
        cells = " | ".join(f"{r:.0f} MiB" for r in rss)
        print(f"| {decoder} | {cells} | {rss[2] / rss[0]:.2f} | {rss[2] / rss[1]:.2f} |")


if __name__ == "__main__":
    main()
