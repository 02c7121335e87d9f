"""MLflow tracking shared by the jobs: one tracking store per output directory by default
(``sqlite:///<out>/mlflow.db``, artifacts under ``<out>/mlartifacts``), or the server named
by ``MLFLOW_TRACKING_URI`` on a cluster."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

ARTIFACTS_DIR = "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by

# (experiment name, parent run id) of the enclosing stage of `lvmae run`, if any.
_PARENT: ContextVar[tuple[str, str] | None] = ContextVar("lvmae_mlflow_parent", default=None)


@contextmanager
def nested_under(experiment: str, parent_run_id: str) -> Iterator[None]:
    """Within this block, :func:`open_run` creates (and finds) its runs in ``experiment`` as
    children of ``parent_run_id``, whatever experiment the job asked for: how ``lvmae run``
    nests every stage's runs under its stage run."""
    token = _PARENT.set((experiment, parent_run_id))
    try:
        yield
    finally:
        _PARENT.reset(token)


def default_tracking_uri(out: str) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store under ``out`` (a local path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{Path(out).absolute() / 'mlflow.db'}"
    )


def metric_key(name: str) -> str:
    """An MLflow-legal metric name (``R@1`` → ``R_at_1``; MLflow allows only alphanumerics,
    ``_ - . / :`` and spaces)."""
    return name.replace("@", "_at_")


def tracking_uri_near(checkpoint: str | Path, out: str) -> str:
    """The tracking store for a job that uses a pre-training checkpoint: ``MLFLOW_TRACKING_URI``
    when set, else the pre-training run's own SQLite store (``<pretrain out>/mlflow.db``,
    found above the checkpoint) so probes and sweeps land beside the run they evaluate, else
    :func:`default_tracking_uri` of ``out``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    for parent in list(Path(checkpoint).absolute().parents)[:3]:
        if (parent / "mlflow.db").is_file():
            return f"sqlite:///{parent / 'mlflow.db'}"
    return default_tracking_uri(out)


def open_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    *,
    out: str,
    tags: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
) -> str:
    """The id of the MLflow run tagged ``lvmae.run_name = run_name`` in ``experiment``:
    reused when it exists (a resumed job), else created with ``params`` logged (lists and
    dicts as JSON). A new experiment keeps its artifacts under ``<out>/mlartifacts`` when
    the store is a local SQLite file, never in the current directory. Inside
    :func:`nested_under`, the run lives in that block's experiment, under its parent run."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    parent = _PARENT.get()
    query = f"tags.`lvmae.run_name` = '{run_name}'"
    if parent is not None:
        experiment = parent[0]
        tags = {**(tags or {}), PARENT_TAG: parent[1]}
        query += f" and tags.`{PARENT_TAG}` = '{parent[1]}'"
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        artifacts = None
        if tracking_uri.startswith("sqlite:///") and "://" not in out:
            artifacts = (Path(out).absolute() / ARTIFACTS_DIR).as_uri()
        experiment_id = client.create_experiment(experiment, artifact_location=artifacts)
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if runs:
        return runs[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=run_name, tags={"lvmae.run_name": run_name, **(tags or {})}
    )
    items = []
    for key, value in sorted((params or {}).items()):
        text = json.dumps(value) if isinstance(value, list | dict | tuple) else str(value)
        items.append(Param(key, text[:6000]))
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def mlflow_ui_hint(tracking_uri: str) -> str:
    """How to open the MLflow UI on ``tracking_uri`` (the project installs mlflow-skinny,
    which has no UI server: the UI comes with the full ``mlflow`` package)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"MLflow UI: {tracking_uri}"
    return (
        f"MLflow UI (needs the full `mlflow` package, e.g. `pip install mlflow` in another "
        f"environment): mlflow ui --backend-store-uri {tracking_uri}"
    )
