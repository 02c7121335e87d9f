"""The main job: extract → pretrain → probe → tune → report, in one command (``lvmae run``).

One YAML file configures the whole chain (``configs/demo.yaml``, ``configs/paper.yaml``, the
LVU / COIN / Breakfast presets): a ``run:`` section (inputs, labels, work directory, stages,
MLflow, Ray address), an optional ``samples:`` section (generate the procedural sample
library first: the demo), and one section per stage (``extract:``, ``pretrain:``,
``probe:``, ``tune:``) holding that stage's own settings.

**Stages skip what is done.** Each finished stage writes ``<workdir>/stages/<stage>.json``
with a *fingerprint* (its own settings plus the result digests of the stages it reads) and a
*digest* of its outputs. A stage is skipped when its record's fingerprint equals the one the
current config gives, so a rerun resumes where the last one stopped, a changed probe recipe
reruns only probe and report, and a rerun extraction that changed nothing keeps everything
downstream. Within a stage, work resumes too: extraction skips the videos already done and
pre-training continues from its latest checkpoint.

**Tracking.** One MLflow parent run per run name and config, a nested run per stage (a
skipped stage's run says so), and each stage's own runs nested under its stage run. The
report (Markdown + HTML with plots) is logged to the report stage and to the parent.

**Failures.** The whole config is validated, and every input checked, before any work. A
stage that fails marks its MLflow runs failed and raises :class:`StageError` naming the stage
and the stages kept; the records of finished stages stay, so the next run starts at the
failed stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lvmae.config import (
    ConfigError,
    ExtractConfig,
    PretrainConfig,
    format_validation_error,
    read_yaml_mapping,
)

log = logging.getLogger(__name__)

STAGES = ("extract", "pretrain", "probe", "tune", "report")
STAGES_DIR = "stages"
Stage = Literal["extract", "pretrain", "probe", "tune", "report"]
UPSTREAM: dict[str, tuple[str, ...]] = {
    "extract": (),
    "pretrain": ("extract",),
    "probe": ("extract", "pretrain"),
    "tune": ("extract", "pretrain"),
    "report": ("extract", "pretrain", "probe", "tune"),
}
"""The stages whose outputs each stage reads (report reads whichever of them ran)."""


class StageError(RuntimeError):
    """A stage of ``lvmae run`` failed or cannot start; the message names the stage, the
    cause and the stages whose outputs are kept."""


# --------------------------------------------------------------------------- config


class LabelsSource(BaseModel):
    """A labels file made from a public benchmark's annotations during the probe stage
    (matched to the extracted videos' ids): see :mod:`lvmae.labels`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Literal["lvu", "coin", "breakfast"]
    source: str = Field(description="LVU root, COIN.json, or the Breakfast video root")
    task: str | None = Field(None, description="LVU task (director, genre, ..., view_count)")
    split: str = Field("s1", description="Breakfast split (s1..s4)")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="val carved from train")
    name: str | None = Field(None, description="task name in the results (default derived)")

    @model_validator(mode="after")
    def _check(self) -> LabelsSource:
        if self.dataset == "lvu" and not self.task:
            raise ValueError("an LVU labels source needs `task:` (director, genre, ...)")
        return self

    def task_name(self) -> str:
        return self.name or (f"lvu_{self.task}" if self.dataset == "lvu" else self.dataset)


class RunSection(BaseModel):
    """Where the run reads and writes, which stages it runs, and how it is tracked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("lvmae", min_length=1, description="run name (MLflow, checkpoints)")
    input: str = Field(description="videos: directory, glob or list file; path or URI")
    workdir: str = Field(
        "work/run",
        description="local or shared-filesystem directory: stage records, checkpoints, "
        "probe results, report, the default MLflow store",
    )
    embeddings: str | None = Field(
        None, description="extraction output (may be s3:// or gs://); default <workdir>/extract"
    )
    labels: list[str | LabelsSource] = Field(
        default_factory=list, description="labels files (a task each) or benchmark sources"
    )
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES))
    experiment: str = Field("lvmae", min_length=1, description="MLflow experiment")
    tracking_uri: str | None = Field(
        None, description="MLflow store (default MLFLOW_TRACKING_URI, else <workdir>/mlflow.db)"
    )
    address: str | None = Field(None, description="Ray cluster (default RAY_ADDRESS or local)")

    @model_validator(mode="after")
    def _check(self) -> RunSection:
        if "://" in self.workdir:
            raise ValueError(
                f"workdir {self.workdir!r} must be a local or shared-filesystem path (it holds "
                f"checkpoints and the MLflow store); put the extraction output in object "
                f"storage with run.embeddings: s3://..."
            )
        if len(set(self.stages)) != len(self.stages) or not self.stages:
            raise ValueError(f"stages must be distinct names from {STAGES}, got {self.stages}")
        return self

    def embeddings_uri(self) -> str:
        return self.embeddings or str(Path(self.workdir) / "extract")


class SamplesSection(BaseModel):
    """Generate the procedural sample library into ``run.input`` first (the demo; see
    :func:`lvmae.samples.make_samples`); its ``labels.csv`` is added to the run's labels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    videos_per_recipe: int = Field(3, ge=1)
    min_seconds: float = Field(60.0, ge=1, description="shortest video, seconds")
    max_seconds: float = Field(180.0, ge=1, description="longest video, seconds")
    recipes: list[str] | None = Field(None, description="default: all recipes")
    width: int = Field(160, ge=16)
    height: int = Field(120, ge=16)
    fps: int = Field(10, ge=1)
    seed: int = 0
    with_broken: bool = Field(True, description="add damaged files (they become failures)")

    @model_validator(mode="after")
    def _check(self) -> SamplesSection:
        from lvmae.samples import RECIPES

        if self.min_seconds > self.max_seconds:
            raise ValueError("min_seconds must not exceed max_seconds")
        unknown = sorted(set(self.recipes or ()) - set(RECIPES))
        if unknown:
            raise ValueError(f"unknown recipes {unknown}; known: {sorted(RECIPES)}")
        return self


class ProbeSection(BaseModel):
    """Probes on the frozen encoder and the baselines scored on the same splits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    probes: list[Literal["linear", "attentive", "pooler"]] = Field(
        default_factory=lambda: ["linear", "attentive"]
    )
    baselines: list[Literal["mean-pool", "transformer"]] = Field(
        default_factory=lambda: ["mean-pool"]
    )
    recipes: dict[Literal["linear", "attentive", "pooler"], dict[str, Any]] = Field(
        default_factory=dict, description="per-probe recipe fields over the paper's"
    )
    device: str = Field("cpu", description="torch device of the probes")

    @model_validator(mode="after")
    def _check(self) -> ProbeSection:
        from lvmae.probes import ProbeConfig

        if not self.probes:
            raise ValueError("probes must name at least one probe")
        for kind, fields in self.recipes.items():
            ProbeConfig(kind=kind, **fields)  # raises with the field's message
        return self


class TuneSection(BaseModel):
    """The Ray Tune sweep over probe hyperparameters (see :func:`tune.sweep.run_tune`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_samples: int = Field(16, ge=1, description="trials per task")
    space: str | None = Field(None, description="search space YAML (default: built in)")
    max_concurrent: int = Field(2, ge=1)
    gpus_per_trial: float | None = Field(None, ge=0)
    seed: int = 0


class RunConfig(BaseModel):
    """The whole main job's configuration (one YAML file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: RunSection
    samples: SamplesSection | None = None
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    probe: ProbeSection = Field(default_factory=ProbeSection)
    tune: TuneSection = Field(default_factory=TuneSection)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        wants_labels = {"probe", "tune"} & set(self.run.stages)
        if wants_labels and not self.run.labels and self.samples is None:
            raise ValueError(
                f"stages {sorted(wants_labels)} need run.labels (labels files or benchmark "
                f"sources); add them or drop those stages"
            )
        return self

    def digest(self) -> str:
        """Short hash of the whole configuration."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:8]


def _set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    *parents, last = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    node[last] = value


def load_run_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a run config YAML, then apply ``overrides`` keyed by dotted paths
    (``{"run.workdir": "work/x", "pretrain.epochs": 3}``).

    Raises:
        ConfigError: missing file, invalid YAML, unknown sections or fields, bad values —
            one line per problem, naming the file and the field.
    """
    data = read_yaml_mapping(path, "run config") if path is not None else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path or "config"))) from exc


def demo_config(workdir: str | Path = "work/demo") -> RunConfig:
    """The demo's configuration (``configs/demo.yaml`` with ``run.workdir`` = ``workdir``):
    the scene-order sample recipes (classes share their scenes and differ only in order),
    the offline ``tiny`` encoder, a tiny LV-MAE for a few dozen epochs on 2 CPU workers, the
    linear and attentive probes against the mean-pool baseline, a small sweep. A few
    minutes on 2 cores."""
    w = Path(workdir)
    return load_run_config(
        None,
        {
            "run.name": "demo",
            "run.input": str(w / "videos"),
            "run.workdir": str(w),
            "run.experiment": "lvmae-demo",
            **{f"samples.{k}": v for k, v in DEMO_SAMPLES.items()},
            **{f"pretrain.{k}": v for k, v in DEMO_PRETRAIN.items()},
            "probe.recipes": DEMO_PROBE_RECIPES,
            "tune.num_samples": 4,
        },
    )


DEMO_SAMPLES: dict[str, Any] = {
    "videos_per_recipe": 32,
    "min_seconds": 30,
    "max_seconds": 50,
    "recipes": ["order_abcd", "order_badc", "order_cdab", "order_dcba"],
}
DEMO_PRETRAIN: dict[str, Any] = {
    "preset": "tiny",
    "num_workers": 2,
    "epochs": 25,
    "warmup_epochs": 3,
    "batch_size": 16,
    "blr": 1.0e-3,
    "max_tokens": 32,
    "checkpoint_every_steps": 1000,
    "log_every_steps": 5,
}
DEMO_PROBE_RECIPES: dict[str, dict[str, Any]] = {
    "linear": {"lr": 1.0e-2, "epochs": 100, "batch_size": 8, "weight_decay": 1.0e-2,
               "batch_norm": True},
    "attentive": {"lr": 1.0e-3, "epochs": 30, "gamma": 0.95, "heads": 4},
}


# --------------------------------------------------------------------------- records


def _sha(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: str) -> str:
    p = Path(path)
    return hashlib.sha1(p.read_bytes()).hexdigest()[:16] if p.is_file() else "missing"


@dataclass
class StageRecord:
    """What a finished stage left: its ``fingerprint`` (inputs), ``digest`` (outputs),
    ``outputs`` (paths, metrics) and when it finished."""

    stage: str
    fingerprint: str
    digest: str
    outputs: dict[str, Any]
    finished_at: str = ""
    wall_s: float = 0.0

    @classmethod
    def read(cls, workdir: str, stage: str) -> StageRecord | None:
        """``<workdir>/stages/<stage>.json``, or None when missing or unreadable."""
        path = Path(workdir) / STAGES_DIR / f"{stage}.json"
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            log.warning("ignoring an unreadable stage record %s", path)
            return None

    def write(self, workdir: str) -> Path:
        """Write the record atomically (temporary file, then rename); returns its path."""
        path = Path(workdir) / STAGES_DIR / f"{self.stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2, sort_keys=True, default=str))
        tmp.replace(path)
        return path


@dataclass
class RunResult:
    """What :func:`run_main` did: per stage ``ran`` / ``skipped``, the records, the MLflow
    parent run id and tracking URI, the report paths and the probe/tune result rows."""

    status: dict[str, str] = field(default_factory=dict)
    records: dict[str, StageRecord] = field(default_factory=dict)
    parent_run_id: str | None = None
    tracking_uri: str = ""
    report: dict[str, str] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- the run


class _Run:
    """One execution of the chain: config, resolved paths, records, MLflow."""

    def __init__(self, config: RunConfig, force: Sequence[str]) -> None:
        from pipelines.tracking import default_tracking_uri

        self.config = config
        self.workdir = str(Path(config.run.workdir))
        self.embeddings = config.run.embeddings_uri()
        self.force = set(force)
        self.records: dict[str, StageRecord] = {}
        for stage in STAGES:
            record = StageRecord.read(self.workdir, stage)
            if record is not None:
                self.records[stage] = record
        self.tracking_uri = config.run.tracking_uri or default_tracking_uri(self.workdir)
        self.labels_paths: list[str] | None = None  # made once, by the first stage needing them

    # fingerprints: a stage's settings + the digests of the stages it reads
    def settings(self, stage: str) -> dict[str, Any]:
        c = self.config
        if stage == "extract":
            return {
                "input": c.run.input,
                "embeddings": self.embeddings,
                "config_id": c.extract.config_id(),
            }
        if stage == "pretrain":
            skip = {"tracking_uri", "run_name", "experiment"}
            return {k: v for k, v in c.pretrain.model_dump(mode="json").items() if k not in skip}
        labels = [
            x.model_dump() if isinstance(x, LabelsSource) else {"path": x, "sha": _file_digest(x)}
            for x in c.run.labels
        ]
        if c.samples is not None:
            labels.append({"samples": c.samples.model_dump(mode="json")})
        if stage == "probe":
            return {"probe": c.probe.model_dump(mode="json"), "labels": labels}
        if stage == "tune":
            space = c.tune.space
            return {
                "tune": c.tune.model_dump(mode="json"),
                "space": _file_digest(space) if space else None,
                "labels": labels,
            }
        return {"report": 1}

    def fingerprint(self, stage: str) -> str:
        upstream = {
            s: self.records[s].digest
            for s in UPSTREAM[stage]
            if s in self.records and (stage != "report" or s in self.config.run.stages)
        }
        return _sha({"stage": stage, "settings": self.settings(stage), "upstream": upstream})

    def is_done(self, stage: str) -> bool:
        record = self.records.get(stage)
        return (
            record is not None
            and stage not in self.force
            and record.fingerprint == self.fingerprint(stage)
        )

    def require(self, stage: str, needed: str) -> StageRecord:
        record = self.records.get(needed)
        if record is None or record.fingerprint != self.fingerprint(needed):
            what = "has not run" if record is None else "ran with another config"
            raise StageError(
                f"stage {stage} reads the outputs of stage {needed}, which {what} in "
                f"{self.workdir}: add {needed} to run.stages (or --stages)"
            )
        return record


def _stage_extract(run: _Run) -> tuple[dict, str]:
    from lvmae.storage import read_videos
    from pipelines.extract import run_extraction

    summary = run_extraction(
        run.config.run.input,
        run.embeddings,
        run.config.extract,
        progress=False,
        tracking_uri=run.tracking_uri,
    )
    videos = read_videos(run.embeddings)
    rows = sorted(
        zip(
            videos["video_id"].to_pylist(),
            videos["status"].to_pylist(),
            videos["num_segments"].to_pylist(),
            videos["duration_s"].to_pylist(),
            strict=True,
        ),
        key=lambda r: r[0],
    )
    statuses = [r[1] for r in rows]
    outputs = {
        "embeddings": run.embeddings,
        "videos_ok": statuses.count("ok"),
        "videos_partial": statuses.count("partial"),
        "videos_failed": statuses.count("failed"),
        "segments": int(sum(r[2] or 0 for r in rows if r[1] != "failed")),
        "hours_of_video": round(sum(r[3] or 0.0 for r in rows if r[1] != "failed") / 3600, 4),
        "last_wall_s": round(summary.wall_s, 2),
        "failures": {r[0]: s for r, s in zip(rows, statuses, strict=True) if s != "ok"},
    }
    return outputs, _sha([r[:3] for r in rows])


def _stage_pretrain(run: _Run) -> tuple[dict, str]:
    from pipelines.pretrain import run_pretrain

    cfg = run.config.pretrain.model_copy(
        update={
            "run_name": f"{run.config.run.name}-{run.fingerprint('pretrain')[:8]}",
            "tracking_uri": run.tracking_uri,
        }
    )
    result = run_pretrain(run.embeddings, str(Path(run.workdir) / "pretrain"), cfg)
    if result.checkpoint is None:
        raise StageError("pre-training finished without a checkpoint")
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
    outputs = {
        "checkpoint": result.checkpoint,
        "run_name": result.run_name,
        "mlflow_run_id": result.mlflow_run_id,
        "metrics": metrics,
    }
    return outputs, _sha([result.checkpoint, metrics.get("step")])


def _labels_files(run: _Run) -> list[str]:
    """The run's labels files; benchmark sources are converted (matched to the extracted
    video ids) into ``<workdir>/labels/<task>.csv``, once per run (probe and tune share
    them)."""
    from lvmae import labels as lab
    from lvmae.storage import read_videos

    if run.labels_paths is not None:
        return run.labels_paths

    paths, known = [], None
    for item in run.config.run.labels:
        if isinstance(item, str):
            paths.append(item)
            continue
        if known is None:
            known = read_videos(run.embeddings)["video_id"].to_pylist()
        if item.dataset == "lvu":
            table = lab.lvu_labels(item.source, item.task, video_ids=known)
        elif item.dataset == "coin":
            table = lab.coin_labels(item.source, video_ids=known, val_fraction=item.val_fraction)
        else:
            table = lab.breakfast_labels(
                item.source, split=item.split, video_ids=known, val_fraction=item.val_fraction
            )
        target = Path(run.workdir) / "labels" / f"{item.task_name()}.csv"
        paths.append(str(lab.write_labels(table, target)))
    if run.config.samples is not None:  # the task is named after what tells classes apart
        from lvmae.samples import ORDER_RECIPES

        recipes = run.config.samples.recipes
        name = "scene_order" if recipes and set(recipes) <= set(ORDER_RECIPES) else "recipe"
        target = Path(run.workdir) / "labels" / f"{name}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(run.config.run.input) / "labels.csv", target)
        paths.append(str(target))
    run.labels_paths = list(dict.fromkeys(paths))
    return run.labels_paths


def _stage_probe(run: _Run) -> tuple[dict, str]:
    from pipelines.probe import run_probe

    checkpoint = run.require("probe", "pretrain").outputs["checkpoint"]
    p = run.config.probe
    out = str(Path(run.workdir) / "probe")
    rows = run_probe(
        checkpoint, run.embeddings, _labels_files(run), out, probe=p.probes,
        baselines=tuple(p.baselines), recipes=dict(p.recipes), tracking_uri=run.tracking_uri,
        device=p.device,
    )  # fmt: skip
    return {"dir": out, "rows": rows}, _sha(rows)


def _stage_tune(run: _Run) -> tuple[dict, str]:
    from tune.sweep import run_tune

    checkpoint = run.require("tune", "pretrain").outputs["checkpoint"]
    t = run.config.tune
    out = str(Path(run.workdir) / "probe")  # shares the probe stage's feature cache
    rows = run_tune(
        checkpoint, run.embeddings, _labels_files(run), out, num_samples=t.num_samples,
        space_path=t.space, max_concurrent=t.max_concurrent, gpus_per_trial=t.gpus_per_trial,
        tracking_uri=run.tracking_uri, seed=t.seed, verbose=0,
    )  # fmt: skip
    return {"dir": str(Path(out) / "tune"), "rows": rows}, _sha(rows)


def _loss_history(run: _Run) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    record = run.records.get("pretrain")
    run_id = record.outputs.get("mlflow_run_id") if record else None
    if not run_id:
        return {}
    client = MlflowClient(tracking_uri=run.tracking_uri)
    history = {}
    for key in ("train/loss", "val/loss"):
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        if points:
            history[key] = points
    return history


def _stage_report(run: _Run) -> tuple[dict, str]:
    from pipelines.report import write_report

    summary: dict[str, Any] = {"run": run.config.run.name, "config": run.config.digest()}
    ex = run.records.get("extract")
    if ex:
        o = ex.outputs
        summary.update({
            "videos ok / partial / failed":
                f"{o['videos_ok']} / {o['videos_partial']} / {o['videos_failed']}",
            "segments": o["segments"],
            "hours of video": o["hours_of_video"],
        })  # fmt: skip
    pt = run.records.get("pretrain")
    if pt:
        m = pt.outputs["metrics"]
        summary.update({
            "pre-training steps": m.get("step"),
            "final train loss": m.get("train/epoch_loss"),
            "final val loss": m.get("val/loss"),
            "checkpoint": pt.outputs["checkpoint"],
        })  # fmt: skip
    rows = [
        *(run.records["probe"].outputs["rows"] if "probe" in run.records else []),
        *(run.records["tune"].outputs["rows"] if "tune" in run.records else []),
    ]
    probe_dir = run.records["probe"].outputs["dir"] if "probe" in run.records else None
    files = write_report(
        Path(run.workdir) / "report",
        title=f"lvmae run {run.config.run.name}",
        summary=summary,
        loss_history=_loss_history(run),
        probe_rows=rows,
        probe_dir=probe_dir,
        notes=[mlflow_ui_hint(run.tracking_uri)],
    )
    outputs = {
        "markdown": str(files.markdown),
        "html": str(files.html),
        "figures": [str(f) for f in files.figures],
    }
    return outputs, _sha([files.markdown.read_text()])


STAGE_FUNCTIONS: dict[str, Callable[[_Run], tuple[dict, str]]] = {
    "extract": _stage_extract,
    "pretrain": _stage_pretrain,
    "probe": _stage_probe,
    "tune": _stage_tune,
    "report": _stage_report,
}


def mlflow_ui_hint(tracking_uri: str) -> str:
    """How to open the MLflow UI on ``tracking_uri`` (the project installs mlflow-skinny,
    which has no UI server: the UI comes with the full ``mlflow`` package)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"MLflow UI: {tracking_uri}"
    return (
        f"MLflow UI (needs the full `mlflow` package, e.g. `pip install mlflow` in another "
        f"environment): mlflow ui --backend-store-uri {tracking_uri}"
    )


# --------------------------------------------------------------------------- MLflow


class _Tracker:
    """The parent run and one nested run per stage."""

    def __init__(self, run: _Run) -> None:
        from mlflow.tracking import MlflowClient

        from pipelines.tracking import open_run

        self.uri = run.tracking_uri
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment = run.config.run.experiment
        self.workdir = run.workdir
        config = run.config
        params = {"config.digest": config.digest(), "run.workdir": run.workdir}
        for section, values in config.model_dump(mode="json").items():
            if isinstance(values, dict):
                params.update({f"{section}.{k}": v for k, v in values.items()})
        self.parent = open_run(
            self.uri, self.experiment, f"{config.run.name}-{config.digest()}",
            out=run.workdir, tags={"lvmae.stage": "run"}, params=params,
        )  # fmt: skip
        self.client.update_run(self.parent, status="RUNNING")

    def open_stage(self, stage: str) -> str:
        """The stage's run under the parent (found again on a rerun of the same config)."""
        from pipelines.tracking import nested_under, open_run

        with nested_under(self.experiment, self.parent):
            return open_run(
                self.uri, self.experiment, stage, out=self.workdir, tags={"lvmae.stage": stage}
            )

    @contextmanager
    def stage(self, stage: str) -> Iterator[str]:
        from pipelines.tracking import nested_under

        run_id = self.open_stage(stage)
        self.client.update_run(run_id, status="RUNNING")
        try:
            with nested_under(self.experiment, run_id):
                yield run_id
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            self.client.set_tag(run_id, "lvmae.error", f"{type(exc).__name__}: {exc}"[:5000])
            self.finish(run_id, status)
            raise
        self.finish(run_id, "FINISHED")

    def skipped(self, stage: str, record: StageRecord) -> None:
        run_id = self.open_stage(stage)
        if self.client.get_run(run_id).info.status == "FINISHED":
            return  # this parent ran (or skipped) the stage before: keep what its run says
        self.client.set_tag(run_id, "lvmae.stage_status", "skipped")
        self.client.set_tag(run_id, "lvmae.done_at", record.finished_at)
        self.finish(run_id, "FINISHED")

    def finish(self, run_id: str, status: str) -> None:
        """End ``run_id`` and the runs still open below it."""
        from pipelines.tracking import PARENT_TAG

        experiment_id = self.client.get_run(run_id).info.experiment_id
        children = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run_id}'"
        )
        for child in children:
            if child.info.status == "RUNNING":
                self.finish(child.info.run_id, status)
        self.client.set_terminated(run_id, status)


# --------------------------------------------------------------------------- entry


def make_samples_for(config: RunConfig) -> Path | None:
    """Write the sample library of ``config.samples`` into ``run.input`` (idempotent).
    Returns the labels file, or None when the config has no ``samples:`` section."""
    s = config.samples
    if s is None:
        return None
    from lvmae.samples import make_samples, write_broken_videos

    labels = make_samples(
        config.run.input, videos_per_recipe=s.videos_per_recipe, min_seconds=s.min_seconds,
        max_seconds=s.max_seconds, width=s.width, height=s.height, fps=s.fps, seed=s.seed,
        recipes=s.recipes,
    )  # fmt: skip
    if s.with_broken:
        write_broken_videos(Path(config.run.input) / "broken")
    return labels


def preflight(run: _Run, stages: Sequence[str]) -> None:
    """Check every input the chosen stages read, before any work.

    Raises:
        InputError, EncoderUnavailableError, LabelsError, ConfigError, StageError.
    """
    from lvmae.encoders import describe_encoder
    from lvmae.inputs import list_videos
    from lvmae.labels import read_labels
    from tune.sweep import load_space

    c = run.config
    todo = [s for s in stages if not run.is_done(s)]
    if "extract" in todo:
        list_videos(c.run.input, c.extract.extensions)
        describe_encoder(c.extract.encoder, c.extract.encoder_checkpoint, c.extract.encoder_seed)
    if {"probe", "tune"} & set(todo):
        for item in c.run.labels:
            if isinstance(item, str):
                read_labels(item)
            elif not Path(item.source).exists() and "://" not in item.source:
                raise ConfigError(f"run.labels: {item.dataset} source not found: {item.source}")
    if "tune" in todo:
        load_space(c.tune.space)
    for stage in todo:
        for needed in UPSTREAM[stage]:
            if stage != "report" and needed not in stages:  # report takes what ran
                run.require(stage, needed)


def run_main(
    config: RunConfig,
    *,
    stages: Sequence[str] | None = None,
    force: Sequence[str] = (),
    echo: Callable[[str], None] = log.info,
) -> RunResult:
    """Run the chain of ``config`` (or only ``stages``), skipping finished stages.

    Args:
        stages: a subset of ``config.run.stages`` (default: all of them), run in chain order.
        force: stages to rerun even when their record matches (downstream stages rerun when
            the forced stage's outputs change).
        echo: receives one progress line per stage.

    Returns:
        The :class:`RunResult`.

    Raises:
        ConfigError, InputError, LabelsError, EncoderUnavailableError, ClusterError: bad
            config, input or cluster address (before any work).
        StageError: a stage failed (its MLflow runs are marked failed; the stages finished
            before it keep their records).
    """
    import ray

    from pipelines.connect import check_reachable, connect_ray

    chosen = list(stages) if stages is not None else list(config.run.stages)
    unknown = sorted(set(chosen) - set(STAGES)) + sorted(set(force) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    chosen = [s for s in STAGES if s in chosen]
    address = config.run.address or os.environ.get("RAY_ADDRESS")
    if address and not ray.is_initialized():
        check_reachable(address)  # before any work
    if config.samples is not None and "extract" in chosen:
        echo(f"sample videos → {config.run.input}")
        make_samples_for(config)
    run = _Run(config, force)
    preflight(run, chosen)
    if any(not run.is_done(s) for s in chosen if s != "report"):
        connect_ray(config.run.address)
    tracker = _Tracker(run)
    result = RunResult(parent_run_id=tracker.parent, tracking_uri=run.tracking_uri)
    try:
        for stage in chosen:
            if run.is_done(stage):
                echo(f"[{stage}] done earlier, skipped")
                tracker.skipped(stage, run.records[stage])
                result.status[stage] = "skipped"
                continue
            echo(f"[{stage}] running")
            t0 = time.perf_counter()
            fingerprint = run.fingerprint(stage)
            try:
                with tracker.stage(stage) as stage_run:
                    outputs, digest = STAGE_FUNCTIONS[stage](run)
                    record = StageRecord(
                        stage, fingerprint, digest, outputs,
                        datetime.now(timezone.utc).isoformat(), time.perf_counter() - t0,
                    )  # fmt: skip
                    record.write(run.workdir)
                    run.records[stage] = record
                    if stage == "report":
                        tracker.client.log_artifacts(stage_run, str(Path(run.workdir) / "report"))
            except Exception as exc:
                kept = list(result.status)  # finished (ran or skipped) in this run
                raise StageError(
                    f"stage {stage} failed: {type(exc).__name__}: {exc}\n"
                    f"stages kept: {', '.join(kept) or 'none'}; fix the cause and rerun the "
                    f"same command to resume at {stage}"
                ) from exc
            result.status[stage] = "ran"
            echo(f"[{stage}] done in {time.perf_counter() - t0:.1f} s")
    except BaseException:
        tracker.finish(tracker.parent, "FAILED")
        raise
    if "report" in run.records and result.status.get("report") == "ran":
        tracker.client.log_artifacts(tracker.parent, str(Path(run.workdir) / "report"), "report")
    tracker.finish(tracker.parent, "FINISHED")
    result.records = dict(run.records)
    if "report" in run.records:
        result.report = {
            k: v for k, v in run.records["report"].outputs.items() if isinstance(v, str)
        }
    for stage in ("probe", "tune"):
        if stage in run.records:
            result.rows.extend(run.records[stage].outputs["rows"])
    return result
