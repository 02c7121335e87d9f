"""Ray Tune sweeps over probe hyperparameters on the frozen LV-MAE encoder's cached features.

Per task (a labels set): the features are put in the object store once; each trial trains
one probe (:func:`lvmae.probes.evaluate`) and reports the validation metric every epoch, so
ASHA stops weak trials early; Optuna proposes the next configurations under a concurrency
limit. Trials never see the test labels (validation stands in for test inside a trial).
Each trial is an MLflow run nested under the sweep's run; the best configuration is then
retrained and scored on the test split once. Outputs per task under ``<out>/tune/<task>/``:
``trials.csv`` and ``best.json``; ``<out>/tune/results.csv|md`` over all tasks.

The search space is described in :mod:`tune.space`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ray
import torch
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from lvmae.config import TuneSection
from lvmae.labels import LabelSet
from lvmae.probes import VAL_METRIC, Features, ProbeResult, evaluate, result_from_fit, write_results
from lvmae.tracking import PARENT_TAG, open_run
from tune.space import DEFAULT_SPACE, KNOBS, SAMPLERS, load_space, max_epochs, probe_config

__all__ = ["DEFAULT_SPACE", "KNOBS", "SAMPLERS", "TUNED_METHOD", "load_space", "run_tune"]

log = logging.getLogger(__name__)

TUNED_METHOD = "lvmae-tuned"
"""The ``method`` of the sweep's results rows."""


class _Tracking(NamedTuple):
    """Where a trial logs: the MLflow store, the sweep's experiment and its run (the
    trials' parent)."""

    uri: str
    experiment_id: str
    parent: str


def _trial(
    params: dict[str, Any], *, data: tuple[LabelSet, Features], task: str, tracking: _Tracking
) -> None:
    """One Tune trial: train a probe on train/val, report validation metrics every epoch."""
    torch.set_num_threads(1)
    labels, features = data
    config = probe_config(params)
    client = MlflowClient(tracking_uri=tracking.uri)
    run = client.create_run(
        tracking.experiment_id,
        run_name=f"{task}:{tune.get_context().get_trial_name()}",
        tags={PARENT_TAG: tracking.parent, "lvmae.stage": "tune-trial"},
    )
    for key, value in config.to_dict().items():
        client.log_param(run.info.run_id, key, value)

    def report(epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, float(value), step=epoch)
        tune.report({**metrics, "epoch": epoch + 1})

    try:
        evaluate(labels, features, config, on_epoch=report, use_test=False)
    finally:
        client.set_terminated(run.info.run_id)


def _tuner(
    trainable: Any,
    space: Mapping[str, Any],
    *,
    task: str,
    objective: tuple[str, str],
    section: TuneSection,
    storage: Path,
    verbose: int,
) -> tune.Tuner:
    """ASHA (epochs as time) + Optuna under a concurrency limit: ``section.num_samples``
    trials optimising ``objective`` = (metric, ``"max"`` / ``"min"``)."""
    metric, direction = objective
    search = ConcurrencyLimiter(
        OptunaSearch(seed=section.seed), max_concurrent=section.max_concurrent
    )
    return tune.Tuner(
        trainable,
        param_space=dict(space),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=direction,
            num_samples=section.num_samples,
            search_alg=search,
            max_concurrent_trials=section.max_concurrent,
            scheduler=ASHAScheduler(time_attr="epoch", max_t=max_epochs(space), grace_period=2),
        ),
        run_config=tune.RunConfig(
            name=f"tune-{task}", storage_path=str(storage.absolute()), verbose=verbose
        ),
    )


def _sweep_task(
    task: str,
    labels: LabelSet,
    features: Features,
    space: Mapping[str, Any],
    section: TuneSection,
    *,
    out: str,
    tracking_uri: str,
    gpus_per_trial: float,
    verbose: int,
) -> ProbeResult:
    """Sweep one task, retrain the best configuration, score it on the test split once;
    write ``trials.csv`` and ``best.json`` under ``<out>/tune/<task>`` and log both (and
    the best row's numbers as ``best/*`` metrics) to the sweep's MLflow run."""
    client = MlflowClient(tracking_uri=tracking_uri)
    metric, mode = VAL_METRIC[labels.task]
    parent = open_run(
        tracking_uri, "lvmae-tune", f"sweep:{task}:{Path(out).absolute()}", out=out,
        tags={"lvmae.stage": "tune"},
        params={"task": task, "num_samples": section.num_samples, "space": json.dumps(
            {k: str(v) for k, v in space.items()})},
    )  # fmt: skip
    tracking = _Tracking(tracking_uri, client.get_run(parent).info.experiment_id, parent)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, data=(labels, features), task=task, tracking=tracking),
        {"cpu": 1, "gpu": gpus_per_trial},
    )
    out_dir = Path(out) / "tune"
    tuner = _tuner(trainable, space, task=task, objective=(metric, mode), section=section,
                   storage=out_dir / "ray", verbose=verbose)  # fmt: skip
    grid = tuner.fit()
    best = grid.get_best_result(metric=metric, mode=mode, scope="all")
    task_dir = out_dir / task
    task_dir.mkdir(parents=True, exist_ok=True)
    grid.get_dataframe().to_csv(task_dir / "trials.csv", index=False)
    params = {k: best.config[k] for k in space if k in best.config}
    final = evaluate(labels, features, probe_config(params))  # the test split, once
    fitted = result_from_fit(TUNED_METHOD, params.get("probe", "linear"), task=task,
                             labels=labels, fit=final, out=task_dir)  # fmt: skip
    result = fitted.model_copy(
        update={"trials": len(grid), "best_config": json.dumps(params, default=str)}
    )
    row = result.as_row()
    (task_dir / "best.json").write_text(json.dumps(row, indent=2, default=str))
    for key, value in row.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            client.log_metric(parent, f"best/{key}", float(value))
    client.log_artifact(parent, str(task_dir / "trials.csv"))
    client.log_artifact(parent, str(task_dir / "best.json"))
    return result


def run_tune(
    tasks: Sequence[tuple[str, LabelSet, int]],
    features: Features,
    out: str,
    section: TuneSection,
    *,
    tracking_uri: str,
    verbose: int = 1,
) -> list[ProbeResult]:
    """Sweep probe hyperparameters on each task, retrain the best configuration and score
    it on the test split once.

    Args:
        tasks: ``(name, labels, skipped)`` per task (e.g.
            :class:`lvmae.probes.ProbeTask`): the labels restricted to videos with
            features, and how many labelled videos were left out.
        features: features of every labelled video (:func:`lvmae.probes.load_features`).
        out: the output directory; everything goes under ``<out>/tune``.
        section: trials per task, the search space file (:func:`tune.space.load_space`),
            concurrent trials, GPUs per trial (default 0.25 when the cluster has GPUs, else
            0) and the search seed.
        tracking_uri: the MLflow store (experiment ``lvmae-tune``: one run per task, the
            trials nested under it).
        verbose: Ray Tune's verbosity (0-3).

    Returns:
        One ``lvmae-tuned`` :class:`~lvmae.probes.ProbeResult` per task, with ``trials``
        and ``best_config`` (JSON); also written to ``<out>/tune/results.csv|md``.

    Raises:
        ConfigError: a bad search space, before any trial starts.
    """
    space = load_space(section.space)
    if not ray.is_initialized():
        ray.init(configure_logging=True, logging_level=logging.WARNING)
    gpus = section.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if ray.cluster_resources().get("GPU", 0) else 0.0
    results = []
    for name, labels, _skipped in tasks:
        results.append(
            _sweep_task(name, labels, features, space, section, out=out,
                        tracking_uri=tracking_uri, gpus_per_trial=gpus, verbose=verbose)
        )  # fmt: skip
    write_results(results, Path(out) / "tune")
    return results
