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

``nvdec`` in ``--modes`` adds the NVDEC route (``extract.decoder: nvdec``), decoded where the
encoder runs, as the encoder actor :class:`pipelines.extract.DecodeEncodeVideos` does: in the
encoder's process, ``--nvdec-sessions`` threads (one NVDEC session each; a row per count) take
whole videos and read them with :func:`lvmae.video.clips.read_clips_bounded` (``gpus=("0",)``:
:class:`lvmae.video.nvdec.NvdecReader`, frames decoded, resized and cropped on the GPU):

4. NVDEC decode alone: the threads, clips dropped (segments/s of GPU decoding);
5. the NVDEC pipeline: each thread embeds its video's batches of ``batch_size`` clips (torch
   tensors on the GPU, no host copy) on the same encoder, as the actor's concurrent calls
   do; GPU busy is the fraction of the wall time with at least one ``encode`` call running.

It first prints whether NVDEC can decode here (:func:`lvmae.video.nvdec.nvdec_blocker` for GPU
``0``, whether ``libnvcuvid`` loads, PyNvVideoCodec's version, the GPU and its compute
capability); where it cannot, it prints why and leaves the NVDEC rows out (exit 0). Under
``LVMAE_NVDEC_EMULATE=1`` the NVDEC rows run with PyAV decoding full-size frames on the host
(a smoke run of the code path on a machine without NVDEC): **emulated figures measure nothing
about NVDEC** and are marked so.

Ray is not in this loop (its place is the scheduling, measured on CPU by
``bench_extraction.py``): the decode and encode work are the project's own code.

    python benchmarks/bench_extraction_gpu.py --clip work/bench/clip720.mp4 --videos 60
    python benchmarks/bench_extraction_gpu.py --modes nvdec,exact --nvdec-sessions 1,2,4,8
    python benchmarks/bench_extraction_gpu.py --device cpu --depth 1 --videos 2 --decoders 1
    LVMAE_NVDEC_EMULATE=1 python benchmarks/bench_extraction_gpu.py --device cpu --depth 1 \
        --videos 2 --decoders 1 --modes exact,nvdec --nvdec-sessions 1,2      # smoke only

Without CUDA (and no ``--device cpu``) it says so and exits 0. Prints a Markdown table (and
a line per stage as it ends, so a run stopped by a time limit still shows what it measured).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import queue
import sys
import threading
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
    parser.add_argument(
        "--modes",
        default="exact,fast",
        help="comma-separated: exact and fast (PyAV decode processes), nvdec (NVDEC threads "
        "in the encoder's process), run in this order",
    )
    parser.add_argument(
        "--nvdec-sessions",
        default="1,2,4,8",
        help="NVDEC: videos decoded at once (threads, one NVDEC session each), a row per count",
    )
    parser.add_argument(
        "--nvdec-videos",
        type=int,
        default=None,
        help="NVDEC: copies of the clip per stage (default: --videos)",
    )
    parser.add_argument(
        "--nvdec-limit-s",
        type=float,
        default=None,
        help="NVDEC: no new video is started after this many seconds of a stage (the videos "
        "under way finish; rates count what was read). Default: every video",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--depth", type=int, default=None, help="vision layers (smoke runs)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "work" / "bench_gpu")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(args.modes) - {"exact", "fast", "nvdec"})
    if unknown or not args.modes:
        parser.error(f"--modes {args.modes}: comma-separated exact, fast, nvdec")
    try:
        args.nvdec_sessions = [int(n) for n in args.nvdec_sessions.split(",") if n]
    except ValueError:
        args.nvdec_sessions = []
    if not args.nvdec_sessions or min(args.nvdec_sessions) < 1:
        parser.error("--nvdec-sessions: comma-separated counts >= 1, e.g. 1,2,4,8")
    return args


def library(args: argparse.Namespace, count: int | None = None) -> list[Path]:
    """``count`` (default ``--videos``) hard links (copies where links fail) of one clip: the
    decoder's work per frame is what matters, and the page cache serves every copy alike."""
    clip = args.clip
    if clip is None:
        from bench_extraction import make_clip  # needs ffmpeg

        clip = make_clip(args.workdir / "clip720.mp4")
    folder = args.workdir / "library"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.videos if count is None else count):
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


def nvdec_status(device: torch.device) -> tuple[str | None, list[str]]:
    """Whether NVDEC can decode here, for the process's GPU ``0``: ``(reason, evidence)``,
    reason None when it can (:func:`lvmae.video.nvdec.nvdec_blocker`, no codec looked at;
    the clip's codec is checked as each video opens), evidence the lines to print."""
    from importlib.metadata import PackageNotFoundError, version

    from lvmae.video.nvdec import EMULATE_ENV, _has_libnvcuvid, emulated, nvdec_blocker

    try:
        package = f"PyNvVideoCodec {version('PyNvVideoCodec')}"
    except PackageNotFoundError:
        package = "PyNvVideoCodec not installed"
    lines = [
        f"NVDEC emulated ({EMULATE_ENV}): {emulated()}",
        f"{package}; libnvcuvid loads: {_has_libnvcuvid()}",
        f"torch {torch.__version__}, built with CUDA {torch.version.cuda}",
    ]
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        lines.append(f"GPU 0: {torch.cuda.get_device_name(0)}, compute capability {major}.{minor}")
    reason = nvdec_blocker(("0",), None)
    if reason is None and not emulated() and device.type != "cuda":
        reason = f"NVDEC frames stay on the GPU: --device {device} cannot take them"
    lines.append(f"nvdec_blocker(('0',), None): {reason!r}")
    return reason, lines


class BusyClock:
    """Wall seconds during which at least one of several threads is inside :meth:`running`
    (the encoder's busy time when the NVDEC sessions embed concurrently)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._since = 0.0
        self.busy_s = 0.0

    @contextlib.contextmanager
    def running(self):
        with self._lock:
            if self._active == 0:
                self._since = time.perf_counter()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self.busy_s += time.perf_counter() - self._since


def nvdec_session(
    jobs, config, *, batch_size: int, encoder, busy: BusyClock, deadline: float
) -> dict:
    """One NVDEC session (a thread): whole videos from ``jobs`` until it is empty or
    ``deadline`` (``time.perf_counter()``) has passed, each read
    with :func:`read_clips_bounded` on GPU ``0``; its clips' frames (uint8 torch
    ``[T, S, S, 3]`` on the GPU) embedded in batches of ``batch_size`` per video when
    ``encoder`` is given, else dropped. Returns segments and video seconds read.

    Raises:
        RuntimeError: a video was not read whole by NVDEC (its report's status and error).
    """
    from lvmae.video.clips import Clip, read_clips_bounded

    segments, video_s, videos = 0, 0.0, 0

    def embed(batch: list) -> None:
        frames = torch.stack(batch)  # [B, T, S, S, 3] on the GPU
        with busy.running():
            encoder.encode(frames)  # returns numpy: synchronises with the device

    while time.perf_counter() < deadline:
        try:
            path = jobs.get_nowait()
        except queue.Empty:
            break
        batch: list = []
        for item in read_clips_bounded(path, config, gpus=("0",)):
            if isinstance(item, Clip):
                segments += 1
                if encoder is not None:
                    batch.append(item.frames)
                    if len(batch) == batch_size:
                        embed(batch)
                        batch = []
                continue
            if item.status != "ok" or item.info.decoder != "nvdec":
                raise RuntimeError(f"{path}: {item.status}, {item.error or item.decoder_reason}")
            video_s += item.info.duration_s
        if batch:
            embed(batch)
        videos += 1
    return {"segments": segments, "video_s": video_s, "videos": videos}


def run_nvdec_stage(
    paths, *, sessions: int, batch_size: int, encoder=None, limit_s: float | None = None
) -> dict:
    """``paths`` read by ``sessions`` NVDEC threads in this process (embedding on
    ``encoder`` when given), timed from the moment every thread waits at the start; no
    video started after ``limit_s`` seconds."""
    from lvmae.config import ExtractConfig

    config = ExtractConfig(decoder="nvdec", encoder="languagebind-video-ft", batch_size=batch_size)
    jobs: queue.Queue = queue.Queue()
    for path in paths:
        jobs.put(path)
    start = threading.Barrier(sessions + 1)
    busy = BusyClock()
    deadline = [float("inf")]  # set when the stage starts
    results: list[dict] = []
    errors: list[BaseException] = []

    def session() -> None:
        start.wait()
        try:
            kw = {"batch_size": batch_size, "encoder": encoder, "busy": busy}
            results.append(nvdec_session(jobs, config, deadline=deadline[0], **kw))
        except BaseException as exc:  # re-raised by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=session, name=f"nvdec{i}") for i in range(sessions)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    if limit_s is not None:
        deadline[0] = t0 + limit_s
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    segments = sum(r["segments"] for r in results)
    return {
        "mode": "nvdec",
        "sessions": sessions,
        "videos": sum(r["videos"] for r in results),
        "segments": segments,
        "embedded": segments if encoder is not None else 0,
        "wall_s": wall,
        "segments_per_s": segments / wall,
        "video_s_per_s": sum(r["video_s"] for r in results) / wall,
        "encoder_busy": busy.busy_s / wall if encoder is not None else None,
    }


def nvdec_warm_up(path) -> None:
    """The first clip of ``path`` through NVDEC, untimed: the library's and the decoder's
    first-use costs (CUDA context, kernels) stay out of the first stage."""
    from lvmae.config import ExtractConfig
    from lvmae.video.clips import Clip, read_clips

    config = ExtractConfig(decoder="nvdec", encoder="languagebind-video-ft")
    items = read_clips(path, config, gpus=("0",))
    first = next(items)
    items.close()
    if not isinstance(first, Clip):
        raise RuntimeError(f"NVDEC cannot read {path}: {first.status}, {first.error}")


def _say(label: str, stage: dict) -> None:
    busy = stage["encoder_busy"]
    print(
        f"  {label}: {stage['segments']} segments in {stage['wall_s']:.1f} s, "
        f"{stage['segments_per_s']:.1f} seg/s" + (f", GPU busy {busy:.0%}" if busy else ""),
        flush=True,
    )


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
    modes, sessions = list(args.modes), args.nvdec_sessions
    nvdec = None
    if "nvdec" in modes:
        from lvmae.video.nvdec import emulated

        reason, evidence = nvdec_status(device)
        print("NVDEC here:")
        for line in evidence:
            print(f"  {line}")
        if reason is not None:
            print(f"NVDEC cannot decode here ({reason}): the nvdec rows are left out.")
            modes.remove("nvdec")
            if not modes:
                return 0
        elif emulated():
            print("EMULATED: the nvdec rows decode with PyAV on the host; they measure nothing "
                  "about NVDEC.")  # fmt: skip
        nvdec = {"reason": reason, "evidence": evidence, "emulated": emulated()}
    nvdec_videos = args.nvdec_videos or args.videos
    paths = library(args, max(args.videos, nvdec_videos if "nvdec" in modes else 0))
    arch = VIT_L14_ARCH
    if args.depth is not None:
        arch = dataclasses.replace(arch, num_hidden_layers=args.depth)
    model = build_languagebind_random(arch, seed=0)
    encoder = LanguageBindEncoder(model, name="random-vit-l14", checkpoint="random", device=device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{args.videos} copies of {paths[0].stat().st_size / 2**20:.1f}-MiB clip, "
        f"{decoders} decode processes on {os.cpu_count()} cores, batch {batch_size}, "
        f"{arch.num_hidden_layers}-layer ViT-L/14 ({encoder.precision}) on {device} ({gpu}), "
        f"torch {torch.__version__}",
        flush=True,
    )
    alone = encoder_alone(encoder, batch_size)
    print(f"  encoder alone: {alone['segments_per_s']:.1f} seg/s", flush=True)
    rows = []
    for mode in modes:
        if mode == "nvdec":
            label = "nvdec" + (" (emulated)" if nvdec["emulated"] else "")
            npaths = paths[:nvdec_videos]
            nvdec_warm_up(npaths[0])
            for n in sessions:
                kw = {"sessions": n, "batch_size": batch_size, "limit_s": args.nvdec_limit_s}
                dec = run_nvdec_stage(npaths, **kw)
                _say(f"{label} x{n} decode alone", dec)
                pipe = run_nvdec_stage(npaths, encoder=encoder, **kw)
                _say(f"{label} x{n} pipeline", pipe)
                rows.append({"mode": f"{label} ×{n}", "decode_alone": dec, "pipeline": pipe})
            continue
        dec = run_stage(paths[: args.videos], mode=mode, decoders=decoders, batch_size=batch_size)
        _say(f"{mode} decode alone", dec)
        pipe = run_stage(
            paths[: args.videos], mode=mode, decoders=decoders, batch_size=batch_size,
            encoder=encoder,
        )  # fmt: skip
        _say(f"{mode} pipeline", pipe)
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
    if nvdec is not None and nvdec["emulated"]:
        print("\n(emulated nvdec rows: PyAV on the host; nothing about NVDEC is measured)")
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
                    "nvdec": nvdec,
                    "nvdec_videos": nvdec_videos if nvdec else None,
                    "rows": rows,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
