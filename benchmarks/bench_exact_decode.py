"""Exact-mode PyAV decoding with and without the frames nothing needs, both measured in this
run on the same files.

Exact mode samples 8 frames per 5-s segment and must return exactly those frames, so until
now it decoded every frame. A non-reference frame (most B-frames) is needed by no other
frame: once ``PyAVReader.will_read`` names the sampled frames, the reader sends every other
packet with ``skip_frame=NONREF`` and the decoder drops the non-reference ones (H.264, HEVC).
The baseline is the same reader with that hint switched off (``VideoReader.will_read``, a
no-op), in the same process, passes interleaved.

For each clip (the 720p H.264 clip with B-frames of ``bench_extraction.py``, and the same
clip re-encoded as HEVC and as H.264 without B-frames):

- ``reader``: the sampled frames of every segment (``sample_frame_indices``), decoded and
  converted to RGB at 224 px: seconds of video per CPU-s, frames the decoder output, and
  whether every returned frame is the same array;
- ``decode + sample + tiny``: ``read_clips_bounded`` and the ``tiny`` encoder, one thread,
  as ``bench_extraction.py``'s single-process rate.

    .venv/bin/python benchmarks/bench_exact_decode.py [--clip PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]

import torch  # noqa: E402

from lvmae.config import ExtractConfig  # noqa: E402
from lvmae.encoders.models import build_encoder  # noqa: E402
from lvmae.video.clips import Clip, read_clips_bounded  # noqa: E402
from lvmae.video.decoding import PyAVReader, VideoReader  # noqa: E402
from lvmae.video.ffmpeg import ffmpeg_exe  # noqa: E402
from lvmae.video.segments import fixed_segments, sample_frame_indices  # noqa: E402

HINT = PyAVReader.will_read


def hinted(on: bool) -> None:
    """Switch the reader's use of ``will_read`` on (the project's code) or off (baseline)."""
    PyAVReader.will_read = HINT if on else VideoReader.will_read


def reader_pass(clip: Path, config: ExtractConfig) -> tuple[float, int, list[str], float]:
    """CPU-s, frames decoded, a SHA-1 of each segment's frames, and the video's seconds."""
    cpu0 = time.process_time()
    with PyAVReader(clip, short_side=config.image_size) as reader:
        times = reader.frame_times_s
        segments = fixed_segments(reader.info.duration_s, segment_s=config.segment_s)
        starts = np.array([s.start_s for s in segments])
        ends = np.array([s.end_s for s in segments])
        indices = sample_frame_indices(times, starts, ends, config.frames_per_segment)
        reader.will_read(indices.ravel())
        sums = [hashlib.sha1(reader.get_frames(idx).tobytes()).hexdigest() for idx in indices]
        return time.process_time() - cpu0, reader.frames_decoded, sums, reader.info.duration_s


def pipeline_pass(clip: Path, config: ExtractConfig, encoder) -> float:
    """CPU-s of decode + sample + ``tiny`` over the clip (``bench_extraction.py``'s worker)."""
    cpu0 = time.process_time()
    batch = []
    for item in read_clips_bounded(clip, config):
        if isinstance(item, Clip):
            batch.append(item.frames)
            if len(batch) == config.batch_size:
                encoder.encode(np.stack(batch))
                batch = []
        else:
            assert item.status == "ok", item.error
    if batch:
        encoder.encode(np.stack(batch))
    return time.process_time() - cpu0


def variants(clip: Path) -> dict[str, Path]:
    """The clip, and its re-encodings (made once next to it)."""
    out = {"H.264, B-frames": clip}
    for name, args in {
        "HEVC, B-frames": ["-c:v", "libx265", "-preset", "fast", "-x265-params", "log-level=error"],
        "H.264, no B-frames": ["-c:v", "libx264", "-preset", "veryfast", "-bf", "0"],
    }.items():
        path = clip.with_name(f"{clip.stem}_{name.split(',')[0].lower().replace('.', '')}"
                              f"{'_nob' if 'no B' in name else ''}.mp4")  # fmt: skip
        if not path.exists():
            subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(clip),
                            *args, "-g", "125", str(path)], check=True)  # fmt: skip
        out[name] = path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, default=Path("work/bench_pyav_convert/clip720.mp4"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.clip.exists():
        from bench_extraction import make_clip

        make_clip(args.clip)
    torch.set_num_threads(1)
    config = ExtractConfig(decoder="pyav", decode_mode="exact")
    encoder = build_encoder("tiny", device="cpu")
    print(f"\n## Exact-mode decoding, every frame vs without the frames nothing needs "
          f"(median of {args.repeats}, passes interleaved)\n")  # fmt: skip
    print("| clip | frames | frames decoded, every / skipping | same pixels | reader, video-s "
          "per CPU-s, every / skipping | ratio | decode + sample + tiny, every / skipping "
          "| ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, clip in variants(args.clip).items():
        got: dict[bool, list] = {False: [], True: []}
        rate: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for on in (False, True):
                hinted(on)
                got[on].append(reader_pass(clip, config))
                rate[on].append(got[on][-1][3] / pipeline_pass(clip, config, encoder))
        hinted(True)
        same = all(a[2] == b[2] for a, b in zip(got[False], got[True], strict=True))
        reader = {on: statistics.median(g[3] / g[0] for g in got[on]) for on in got}
        full = {on: statistics.median(rate[on]) for on in rate}
        with PyAVReader(clip, short_side=32) as r:
            frames = r.info.num_frames
        print(f"| {name} | {frames} | {got[False][0][1]} / {got[True][0][1]} | "
              f"{'yes' if same else '**no**'} | {reader[False]:.1f} / {reader[True]:.1f} | "
              f"{reader[True] / reader[False]:.2f}x | {full[False]:.1f} / {full[True]:.1f} | "
              f"{full[True] / full[False]:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
