"""Extraction at archive scale, against baselines measured in the same run.

On >= 20 min of 1280x720 H.264 with B-frames (x264 ``veryfast``, 3 B-frames, 5-s GOP, as
camera and web files are), all in one run:

1. Per CPU-second, one process, one thread (20 min of video): decode → sample → tiny encoder in
   ``decode_mode: exact`` (decord, PyAV) and ``fast``, as multiples of a plain
   ``ffmpeg -threads 1 -i X -f null -`` full decode of the same files.
2. ``lvmae extract`` end to end on 40 min (``--pipeline-files``, 5 min each; a fresh process
   and local Ray on this machine's cores), exact and fast: seconds of video per
   wall-second; efficiency = that / (cores × the best single-process rate of the same
   mode), over the whole run and over the part after the first segments file (start-up
   left out); time to the first durable output (first segments file, first videos-table
   file) as a % of the run, polled from outside; and the mean cosine between the fast and
   exact embeddings of every segment.
3. Peak memory of ``lvmae extract`` over 200 and 2,000 small videos: the largest sum of
   PSS over the run's processes (driver, raylet, workers), sampled every 0.5 s, and the
   driver's own peak RSS.
4. ``--start`` (alone): the fixed start cost of a small run (2 files x 1 min, 720p): the
   core-seconds before the first segments file that are not the first segments' decoding
   and encoding, split into Ray's own processes (each named), the driver, the task workers
   beyond that ideal (a worker's start: Ray's worker, imports, the encoder build) and idle.
   ``--tree LABEL=DIR`` (repeatable) runs the same extraction from other checkouts of the
   project (``PYTHONPATH=DIR``, this environment), taking turns run by run, so a change is
   compared with the code before it on the same machine at the same time. Beside each
   run, one new Ray worker's start, decode-stage imports and encoder build are timed alone
   (a shared machine's load inflates the workers' share up to the first file: they decode
   while they wait).

    .venv/bin/python benchmarks/bench_extraction.py [--workdir work/bench] [--quick]
        [--pipeline-files N] [--skip throughput|memory]
    .venv/bin/python benchmarks/bench_extraction.py --start [--repeats N]
        [--tree before=/path/to/old/checkout]

Prints Markdown tables for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvmae.video.ffmpeg import ffmpeg_exe  # noqa: E402
from lvmae.video.samples import Scene, make_video  # noqa: E402

W, H, FPS = 1280, 720, 25
SOURCES = ("testsrc2", "smptebars", "gradients")  # cheap to render at 720p


def make_clip(path: Path) -> Path:
    """The benchmarks' clip at ``path``, made once: 60 s of 1280x720 H.264 at 25 fps (three
    20-s scenes of ``SOURCES``), a 5-s GOP, 3 B-frames in a pyramid."""
    if not path.exists():
        scenes = [Scene(s, 20.0) for s in SOURCES]
        make_video(path, scenes, width=W, height=H, fps=FPS, keyint_s=5.0, bframes=3)
    return path


def archive(work: Path, files: int, minutes_per_file: float) -> list[Path]:
    """``files`` 720p videos of ``minutes_per_file`` each: the 60-s clip (:func:`make_clip`)
    repeated by stream copy (the decoder's work per frame is what matters)."""
    clip = make_clip(work / "clip720.mp4")
    out = []
    for i in range(files):
        path = work / f"archive_{files}x{minutes_per_file:g}min" / f"v{i}.mp4"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            listing = work / "concat.txt"
            listing.write_text(f"file '{clip.resolve()}'\n" * max(1, round(minutes_per_file)))
            tmp = path.with_suffix(".part.mp4")
            subprocess.run(
                [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "concat",
                 "-safe", "0", "-i", str(listing), "-c", "copy", str(tmp)],
                check=True,
            )  # fmt: skip
            tmp.replace(path)
        out.append(path)
    return out


def ffmpeg_decode_cpu_s(path: Path) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-threads", "1", "-i", str(path),
         "-f", "null", "-"],
        check=True,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


WORKER = r"""
import json, sys, time
import numpy as np
import torch
from lvmae.video.clips import Clip, read_clips_bounded
from lvmae.config import ExtractConfig
from lvmae.encoders.models import build_encoder
torch.set_num_threads(1)
path, decoder, mode = sys.argv[1:4]
config = ExtractConfig(decoder=decoder, decode_mode=mode)
enc = build_encoder("tiny", device="cpu")
c0 = time.process_time()
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
print(json.dumps({"segments": n, "duration_s": duration, "cpu_s": time.process_time() - c0}))
"""


def single_process(path: Path, decoder: str, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", WORKER, str(path), decoder, mode],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


RAY_ACTORS = ("ray::_StatsActor", "ray::_AutoscalingCoordinator", "ray::DashboardAgent",
              "ray::RuntimeEnvAgent")  # fmt: skip
"""Ray's own actors and agents. Task workers start as ``default_worker.py``, then take
their task's name or ``ray::IDLE``; every other process under the driver (GCS, raylet,
dashboard, monitors) is Ray's own too."""


class TreeSampler(threading.Thread):
    """Every ``every_s`` seconds over a process and its descendants: the CPU seconds each
    process has used so far (read from ``/proc``, cheap), grouped as the driver, the decode
    workers and Ray's own processes; optionally (``memory``) the peak total PSS and the
    root's own peak RSS (reading PSS costs CPU: off while throughput is measured)."""

    def __init__(self, pid: int, every_s: float = 0.5, *, memory: bool = False) -> None:
        super().__init__(daemon=True)
        self.root, self.every_s, self.memory = psutil.Process(pid), every_s, memory
        self.peak_pss = self.peak_root_rss = 0
        self.cpu: dict[int, float] = {}
        self.group: dict[int, str] = {}
        self.pname: dict[int, str] = {}
        self.done = threading.Event()

    def _group(self, p: psutil.Process) -> str:
        if p.pid == self.root.pid:
            return "driver"
        argv = p.cmdline()[:3]
        if argv and argv[0].startswith("ray::"):
            return "ray" if argv[0].startswith(RAY_ACTORS) else "workers"
        return "workers" if any(a.endswith("default_worker.py") for a in argv) else "ray"

    @staticmethod
    def _short_name(p: psutil.Process) -> str:
        """A short name: ``ray::X`` for named workers, else the program or the Python
        script (``raylet``, ``gcs_server``, ``dashboard.py``, ``default_worker.py``)."""
        argv = p.cmdline()
        if argv and argv[0].startswith("ray::"):
            return argv[0].split()[0]
        for a in argv[1:3]:
            if a.endswith(".py"):
                return Path(a).name
            if a == "-m" and len(argv) > 2:
                return argv[2]
        return Path(argv[0]).name if argv else p.name()

    def cpu_by_name(self, group: str) -> dict[str, float]:
        """CPU seconds of ``group``'s processes by :meth:`_short_name` (summed over processes)."""
        out: dict[str, float] = {}
        for pid, used in list(self.cpu.items()):
            if self.group[pid] == group:
                out[self.pname[pid]] = out.get(self.pname[pid], 0.0) + used
        return out

    def cpu_by_group(self) -> dict[str, float]:
        out = {"driver": 0.0, "workers": 0.0, "ray": 0.0}
        for pid, used in list(self.cpu.items()):
            out[self.group[pid]] += used
        return out

    def run(self) -> None:
        while not self.done.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                if self.memory:
                    self.peak_root_rss = max(self.peak_root_rss, self.root.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            for p in procs:
                try:
                    if p.cmdline():  # empty while a process exits: keep what it was
                        self.group[p.pid] = self._group(p)  # a worker's name changes
                    if p.pid not in self.group:
                        continue
                    if self.group[p.pid] == "ray" or p.pid not in self.pname:
                        self.pname[p.pid] = self._short_name(p)
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
                    if self.memory:
                        total += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak_pss = max(self.peak_pss, total)
            self.done.wait(self.every_s)


def run_extract(
    videos: Path,
    out: Path,
    *sets: str,
    sample_memory: bool = False,
    pythonpath: str | None = None,
) -> dict:
    """``lvmae extract`` in a fresh process (its own local Ray); the run's wall time, when
    its first segments and videos files appeared, and (optionally) its memory.
    ``pythonpath``: run another checkout of the project with this environment."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "lvmae"), "extract", str(videos), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    t0, c0 = time.perf_counter(), time.process_time()
    proc = subprocess.Popen(
        [*cmd, "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=pythonpath,  # Ray's workers import from the driver's directory too
    )  # fmt: skip
    sampler = TreeSampler(proc.pid, memory=sample_memory)
    sampler.start()
    first: dict[str, float] = {}
    first_file: dict[str, Path] = {}
    cpu_at_first: dict[str, float] = {}
    ray_at_first: dict[str, float] = {}
    while proc.poll() is None:
        for sub in ("segments", "videos"):
            found = sorted((out / sub).glob("*.parquet")) if sub not in first else []
            if found:
                first[sub], first_file[sub] = time.perf_counter() - t0, found[0]
                if sub == "segments":
                    cpu_at_first = sampler.cpu_by_group()
                    ray_at_first = sampler.cpu_by_name("ray")
        time.sleep(0.05)
    wall, polling = time.perf_counter() - t0, time.process_time() - c0
    _, stderr = proc.communicate()
    sampler.done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"lvmae extract failed:\n{stderr[-4000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    result = {
        "wall_s": wall, "summary": manifest["summary"], "first": first,
        "cpu": sampler.cpu_by_group(), "cpu_at_first": cpu_at_first, "polling_cpu_s": polling,
        "ray_at_first": ray_at_first,
    }  # fmt: skip
    if "segments" in first_file:
        result["first_rows"] = pq.read_metadata(first_file["segments"]).num_rows
    if sample_memory:
        result["peak_pss_mib"] = sampler.peak_pss / 2**20
        result["driver_rss_mib"] = sampler.peak_root_rss / 2**20
    return result


def embeddings(out: Path) -> np.ndarray:
    """A run's embeddings ``[segments, D]`` in (video, segment) order, whatever order its
    files were written in, so two runs compare row by row."""
    from lvmae.storage import read_segments

    table = read_segments(str(out), columns=["video_id", "segment_index", "embedding"])
    table = table.sort_by([("video_id", "ascending"), ("segment_index", "ascending")])
    return np.stack(table["embedding"].to_numpy(zero_copy_only=False))


def throughput(files: list[Path], pipeline_input: Path, work: Path) -> None:
    video_s = 0.0
    base_cpu = 0.0
    for p in files:
        base_cpu += ffmpeg_decode_cpu_s(p)
    rows, best = [], {}
    for decoder, mode in (("decord", "exact"), ("pyav", "exact"), ("pyav", "fast")):
        res = [single_process(p, decoder, mode) for p in files]
        video_s = sum(r["duration_s"] for r in res)
        rate = video_s / sum(r["cpu_s"] for r in res)
        if rate > best.get(mode, (0.0, ""))[0]:
            best[mode] = (rate, decoder)
        rows.append((f"decode+sample+tiny encoder, {mode}, {decoder}, 1 thread", rate))
    base_rate = video_s / base_cpu
    print(f"\n## Per CPU-second ({len(files)} files, {video_s / 60:.0f} min of {W}x{H} "
          f"@ {FPS} fps H.264 with B-frames)\n")  # fmt: skip
    print("| what | seconds of video per CPU-second | × ffmpeg full decode |")
    print("|---|---|---|")
    print(f"| `ffmpeg -threads 1 -f null` full decode (baseline) | {base_rate:.1f} | 1.00 |")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {rate / base_rate:.2f} |")
    pipeline(files[0], pipeline_input, work, video_s / len(files), best)


def pipeline(probe: Path, pipeline_input: Path, work: Path, file_s: float, best: dict) -> None:
    """``lvmae extract`` end to end in exact and fast mode. Each run's baseline is the best
    single-process decoder of its mode timed on one file just before and just after it
    (the machine's speed drifts by tens of % over minutes: a baseline taken minutes
    earlier would mix that drift into the efficiency)."""
    cores = os.cpu_count() or 1
    minutes = sum(1 for _ in pipeline_input.glob("*.mp4")) * file_s / 60
    print(f"\n## `lvmae extract` end to end ({minutes:.0f} min of the same video, local Ray, "
          f"{cores} cores)\n")  # fmt: skip
    print("| mode | video-s per wall-s | baseline (before / after) | efficiency | "
          "after the first file | first segments file | first videos file | wall |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    outs, spent = {}, []
    for mode in ("exact", "fast"):
        decoder = best[mode][1]
        before = single_process(probe, decoder, mode)
        outs[mode] = work / f"out_{mode}"
        r = run_extract(pipeline_input, outs[mode], f"extract.decode_mode={mode}")
        after = single_process(probe, decoder, mode)
        rates = [x["duration_s"] / x["cpu_s"] for x in (before, after)]
        baseline = sum(rates) / 2
        video, wall = r["summary"]["video_seconds"], r["wall_s"]
        rate = video / wall
        seg, vid = (r["first"].get(k, float("nan")) for k in ("segments", "videos"))
        # the same ratio over the part of the run after the first segments file (start-up
        # excluded, the tail included): the video in that file is left out
        n_rows = r["summary"]["segments_written"]
        later = video * (1 - r.get("first_rows", n_rows) / n_rows)
        eff_after = later / (wall - seg) / (cores * baseline)
        print(f"| {mode} | {rate:.1f} | {rates[0]:.1f} / {rates[1]:.1f} "
              f"| {rate / (cores * baseline):.2f} | {eff_after:.2f} "
              f"| {seg:.1f} s ({100 * seg / wall:.0f} %)"
              f" | {vid:.1f} s ({100 * vid / wall:.0f} %) | {wall:.1f} s |")  # fmt: skip
        spent.append((mode, r, (video - later) / baseline, later / baseline, seg))
    a, b = embeddings(outs["exact"]), embeddings(outs["fast"])
    cos = (a * b).sum(axis=1)
    print(f"\nfast vs exact: {len(a)} vs {len(b)} segments; cosine mean {cos.mean():.4f}, "
          f"min {cos.min():.4f}")  # fmt: skip
    print(f"\nWhere the {cores} cores' time went (core-seconds, CPU of the process tree read "
          "from /proc every 0.5 s; idle = cores × wall − all CPU, which includes this benchmark's "
          "own polling, shown apart for the whole run). Ideal = the video's "
          "seconds ÷ the run's baseline: the decode workers' CPU at the single-process rate, "
          "nothing else.\n")  # fmt: skip
    print("| mode | part | cores × wall | ideal | task workers | driver | Ray's own "
          "processes | idle |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for mode, r, ideal_early, ideal_later, seg in spent:
        whole = r["cpu"]
        early = r["cpu_at_first"] or dict.fromkeys(whole, 0.0)
        parts = (("up to the first file", early, seg, ideal_early),
                 ("after it", {k: whole[k] - early.get(k, 0.0) for k in whole},
                  r["wall_s"] - seg, ideal_later))  # fmt: skip
        for part, cpu, span, ideal in parts:
            idle = cores * span - sum(cpu.values())
            print(f"| {mode} | {part} | {cores * span:.0f} | {ideal:.0f} | {cpu['workers']:.0f} "
                  f"| {cpu['driver']:.0f} | {cpu['ray']:.0f} | {idle:.0f} |")  # fmt: skip
        print(f"| {mode} | the benchmark's polling, whole run | | | | | "
              f"| {r['polling_cpu_s']:.1f} of the idle |")  # fmt: skip


def memory(work: Path, counts: tuple[int, ...]) -> None:
    one = work / "small.mp4"
    if not one.exists():
        make_video(one, [Scene("testsrc2", 3.0)], width=64, height=48, fps=10)
    print("\n## Peak memory of `lvmae extract` by archive size (3-s 64x48 videos)\n")
    print("| videos | peak PSS, all processes | driver peak RSS | wall |")
    print("|---|---|---|---|")
    for n in counts:
        d = work / f"many_{n}"
        if not d.exists() or len(list(d.glob("*.mp4"))) != n:
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            for i in range(n):
                os.link(one, d / f"v{i:05d}.mp4")
        r = run_extract(d, work / f"out_many_{n}", sample_memory=True)
        assert r["summary"]["videos_ok"] == n, r["summary"]
        print(f"| {n} | {r['peak_pss_mib']:.0f} MiB | {r['driver_rss_mib']:.0f} MiB "
              f"| {r['wall_s']:.0f} s |")  # fmt: skip


WORKER_START = r"""
import json, resource
import ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

@ray.remote
def start():
    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    import sys
    c0 = cpu()  # the worker process so far: Python, Ray's worker, this task
    import pipelines.extract  # noqa: F401  (what a decode task imports)
    c1 = cpu()
    from lvmae.encoders.models import build_encoder
    build_encoder("tiny", device="cpu")  # as pipelines.extract builds it in a decode task
    c2 = cpu()
    mods = sorted(m for m in ("sklearn", "scipy", "sympy", "peft") if m in sys.modules)
    return {"worker": c0, "stage": c1 - c0, "encoder": c2 - c1, "modules": mods}

print(json.dumps(ray.get(start.remote())))
"""


def worker_start(pythonpath: str | None) -> dict:
    """A new Ray worker's CPU seconds: its start (``worker``), importing the decode stage
    (``stage``), building the ``tiny`` encoder (``encoder``), in a fresh local Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    res = subprocess.run(
        [sys.executable, "-c", WORKER_START], check=True, capture_output=True, text=True,
        env=env, cwd="/",
    )  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


def start_cost(work: Path, trees: dict[str, str | None], repeats: int) -> None:
    """The fixed start cost of ``lvmae extract`` on a small archive (default settings: exact
    mode, the default decoder, the ``tiny`` encoder in the decode tasks), for each checkout in
    ``trees`` (label → PYTHONPATH; None: this one), the checkouts taking turns. The ideal
    uses this checkout's default decoder's single-process rate (decord before 2026-12-07,
    PyAV since)."""
    from lvmae.config import ExtractConfig

    files = archive(work, 2, 1)
    cores = os.cpu_count() or 1
    base = single_process(files[0], ExtractConfig().decoder, "exact")  # the default decoder
    rate = base["duration_s"] / base["cpu_s"]  # s of video per CPU-s, one process
    seg_s = 5.0
    rows, ray_names, starts = [], {}, {}
    for i in range(repeats):
        for label, path in trees.items():
            r = run_extract(files[0].parent, work / "out_start", pythonpath=path)
            seg = r["first"].get("segments", float("nan"))
            ideal = r.get("first_rows", 0) * seg_s / rate
            cpu = r["cpu_at_first"]
            total = cores * seg
            fixed = total - ideal
            rows.append(
                (
                    label,
                    i + 1,
                    seg,
                    total,
                    ideal,
                    fixed,
                    cpu["driver"],
                    cpu["ray"],
                    cpu["workers"] - ideal,
                    total - sum(cpu.values()),
                )
            )
            ray_names.setdefault(label, []).append(r["ray_at_first"])
            starts.setdefault(label, []).append(worker_start(path))
    print(
        f"\n## Fixed start cost of `lvmae extract` (2 x 1 min of {W}x{H}, {cores} cores; "
        f"single-process rate {rate:.1f} s of video per CPU-s)\n"
    )
    print(
        "Core-seconds up to the first segments file. Fixed = cores x wall - ideal (the "
        "first file's segments decoded and embedded at the single-process rate); task "
        "workers = their CPU beyond that ideal (Ray's worker start, imports, encoder build, "
        "first-batch overheads).\n"
    )
    print(
        "| code | run | first segments file | cores x wall | ideal | **fixed** | driver "
        "| Ray's own processes | task workers beyond ideal | idle |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, i, seg, total, ideal, fixed, drv, ray_, wk, idle in rows:
        print(
            f"| {label} | {i} | {seg:.1f} s | {total:.1f} | {ideal:.1f} | **{fixed:.1f}** "
            f"| {drv:.1f} | {ray_:.1f} | {wk:.1f} | {idle:.1f} |"
        )
    print("\n| code | mean fixed | driver | Ray's own | task workers | idle |")
    print("|---|---|---|---|---|---|")
    for label in trees:
        mine = [r for r in rows if r[0] == label]
        m = [float(np.mean([r[k] for r in mine])) for k in (5, 6, 7, 8, 9)]
        print(f"| {label} | **{m[0]:.1f}** | {m[1]:.1f} | {m[2]:.1f} | {m[3]:.1f} | {m[4]:.1f} |")
    print(
        "\nOne new Ray worker, CPU-s (a fresh local Ray per run; mean over runs): the "
        "worker's start, importing the decode stage, building the tiny encoder; and which "
        "of sklearn, scipy, sympy, peft it imported.\n"
    )
    print("| code | worker start | decode stage imports | encoder build | total | modules |")
    print("|---|---|---|---|---|---|")
    for label, runs in starts.items():
        m = {k: float(np.mean([r[k] for r in runs])) for k in ("worker", "stage", "encoder")}
        print(
            f"| {label} | {m['worker']:.2f} | {m['stage']:.2f} | {m['encoder']:.2f} "
            f"| {sum(m.values()):.2f} | {', '.join(runs[-1]['modules']) or '-'} |"
        )
    print("\nRay's own processes up to the first file, mean CPU-s by process name:\n")
    for label, runs in ray_names.items():
        names = sorted({n for r in runs for n in r})
        means = {n: float(np.mean([r.get(n, 0.0) for r in runs])) for n in names}
        parts = ", ".join(
            f"{n} {v:.1f}" for n, v in sorted(means.items(), key=lambda x: -x[1]) if v >= 0.05
        )
        print(f"- {label}: {parts}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=str(ROOT / "work" / "bench"))
    ap.add_argument("--quick", action="store_true", help="2 min of video, 20/200 videos")
    ap.add_argument("--skip", choices=["throughput", "memory"], action="append", default=[])
    ap.add_argument(
        "--pipeline-files", type=int, default=8,
        help="5-min files for the end-to-end runs (8 = 40 min; the fixed start-up of a run "
        "weighs less on a longer archive)",
    )  # fmt: skip
    ap.add_argument("--start", action="store_true", help="the fixed start cost alone")
    ap.add_argument("--repeats", type=int, default=3, help="--start: runs per checkout")
    ap.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="--start: also run the checkout in DIR (PYTHONPATH), labelled LABEL",
    )
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.start:
        trees: dict[str, str | None] = dict(t.split("=", 1) for t in args.tree)
        start_cost(work, {**trees, "this": None}, args.repeats)
        return
    if "throughput" not in args.skip:
        # per CPU-second on 20 min (4 files); the pipeline on --pipeline-files files
        files = archive(work, 2, 1) if args.quick else archive(work, args.pipeline_files, 5)
        per_cpu = files[:1] if args.quick else files[:4]
        throughput(per_cpu, files[0].parent, work)
    if "memory" not in args.skip:
        memory(work, (20, 200) if args.quick else (200, 2000))


if __name__ == "__main__":
    main()
