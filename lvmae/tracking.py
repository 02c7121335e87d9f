"""MLflow tracking shared by the jobs: one tracking store per output directory by default
(``sqlite:///<out>/mlflow.db``, artifacts under ``<out>/mlartifacts``), or the server named
by ``MLFLOW_TRACKING_URI`` on a cluster."""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs
from filelock import FileLock

from lvmae.errors import LvmaeError
from lvmae.storage import read_manifest

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "mlartifacts"
STORE_FILE = "mlflow.db"
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
        f"sqlite:///{Path(out).absolute() / STORE_FILE}"
    )


CACHE_ENV = "LVMAE_CACHE_DIR"


def cache_dir() -> Path:
    """This machine's cache of what lvmae makes once and reuses: ``LVMAE_CACHE_DIR``, else
    the user cache directory (``~/.cache/lvmae`` on Linux, by ``platformdirs``)."""
    return Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("lvmae")).expanduser()


@functools.cache
def _empty_store() -> Path | None:
    """An empty SQLite tracking store with this MLflow version's schema, made once per
    machine under :func:`cache_dir` (a new store runs every MLflow schema migration: about
    2 CPU-s, ``benchmarks/RESULTS.md`` "Fixed start cost"). It holds no experiment: MLflow
    creates its ``Default`` experiment, with the new store's own artifact root and time,
    when a store without one is opened. None when the cache cannot be written (each new
    store is then migrated as MLflow does it)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    folder = cache_dir() / "mlflow"
    path = folder / f"empty-store-{mlflow.__version__}.db"
    if path.is_file():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=300):  # another process may be making it
            if not path.is_file():
                part = folder / f".part-{os.getpid()}-{path.name}"
                part.unlink(missing_ok=True)
                MlflowClient(tracking_uri=f"sqlite:///{part}").search_experiments(max_results=1)
                with contextlib.closing(sqlite3.connect(part)) as db, db:
                    db.execute("DELETE FROM experiments")  # MLflow makes Default on open
                part.replace(path)
    except Exception as exc:  # any failure: MLflow migrates each new store itself
        log.debug("no MLflow store template in %s: %s", folder, exc)
        return None
    return path


def prepare_local_store(tracking_uri: str) -> None:
    """Give a local SQLite store that does not exist yet (``sqlite:///<path>``, its folder
    existing) its schema by copying :func:`_empty_store`: what MLflow's migrations would
    make, in milliseconds. Anything else (another backend, an existing file, a missing
    folder, a cache that cannot be written) is left to MLflow. Two processes preparing the
    same store never overwrite each other (the copy is linked in only where no file is)."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    if db.exists() or not db.parent.is_dir():
        return
    template = _empty_store()
    if template is None:
        return
    part = db.with_name(f".{db.name}.{os.getpid()}.part")
    try:
        shutil.copyfile(template, part)
        os.link(part, db)  # fails where a store appeared meanwhile: that one is kept
    except OSError as exc:
        log.debug("store %s left to MLflow: %s", db, exc)
    finally:
        part.unlink(missing_ok=True)


def tracking_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` on ``tracking_uri``, a new local SQLite store made first from the
    migrated template (:func:`prepare_local_store`): a client opens its store at once, and on
    a new file MLflow would run every schema migration itself (about 2 CPU-s, and two INFO
    lines on the console)."""
    from mlflow.tracking import MlflowClient

    prepare_local_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def metric_key(name: str) -> str:
    """An MLflow-legal metric name (``R@1`` → ``R_at_1``; MLflow allows only alphanumerics,
    ``_ - . / :`` and spaces)."""
    return name.replace("@", "_at_")


def resolve_tracking_uri(given: str | None, out: str, *, near: str | Path | None = None) -> str:
    """The MLflow store a job logs to, decided here and nowhere else: ``given`` (a config's
    ``tracking_uri``, or the one the main job resolved for all its stages), else
    ``MLFLOW_TRACKING_URI``, else — for a job that uses a pre-training checkpoint (``near``)
    — the pre-training run's own SQLite store (``mlflow.db`` up to three folders above the
    checkpoint), so probes, sweeps and monitors land beside the run they evaluate, else
    :func:`default_tracking_uri` of ``out``."""
    if given:
        return given
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if near is not None:
        for parent in list(Path(near).absolute().parents)[:3]:
            if (parent / STORE_FILE).is_file():
                return f"sqlite:///{parent / STORE_FILE}"
    return default_tracking_uri(out)


def filter_literal(value: str) -> str | None:
    """``value`` as a string literal of an MLflow search filter: in single quotes, or in
    double quotes when it holds a single quote; None when it holds both (MLflow's filter
    grammar has no escape for that: match such a value in Python instead)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def find_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The id of a run of ``experiment_id`` carrying every tag of ``tags`` (any text:
    quotes, spaces, non-ASCII), or None. Matched by MLflow's search filter where the values
    can be quoted in it (:func:`filter_literal`), else by the tags themselves."""
    literals = {k: filter_literal(v) for k, v in tags.items()}
    query = " and ".join(f"tags.`{k}` = {lit}" for k, lit in literals.items() if lit)
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, page_token=token)
        for run in page:
            if all(run.data.tags.get(k) == v for k, v in tags.items()):
                return run.info.run_id
        token = page.token
        if not token:
            return None


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
    :func:`nested_under`, the run lives in that block's experiment, under its parent run.
    Any run name works (quotes, spaces, non-ASCII: :func:`find_run`). A new local SQLite
    store starts from :func:`prepare_local_store`."""
    from mlflow.entities import Param

    client = tracking_client(tracking_uri)
    parent = _PARENT.get()
    match = {"lvmae.run_name": run_name}
    if parent is not None:
        experiment = parent[0]
        tags = {**(tags or {}), PARENT_TAG: parent[1]}
        match[PARENT_TAG] = parent[1]
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        artifacts = None
        if tracking_uri.startswith("sqlite:///") and "://" not in out:
            artifacts = (Path(out).absolute() / ARTIFACTS_DIR).as_uri()
        experiment_id = client.create_experiment(experiment, artifact_location=artifacts)
    found_id = find_run(client, experiment_id, match)
    if found_id is not None:
        return found_id
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={**source_tags(), "lvmae.run_name": run_name, **(tags or {})},
    )
    items = []
    for key, value in sorted((params or {}).items()):
        text = json.dumps(value) if isinstance(value, list | dict | tuple) else str(value)
        items.append(Param(key, text[:6000]))
    try:
        for i in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=items[i : i + 100])
    except BaseException as exc:  # e.g. Ctrl-C / SIGTERM now: MLflow made the run RUNNING
        end_run(client, run.info.run_id, exc)
        raise
    return run.info.run_id


@contextmanager
def system_metrics(run_id: str, tracking_uri: str, interval_s: float = 10.0) -> Iterator[None]:
    """Log this machine's CPU, memory, disk, network and (where present) GPU use to
    ``run_id`` every ``interval_s`` seconds (MLflow's ``system/...`` metrics) while the
    block runs."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval_s, resume_logging=True, tracking_uri=tracking_uri
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def log_numbers(
    client: MlflowClient, run_id: str, values: Mapping[str, Any], *, step: int = 0, prefix: str = ""
) -> None:
    """Log the real-number entries of ``values`` (bools and non-numbers left out) as metrics
    at ``step``, in one call per 1,000 (MLflow's batch limit)."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    metrics = [
        Metric(metric_key(prefix + k), float(v), ts, step)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def end_run(
    client: MlflowClient,
    run_id: str,
    exc: BaseException | None,
    *,
    children: bool = False,
    stopped: str = "stopped before its end (SystemExit 0)",
) -> None:
    """End ``run_id``: FINISHED, or FAILED (KILLED on Ctrl-C) with the error in the
    ``lvmae.error`` tag. A clean ``SystemExit`` (code 0 or None: the run was told to stop,
    as Ray Tune stops a function trial) is KILLED with ``stopped`` as that tag. With
    ``children``, first end the same way the runs nested under it (``PARENT_TAG``) that are
    still RUNNING, e.g. those of a Ray task that died with the stage. The one place that
    decides how a run of this project ends."""
    if children:
        experiment_id = client.get_run(run_id).info.experiment_id
        mine = f"tags.`{PARENT_TAG}` = '{run_id}' and attributes.status = 'RUNNING'"
        for child in client.search_runs([experiment_id], filter_string=mine):
            end_run(client, child.info.run_id, exc, children=True, stopped=stopped)
    if exc is None:
        client.set_terminated(run_id, "FINISHED")
        return
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        client.set_tag(run_id, "lvmae.error", stopped)
        client.set_terminated(run_id, "KILLED")
        return
    client.set_tag(run_id, "lvmae.error", f"{type(exc).__name__}: {exc}"[:5000])
    client.set_terminated(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")


@contextmanager
def run_status(client: MlflowClient, run_id: str, **how: Any) -> Iterator[None]:
    """``run_id`` RUNNING for the block, then ended however the block exits
    (:func:`end_run`, with ``how`` its keywords ``children`` and ``stopped``; the exception
    propagates, even when ending the run fails too, e.g. on a full disk: that is logged)."""
    try:
        client.update_run(run_id, status="RUNNING")
        yield
    except BaseException as exc:
        try:
            end_run(client, run_id, exc, **how)
        except Exception as end_exc:  # e.g. the store's disk is full too: the cause wins
            log.info("could not mark MLflow run %s failed: %s", run_id, end_exc)
        raise
    end_run(client, run_id, None, **how)


@contextmanager
def tracked_run(
    tracking_uri: str, *names: str, with_system_metrics: bool = False, **run: Any
) -> Iterator[str]:
    """:func:`open_run` (``names`` are its experiment and run name, ``run`` its keywords:
    ``out``, ``tags``, ``params``), marked RUNNING for the block and ended however the block
    exits (:func:`run_status`: FINISHED, or FAILED with the error as the ``lvmae.error`` tag;
    the exception propagates). Yields the run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = open_run(tracking_uri, *names, **run)
    with run_status(client, run_id):
        if with_system_metrics:
            with system_metrics(run_id, tracking_uri):
                yield run_id
        else:
            yield run_id


def log_embeddings_input(tracking_uri: str, run_id: str, embeddings: str) -> None:
    """Record that ``run_id`` read the segment embeddings under ``embeddings`` (MLflow's
    dataset lineage): the URI as the source and the extraction's ``config_id`` (from its
    manifest) as the digest, context ``training``."""
    manifest = read_manifest(embeddings) or {}
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    dataset = Dataset(
        name="segment-embeddings",
        digest=str(manifest.get("config_id", "unknown")),
        source_type="path" if "://" not in embeddings else embeddings.split("://", maxsplit=1)[0],
        source=json.dumps({"uri": embeddings}),
        schema=json.dumps({"encoder": manifest.get("encoder", {}).get("name")}),
    )
    tags = [InputTag(key="mlflow.data.context", value="training")]
    MlflowClient(tracking_uri=tracking_uri).log_inputs(run_id, [DatasetInput(dataset, tags)])


def mlflow_ui_hint(tracking_uri: str) -> str:
    """How to open the MLflow UI on ``tracking_uri``: its URL for a tracking server, else
    ``lvmae ui <dir>`` for a store at ``<dir>/mlflow.db`` (or ``mlflow ui``)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"MLflow UI: {tracking_uri}"
    if tracking_uri.startswith("sqlite:///") and tracking_uri.endswith("/" + STORE_FILE):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
        return f"MLflow UI: lvmae ui {folder}  (then open http://127.0.0.1:5000)"
    return f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri}"


class TrackingError(LvmaeError, ValueError):
    """A tracking store cannot be found or served; the message says what to fix."""


@functools.cache
def source_tags() -> dict[str, str]:
    """MLflow's source tags for runs this process opens: the command (``mlflow.source.name``),
    ``mlflow.source.type`` ``LOCAL``, the user (``mlflow.user``) and, inside a git checkout,
    the commit (``mlflow.source.git.commit``) and whether the tree had uncommitted changes
    (``lvmae.git.dirty``)."""
    tags = {
        "mlflow.source.name": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500] or "python",
        "mlflow.source.type": "LOCAL",
        "mlflow.user": getpass.getuser(),
    }
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return tags  # an installed package or an image without git: no commit to record
    tags["mlflow.source.git.commit"] = commit
    tags["lvmae.git.dirty"] = str(bool(dirty)).lower()
    return tags


def ui_command(workdir: str | Path, *, host: str = "127.0.0.1", port: int = 5000):
    """The command that serves the MLflow UI on ``<workdir>/mlflow.db`` (the store the jobs
    write by default) and that store's URI: ``(argv, tracking_uri)``.

    Raises:
        TrackingError: ``workdir`` holds no ``mlflow.db``.
    """
    db = Path(workdir).absolute() / STORE_FILE
    if not db.is_file():
        raise TrackingError(
            f"no MLflow store at {db}: run `lvmae demo` (or a job writing to {workdir}) "
            f"first, or open a tracking server's URL"
        )
    uri = f"sqlite:///{db}"
    argv = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    return argv, uri
