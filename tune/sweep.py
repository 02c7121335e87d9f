"""Ray Tune sweeps over probe hyperparameters on the frozen LV-MAE encoder.

Per task (labels file): the encoder's features are computed once (cached) and put in the
object store; each trial trains one probe (:func:`lvmae.probes.train_probe`) and reports the
validation metric every epoch, so ASHA stops weak trials early; Optuna proposes the next
configurations (random search when Optuna is not installed) under a concurrency limit.
Trials never see the test labels (validation stands in for test inside a trial). Each trial
is an MLflow run nested under the sweep's run; the best configuration is then retrained and
scored on the test split once. Outputs per task under ``<out>/tune/<task>/``:
``trials.csv`` and ``best.json``; ``<out>/tune/results.csv|md`` over all tasks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lvmae.config import ConfigError, read_yaml_mapping

log = logging.getLogger(__name__)

DEFAULT_SPACE: dict[str, dict] = {
    "probe": {"choice": ["linear", "attentive"]},
    "lr": {"loguniform": [1e-5, 3e-3]},
    "weight_decay": {"loguniform": [1e-6, 1e-2]},
    "batch_size": {"choice": [8, 16, 32]},
    "epochs": {"choice": [10, 20, 30]},
    "dropout": {"uniform": [0.0, 0.3]},
}
SAMPLERS = ("choice", "uniform", "loguniform", "randint", "grid")
KNOBS = {"probe", "lr", "weight_decay", "batch_size", "epochs", "dropout", "gamma"}


def load_space(path: str | None = None) -> dict[str, Any]:
    """A Tune search space from YAML (``{param: {sampler: args}}``, samplers
    ``choice``/``uniform``/``loguniform``/``randint``/``grid``, or a plain constant);
    :data:`DEFAULT_SPACE` when ``path`` is None.

    Raises:
        ConfigError: unreadable file, unknown parameter or sampler, bad arguments.
    """
    from ray import tune

    spec = DEFAULT_SPACE
    if path is not None:
        spec = read_yaml_mapping(path, "search space")
    space: dict[str, Any] = {}
    for name, value in spec.items():
        if name not in KNOBS:
            raise ConfigError(f"search space: unknown parameter {name!r}; known: {sorted(KNOBS)}")
        if not isinstance(value, dict):
            space[name] = value
            continue
        if len(value) != 1 or next(iter(value)) not in SAMPLERS:
            raise ConfigError(
                f"search space: {name}: expected one sampler of {SAMPLERS}, got {value!r}"
            )
        sampler, args = next(iter(value.items()))
        try:
            if sampler in ("choice", "grid"):
                space[name] = (tune.choice if sampler == "choice" else tune.grid_search)(list(args))
            else:
                low, high = (float(a) for a in args)
                if sampler == "randint":
                    space[name] = tune.randint(int(low), int(high))
                else:
                    space[name] = getattr(tune, sampler)(low, high)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"search space: {name}: bad {sampler} arguments {args!r}") from exc
    return space


def _max_epochs(spec_space: dict[str, Any]) -> int:
    epochs = spec_space.get("epochs", 30)
    if hasattr(epochs, "categories"):
        return max(epochs.categories)
    if isinstance(epochs, dict) and "grid_search" in epochs:
        return max(epochs["grid_search"])
    if hasattr(epochs, "upper"):
        return int(epochs.upper)
    return int(epochs)


def _probe_config(params: dict[str, Any]):
    from lvmae.probes import ProbeConfig

    kind = params.get("probe", "linear")
    keys = ("lr", "weight_decay", "batch_size", "epochs", "dropout", "gamma")
    return ProbeConfig(kind=kind, **{k: params[k] for k in keys if k in params})


def _trial(params: dict[str, Any], *, data, task: str, tracking: dict) -> None:
    """One Tune trial: train a probe, report validation metrics every epoch."""
    import torch
    from mlflow.tracking import MlflowClient
    from ray import tune

    from pipelines.probe import evaluate

    torch.set_num_threads(1)
    labels, features = data
    config = _probe_config(params)
    client = MlflowClient(tracking_uri=tracking["uri"])
    run = client.create_run(
        tracking["experiment_id"],
        run_name=f"{task}:{tune.get_context().get_trial_name()}",
        tags={"mlflow.parentRunId": tracking["parent"], "lvmae.stage": "tune-trial"},
    )
    for key, value in config.to_dict().items():
        client.log_param(run.info.run_id, key, value)

    def report(epoch: int, metrics: dict) -> None:
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, float(value), step=epoch)
        tune.report({**metrics, "epoch": epoch + 1})

    try:
        evaluate(labels, features, config, on_epoch=report, use_test=False)
    finally:
        client.set_terminated(run.info.run_id)


def run_tune(
    checkpoint: str,
    embeddings: str,
    labels_paths: list[str],
    out: str,
    *,
    num_samples: int = 16,
    space_path: str | None = None,
    max_concurrent: int = 2,
    gpus_per_trial: float | None = None,
    tracking_uri: str | None = None,
    seed: int = 0,
    verbose: int = 1,
) -> list[dict]:
    """Sweep probe hyperparameters on each task (labels file), retrain the best
    configuration and score it on the test split once.

    Returns one row per task: the best configuration, its validation metric and its test
    metrics. Raises ConfigError (bad space), ProbeError/LabelsError/StorageError (bad data)
    before any trial starts.
    """
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from lvmae.probes import VAL_METRIC
    from lvmae.storage import read_segments
    from pipelines.probe import (
        _row,
        compute_features,
        evaluate,
        load_features,
        load_task,
        write_results,
    )
    from pipelines.tracking import open_run, tracking_uri_near

    space = load_space(space_path)
    available = set(read_segments(embeddings, columns=["video_id"])["video_id"].to_pylist())
    tasks = [(Path(p).stem, *load_task(p, available)) for p in labels_paths]
    features = load_features(compute_features(checkpoint, embeddings, out))
    if not ray.is_initialized():
        ray.init(configure_logging=True, logging_level=logging.WARNING)
    if gpus_per_trial is None:
        gpus_per_trial = 0.25 if ray.cluster_resources().get("GPU", 0) else 0.0
    uri = tracking_uri or tracking_uri_near(checkpoint, out)
    client = MlflowClient(tracking_uri=uri)
    out_dir = Path(out) / "tune"
    rows = []
    for task, labels, unknown in tasks:
        if unknown:
            log.warning("%s: %d labelled videos without embeddings skipped", task, len(unknown))
        metric, mode = VAL_METRIC[labels.task]
        parent = open_run(
            uri, "lvmae-tune", f"sweep:{task}:{Path(out).absolute()}", out=out,
            tags={"lvmae.stage": "tune"},
            params={"task": task, "num_samples": num_samples, "space": json.dumps(
                {k: str(v) for k, v in space.items()})},
        )  # fmt: skip
        experiment_id = client.get_run(parent).info.experiment_id
        try:
            from ray.tune.search.optuna import OptunaSearch

            search = ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=max_concurrent)
        except ImportError:  # optuna missing: Tune's random search
            log.warning("optuna is not installed: random search")
            search = None
        trainable = tune.with_resources(
            tune.with_parameters(
                _trial,
                data=(labels, features),
                task=task,
                tracking={"uri": uri, "experiment_id": experiment_id, "parent": parent},
            ),
            {"cpu": 1, "gpu": gpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                num_samples=num_samples,
                search_alg=search,
                max_concurrent_trials=max_concurrent,
                scheduler=ASHAScheduler(
                    time_attr="epoch", max_t=_max_epochs(space), grace_period=2
                ),
            ),
            run_config=tune.RunConfig(
                name=f"tune-{task}", storage_path=str(out_dir.absolute() / "ray"), verbose=verbose
            ),
        )
        grid = tuner.fit()
        best = grid.get_best_result(metric=metric, mode=mode, scope="all")
        task_dir = out_dir / task
        task_dir.mkdir(parents=True, exist_ok=True)
        grid.get_dataframe().to_csv(task_dir / "trials.csv", index=False)
        params = {k: best.config[k] for k in space if k in best.config}
        final = evaluate(labels, features, _probe_config(params))  # the test split, once
        row = _row(
            "lvmae-tuned", params.get("probe", "linear"), task=task, labels=labels,
            result=final, out=task_dir,
        ) | {"trials": len(grid), "best_config": json.dumps(params, default=str)}  # fmt: skip
        (task_dir / "best.json").write_text(json.dumps(row, indent=2, default=str))
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                client.log_metric(parent, f"best/{key}", float(value))
        client.log_artifact(parent, str(task_dir / "trials.csv"))
        client.log_artifact(parent, str(task_dir / "best.json"))
        rows.append(row)
    write_results(rows, out_dir)
    return rows
