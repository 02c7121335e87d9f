"""One long video alone: one decode task per video vs ranges of its segments (``extract.range_s``).

A single ~1-hour 1280x720 H.264 file (the archive clip of ``bench_extraction.py`` repeated by
stream copy) through ``lvmae extract`` in a fresh process with its own local Ray, exact mode,
for each decoder asked: ``extract.range_s=null`` (the whole video is one task) and the
default ranges (``range_s`` seconds each, so every core can decode). For each run: seconds of
video per wall-second, and efficiency = that / (cores × the single-process rate of the same
decoder **on the same file**: decord's cost per second of video grows with the file's length,
so a short file's rate is the wrong baseline), and against the best decoder's rate when
several are measured; plus time to the first segments file. The embeddings of the runs are
compared segment by segment.

    .venv/bin/python benchmarks/bench_long_video.py [--workdir work/bench] [--minutes 60]
        [--range-s 600] [--decoder decord --decoder pyav]

With ``--memory MINUTES`` (repeatable, e.g. ``--memory 3 --memory 180``) it measures instead
the peak memory of ``lvmae extract`` on one video of each length, default settings (PyAV,
exact, ranges of ``extract.range_s``): the largest sum of PSS over the whole process tree
(driver, Ray, workers), sampled every 0.5 s, and the driver's own peak RSS. A 3-hour video
must not need more than a 3-minute one beyond the second decode worker that its ranges keep
busy (docs/design.md, "Memory").

Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_extraction import H, W, archive, embeddings, run_extract, single_process  # noqa: E402

from lvmae.config import ExtractConfig  # noqa: E402
from lvmae.video.segments import segment_ranges  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=str(ROOT / "work" / "bench"))
    ap.add_argument("--minutes", type=int, default=60, help="length of the one video")
    ap.add_argument("--range-s", type=float, default=600.0, help="extract.range_s of the split run")
    ap.add_argument(
        "--decoder", action="append", choices=["decord", "pyav"],
        help="CPU decoder(s) to run (default: decord and pyav)",
    )  # fmt: skip
    ap.add_argument(
        "--memory", type=int, action="append", metavar="MINUTES",
        help="peak memory on one video of MINUTES (repeatable) instead of the rates",
    )  # fmt: skip
    args = ap.parse_args()
    if args.memory:
        memory(Path(args.workdir), args.memory)
        return
    decoders = args.decoder or ["decord", "pyav"]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    (long,) = archive(work, 1, args.minutes)
    cores = os.cpu_count() or 1
    # one thread, one process, decode + sample + tiny encoder: s of video per CPU-s
    rates = {}
    for decoder in decoders:
        r = single_process(long, decoder, "exact")
        rates[decoder] = r["duration_s"] / r["cpu_s"]
    best = max(rates.values())
    print(f"\n## One {args.minutes}-min {W}x{H} video alone, exact mode "
          f"(local Ray, {cores} cores)\n")  # fmt: skip
    print("Single-process rate on this file (s of video per CPU-s): "
          + ", ".join(f"{d} {r:.1f}" for d, r in rates.items()) + "\n")  # fmt: skip
    print("| decoder | decode tasks | video-s per wall-s | efficiency (own rate) "
          "| efficiency (best rate) | first segments file | wall |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    outs = {}
    for decoder in decoders:
        split = f"ranges of {args.range_s:g} s"
        for name, value in (("one per video", "null"), (split, args.range_s)):
            outs[decoder, name] = work / f"out_long_{decoder}_{value}"
            r = run_extract(
                long.parent, outs[decoder, name], f"extract.range_s={value}",
                f"extract.decoder={decoder}",
            )  # fmt: skip
            video, wall = r["summary"]["video_seconds"], r["wall_s"]
            seg = r["first"].get("segments", float("nan"))
            speed = video / wall
            print(f"| {decoder} | {name} | {speed:.1f} | {speed / (cores * rates[decoder]):.2f} "
                  f"| {speed / (cores * best):.2f} | {seg:.1f} s | {wall:.1f} s |")  # fmt: skip
    runs = list(outs)
    first = embeddings(outs[runs[0]])
    for key in runs[1:]:
        other = embeddings(outs[key])
        same = first.shape == other.shape
        cos = float(np.min(np.sum(first * other, axis=1))) if same else float("nan")
        print(f"\n{' '.join(runs[0])} vs {' '.join(key)}: {len(first)} vs {len(other)} segments, "
              f"min cosine {cos:.5f}")  # fmt: skip


def memory(work: Path, lengths: list[int]) -> None:
    """Peak memory of ``lvmae extract`` on one video of each length in ``lengths`` (minutes),
    default settings, in a fresh process with its own local Ray."""
    work.mkdir(parents=True, exist_ok=True)
    print(f"\n## Peak memory of `lvmae extract` on one {W}x{H} video, default settings\n")
    print("| video | segments | decode tasks | peak PSS, all processes | driver peak RSS | wall |")
    print("|---|---|---|---|---|---|")
    for minutes in lengths:
        (video,) = archive(work, 1, minutes)
        r = run_extract(video.parent, work / f"out_memory_{minutes}", sample_memory=True)
        config = ExtractConfig()
        long = config.range_s is not None and minutes * 60 > config.range_s
        stride = config.stride_s or config.segment_s
        tasks = (
            len(segment_ranges(minutes * 60, range_s=config.range_s, stride_s=stride))
            if long
            else 1
        )
        print(f"| {minutes} min | {r['summary']['segments_written']} | {tasks} "
              f"| {r['peak_pss_mib']:,.0f} MiB | {r['driver_rss_mib']:,.0f} MiB "
              f"| {r['wall_s']:.0f} s |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
