"""One long video alone: one decode task per video vs ranges of its segments (``extract.range_s``).

A single ~1-hour 1280x720 H.264 file (the archive clip of ``bench_extraction.py`` repeated by
stream copy) through ``lvmae extract`` in a fresh process with its own local Ray, exact mode,
twice in the same run: ``extract.range_s=null`` (the whole video is one task, so at most one
core decodes) and the default ranges (``range_s`` seconds each, so every core can). For each:
seconds of video per wall-second and efficiency = that / (cores × the single-process rate of
the same decoder, timed on a 5-min file just before and just after the run, as
``bench_extraction.py`` does), plus time to the first segments file. The embeddings of the two
runs are compared segment by segment.

    .venv/bin/python benchmarks/bench_long_video.py [--workdir work/bench] [--minutes 60]
        [--range-s 600]

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=str(ROOT / "work" / "bench"))
    ap.add_argument("--minutes", type=int, default=60, help="length of the one video")
    ap.add_argument("--range-s", type=float, default=600.0, help="extract.range_s of the split run")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    (long,) = archive(work, 1, args.minutes)
    (probe,) = archive(work, 1, 5)
    cores = os.cpu_count() or 1
    print(f"\n## One {args.minutes}-min {W}x{H} video alone, exact mode, decord "
          f"(local Ray, {cores} cores)\n")  # fmt: skip
    print("| decode tasks | video-s per wall-s | baseline (before / after) | efficiency "
          "| first segments file | wall |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    outs = {}
    for name, value in (("one per video", "null"), (f"ranges of {args.range_s:g} s", args.range_s)):
        before = single_process(probe, "decord", "exact")
        outs[name] = work / f"out_long_{value}"
        r = run_extract(long.parent, outs[name], f"extract.range_s={value}")
        after = single_process(probe, "decord", "exact")
        rates = [x["duration_s"] / x["cpu_s"] for x in (before, after)]
        baseline = sum(rates) / 2
        video, wall = r["summary"]["video_seconds"], r["wall_s"]
        seg = r["first"].get("segments", float("nan"))
        efficiency = video / wall / (cores * baseline)
        print(f"| {name} | {video / wall:.1f} | {rates[0]:.1f} / {rates[1]:.1f} "
              f"| {efficiency:.2f} | {seg:.1f} s | {wall:.1f} s |")  # fmt: skip
    a, b = (embeddings(o) for o in outs.values())
    same = a.shape == b.shape and bool(np.allclose(a, b, atol=1e-5))
    print(f"\nsplit vs whole: {len(a)} vs {len(b)} segments, embeddings equal: {same}")


if __name__ == "__main__":
    main()
