"""Probes on the frozen LV-MAE encoder, the baselines on the same splits, and the probe
sweep (stage 3 of Naiman et al., ICCV 2025, §8, Tables 6–8): the Ray parts.

The encoder runs once per video (Ray Data actor pool, :class:`pipelines.embed.EmbedVideos`)
and its outputs are cached under ``<out>/features/<checkpoint key>/``: per video the mean of
the token outputs ``[W]``, the [CLS] output ``[W]`` and every token's output ``[L, W]``.
Probes then train on the cache (:func:`lvmae.probes.evaluate`), never re-running the
encoder. Baselines use the raw segment embeddings: ``mean-pool`` (their mean → linear
probe) and ``transformer`` (a small transformer trained from scratch: the paper's
"LanguageBind-Transformer" row).

Outputs of :func:`run_probe`: ``results.csv`` / ``results.md`` (one row per method × task),
a confusion-matrix PNG per classification row, all logged to MLflow (experiment
``lvmae-probe``). :func:`run_sweep` shares the same feature cache and hands the tasks to
:func:`tune.sweep.run_tune` (outputs under ``<out>/tune``).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from mlflow.tracking import MlflowClient

from lvmae.config import ProbeConfig, ProbeSection, TuneSection
from lvmae.probes.features import (
    Features,
    ProbeTask,
    evaluate,
    load_features,
    load_tasks,
    raw_features,
    video_ids,
)
from lvmae.probes.heads import TransformerBaseline
from lvmae.probes.results import ProbeResult, result_from_fit, write_results
from lvmae.tracking import open_run, tracking_uri_near
from pipelines.embed import encoded_videos, resolve_checkpoint
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


# --------------------------------------------------------------------------- features


def feature_cache_dir(out: str, checkpoint: Path) -> Path:
    """``<out>/features/<key>``: the key changes when the checkpoint's weights do."""
    model = checkpoint / "model.pt"
    stat = model.stat()
    key = hashlib.sha1(f"{model.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return Path(out) / FEATURES_DIR / key.hexdigest()[:12]


def compute_features(checkpoint: str, embeddings: str, out: str) -> Path:
    """Frozen LV-MAE features for every video under ``embeddings``, computed once and cached
    (Parquet: ``video_id``, ``num_tokens``, ``cls`` ``[W]``, ``mean`` ``[W]``, ``tokens``
    ``[L * W]``; read back with :func:`lvmae.probes.load_features`). A finished cache is
    reused.

    Raises:
        CheckpointError, StorageError: see :func:`pipelines.embed.run_embed`.
    """
    ckpt = resolve_checkpoint(checkpoint)
    target = feature_cache_dir(out, ckpt)
    if (target / "_SUCCESS").is_file():
        return target
    feats = encoded_videos(ckpt, embeddings, with_tokens=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    feats.write_parquet(str(tmp))
    (tmp / "_SUCCESS").touch()
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


# --------------------------------------------------------------------------- probing


def _baselines(
    task: ProbeTask, raw: Features, section: ProbeSection, out: Path
) -> list[tuple[ProbeResult, ProbeConfig]]:
    """The baselines of ``section`` on ``task``, on the raw segment embeddings."""
    rows = []
    labels, device = task.labels, section.device
    if "mean-pool" in section.baselines:
        config = section.config("linear")  # the two linear rows differ only in their features
        fit = evaluate(labels, raw, config, device=device)
        row = result_from_fit("mean-pool", "linear", task=task.name, labels=labels, fit=fit,
                              out=out)  # fmt: skip
        rows.append((row, config))
    if "transformer" in section.baselines:
        dim = next(iter(raw.tokens.values())).shape[1]
        n_out = labels.num_classes if labels.task == "classification" else 1
        config = ProbeConfig.paper("attentive")
        model = TransformerBaseline(dim, n_out)
        fit = evaluate(labels, raw, config, model=model, device=device)
        row = result_from_fit("transformer", "scratch", task=task.name, labels=labels, fit=fit,
                              out=out)  # fmt: skip
        rows.append((row, config))
    return rows


def run_probe(
    checkpoint: str,
    embeddings: str,
    labels_paths: Sequence[str],
    out: str,
    section: ProbeSection,
    *,
    tracking_uri: str | None = None,
) -> list[ProbeResult]:
    """Probe the frozen encoder (and score the baselines) on every labels file (a task
    each); write ``results.csv``/``results.md`` and confusion matrices under ``out``; log
    every row to MLflow.

    Args:
        checkpoint: a checkpoint or pre-training run directory.
        embeddings: the extraction output (holds ``segments/``).
        labels_paths: labels files, one task each (named by the file's stem).
        out: the output directory (also holds the feature cache, ``<out>/features``).
        section: ``probes`` (each trained with ``section.config(kind)``: the paper's recipe
            under the section's), ``baselines`` (``mean-pool`` trains with the linear probe's
            recipe, so the two linear rows differ only in their features; ``transformer``
            with the paper's attentive recipe) and the torch ``device``.
        tracking_uri: the MLflow store; default: the pre-training run's store above the
            checkpoint, else ``<out>/mlflow.db`` (:func:`lvmae.tracking.tracking_uri_near`).

    Returns:
        One row per task × (probe kind, then baselines).

    Raises:
        ProbeError (:mod:`lvmae.probes.features`), LabelsError, StorageError,
        CheckpointError: bad input, before any training.
    """
    kinds = list(dict.fromkeys(section.probes))
    configs = {kind: section.config(kind) for kind in kinds}
    tasks = load_tasks(labels_paths, video_ids(embeddings))
    lvmae = load_features(compute_features(checkpoint, embeddings, out))
    raw = raw_features(embeddings) if section.baselines else None
    out_dir = Path(out)
    rows: list[tuple[ProbeResult, ProbeConfig]] = []
    for task in tasks:
        for kind in kinds:
            fit = evaluate(task.labels, lvmae, configs[kind], device=section.device)
            row = result_from_fit("lvmae", kind, task=task.name, labels=task.labels, fit=fit,
                                  out=out_dir)  # fmt: skip
            rows.append((row.model_copy(update={"skipped": task.skipped}), configs[kind]))
        if raw is not None:
            rows += _baselines(task, raw, section, out_dir)
    files = write_results([row for row, _ in rows], out_dir)
    uri = tracking_uri or tracking_uri_near(checkpoint, out)
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
    tables as artifacts."""
    client = MlflowClient(tracking_uri=tracking_uri)
    for result, config in rows:
        row = result.as_row()
        name = f"{result.task}:{result.method}:{result.probe}"
        run_id = open_run(
            tracking_uri, "lvmae-probe", name, out=out, tags={"lvmae.stage": "probe"},
            params={**{f"probe.{k}": v for k, v in config.to_dict().items()},
                    "method": result.method, "task": result.task},
        )  # fmt: skip
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                client.log_metric(run_id, key, float(value))
        if result.confusion_matrix:
            client.log_artifact(run_id, str(Path(out) / result.confusion_matrix))
        for f in files:
            client.log_artifact(run_id, str(f))


# --------------------------------------------------------------------------- sweeping


def run_sweep(
    checkpoint: str,
    embeddings: str,
    labels_paths: Sequence[str],
    out: str,
    section: TuneSection,
    *,
    tracking_uri: str | None = None,
    verbose: int = 1,
) -> list[ProbeResult]:
    """Sweep probe hyperparameters on every labels file (a task each) with
    :func:`tune.sweep.run_tune`, on the frozen encoder's features cached under
    ``<out>/features`` (the cache :func:`run_probe` uses with the same ``out``).

    Args:
        checkpoint, embeddings, labels_paths, out: as for :func:`run_probe`; the sweep's
            outputs go under ``<out>/tune``.
        section: the sweep's settings (trials, search space, concurrency, GPUs, seed).
        tracking_uri: the MLflow store (default as for :func:`run_probe`).
        verbose: Ray Tune's verbosity (0-3).

    Returns:
        One ``lvmae-tuned`` row per task: the best configuration scored on the test split.

    Raises:
        ConfigError (bad search space), ProbeError, LabelsError, StorageError,
        CheckpointError: bad input, before any trial starts.
    """
    load_space(section.space)  # a bad space fails before the features are computed
    tasks = load_tasks(labels_paths, video_ids(embeddings))
    features = load_features(compute_features(checkpoint, embeddings, out))
    uri = tracking_uri or tracking_uri_near(checkpoint, out)
    return run_tune(tasks, features, out, section, tracking_uri=uri, verbose=verbose)
