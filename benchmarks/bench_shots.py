"""Shot detectors side by side: recall and precision of known hard cuts, and cost per
video-minute, on generated long videos; all detectors in one run.

1. A cut set: long videos made of generated scenes (``lvmae.video.samples.PALETTE`` sources, 2–8 s
   each) joined by ffmpeg concat, so every scene change is a hard cut at a known time. A
   scene comes from another source than the one before, except that half the time a
   :data:`SAME_SOURCE` scene is followed by another variation of its own source (a cut
   between similar colours, the hard case). The scenes themselves hold no cut.
2. Every detector (``transnetv2``, ``adaptive``) on every video, and the colour-histogram
   detector that ``segmenter: shots`` used before (8 bins per channel, half the L1 distance
   of consecutive frames > 0.3, at 4 frames/s; kept here only as the baseline that decided
   its removal): a detected cut matches a known one within ±0.5 s (one to one); recall
   and precision over the set.
3. Cost: wall seconds per video-minute, and ms per frame, in this process with torch
   limited to 1 and to 2 threads (TransNetV2; the others use no torch), against a
   decode-only pass over the same frames (PyAV, every frame scaled to 48x27). On CUDA too
   when this machine has a GPU.
4. ``--memory``: peak RSS (VmHWM) of a fresh process detecting shots in a 3-minute and a
   60-minute video (at ``--memory-fps`` frames per second, so TransNetV2 finishes in
   minutes on CPU).

    .venv/bin/python benchmarks/bench_shots.py [--workdir work/bench_shots] [--videos 3]
        [--minutes 2] [--memory]

Prints Markdown tables to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvmae.video.samples import PALETTE, Scene, make_video  # noqa: E402
from lvmae.video.shots import (  # noqa: E402
    detect_shots,
    detector_versions,
    load_transnetv2,
    stream_frames,
    transnetv2_probabilities,
)

DETECTORS = ("transnetv2", "adaptive")
TOLERANCE_S = 0.5


SAME_SOURCE = ("mandelbrot", "life", "gradients", "perlin", "sierpinski")
"""Seeded sources whose variations differ in content but share a palette: a cut between two
of them is the hard case for colour-based detectors (as two shots of one real scene).
Not ``ocean`` or ``cellauto``: their variations are statistically identical noise, so a cut
between two of them cannot be seen."""


def cut_set_scenes(
    seconds: float,
    fps: int,
    rng: np.random.Generator,
    *,
    lo: float = 2.0,
    hi: float = 8.0,
    same_share: float = 0.0,
) -> tuple[list[Scene], list[float], list[bool]]:
    """Scenes of ``lo``–``hi`` s (whole frames) until ``seconds``; each from another source
    than the one before, except that with probability ``same_share`` a :data:`SAME_SOURCE`
    scene is followed by another variation of its source. Returns the scenes, the cut
    times (seconds) and whether each cut joins two variations of one source."""
    names = sorted(PALETTE)
    scenes: list[Scene] = []
    total, previous = 0, None
    while total < seconds * fps:
        if previous in SAME_SOURCE and rng.random() < same_share:
            source = previous
        else:
            source = str(rng.choice([n for n in names if n != previous]))
        frames = int(rng.integers(round(lo * fps), round(hi * fps) + 1))
        scenes.append(Scene(source, frames / fps))
        total += frames
        previous = source
    bounds = np.cumsum([round(s.seconds * fps) for s in scenes])[:-1]
    same = [a.source == b.source for a, b in itertools.pairwise(scenes)]
    return scenes, [float(b) / fps for b in bounds], same


def make_cut_set(
    work: Path, *, videos: int, minutes: float, width: int, height: int, fps: int, seed: int = 0
) -> list[tuple[Path, list[float], list[bool]]]:
    out = []
    for i in range(videos):
        rng = np.random.default_rng([seed, i])
        scenes, cuts, same = cut_set_scenes(minutes * 60, fps, rng, same_share=0.5)
        plan = hashlib.sha1(repr(scenes).encode()).hexdigest()[:8]  # the name keys the cache
        path = work / f"cuts_{i}_{width}x{height}_{fps}fps_{minutes:g}min_{plan}.mp4"
        if not path.exists():  # make_video writes atomically: an existing file is complete
            make_video(path, scenes, width=width, height=height, fps=fps, seed=seed + i)
        out.append((path, cuts, same))
    return out


def match_cuts(found: list[float], truth: list[float], tol: float = TOLERANCE_S) -> int:
    """True positives: detected cuts matched one to one to known cuts within ``tol``."""
    used = np.zeros(len(truth), dtype=bool)
    tp = 0
    for c in sorted(found):
        dist = np.where(used, np.inf, np.abs(np.asarray(truth) - c))
        if len(dist) and dist.min() <= tol:
            used[int(dist.argmin())] = True
            tp += 1
    return tp


def histogram_baseline(path: Path, threshold: float = 0.3, fps: float = 4.0) -> list[float]:
    """The removed detector: a frame (4 per second) whose 8-bin-per-channel colour histogram
    is more than ``threshold`` (half the L1 distance, averaged over channels) from the
    previous one's starts a shot."""
    cuts, previous, next_t = [], None, 0.0
    for times, frames in stream_frames(path):
        for t, frame in zip(times.tolist(), frames, strict=True):
            if t < next_t - 1e-6:
                continue
            next_t = (np.floor(t * fps + 1e-6) + 1) / fps
            q = frame.reshape(-1, 3).astype(np.int64) * 8 // 256
            hist = np.stack([np.bincount(q[:, c], minlength=8) for c in range(3)]) / len(q)
            if previous is not None and 0.5 * np.abs(hist - previous).sum() / 3 > threshold:
                cuts.append(t)
            previous = hist
    return cuts


def decode_only(path: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = sum(len(t) for t, _ in stream_frames(path))
    return n, time.perf_counter() - t0


def run_detector(cut_set, detector: str, device: str | None, videos: int | None = None) -> dict:
    """Recall (overall and on same-source cuts), precision and wall time over the set;
    ``frames`` counts the frames analysed (the histogram detector skips most)."""
    tp = tp_same = found = truth = truth_same = frames = 0
    wall = cpu = duration = 0.0
    for path, cuts, same in cut_set[:videos]:
        c0, w0 = time.process_time(), time.perf_counter()
        if detector == "histogram":
            cuts_found, frames_done = histogram_baseline(path), 0
        else:
            res = detect_shots(path, detector=detector, fps=25.0, device=device)
            cuts_found, frames_done = res.cuts_s, res.frames
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        tp += match_cuts(cuts_found, cuts)
        same_cuts = [c for c, s in zip(cuts, same, strict=True) if s]
        tp_same += match_cuts(cuts_found, same_cuts)
        found += len(cuts_found)
        truth += len(cuts)
        truth_same += len(same_cuts)
        frames += frames_done
        duration += cuts_duration(path)
    return {
        "recall": tp / max(truth, 1),
        "recall_same": tp_same / max(truth_same, 1),
        "precision": tp / max(found, 1),
        "tp": tp,
        "tp_same": tp_same,
        "found": found,
        "truth": truth,
        "truth_same": truth_same,
        "frames": frames,
        "wall_s": wall,
        "cpu_s": cpu,
        "minutes": duration / 60,
    }


def cuts_duration(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        return float(c.duration) / 1e6


MEMORY_WORKER = r"""
import json, sys
from lvmae.video.shots import detect_shots
import torch; torch.set_num_threads(2)
res = detect_shots(sys.argv[1], detector=sys.argv[2], fps=float(sys.argv[3]), device="cpu")
# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"frames": res.frames, "cuts": len(res.cuts_s), "wall_s": res.seconds,
                  "max_rss_mib": hwm / 1024}))
"""


def memory_run(path: Path, detector: str, fps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_WORKER, str(path), detector, str(fps)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=str(ROOT / "work" / "bench_shots"))
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=180)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--threads", default="1,2", help="torch thread counts to time TransNetV2")
    ap.add_argument("--memory", action="store_true", help="also 3- vs 60-minute peak RSS")
    ap.add_argument("--memory-fps", type=int, default=2)
    args = ap.parse_args()

    import torch

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"# generating the cut set under {work} (cached) ...", flush=True)
    sizes = ("videos", "minutes", "width", "height", "fps")
    cut_set = make_cut_set(work, **{name: getattr(args, name) for name in sizes})
    print(f"# versions: {json.dumps(detector_versions())}, torch {torch.__version__}")

    video_frames: list[int] = []
    wall = cpu = 0.0
    for path, _, _ in cut_set:
        c0 = time.process_time()
        n, w = decode_only(path)
        video_frames.append(n)
        wall, cpu = wall + w, cpu + time.process_time() - c0
    minutes = sum(cuts_duration(p) for p, _, _ in cut_set) / 60
    rows = [("decode only (PyAV, 48x27)", "–", "–", "–", wall, cpu, sum(video_frames), minutes)]
    threads = [int(t) for t in args.threads.split(",")]
    runs = [("transnetv2", "cpu", t, 1 if t != threads[-1] else None) for t in threads]
    runs += [("adaptive", None, 1, None), ("histogram", None, 1, None)]
    if torch.cuda.is_available():
        runs.append(("transnetv2", "cuda", 1, None))
    for detector, device, n_threads, videos in runs:
        torch.set_num_threads(n_threads)
        if detector == "transnetv2":  # warm-up: load the model, first call
            model = load_transnetv2(device)
            transnetv2_probabilities(model, np.zeros((1, 100, 27, 48, 3), np.uint8))
        r = run_detector(cut_set, detector, device, videos)
        where = "cpu" if device is None else f"{device}, {n_threads} thread(s)"
        if detector == "histogram":
            where = "cpu; removed, baseline"
        if videos is None:
            cells = (
                f"{r['recall']:.3f} ({r['tp']}/{r['truth']})",
                f"{r['recall_same']:.3f} ({r['tp_same']}/{r['truth_same']})",
                f"{r['precision']:.3f} ({r['tp']}/{r['found']})",
            )
        else:
            cells = ("timing only", "", "")
        n_frames = sum(video_frames[:videos])
        rows.append((f"`{detector}` ({where})", *cells, r["wall_s"], r["cpu_s"], n_frames,
                     r["minutes"]))  # fmt: skip
        print(f"# {detector} {where}: {json.dumps(r)}", flush=True)

    n_cuts = sum(len(c) for _, c, _ in cut_set)
    n_same = sum(sum(s) for _, _, s in cut_set)
    print(
        f"\n## Cut set: {len(cut_set)} videos × {args.minutes:g} min, {args.width}x{args.height}"
        f" @ {args.fps} fps, {n_cuts} known cuts ({n_same} between variations of one source),"
        f" matched within ±{TOLERANCE_S} s\n"
    )
    print(
        "| detector | recall | recall, same-source cuts | precision | wall ms / video frame "
        "| wall s / video-min | CPU s / video-min |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, rec, rec_same, prec, w, c, n, mins in rows:
        print(
            f"| {name} | {rec} | {rec_same} | {prec} | {1000 * w / n:.2f} | {w / mins:.2f} "
            f"| {c / mins:.2f} |"
        )

    if args.memory:
        fps = args.memory_fps
        size = f"{args.width}x{args.height}"
        print(f"\n## Peak memory (VmHWM of a fresh process), {size} @ {fps} fps\n")
        print("| detector | 3 min | 60 min | 60 / 3 |")
        print("|---|---|---|---|")
        rng = np.random.default_rng(7)
        vids = []
        for minutes in (3, 60):
            scenes, _, _ = cut_set_scenes(minutes * 60, fps, rng, lo=20, hi=40)
            path = work / f"mem_{minutes}min_{args.width}x{args.height}_{fps}fps.mp4"
            if not path.exists():
                make_video(path, scenes, width=args.width, height=args.height, fps=fps)
            vids.append(path)
        for detector in DETECTORS:
            rss = [memory_run(v, detector, fps) for v in vids]
            print(
                f"| {detector} | {rss[0]['max_rss_mib']:.0f} MiB | {rss[1]['max_rss_mib']:.0f} MiB"
                f" | {rss[1]['max_rss_mib'] / rss[0]['max_rss_mib']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
