"""Probes on the frozen LV-MAE encoder, the baselines on the same splits, and the probe
sweep (stage 3 of Naiman et al., ICCV 2025, §8, Tables 6–8): the Ray parts.

Where the work runs (the driver only orchestrates):

- the encoder runs once per video in Ray Data tasks
  (:func:`pipelines.job_inputs.embed_videos`), one GPU per task when the cluster has GPUs, and
  its outputs are cached as Parquet under ``<out>/features/<checkpoint key>/``: per video
  the mean of the token outputs ``[W]``, the [CLS] output ``[W]`` and every token's output
  ``[L, W]``;
- a Ray task reads the cache (and another the raw segment embeddings, for the baselines)
  into the object store (:func:`pipelines.probe_tasks.load_features_remote`); the driver
  holds only their references;
- every probe row × seed trains in its own Ray task with declared CPUs and GPUs
  (:func:`pipelines.probe_tasks.fit_seeds`), on CUDA when it holds a GPU, and reports the
  node and device it ran on.

Baselines use the raw segment embeddings: ``mean-pool`` (their mean → linear probe) and
``transformer`` (a small transformer trained from scratch: the paper's
"LanguageBind-Transformer" row). Outputs of :func:`run_probe`: ``results.csv`` /
``results.md`` (one row per method × task, mean ± std over seeds), a confusion-matrix PNG
per classification row, all logged to MLflow (experiment ``lvmae-probe``).
:func:`run_sweep` shares the same feature cache and hands the tasks to
:func:`tune.sweep.run_tune` (outputs under ``<out>/tune``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import ray

from lvmae.config import ProbeConfig, ProbeSection, TuneSection
from lvmae.probes.features import ProbeTask, load_tasks, video_ids
from lvmae.probes.results import ProbeResult, result_from_fits, write_results
from lvmae.progress import Progress
from lvmae.storage import is_remote, segment_files
from lvmae.tracking import log_numbers, resolve_tracking_uri, tracked_run, tracking_client
from pipelines.connect import Reservation, library_log_level
from pipelines.job_inputs import encoded_videos, resolve_checkpoint
from pipelines.probe_tasks import SCRATCH, SeedFit, fit_seeds, gpus_per_task, load_features_remote
from tune.space import load_space
from tune.sweep import run_tune

__all__ = [
    "FEATURES_DIR",
    "compute_features",
    "feature_cache_dir",
    "run_probe",
    "run_sweep",
]

FEATURES_DIR = "features"
MAX_ENCODER_ACTORS = 8


# --------------------------------------------------------------------------- features


def feature_cache_dir(out: str, checkpoint: Path, embeddings: str) -> Path:
    """``<out>/features/<key>``: the key changes when the checkpoint's weights or the
    embeddings do (their place and segment files, :func:`lvmae.storage.segment_files`), so
    another ``--embeddings`` into the same ``--out`` never reuses the first one's features."""
    model = checkpoint / "model.pt"
    stat = model.stat()
    where = embeddings if is_remote(embeddings) else str(Path(embeddings).resolve())
    key = hashlib.sha1(json.dumps(
        [str(model.resolve()), stat.st_size, stat.st_mtime_ns, where, segment_files(embeddings)]
    ).encode())  # fmt: skip
    return Path(out) / FEATURES_DIR / key.hexdigest()[:12]


def _ensure_ray() -> None:
    if not ray.is_initialized():
        ray.init(configure_logging=True, logging_level=logging.WARNING)


def compute_features(
    checkpoint: str, embeddings: str, out: str, *, actors: int | None = None
) -> Path:
    """Frozen LV-MAE features for every video under ``embeddings``, computed once and cached
    (Parquet: ``video_id``, ``num_tokens``, ``cls`` ``[W]``, ``mean`` ``[W]``, ``tokens``
    ``[L * W]``; read back with :func:`lvmae.probes.features.load_features`). A finished cache is
    reused. The encoder runs in Ray Data tasks, ``actors`` at once (default: one per GPU of
    the cluster, at most 8, each holding one GPU; one CPU task at a time on a cluster
    without GPUs); the rows go from the tasks to Parquet without passing through the
    driver.

    Raises:
        CheckpointError, StorageError: see :func:`pipelines.embed.run_embed`.
    """
    ckpt = resolve_checkpoint(checkpoint)
    target = feature_cache_dir(out, ckpt, embeddings)
    if (target / "_SUCCESS").is_file():
        return target
    _ensure_ray()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    n = actors or (min(gpus, MAX_ENCODER_ACTORS) if gpus else 1)
    feats = encoded_videos(ckpt, embeddings, with_tokens=True, actors=n, use_gpu=gpus > 0)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    feats.write_parquet(str(tmp))
    (tmp / "_SUCCESS").touch()
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


# --------------------------------------------------------------------------- probing


class _Row:
    """One pending results row: its method, probe name, recipe and the seeds' tasks."""

    def __init__(self, task: ProbeTask, method: str, probe: str, config: ProbeConfig, refs):
        self.task, self.method, self.probe, self.config, self.refs = (
            task, method, probe, config, refs,
        )  # fmt: skip

    def result(self, fits: Sequence[SeedFit], out: Path) -> ProbeResult:
        labels = self.task.labels
        row = result_from_fits(
            self.method, self.probe, task=self.task.name, labels=labels,
            fits=[f.fit for f in fits], out=out,
            nodes=[f.node for f in fits], devices=[f.device for f in fits],
        )  # fmt: skip
        return (
            row.model_copy(update={"skipped": self.task.skipped}) if self.method == "lvmae" else row
        )


def probe_reservations(section: ProbeSection) -> dict[str, Reservation]:
    """What each probe-training task reserves: ``cpus_per_task`` CPUs and
    ``gpus_per_task`` GPUs (None: a share resolved against the cluster when the stage runs,
    :func:`pipelines.probe_tasks.gpus_per_task`). :meth:`pipelines.stages.ProbeStage.resources`
    returns this and :func:`run_probe` reserves it."""
    return {"task": Reservation(section.cpus_per_task, section.gpus_per_task)}


def _start_rows(
    tasks: Sequence[ProbeTask], section: ProbeSection, lvmae_ref, raw_ref, reserve: Reservation
) -> list[_Row]:
    """Start every row's seeds as Ray tasks, each reserving ``reserve`` (all at once: Ray
    queues what does not fit)."""
    gpus = gpus_per_task(reserve.gpus, section.device)
    place = {"seeds": section.seeds, "device": section.device,
             "cpus": reserve.cpus, "gpus": gpus}  # fmt: skip
    rows = []
    for task in tasks:
        for kind in dict.fromkeys(section.probes):
            config = section.config(kind)
            refs = fit_seeds(lvmae_ref, task.labels, config, **place)
            rows.append(_Row(task, "lvmae", config.name, config, refs))
        if "mean-pool" in section.baselines:  # the linear probe's recipe, raw features
            config = section.config("linear")
            refs = fit_seeds(raw_ref, task.labels, config, **place)
            rows.append(_Row(task, "mean-pool", "linear", config, refs))
        if "transformer" in section.baselines:
            config = ProbeConfig.paper("attentive")
            refs = fit_seeds(raw_ref, task.labels, config, baseline=SCRATCH, **place)
            rows.append(_Row(task, "transformer", "scratch", config, refs))
    return rows


def _wait_with_progress(refs: list) -> None:
    """Wait for every probe fit (row × seed), showing how many are done."""
    with Progress(len(refs), "probe", "fits") as bar:
        left = list(refs)
        while left:
            done, left = ray.wait(left, num_returns=1)
            bar.update(len(done))


def run_probe(
    checkpoint: str,
    embeddings: str,
    labels_paths: Sequence[str],
    out: str,
    section: ProbeSection,
    *,
    tracking_uri: str | None = None,
    reservations: dict[str, Reservation] | None = None,
) -> list[ProbeResult]:
    """Probe the frozen encoder (and score the baselines) on every labels file (a task
    each); write ``results.csv``/``results.md`` and confusion matrices under ``out``; log
    every row to MLflow.

    Each row is trained ``section.seeds`` times, each seed in a Ray task that reserves
    ``reservations["task"]`` (the stage's ``resources()``; default
    :func:`probe_reservations`: ``section.cpus_per_task`` CPUs and ``section.gpus_per_task``
    GPUs, default 0.25 on a
    cluster with GPUs) and trains on ``section.device`` (``auto``: CUDA when it holds a
    GPU). The feature tables reach the tasks through the object store; the driver never
    loads them. Rows report the mean and standard deviation over seeds, and the node and
    device their seeds ran on.

    Args:
        checkpoint: a checkpoint or pre-training run directory.
        embeddings: the extraction output (holds ``segments/``).
        labels_paths: labels files, one task each (named by the file's stem).
        out: the output directory (also holds the feature cache, ``<out>/features``); on a
            cluster, a filesystem every node mounts.
        section: ``probes`` (each trained with ``section.config(kind)``: the paper's recipe
            under the section's), ``baselines`` (``mean-pool`` trains with the linear probe's
            recipe, so the two linear rows differ only in their features; ``transformer``
            with the paper's attentive recipe), seeds, device and task resources.
        tracking_uri: the MLflow store; default: the pre-training run's store above the
            checkpoint, else ``<out>/mlflow.db`` (:func:`lvmae.tracking.resolve_tracking_uri`).

    Returns:
        One row per task × (probe, then baselines).

    Raises:
        ProbeError (:mod:`lvmae.probes.features`), LabelsError, StorageError,
        CheckpointError: bad input, before any training.
    """
    tasks = load_tasks(labels_paths, video_ids(embeddings))
    cache = compute_features(checkpoint, embeddings, out, actors=section.encoder_actors)
    lvmae_ref = load_features_remote("cache", str(cache))
    raw_ref = load_features_remote("raw", embeddings) if section.baselines else None
    out_dir = Path(out)
    reserve = (reservations or probe_reservations(section))["task"]
    pending = _start_rows(tasks, section, lvmae_ref, raw_ref, reserve)
    _wait_with_progress([ref for row in pending for ref in row.refs])
    rows = [(row.result(ray.get(row.refs), out_dir), row.config) for row in pending]
    files = write_results([row for row, _ in rows], out_dir)
    uri = resolve_tracking_uri(tracking_uri, out, near=checkpoint)
    _track(rows, files, out=out, tracking_uri=uri)
    return [row for row, _ in rows]


def _track(
    rows: Sequence[tuple[ProbeResult, ProbeConfig]],
    files: Sequence[Path],
    *,
    out: str,
    tracking_uri: str,
) -> None:
    """One MLflow run per row (experiment ``lvmae-probe``): the recipe it was trained with
    as ``probe.*`` params, its numbers as metrics, its confusion matrix and the results
    tables as artifacts. The run is named by the row, a digest of its recipe and the
    absolute ``out`` (as the sweep's): a rerun of the same job reuses its runs, while a job
    with another recipe or output on the same store gets runs of its own."""
    client = tracking_client(tracking_uri)  # a new store from the template
    for result, config in rows:
        row = result.as_row()
        recipe = hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
        name = (f"{result.task}:{result.method}:{result.probe}:{recipe.hexdigest()[:8]}:"
                f"{Path(out).absolute()}")  # fmt: skip
        with tracked_run(
            tracking_uri, "lvmae-probe", name, out=out, tags={"lvmae.stage": "probe"},
            params={**{f"probe.{k}": v for k, v in config.to_dict().items()},
                    "method": result.method, "task": result.task},
        ) as run_id:  # fmt: skip
            log_numbers(client, run_id, row)
            if result.confusion_matrix:
                client.log_artifact(run_id, str(Path(out) / result.confusion_matrix))
            for f in files:
                client.log_artifact(run_id, str(f))


# --------------------------------------------------------------------------- sweeping


def tune_reservations(section: TuneSection) -> dict[str, Reservation]:
    """What each sweep trial reserves: one CPU, ``gpus_per_trial`` GPUs (None: resolved
    against the cluster), ``max_concurrent`` trials at once.
    :meth:`pipelines.stages.TuneStage.resources` returns this and :func:`run_sweep` reserves
    it."""
    return {"trial": Reservation(1.0, section.gpus_per_trial, count=section.max_concurrent)}


def run_sweep(
    checkpoint: str,
    embeddings: str,
    labels_paths: Sequence[str],
    out: str,
    section: TuneSection,
    *,
    probe: ProbeSection | None = None,
    tracking_uri: str | None = None,
    verbose: int = 1,
    reservations: dict[str, Reservation] | None = None,
) -> list[ProbeResult]:
    """Sweep probe hyperparameters on every labels file (a task each) with
    :func:`tune.sweep.run_tune`, on the frozen encoder's features cached under
    ``<out>/features`` (the cache :func:`run_probe` uses with the same ``out``). The
    features reach the trials through the object store, never through the driver.

    Args:
        checkpoint, embeddings, labels_paths, out: as for :func:`run_probe`; the sweep's
            outputs go under ``<out>/tune``.
        section: the sweep's settings (trials, search space, kinds, grace period, seeds,
            concurrency, GPUs, seed).
        probe: the probe stage's section: its recipes are the sweep's first trial and the
            centre of the default space (default: the paper's recipes).
        tracking_uri: the MLflow store (default as for :func:`run_probe`).
        verbose: Ray Tune's verbosity (0-3).

    Returns:
        One ``lvmae-tuned`` row per task: the best configuration scored on the test split.

    Raises:
        ConfigError (bad search space), ProbeError, LabelsError, StorageError,
        CheckpointError: bad input, before any trial starts.
    """
    # Optuna sets its logger to INFO when first imported, which the lazy stage imports make
    # later than the CLI quietened it: its "A new study created" line stays off the console
    logging.getLogger("optuna").setLevel(library_log_level())
    probe = probe or ProbeSection()
    recipes = {kind: probe.config(kind) for kind in section.probes}
    load_space(section.space, recipes=recipes)  # a bad space fails before any work
    tasks = load_tasks(labels_paths, video_ids(embeddings))
    cache = compute_features(checkpoint, embeddings, out, actors=probe.encoder_actors)
    features = load_features_remote("cache", str(cache))
    uri = resolve_tracking_uri(tracking_uri, out, near=checkpoint)
    trial = (reservations or tune_reservations(section))["trial"]
    return run_tune(
        tasks, features, out, section, recipes=recipes, tracking_uri=uri, fit_seeds=fit_seeds,
        trial_resources=trial.as_dict(),
        verbose=verbose,
    )
