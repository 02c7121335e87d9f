"""``lvmae serve`` search latency on 100,000 segments with the approximate (HNSW) index, through
a real HTTP client (issue 29's goal: p95 <= 50 ms; no error at 50 concurrent searches).

An extraction output of ``--segments`` segments (``--videos`` videos, 64-d unit vectors drawn
around a few hundred centres so neighbourhoods exist; the manifest names the offline ``tiny``
encoder, whose text tower encodes the queries) is written once under ``--workdir``. Then
``lvmae serve OUT --approximate --port 0`` runs as its own process (the index is built on its
first start and reloaded afterwards), and httpx measures, per request, end to end:

1. one client, one search at a time: the search page (HTML with k=20 result cards, what a
   person gets) and ``/api/search`` (JSON), each query new text (no cache can help);
2. 50 clients at once (asyncio, one connection each), ``--rounds`` searches each: errors,
   latency percentiles and searches per second;
3. "more like this" (search by a segment's embedding), one at a time.

    .venv/bin/python benchmarks/bench_serve.py [--workdir work/bench] [--segments 100000]

Prints Markdown tables for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvmae.storage import VIDEO_SCHEMA, segment_schema, write_manifest, write_table_atomic  # noqa: E402
from pipelines.serve.archive import video_key  # noqa: E402

DIM = 64  # the tiny encoder's width
_TEXT = (
    "red blue green fractal zoom bars colour noise gradient life cells test pattern moving slow "
    "fast bright dark stripes circles scene cut cooking street night crowd water sky tree car "
    "dog person talking walking"
)
WORDS = tuple(_TEXT.split(" "))


def make_output(out: Path, segments: int, videos: int, seed: int = 0) -> None:
    """A valid extraction output (manifest, segments, videos tables) of random embeddings."""
    if (out / "manifest.json").is_file():
        return
    rng = np.random.default_rng(seed)
    per = segments // videos
    centres = rng.standard_normal((300, DIM)).astype(np.float32)
    emb = centres[rng.integers(0, 300, segments)] + 0.5 * rng.standard_normal((segments, DIM))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    vids = [f"archive/video_{i:05d}.mp4" for i in range(videos) for _ in range(per)]
    idx = np.tile(np.arange(per, dtype=np.int32), videos)
    start = idx.astype(np.float64) * 5.0
    step = 50_000
    for lo in range(0, segments, step):
        hi = min(lo + step, segments)
        table = pa.table(
            {
                "video_id": vids[lo:hi],
                "segment_index": idx[lo:hi],
                "start_s": start[lo:hi],
                "end_s": start[lo:hi] + 5.0,
                "frame_indices": [[0]] * (hi - lo),
                "frame_times_s": [[s + 2.5] for s in start[lo:hi]],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb[lo:hi].ravel()), DIM),
                "encoder": ["tiny"] * (hi - lo),
                "config_id": ["bench"] * (hi - lo),
            },
            schema=segment_schema(DIM),
        )
        write_table_atomic(table, str(out), "segments")
    rows = [{"video_id": f"archive/video_{i:05d}.mp4", "uri": f"/nonexistent/video_{i:05d}.mp4",
             "status": "ok", "segments_planned": per, "segments_written": per,
             "duration_s": per * 5.0, "config_id": "bench"} for i in range(videos)]  # fmt: skip
    write_table_atomic(pa.Table.from_pylist(rows, schema=VIDEO_SCHEMA), str(out), "videos")
    write_manifest(str(out), {
        "kind": "lvmae.extract", "config_id": "bench", "status": "done",
        "config": {"encoder": "tiny", "encoder_seed": 0, "segment_s": 5.0},
        "encoder": {"name": "tiny", "checkpoint": "tiny-seed0", "embedding_dim": DIM},
    })  # fmt: skip


def start_server(out: Path) -> tuple[subprocess.Popen, str, float]:
    """``lvmae serve OUT --approximate --port 0``; its URL and seconds until it can search."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "lvmae"), "serve", str(out), "--approximate", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    line = proc.stdout.readline()
    match = re.search(r"http://[0-9.]+:\d+", line)
    if not match:
        proc.kill()
        raise SystemExit(f"lvmae serve did not start: {line}{proc.stdout.read()}")
    url = match.group(0)
    while True:
        status = httpx.get(f"{url}/api/status", timeout=10).json()
        if status["ready"] or status["error"]:
            break
        time.sleep(0.2)
    if status["error"]:
        proc.kill()
        raise SystemExit(f"loading failed: {status['error']}")
    return proc, url, time.perf_counter() - t0


def query(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + f" {rng.random():.6f}"


def pct(ms: list[float]) -> str:
    a = np.asarray(ms)
    return " | ".join(f"{np.percentile(a, p):.1f}" for p in (50, 95, 99))


def sequential(url: str, n: int, path: str, rng: random.Random, like: bool = False) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(n + 5):
            if like:
                key = video_key(f"archive/video_{rng.randrange(5000):05d}.mp4")
                params = {"like": f"{key}:{rng.randrange(20)}", "k": 20}
            else:
                params = {"q": query(rng), "k": 20}
            t0 = time.perf_counter()
            r = http.get(path, params=params)
            ms = (time.perf_counter() - t0) * 1e3
            r.raise_for_status()
            if i >= 5:  # the first few warm the connection and the server's caches
                out.append(ms)
    return out


async def concurrent(url: str, clients: int, rounds: int, seed: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []

    async def one(c: int) -> None:
        rng = random.Random(seed * 1000 + c)
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for _ in range(rounds):
                t0 = time.perf_counter()
                try:
                    r = await http.get("/", params={"q": query(rng), "k": 20})
                    if r.status_code != 200 or r.text.count('class="card result"') != 20:
                        errors.append(f"HTTP {r.status_code}")
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)
                latencies.append((time.perf_counter() - t0) * 1e3)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="work/bench")
    parser.add_argument("--segments", type=int, default=100_000)
    parser.add_argument("--videos", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=300, help="sequential searches")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10, help="searches per client")
    args = parser.parse_args()
    out = Path(args.workdir) / f"serve_{args.segments}"
    t0 = time.perf_counter()
    make_output(out, args.segments, args.videos)
    print(f"cores: {os.cpu_count()}, load before: {os.getloadavg()}; output ready in "
          f"{time.perf_counter() - t0:.1f} s: {out}")  # fmt: skip
    proc, url, ready_s = start_server(out)
    try:
        status = json.dumps(httpx.get(url + "/api/status").json())
        print(f"server ready (segments read, index loaded or built, text tower built) in "
              f"{ready_s:.1f} s; {status}\n")  # fmt: skip
        rng = random.Random(0)
        page = sequential(url, args.requests, "/", rng)
        api = sequential(url, args.requests, "/api/search", rng)
        like = sequential(url, args.requests, "/api/search", rng, like=True)
        print("| one search at a time (k = 20) | requests | p50 ms | p95 ms | p99 ms |")
        print("|---|---|---|---|---|")
        print(f"| search page (HTML), text query | {len(page)} | {pct(page)} |")
        print(f"| /api/search (JSON), text query | {len(api)} | {pct(api)} |")
        print(f"| /api/search, more like this | {len(like)} | {pct(like)} |")
        res = asyncio.run(concurrent(url, args.clients, args.rounds, seed=1))
        n = len(res["latencies"])
        print(f"\n| {args.clients} clients at once, search page | requests | errors | p50 ms | "
              "p95 ms | p99 ms | searches/s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        print(f"| text queries, k = 20 | {n} | {len(res['errors'])} | {pct(res['latencies'])} | "
              f"{n / res['wall']:.0f} |")  # fmt: skip
        if res["errors"]:
            print("errors:", sorted(set(res["errors"])))
        print(f"\nload after: {os.getloadavg()}")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
