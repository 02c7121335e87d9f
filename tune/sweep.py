"""Ray Tune sweeps over probe hyperparameters on the frozen LV-MAE encoder's cached features.

Per task (a labels set): the features stay in the object store (a reference is handed to
the trials); each trial trains one probe (:func:`lvmae.probes.features.evaluate`) with the
resources it declares and on the device it reserves (``device: auto``: CUDA when it holds a
GPU), and reports the validation metric every epoch. The recipe's own configuration is the first
trial, so the sweep can only match or beat it on validation. ASHA measures time in percent
of each trial's own epochs (``progress``) and stops no trial before the section's grace
period; Optuna proposes the next configurations under a concurrency limit. Trials never see
the test labels (validation stands in for test inside a trial). Each trial is an MLflow run
nested under the sweep's run; the best configuration is then retrained with
``section.seeds`` seeds and scored on the test split, once per seed, in Ray tasks started by
the ``fit_seeds`` the caller passes (the probe job's,
:func:`pipelines.probe_tasks.fit_seeds`: ``tune/`` does not import ``pipelines/``). Outputs
per task under ``<out>/tune/<task>/``: ``trials.csv`` and ``best.json``;
``<out>/tune/results.csv|md`` over all tasks.

The search space is described in :mod:`tune.space`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import ray
import torch
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from lvmae.config import ProbeConfig, TuneSection
from lvmae.labels import LabelSet
from lvmae.probes.features import Features, evaluate
from lvmae.probes.results import ProbeResult, result_from_fits, write_results
from lvmae.probes.seeds import task_gpus
from lvmae.probes.train import VAL_METRIC, resolve_device
from lvmae.progress import Progress
from lvmae.tracking import (
    PARENT_TAG,
    end_run,
    log_numbers,
    run_status,
    tracked_run,
    tracking_client,
)
from tune.space import KNOBS, SAMPLERS, load_space, probe_config, recipe_point

__all__ = ["KNOBS", "PROGRESS", "SAMPLERS", "TUNED_METHOD", "FitSeeds", "load_space", "run_tune"]

log = logging.getLogger(__name__)

TUNED_METHOD = "lvmae-tuned"
"""The ``method`` of the sweep's results rows."""

PROGRESS = "progress"
"""ASHA's time attribute: percent of the trial's own epochs done (0–100]."""


class FitSeeds(Protocol):
    """How the sweep's chosen configuration is retrained: one Ray task per seed, each
    returning a :class:`lvmae.probes.seeds.SeedFit` (:func:`pipelines.probe_tasks.fit_seeds`)."""

    def __call__(
        self,
        features: Any,
        labels: LabelSet,
        config: ProbeConfig,
        *,
        seeds: int,
        device: str,
        gpus: float,
    ) -> list[ray.ObjectRef]: ...


class _Tracking(NamedTuple):
    """Where a trial logs: the MLflow store, the sweep's experiment and its run (the
    trials' parent)."""

    uri: str
    experiment_id: str
    parent: str


STOPPED_BY_SCHEDULER = "stopped by the Tune scheduler"


def _trial(
    params: dict[str, Any],
    *,
    data: list,
    recipes: Mapping[str, ProbeConfig],
    task: str,
    device: str,
    tracking: _Tracking,
) -> None:
    """One Tune trial: train a probe on train/val, report validation metrics every epoch.
    ``data`` is ``[labels, features reference]``: the features come from the object store."""
    torch.set_num_threads(1)
    labels, features_ref = data
    features = ray.get(features_ref) if isinstance(features_ref, ray.ObjectRef) else features_ref
    config = probe_config(params, recipes)
    dev = resolve_device(device, holds_gpu=bool(ray.get_gpu_ids()))
    client = MlflowClient(tracking_uri=tracking.uri)
    run = client.create_run(
        tracking.experiment_id,
        run_name=f"{task}:{tune.get_context().get_trial_name()}",
        tags={PARENT_TAG: tracking.parent, "lvmae.stage": "tune-trial",
              "lvmae.node": ray.get_runtime_context().get_node_id(), "lvmae.device": dev},
    )  # fmt: skip
    params = [Param(k, str(v)) for k, v in config.to_dict().items()]
    client.log_batch(run.info.run_id, params=params)

    def report(epoch: int, metrics: dict[str, float]) -> None:
        log_numbers(client, run.info.run_id, metrics, step=epoch)
        progress = 100.0 * (epoch + 1) / config.epochs
        tune.report({**metrics, "epoch": epoch + 1, PROGRESS: progress})

    # Tune stops a trial (ASHA) by raising SystemExit(0) in its report: KILLED, not FAILED
    with run_status(client, run.info.run_id, stopped=STOPPED_BY_SCHEDULER):
        evaluate(labels, features, config, on_epoch=report, use_test=False, device=dev)


def _end_stopped_trials(client: MlflowClient, tracking: _Tracking) -> None:
    """End, as KILLED, the trial runs of this sweep still RUNNING: trials the scheduler
    stopped early (ASHA) or whose actor died never reach their own ``end_run``."""
    mine = f"tags.`{PARENT_TAG}` = '{tracking.parent}'"
    runs = client.search_runs(
        [tracking.experiment_id], filter_string=f"{mine} and attributes.status = 'RUNNING'"
    )
    stop = SystemExit(0)  # how Tune stops a trial: end_run makes it KILLED with the reason
    for run in runs:
        try:
            end_run(client, run.info.run_id, stop, stopped=STOPPED_BY_SCHEDULER)
        except MlflowException:
            # the trial's own end_run wrote the same tag at the same moment (SQLite refuses
            # the second insert); once the tag exists, writing it again is an update
            if client.get_run(run.info.run_id).info.status == "RUNNING":
                end_run(client, run.info.run_id, stop, stopped=STOPPED_BY_SCHEDULER)


class TrialProgress(tune.Callback):
    """Trials finished out of ``total`` and the best validation metric so far, as a bar on a
    TTY or a line every 30 s without one (:class:`lvmae.progress.Progress`)."""

    def __init__(self, task: str, total: int, metric: str, mode: str) -> None:
        self.task, self.total, self.metric, self.mode, self.best = task, total, metric, mode, None
        self.bar: Progress | None = None  # made on first use: Tune pickles its callbacks

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "bar": None}

    def _done(self, trial: Any) -> None:
        if self.bar is None:
            self.bar = Progress(self.total, f"tune {self.task}", "trials")
        value = (trial.last_result or {}).get(self.metric)
        if value is not None and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        ):
            self.best = value
        best = "–" if self.best is None else f"{self.best:.3f}"
        self.bar.update(1, **{f"best_{self.metric}": best})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.bar is not None:
            self.bar.close()


def _tuner(
    trainable: Any,
    space: Mapping[str, Any],
    *,
    task: str,
    objective: tuple[str, str],
    section: TuneSection,
    first: Mapping[str, Any],
    storage: Path,
    verbose: int,
) -> tune.Tuner:
    """ASHA (time: percent of each trial's epochs, grace period ``section.grace_period``)
    + Optuna under a concurrency limit, with ``first`` (the recipe) as the first trial:
    ``section.num_samples`` trials optimising ``objective`` = (metric, ``"max"``/``"min"``)."""
    metric, direction = objective
    search = ConcurrencyLimiter(
        OptunaSearch(seed=section.seed, points_to_evaluate=[dict(first)] if first else None),
        max_concurrent=section.max_concurrent,
    )
    grace = max(1, math.floor(100 * section.grace_period))
    return tune.Tuner(
        trainable,
        param_space=dict(space),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=direction,
            num_samples=section.num_samples,
            search_alg=search,
            scheduler=ASHAScheduler(time_attr=PROGRESS, max_t=100, grace_period=grace),
        ),
        run_config=tune.RunConfig(
            name=f"tune-{task}",
            storage_path=str(storage.absolute()),
            verbose=verbose,
            callbacks=[TrialProgress(task, section.num_samples, metric, direction)],
        ),
    )


@contextmanager
def _tune_output(verbose: int) -> Iterator[None]:
    """Ray Tune's console output at ``verbose``. At 0, Ray Tune 2.60's default output engine
    still prints a table of the experiment, its path and a TensorBoard hint (10 lines per
    sweep); its previous engine (``RAY_AIR_NEW_OUTPUT=0``, restored afterwards) prints
    nothing. Our own progress (:class:`TrialProgress`) is unaffected."""
    if verbose:
        yield
        return
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def _trial_vals(grid: Any, metric: str, mode: str) -> list[tuple[dict[str, Any], float]]:
    """Per trial, in creation order: its config and its best validation metric over the
    epochs it ran. Trials that reported nothing, and trials that ended in an error (a probe
    that diverged after a good epoch), are left out: a configuration is chosen only from
    trials that ran to their end or that the scheduler stopped."""
    pick = max if mode == "max" else min
    out = []
    for result in grid:
        if result.error is not None:
            continue
        df = result.metrics_dataframe
        if df is None or metric not in df or df[metric].dropna().empty:
            continue
        out.append((dict(result.config), float(pick(df[metric].dropna()))))
    return out


def _same(config: Mapping[str, Any], point: Mapping[str, Any]) -> bool:
    """Whether a trial's ``config`` holds every value of ``point``."""
    return all(
        k in config and (config[k] == v or (isinstance(v, float) and math.isclose(config[k], v)))
        for k, v in point.items()
    )


def _sweep_task(
    task: str,
    labels: LabelSet,
    features: Any,
    space: Mapping[str, Any],
    section: TuneSection,
    *,
    recipes: Mapping[str, ProbeConfig],
    out: str,
    tracking_uri: str,
    gpus_per_trial: float,
    fit_seeds: FitSeeds,
    verbose: int,
    cpus_per_trial: float = 1.0,
) -> ProbeResult:
    """Sweep one task (the recipe first), retrain the best configuration with
    ``section.seeds`` seeds in Ray tasks and score it on the test split once per seed;
    write ``trials.csv`` and ``best.json`` under ``<out>/tune/<task>`` and log both (and
    the best row's numbers as ``best/*`` metrics) to the sweep's MLflow run."""
    client = tracking_client(tracking_uri)  # a new store from the template
    metric, mode = VAL_METRIC[labels.task]
    # named by task, settings and output: a rerun of this sweep reuses its run, another
    # sweep into the same output (other settings or recipes) gets its own
    digest = hashlib.sha1(json.dumps(
        [section.model_dump(mode="json"), {k: v.to_dict() for k, v in recipes.items()},
         {k: str(v) for k, v in space.items()}], sort_keys=True, default=str,
    ).encode()).hexdigest()[:8]  # fmt: skip
    with tracked_run(
        tracking_uri, "lvmae-tune", f"sweep:{task}:{digest}:{Path(out).absolute()}", out=out,
        tags={"lvmae.stage": "tune"},
        params={"task": task, "num_samples": section.num_samples, "space": json.dumps(
            {k: str(v) for k, v in space.items()})},
    ) as parent:  # fmt: skip
        tracking = _Tracking(tracking_uri, client.get_run(parent).info.experiment_id, parent)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, data=[labels, features], recipes=dict(recipes), task=task,
                                 device=section.device, tracking=tracking),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
        )  # fmt: skip
        first = recipe_point(space, next(iter(recipes.values())))
        out_dir = Path(out) / "tune"
        tuner = _tuner(trainable, space, task=task, objective=(metric, mode), section=section,
                       first=first, storage=out_dir / "ray", verbose=verbose)  # fmt: skip
        try:
            with _tune_output(verbose):
                grid = tuner.fit()
        finally:
            _end_stopped_trials(client, tracking)
        vals = _trial_vals(grid, metric, mode)
        if not vals:
            raise RuntimeError(f"sweep {task}: no trial reported {metric}; see {out_dir / 'ray'}")
        best_config, sweep_val = (max if mode == "max" else min)(vals, key=lambda t: t[1])
        # The recipe's trial: the one whose config is the recipe point (all sampled values).
        recipe_val = next((v for c, v in vals if first and _same(c, first)), None)
        task_dir = out_dir / task
        task_dir.mkdir(parents=True, exist_ok=True)
        grid.get_dataframe().to_csv(task_dir / "trials.csv", index=False)
        params = {k: best_config[k] for k in space if k in best_config}
        config = probe_config(params, recipes)
        # The test split is read here, once per seed, for the chosen configuration only.
        refs = fit_seeds(features, labels, config, seeds=section.seeds, device=section.device,
                         gpus=gpus_per_trial)  # fmt: skip
        fits = ray.get(refs)
        extra = {"trials": len(grid), "best_config": json.dumps(params, default=str),
                 "sweep_val": sweep_val, "recipe_val": recipe_val}  # fmt: skip
        result = result_from_fits(
            TUNED_METHOD, config.name, task=task, labels=labels, fits=[f.fit for f in fits],
            out=task_dir, nodes=[f.node for f in fits], devices=[f.device for f in fits],
            extra=extra,
        )  # fmt: skip
        row = result.as_row()
        (task_dir / "best.json").write_text(json.dumps(row, indent=2, default=str))
        log_numbers(client, parent, row, prefix="best/")
        client.log_artifact(parent, str(task_dir / "trials.csv"))
        client.log_artifact(parent, str(task_dir / "best.json"))
        return result


def run_tune(
    tasks: Sequence[tuple[str, LabelSet, int]],
    features: Features | ray.ObjectRef,
    out: str,
    section: TuneSection,
    *,
    recipes: Mapping[str, ProbeConfig] | None = None,
    tracking_uri: str,
    fit_seeds: FitSeeds,
    verbose: int = 1,
    trial_resources: Mapping[str, float | int | None] | None = None,
) -> list[ProbeResult]:
    """Sweep probe hyperparameters on each task (the recipe is the first trial), retrain
    the best configuration with ``section.seeds`` seeds and score it on the test split once
    per seed.

    Args:
        tasks: ``(name, labels, skipped)`` per task (e.g.
            :class:`lvmae.probes.features.ProbeTask`): the labels restricted to videos with
            features, and how many labelled videos were left out.
        features: features of every labelled video, or a reference to them in the object
            store (:func:`pipelines.probe_tasks.load_features_remote`); a plain table is put in the
            object store once.
        out: the output directory; everything goes under ``<out>/tune``.
        section: trials per task, the search space file (:func:`tune.space.load_space`),
            the kinds, ASHA's grace period, seeds, concurrent trials, GPUs per trial
            (default 0.25 when the cluster has GPUs, else 0), the device and search seed.
        recipes: the resolved recipe of each kind of ``section.probes`` (default: the
            paper's): the first trial and the centre of the default space.
        tracking_uri: the MLflow store (experiment ``lvmae-tune``: one run per task, the
            trials nested under it).
        fit_seeds: starts the final retraining's Ray tasks, one per seed
            (:func:`pipelines.probe_tasks.fit_seeds`).
        verbose: Ray Tune's verbosity (0-3).
        trial_resources: what each trial reserves (``cpus``, ``gpus``, ``count`` at once;
            the stage's ``resources()``): default 1 CPU, ``section.gpus_per_trial``,
            ``section.max_concurrent``.

    Returns:
        One ``lvmae-tuned`` :class:`~lvmae.probes.results.ProbeResult` per task, with ``trials``,
        ``best_config`` (JSON), ``sweep_val`` (the chosen trial's val) and ``recipe_val``
        (the recipe trial's val); also written to ``<out>/tune/results.csv|md``.

    Raises:
        ConfigError: a bad search space, before any trial starts.
    """
    recipes = dict(recipes or {k: ProbeConfig.paper(k) for k in section.probes})
    space = load_space(section.space, recipes=recipes)
    if not ray.is_initialized():
        ray.init(configure_logging=True, logging_level=logging.WARNING)
    ref = features if isinstance(features, ray.ObjectRef) else ray.put(features)
    trial = {"cpus": 1.0, "gpus": section.gpus_per_trial, "count": section.max_concurrent}
    trial |= dict(trial_resources or {})
    gpus = task_gpus(trial["gpus"], section.device, lambda: ray.cluster_resources().get("GPU", 0))
    section = section.model_copy(
        update={"max_concurrent": int(trial["count"] or section.max_concurrent)}
    )
    results = []
    for name, labels, _skipped in tasks:
        results.append(
            _sweep_task(name, labels, ref, space, section, recipes=recipes, out=out,
                        tracking_uri=tracking_uri, gpus_per_trial=gpus, fit_seeds=fit_seeds,
                        verbose=verbose, cpus_per_trial=float(trial["cpus"]))
        )  # fmt: skip
    write_results(results, Path(out) / "tune")
    return results
