"""PyAV's frame conversion (libswscale): each frame's own reformatter, PyAV's default, against
one single-threaded context kept for every frame (what ``PyAVReader`` and the shot analysis
do), both measured in this run on the same frames.

Since PyAV 17, ``frame.reformat(...)`` / ``frame.to_ndarray(width=, height=, ...)`` make a
new libswscale context for each frame with ``threads=0`` (a thread per CPU, started and
joined for that one frame). Two workloads, one process, on a 720p H.264 clip:

- ``segments``: the exact-mode sampling of extraction (8 frames per 5-s segment, every frame
  decoded, the sampled ones converted to RGB at 224 px on the short side);
- ``shots``: the shot analysis (every frame converted, to 48x27).

For each: CPU-s of the decoding alone, then of decoding plus conversion either way; the
conversion's own CPU-s (the difference), the ratio, and the threads the process started
(``/proc/sys/kernel/ns_last_pid``; other processes' too, so approximate).

    .venv/bin/python benchmarks/bench_pyav_convert.py [--clip PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]

from lvmae.video.decoding import rgb_converter  # noqa: E402

LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def one_pass(clip: Path, how: str, size: tuple[int, int], every: int) -> tuple[float, int]:
    """CPU-s and new thread ids for one pass: decode every frame; convert every ``every``-th
    (``how``: ``none``, ``per-frame`` or ``shared``)."""
    convert = rgb_converter()  # the project's: PyAVReader's and the shot analysis's
    width, height = size
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        pid0, cpu0 = int(LAST_PID.read_text()), time.process_time()
        for i, frame in enumerate(container.decode(stream)):
            if i % every:
                continue
            if how == "per-frame":
                frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
            elif how == "shared":
                convert(frame, width, height)
        return time.process_time() - cpu0, int(LAST_PID.read_text()) - pid0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, default=Path("work/bench_pyav_convert/clip720.mp4"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.clip.exists():
        from bench_extraction import make_clip

        make_clip(args.clip)
    with av.open(str(args.clip)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        w, h = stream.codec_context.width, stream.codec_context.height
        frames = stream.frames
    workloads = {  # name: (output size, convert every n-th frame)
        "segments": ((round(w * 224 / h), 224), max(1, round(5 * fps / 8))),
        "shots": ((48, 27), 1),
    }
    print(f"\n## PyAV frame conversion: {args.clip.name}, {w}x{h}, {frames} frames, "
          f"PyAV {av.__version__}, libswscale {av.library_versions['libswscale']}, "
          f"median of {args.repeats}\n")  # fmt: skip
    print("| workload | frames converted | decode alone, CPU-s | conversion, per-frame "
          "context (PyAV default) | conversion, one single-threaded context | ratio | "
          "threads started, per-frame / one |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, (size, every) in workloads.items():
        runs: dict[str, list[tuple[float, int]]] = {k: [] for k in ("none", "per-frame", "shared")}
        for _ in range(args.repeats):  # interleaved, so drift hits each alike
            for how, got in runs.items():
                got.append(one_pass(args.clip, how, size, every))
        cpu = {k: statistics.median(c for c, _ in v) for k, v in runs.items()}
        threads = {k: statistics.median(t for _, t in v) for k, v in runs.items()}
        per_frame, shared = cpu["per-frame"] - cpu["none"], cpu["shared"] - cpu["none"]
        print(f"| {name} ({size[0]}x{size[1]}) | {-(-frames // every)} | {cpu['none']:.2f} | "
              f"{per_frame:.2f} | {shared:.2f} | {per_frame / max(shared, 1e-3):.1f}x | "
              f"{threads['per-frame']:.0f} / {threads['shared']:.0f} |")  # fmt: skip
        print(f"|  | whole pass, CPU-s | | {cpu['per-frame']:.2f} | {cpu['shared']:.2f} | "
              f"{cpu['per-frame'] / cpu['shared']:.2f}x | |")  # fmt: skip


if __name__ == "__main__":
    main()
