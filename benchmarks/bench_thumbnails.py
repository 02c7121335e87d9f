"""Segment thumbnails: during extraction, or on first view and cached? (issue 29)

On a 1280x720 H.264 file with B-frames (bench_extraction's 60-s clip, stream-copied into a
``--minutes``-long file), one process, one thread, CPU seconds (``time.process_time``):

1. the extraction's own cost per segment: decode + sample + tiny encoder, ``decode_mode:
   exact`` with decord (bench_extraction's single-process worker) — the baseline;
2. a thumbnail made *during* extraction, per segment, two ways:
   a. from the 224-px centre crop the worker already holds (scale to 160, JPEG): the
      cheapest possible, but a crop, not the frame;
   b. the whole frame at 160 px on the short side, decoded by a second reader in time order
      (what a whole-frame thumbnail costs the decode worker);
3. on first view (``lvmae.video.thumbnails.ThumbnailCache``, what ``lvmae serve`` does): every
   segment in time order (a video page) and in random order with a fresh reader each time (search
   results spread over many videos); then the cached read.

    .venv/bin/python benchmarks/bench_thumbnails.py [--workdir work/bench] [--minutes 5]

Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_extraction import WORKER, archive  # noqa: E402

from lvmae.config import ExtractConfig  # noqa: E402
from lvmae.video.clips import Clip, read_clips  # noqa: E402
from lvmae.video.decoding import PyAVReader  # noqa: E402
from lvmae.video.thumbnails import (  # noqa: E402
    SHORT_SIDE,
    ThumbnailCache,
    encode_jpeg,
    make_thumbnail,
    thumbnail_time,
)


def extraction_cpu(path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", WORKER, str(path), "decord", "exact"],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


def during_extraction(path: Path) -> dict:
    """CPU of the two in-worker thumbnail options, measured around only their own work while
    the clips are decoded as the extraction decodes them. Thread CPU time: decord decodes in
    threads of its own, whose CPU the process clock would add to the options'."""
    import av

    config = ExtractConfig()
    crop_s = frame_s = 0.0
    n = 0
    second = PyAVReader(path, short_side=SHORT_SIDE)
    for item in read_clips(path, config):
        if not isinstance(item, Clip):
            continue
        t0 = time.thread_time()
        mid = item.frames[len(item.frames) // 2]
        small = av.VideoFrame.from_ndarray(mid).reformat(width=SHORT_SIDE, height=SHORT_SIDE)
        encode_jpeg(small.to_ndarray(format="rgb24"))
        t1 = time.thread_time()
        make_thumbnail(second, thumbnail_time(item.frame_times_s, 0, 0))
        t2 = time.thread_time()
        crop_s, frame_s, n = crop_s + t1 - t0, frame_s + t2 - t1, n + 1
    second.close()
    return {"segments": n, "crop_s": crop_s, "frame_s": frame_s}


def on_first_view(path: Path, segments: int) -> dict:
    times = [(i * 5.0 + 2.5) for i in range(segments)]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = ThumbnailCache(tmp)
        t0 = time.process_time()
        for i, t in enumerate(times):
            cache.get("bench", "v.mp4", i, str(path), t)
        out["ordered_s"] = time.process_time() - t0
        cache.close()
        order = list(range(segments))
        random.Random(0).shuffle(order)
        sample = order[: min(40, segments)]
        t0 = time.process_time()
        for i in sample:  # a fresh reader per thumbnail, as for hits spread over many videos
            one = ThumbnailCache(Path(tmp) / "random")
            one.get("bench", "v.mp4", i, str(path), times[i])
            one.close()
        out["random_s"] = (time.process_time() - t0) / len(sample) * segments
        wall = []
        for i in sample:
            t0 = time.perf_counter()
            cache.get("bench", "v.mp4", i, str(path), times[i])
            wall.append(time.perf_counter() - t0)
        out["cached_ms"] = float(np.median(wall) * 1e3)
        out["bytes"] = float(np.mean([cache.path("bench", "v.mp4", i).stat().st_size
                                      for i in sample]))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="work/bench")
    parser.add_argument("--minutes", type=float, default=5.0)
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if shutil.which("nproc"):
        print(f"cores: {os.cpu_count()}, load: {os.getloadavg()}")
    (path,) = archive(work, 1, args.minutes)
    base = extraction_cpu(path)
    per_seg = base["cpu_s"] / base["segments"]
    during = during_extraction(path)
    view = on_first_view(path, during["segments"])
    n = during["segments"]
    rows = [
        ("extraction: decode + sample + tiny encoder (baseline)", per_seg, None),
        ("during extraction: JPEG of the 224-px crop the worker holds", during["crop_s"] / n, 1),
        ("during extraction: whole frame at 160 px, second reader", during["frame_s"] / n, 1),
        ("first view, a video page (one reader, time order)", view["ordered_s"] / n, 1),
        ("first view, scattered hits (a reader per thumbnail)", view["random_s"] / n, 1),
    ]
    kib = view["bytes"] / 1024
    print(f"\n{n} segments of 5 s, {args.minutes:g} min of 1280x720 H.264; "
          f"thumbnail {SHORT_SIDE} px short side, JPEG ~{kib:.1f} KiB\n")  # fmt: skip
    print("| what | CPU ms per segment | % of extraction CPU |")
    print("|---|---|---|")
    for what, cpu, rel in rows:
        share = f"{100 * cpu / per_seg:.1f} %" if rel else "100 %"
        print(f"| {what} | {cpu * 1e3:.1f} | {share} |")
    print(f"| cached thumbnail, read back (wall, median) | {view['cached_ms']:.2f} | — |")


if __name__ == "__main__":
    main()
