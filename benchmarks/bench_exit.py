"""How long ``lvmae extract`` takes to exit after its last output line: Ray's shutdown and
Python's own exit, which the user waits for too.

Runs ``lvmae extract`` on the 2 × 1 min archive of ``bench_extraction.py`` (720p) in a fresh
process, ``--repeats`` times, and prints, per run, the wall time and the seconds from the last
line the command printed to its exit.

    .venv/bin/python benchmarks/bench_exit.py [--workdir work/bench] [--repeats 4]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]

from bench_extraction import archive  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=str(ROOT / "work" / "bench"))
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    videos = archive(work, 2, 1)[0].parent
    lvmae = str(Path(sys.executable).parent / "lvmae")
    out = work / "out_exit"
    tails = []
    print("| run | wall | last output line → exit |\n|---|---|---|")
    for i in range(args.repeats):
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        cmd = [lvmae, "extract", str(videos), "--out", str(out), "--no-progress"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        last = t0
        for _ in proc.stdout:
            last = time.perf_counter()
        if proc.wait() != 0:
            raise RuntimeError(f"lvmae extract failed (exit {proc.returncode})")
        end = time.perf_counter()
        tails.append(end - last)
        print(f"| {i + 1} | {end - t0:.2f} s | {end - last:.2f} s |", flush=True)
    print(f"\nmean {statistics.mean(tails):.2f} s (min {min(tails):.2f}, max {max(tails):.2f})")


if __name__ == "__main__":
    main()
