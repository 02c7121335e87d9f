"""Extraction from object storage against the same videos on local disk, side by side.

A real S3-compatible server (moto's standalone server on 127.0.0.1, tests/s3server.py, the
one the tests use) holds copies of the local files. Measured in one run:

1. Time to the first segment of a 1-hour video (320x180, 25 fps, H.264, moov first; made
   once and cached under the workdir): from opening the input to the first clip out of
   :func:`lvmae.video.clips.read_clips_bounded`, one process, no Ray, median of
   ``--repeats``. Local file vs ``s3://`` (read while it downloads) for ``decoder: decord``
   and ``pyav`` (exact) and ``decode_mode: fast``; and, as the old behaviour, the whole
   object downloaded first, then decoded. The temporary file's size when the first segment
   came out is reported too.
2. Throughput: ``run_extraction`` (local Ray on this machine's cores, tiny encoder) over the
   same archive of short videos from a local directory and from ``s3://`` (outputs to local
   disk in both, so only the input differs), per decoder: seconds of
   video per wall-second, and the largest temporary disk seen (the fetch directory polled
   every 0.1 s) against the largest video.

    nice .venv/bin/python benchmarks/bench_s3.py [--workdir work/bench_s3] [--repeats 3]
        [--archive-files 8] [--archive-minutes 2]

Prints Markdown for benchmarks/RESULTS.md, ratios S3 / local.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvmae.config import ExtractConfig, StorageConfig  # noqa: E402
from lvmae.storage import object_fs, use_object_store  # noqa: E402
from lvmae.video.clips import Clip, read_clips_bounded  # noqa: E402
from lvmae.video.ffmpeg import ffmpeg_exe  # noqa: E402
from lvmae.video.inputs import video_source  # noqa: E402
from lvmae.video.remote import RemoteVideo  # noqa: E402
from lvmae.video.samples import Scene, make_video  # noqa: E402
from tests.s3server import s3_server  # noqa: E402

W, H, FPS = 320, 180, 25


def concat(clip: Path, path: Path, minutes: int) -> Path:
    """``clip`` (one minute) repeated ``minutes`` times by stream copy, moov first."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    listing = path.with_suffix(".txt")
    listing.write_text(f"file '{clip.resolve()}'\n" * minutes)
    tmp = path.with_suffix(".part.mp4")
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
         "-i", str(listing), "-c", "copy", "-movflags", "+faststart", str(tmp)],
        check=True,
    )  # fmt: skip
    tmp.replace(path)
    return path


def first_segment_s(uri: str, config: ExtractConfig, *, download_first: bool = False):
    """Seconds from opening ``uri`` to its first clip, and the temporary file's bytes then."""
    t0 = time.perf_counter()
    with video_source(uri, config.storage) as source:
        if download_first and isinstance(source, RemoteVideo):
            source.wait()
        for item in read_clips_bounded(source, config):
            if isinstance(item, Clip):
                local = source.bytes_local if isinstance(source, RemoteVideo) else 0
                return time.perf_counter() - t0, local
            raise RuntimeError(f"{uri}: {item.error}")
    raise RuntimeError(f"{uri}: no clip")


def bench_first_segment(local: Path, uri: str, repeats: int, storage: StorageConfig) -> list:
    size = local.stat().st_size
    rows = []
    modes = {
        "decord, whole object first (storage.stream: false)": {"decoder": "decord",
                                                               "stream": False},
        "default: decord; s3 streamed by PyAV": {"decoder": "decord"},
        "pyav, exact": {"decoder": "pyav"},
        "fast (PyAV)": {"decode_mode": "fast"},
    }
    for name, fields in modes.items():
        stream = fields.pop("stream", True)
        config = ExtractConfig(**fields, storage=storage.model_copy(update={"stream": stream}))
        runs = {"local": [], "s3": [], "s3, whole object first": []}
        at_first = []
        for _ in range(repeats):
            runs["local"].append(first_segment_s(str(local), config)[0])
            t, got = first_segment_s(uri, config)
            runs["s3"].append(t)
            at_first.append(got)
            runs["s3, whole object first"].append(
                first_segment_s(uri, config, download_first=True)[0]
            )
        med = {k: statistics.median(v) for k, v in runs.items()}
        rows.append((name, med, statistics.median(at_first) / size))
    return rows


def watch_dir(directory: Path, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        total = 0
        for p in directory.glob("lvmae-fetch-*"):
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
        peak[0] = max(peak[0], total)
        time.sleep(0.1)


def bench_throughput(
    archive: Path, uri: str, work: Path, storage: StorageConfig, mode: str
) -> dict:
    import ray

    from pipelines.extract import run_extraction

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    out = {}
    decoder, _, stream = mode.partition("+")
    storage = storage.model_copy(update={"stream": stream != "nostream"})
    config = ExtractConfig(storage=storage, flush_s=5.0, decoder=decoder)
    # warm-up: worker processes start, the encoder's code is imported once
    warm = work / f"warm-{mode}"
    shutil.rmtree(warm, ignore_errors=True)
    run_extraction(str(archive), str(warm), config, progress=False, track=False)
    for name, source, dest in [
        ("local", str(archive), str(work / f"out-local-{mode}")),
        ("s3", uri, str(work / f"out-s3-{mode}")),  # the input differs, not the output
        ("local (again)", str(archive), str(work / f"out-local2-{mode}")),
    ]:
        shutil.rmtree(dest, ignore_errors=True)
        stop, peak = threading.Event(), [0]
        watcher = threading.Thread(
            target=watch_dir, args=(Path(storage.fetch_dir), stop, peak), daemon=True
        )
        watcher.start()
        summary = run_extraction(source, dest, config, progress=False, track=False)
        stop.set()
        watcher.join()
        out[name] = (summary, peak[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="work/bench_s3")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--archive-files", type=int, default=8)
    parser.add_argument("--archive-minutes", type=int, default=2)
    parser.add_argument(
        "--modes", default="decord,decord+nostream,pyav",
        help="throughput part: decoders; +nostream: storage.stream false (whole object first)",
    )  # fmt: skip
    parser.add_argument("--skip", choices=["first-segment", "throughput"])
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    clip = work / "clip.mp4"
    if not clip.exists():
        make_video(clip, [Scene("testsrc2", 30.0), Scene("mandelbrot", 30.0)],
                   width=W, height=H, fps=FPS, keyint_s=2.0)  # fmt: skip
    hour = concat(clip, work / "hour.mp4", 60)
    archive = work / f"archive_{args.archive_files}x{args.archive_minutes}min"
    shutil.rmtree(work / "warm", ignore_errors=True)
    for i in range(args.archive_files):
        concat(clip, archive / f"v{i}.mp4", args.archive_minutes)
    fetch = work / "fetch"
    fetch.mkdir(exist_ok=True)
    storage = StorageConfig(fetch_dir=str(fetch.resolve()))
    use_object_store(storage)

    with s3_server(work / "moto.log") as server:
        os.environ.update(server.env())  # this process and its Ray workers only
        s3 = server.client()
        s3.create_bucket(Bucket="bench")
        t0 = time.perf_counter()
        s3.upload_file(str(hour), "bench", "hour.mp4")
        upload_s = time.perf_counter() - t0
        for p in sorted(archive.glob("*.mp4")):
            s3.upload_file(str(p), "bench", f"archive/{p.name}")
        fs, _ = object_fs("s3://bench/hour.mp4")
        t0 = time.perf_counter()
        fs.get("s3://bench/hour.mp4", str(fetch / "whole-download-test.mp4"))
        download_s = time.perf_counter() - t0
        (fetch / "whole-download-test.mp4").unlink()

        if args.skip != "first-segment":
            first_segment_table(hour, download_s, upload_s, args.repeats, storage)
        if args.skip != "throughput":
            for mode in args.modes.split(","):
                throughput_table(archive, work, storage, mode, args)
        left = list(fetch.glob("lvmae-fetch-*"))
        print(f"\ntemporary files left after the runs: {len(left)}")


def first_segment_table(hour: Path, download_s: float, upload_s: float, repeats: int,
                        storage: StorageConfig) -> None:  # fmt: skip
    size_mb = hour.stat().st_size / 2**20
    print(f"## 1-hour video: {W}x{H} {FPS} fps, {size_mb:.1f} MiB; upload "
          f"{upload_s:.2f} s, whole download {download_s:.2f} s "
          f"({size_mb / download_s:.0f} MiB/s)\n")  # fmt: skip
    print("| mode | local (s) | s3 streamed (s) | ratio | s3 whole object first (s) "
          "| ratio | temp file at first segment |")
    print("|---|---|---|---|---|---|---|")
    for name, med, frac in bench_first_segment(hour, "s3://bench/hour.mp4", repeats, storage):
        loc, s3s, whole = med["local"], med["s3"], med["s3, whole object first"]
        print(f"| {name} | {loc:.3f} | {s3s:.3f} | {s3s / loc:.2f}x | {whole:.3f} | "
              f"{whole / loc:.2f}x | {frac:.0%} of the object |")  # fmt: skip


def throughput_table(archive: Path, work: Path, storage: StorageConfig, mode: str,
                     args: argparse.Namespace) -> None:  # fmt: skip
    res = bench_throughput(archive, "s3://bench/archive/", work, storage, mode)
    largest = max(p.stat().st_size for p in archive.glob("*.mp4"))
    print(f"\n## Throughput: {args.archive_files} videos x {args.archive_minutes} min "
          f"({W}x{H} {FPS} fps), decoder {mode} exact, tiny encoder, local Ray "
          f"({os.cpu_count()} cores)\n")  # fmt: skip
    print("| input | wall (s) | video s / wall s | ratio to local | peak temp disk |")
    print("|---|---|---|---|---|")
    base = res["local"][0].video_seconds_per_wall_second
    for name, (summary, peak) in res.items():
        rate = summary.video_seconds_per_wall_second
        print(f"| {name} | {summary.wall_s:.1f} | {rate:.1f} | {rate / base:.2f}x | "
              f"{peak / 2**20:.1f} MiB ({peak / largest:.2f} x largest video) |")  # fmt: skip


if __name__ == "__main__":
    main()
