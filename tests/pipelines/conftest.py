"""Heavy inputs of the pipeline tests, built once per session and shared READ-ONLY: the
sample library (real videos made by ffmpeg), its extraction (Ray Data, the tiny encoder) and
a pre-training run on it (Ray Train, 2 DDP workers, a real SQLite MLflow store).

A test that changes any of them works on its own copy (:func:`copy_outputs`), so no test
depends on the order the others ran in."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lvmae.config import ExtractConfig, PretrainConfig

# 12 videos (2 per default recipe) of 20–40 s: with 2-s segments, 10–20 tokens each, more
# than the 8-token cap of the small pre-training config (so whole videos need several windows).
LIBRARY = {"videos_per_recipe": 2, "min_seconds": 20, "max_seconds": 40, "seed": 1}
SEGMENT_S = 2.0
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # seconds between Ray Train's worker polls


# A line of Python logging at WARNING or above (ours, Ray's "... WARNING file.py:N -- ..."),
# or of Ray's C++ logging at warning, error or fatal level ("[date time,ms E pid tid] ...").
PROBLEM_LINE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|^\[[^\]]* [WEF] \d+ \d+\] ")


def small_pretrain_config(**overrides) -> PretrainConfig:
    """A tiny LV-MAE for 3 epochs on 2 workers, a checkpoint every 2 steps."""
    base = {
        "preset": "tiny",
        "epochs": 3,
        "warmup_epochs": 1,
        "batch_size": 2,  # per worker: global 4
        "num_workers": 2,
        "max_tokens": 8,
        "min_window_s": 4.0,
        "segment_s": SEGMENT_S,
        "checkpoint_every_steps": 2,
        "log_every_steps": 1,
        "val_fraction": 0.25,
        "blr": 1e-2,
    }
    return PretrainConfig(**{**base, **overrides})


@dataclass(frozen=True)
class Pretrained:
    """The session's pre-training run: its output directory (checkpoints under
    ``runs/<run_name>``, the MLflow store ``mlflow.db``), config and result."""

    out: Path
    config: PretrainConfig
    result: object  # pipelines.pretrain.PretrainResult

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / self.config.run_name


@contextmanager
def quick_small_runs() -> Iterator[None]:
    """Ray Train's controller polls its workers every 0.5 s instead of 2 s during the block,
    so it sees a run end, or a worker die, sooner (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``,
    read when a trainer starts; restored afterwards). The work done and its results are the
    same."""
    saved = os.environ.get(POLL_ENV)
    os.environ[POLL_ENV] = "0.5"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(POLL_ENV, None)
        else:
            os.environ[POLL_ENV] = saved


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> Path:
    """An empty SQLite MLflow store (``mlflow.db``), its schema created once. Copy it
    (:func:`seed_store`) into an output directory before a run: a new store spends seconds
    in schema migrations. Read-only."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)
    return path


def seed_store(store: Path, out: Path) -> Path:
    """``out`` (created if missing) holding a copy of the empty MLflow ``store`` as
    ``mlflow.db``, where runs writing into ``out`` track by default."""
    Path(out).mkdir(parents=True, exist_ok=True)
    shutil.copy(store, Path(out) / "mlflow.db")
    return Path(out)


@pytest.fixture(scope="session")
def sample_library(tmp_path_factory) -> Path:
    """The sample library (``labels.csv`` at its root). Read-only."""
    from lvmae.video.samples import make_samples

    root = tmp_path_factory.mktemp("library")
    make_samples(root, **LIBRARY)
    return root


@pytest.fixture(scope="session")
def sample_extraction(sample_library, tmp_path_factory, ray_local, mlflow_store) -> Path:
    """The library extracted with 2-s segments (``segments/``, ``videos/``, manifest, and
    its MLflow store ``mlflow.db``). Read-only: copy it (:func:`copy_outputs`) to add files
    or build an index in it."""
    from pipelines.extract import run_extraction

    out = seed_store(mlflow_store, tmp_path_factory.mktemp("extraction") / "extract")
    run_extraction(
        str(sample_library), str(out), ExtractConfig(segment_s=SEGMENT_S), progress=False
    )
    return out


@pytest.fixture(scope="session")
def pretrained(sample_extraction, tmp_path_factory, mlflow_store) -> Pretrained:
    """A finished 3-epoch run named ``ddp`` (monitor at epoch 3). Read-only: copy it
    (:func:`copy_outputs`) to resume it or to damage a checkpoint."""
    from pipelines.pretrain import run_pretrain

    out = seed_store(mlflow_store, tmp_path_factory.mktemp("pretrained"))
    config = small_pretrain_config(run_name="ddp", monitor_every_epochs=3)
    with quick_small_runs():
        result = run_pretrain(str(sample_extraction), str(out), config)
    return Pretrained(out, config, result)


def copy_outputs(src: Path, dst: Path) -> Path:
    """``src`` copied to ``dst``; a SQLite MLflow store inside (``**/mlflow.db``) is pointed
    at the copy's artifact directories, so runs logged to the copy never write into ``src``.
    """
    shutil.copytree(src, dst, symlinks=True)
    old, new = str(Path(src).absolute()), str(Path(dst).absolute())
    for db in Path(dst).rglob("mlflow.db"):
        with sqlite3.connect(db) as con:
            for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
                con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
        con.close()
    return Path(dst)


def brute_force_ranks(preds, candidates, targets) -> np.ndarray:
    """The reconstruction monitor's ranks counted by hand: for each query, 1 + the number of
    OTHER candidates whose cosine similarity to it is at least the true candidate's."""
    unit = [np.asarray(c, np.float64) / np.linalg.norm(c) for c in candidates]
    ranks = []
    for pred, target in zip(preds, targets, strict=True):
        p = np.asarray(pred, np.float64) / np.linalg.norm(pred)
        scores = [float(np.dot(p, c)) for c in unit]
        ranks.append(
            1 + sum(1 for j, s in enumerate(scores) if j != target and s >= scores[target])
        )
    return np.array(ranks)


def recall_summary(ranks: np.ndarray) -> dict[str, float]:
    """R@1, R@5, R@10 and the median rank, from ranks."""
    return {
        "R@1": float(np.mean(ranks <= 1)),
        "R@5": float(np.mean(ranks <= 5)),
        "R@10": float(np.mean(ranks <= 10)),
        "median_rank": float(np.median(ranks)),
    }


def kill_once_videos_are_written(proc, out, *, deadline: float, videos: int = 2) -> None:
    """SIGKILL ``proc``'s process group once ``out``'s videos table holds ``videos`` rows
    (so output is on disk and the run is mid-way); fails if the run ends first."""
    import signal
    import time

    from lvmae.storage import read_videos

    while time.monotonic() < deadline and proc.poll() is None:
        if read_videos(str(out)).num_rows >= videos:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def loaded(archive):
    """A ``lvmae serve`` :class:`~pipelines.serve.archive.Archive` started and loaded (its
    segments, index and text tower), its thumbnail readers closed afterwards."""
    archive.start()
    state = archive.wait(120)
    assert state.error is None and archive.searcher is not None, state
    try:
        yield archive
    finally:
        archive.thumbnails.close()
