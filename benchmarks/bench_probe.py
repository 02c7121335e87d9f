"""Probe-stage wall time and driver peak memory on 2,000 videos × 64 tokens.

The probe stage (:func:`pipelines.probe.run_probe`) on a synthetic segments table (2,000
videos, 64 segment embeddings each, 64-d; 4 classes defined by token order, 60/20/20
split) and a tiny LV-MAE checkpoint (input 64-d, 64 tokens), on local Ray: linear and
attentive probes plus the mean-pool baseline. Measured in a fresh driver process:

- wall seconds of ``run_probe`` (feature computation included; the inputs are made by a
  separate ``--prepare`` step);
- the driver's peak RSS (``ru_maxrss``) and its growth over the RSS right before the
  call — the feature tables in the driver, or not.

Run ``--prepare DIR`` once, then ``--run DIR`` with the checkout to measure on
``PYTHONPATH`` (e.g. an export of the previous commit for "before"): ``--run`` uses only
``ProbeSection`` fields every version has unless ``--seeds`` is given.

    .venv/bin/python benchmarks/bench_probe.py --prepare work/bench_probe
    .venv/bin/python benchmarks/bench_probe.py --run work/bench_probe --seeds 1
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/bench_probe.py --run work/bench_probe

Prints one JSON line per run. The GPU row of RESULTS.md needs an NVIDIA GPU and the
paper-size config (``--paper`` on both steps: 1024-d inputs, the paper preset, the paper's
probe recipes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if "PYTHONPATH" not in os.environ:  # measuring this checkout
    sys.path.insert(0, str(ROOT))

VIDEOS, TOKENS, DIM, CLASSES = 2000, 64, 64, 4


def prepare(root: Path, *, dim: int, preset: str) -> None:
    """Segments table, labels file and an untrained checkpoint under ``root``."""
    import numpy as np
    import pyarrow as pa
    import torch

    from lvmae.mae.checkpoints import save_checkpoint
    from lvmae.mae.model import LVMAE, model_config
    from lvmae.storage import segment_schema, write_table_atomic

    rng = np.random.default_rng(0)
    content = rng.normal(size=(CLASSES, dim))
    ids, labels, splits, emb = [], [], [], []
    for v in range(VIDEOS):
        c = v % CLASSES
        seq = content[(np.arange(TOKENS) + c) % CLASSES] + 0.5 * rng.normal(size=(TOKENS, dim))
        seq /= np.linalg.norm(seq, axis=1, keepdims=True)
        ids.append(f"c{c}/v{v:05d}.mp4")
        labels.append(f"class{c}")
        splits.append("train" if v % 10 < 6 else "val" if v % 10 < 8 else "test")
        emb.append(seq.astype(np.float32))
    n = VIDEOS * TOKENS
    table = pa.table(
        {
            "video_id": np.repeat(ids, TOKENS),
            "segment_index": pa.array(np.tile(np.arange(TOKENS), VIDEOS), pa.int32()),
            "start_s": np.tile(np.arange(TOKENS) * 5.0, VIDEOS),
            "end_s": np.tile(np.arange(TOKENS) * 5.0 + 5, VIDEOS),
            "frame_indices": [[0]] * n,
            "frame_times_s": [[0.0]] * n,
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(np.concatenate(emb).ravel()), dim
            ),
            "encoder": ["bench"] * n,
            "config_id": ["c"] * n,
        },
        schema=segment_schema(dim),
    )
    shutil.rmtree(root, ignore_errors=True)
    write_table_atomic(table, str(root / "emb"), "segments")
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "label", "split"])
        writer.writerows(zip(ids, labels, splits, strict=True))
    cfg = model_config(preset, input_dim=dim, max_tokens=TOKENS)
    torch.manual_seed(0)
    save_checkpoint(root / "ckpt", model_state=LVMAE(cfg).state_dict(),
                    model_config=cfg.to_dict(), step=1)  # fmt: skip


def run(root: Path, *, seeds: int | None, epochs: int | None, cpus: int) -> dict:
    """One measured probe stage in this (fresh) process (``epochs`` None: the paper's
    recipes)."""
    import ray

    from lvmae.config import ProbeSection
    from pipelines.probe import run_probe

    recipes = {k: {"epochs": epochs} for k in ("linear", "attentive")} if epochs else {}
    fields = {"probes": ["linear", "attentive"], "baselines": ["mean-pool"], "recipes": recipes}
    if seeds is not None:
        fields["seeds"] = seeds
    section = ProbeSection(**fields)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    out = root / f"out-{os.getpid()}"
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    rows = run_probe(str(root / "ckpt"), str(root / "emb"), [str(root / "labels.csv")],
                     str(out), section, tracking_uri=f"sqlite:///{out}/mlflow.db")  # fmt: skip
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ray.shutdown()
    shutil.rmtree(out, ignore_errors=True)
    return {
        "code": os.environ.get("PYTHONPATH", str(ROOT)),
        "seeds": getattr(section, "seeds", 1),
        "epochs": epochs,
        "wall_s": round(wall, 1),
        "driver_peak_rss_mb": round(peak / 1024),
        "driver_rss_growth_mb": round((peak - rss0) / 1024),
        "rows": {f"{r.method} ({r.probe})": round(r.top1, 3) for r in rows},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", type=Path)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--paper", action="store_true", help="1024-d inputs, paper preset")
    parser.add_argument("--seeds", type=int, help="seeds per row (new code only)")
    parser.add_argument("--epochs", type=int, help="epochs per probe [3; --paper: the paper's]")
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare, dim=1024 if args.paper else DIM,
                preset="paper" if args.paper else "tiny")  # fmt: skip
    if args.run:
        epochs = args.epochs if args.epochs is not None else (None if args.paper else 3)
        print(json.dumps(run(args.run, seeds=args.seeds, epochs=epochs, cpus=args.cpus)))


if __name__ == "__main__":
    main()
