"""The main job's runner (``lvmae run``): the stages of :data:`pipelines.stages.STAGES`
in chain order, skipping finished ones (docs/design.md, "Stages of the main job").

**Stages skip what is done.** Each finished stage writes ``<workdir>/stages/<stage>.json``
with a *fingerprint* (its settings plus the output digests of its upstream stages) and a
*digest* of its outputs. A stage is skipped when its record's fingerprint equals the one
the current config gives, so a rerun resumes where the last one stopped, a changed probe
recipe reruns only probe and report, and a rerun extraction that changed nothing keeps
everything downstream. Within a stage, work resumes too: extraction skips the videos
already done and pre-training continues from its latest checkpoint.

**Tracking.** One MLflow parent run per run name and config, a nested run per stage (a
skipped stage's run says so), and each stage's own runs nested under its stage run.

**Failures.** The whole config is validated, and every input and output checked, before
any work: before the sample library is written, the MLflow store made or Ray started. The
workdir is held by one run at a time (:func:`lvmae.storage.hold_output`). A
stage that fails marks its MLflow runs failed and raises :class:`StageError` naming the
stage and the stages kept; the records of finished stages stay, so the next run starts at
the failed stage.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import ray

from lvmae.config import STAGE_NAMES, ConfigError, RunConfig, load_run_config
from lvmae.errors import LvmaeError
from lvmae.probes.results import ProbeResult
from lvmae.storage import check_output_path, hold_output, raise_if_disk_full
from lvmae.tracking import TrackingError, log_embeddings_input
from pipelines.connect import check_reachable, connect_ray
from pipelines.stages import STAGES, Stage, StageContext, StageError, StageOutput, StageRecord
from pipelines.stages.base import sha
from pipelines.tracking import RunTracker

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIGS_DIR / "demo.yaml"

__all__ = ["RunResult", "StageError", "demo_config", "run_alone", "run_main"]


@dataclass
class RunResult:
    """What :func:`run_main` did: per stage ``ran`` / ``skipped``, the records, the MLflow
    parent run id and tracking URI, the report's paths and the probe/tune results."""

    status: dict[str, str] = field(default_factory=dict)
    records: dict[str, StageRecord] = field(default_factory=dict)
    parent_run_id: str | None = None
    tracking_uri: str = ""
    report: dict[str, str] = field(default_factory=dict)
    results: list[ProbeResult] = field(default_factory=list)


def demo_config(workdir: str | Path = "work/demo") -> RunConfig:
    """The demo: ``configs/demo.yaml`` with its sample videos and outputs under
    ``workdir``.

    Raises:
        ConfigError: the config file is missing (an install without the repository's
            ``configs/``) or invalid.
    """
    w = Path(workdir)
    return load_run_config(DEMO_CONFIG, {"run.workdir": str(w), "run.input": str(w / "videos")})


def _fingerprint(context: StageContext, stage: Stage) -> str:
    """The stage's settings plus the digests of its upstream stages that ran here (an
    optional upstream stage counts only when it is among ``run.stages``)."""
    upstream = {
        name: context.records[name].digest
        for name in stage.upstream
        if name in context.records and (name in stage.requires or name in context.config.run.stages)
    }
    settings = stage.settings(context)
    return sha({"stage": stage.name, "settings": settings, "upstream": upstream})


class _Chain:
    """The chosen stages of one run, their records and fingerprints."""

    def __init__(self, config: RunConfig, chosen: Sequence[str], force: Sequence[str]):
        self.stages = [s for s in STAGES if s.name in chosen]
        self.force = set(force)
        self.context = StageContext.create(config)
        workdir = self.context.workdir
        for stage in STAGES:
            record = StageRecord.read(workdir, stage.name)
            if record is not None:
                self.context.records[stage.name] = record

    def is_done(self, stage: Stage) -> bool:
        record = self.context.records.get(stage.name)
        fingerprint = _fingerprint(self.context, stage)
        self.context.fingerprints[stage.name] = fingerprint
        return (
            record is not None
            and stage.name not in self.force
            and (record.fingerprint == fingerprint)
        )

    def check(self) -> None:
        """Every stage still to run can read its inputs and upstream outputs."""
        chosen = {s.name for s in self.stages}
        self.context.pending = {s.name for s in self.stages if not self.is_done(s)}
        for stage in self.stages:
            if self.is_done(stage):
                continue
            for needed in stage.requires:
                if needed in chosen:
                    continue
                record = self.context.records.get(needed)
                up = next(s for s in STAGES if s.name == needed)
                if record is None or not self.is_done(up):
                    what = "has not run" if record is None else "ran with another config"
                    raise StageError(
                        f"stage {stage.name} reads the outputs of stage {needed}, which "
                        f"{what} in {self.context.workdir}: add {needed} to run.stages "
                        f"(or --stages)"
                    )
            stage.check(self.context)  # after its upstream is known to be there

    def run_stage(self, stage: Stage, tracker: RunTracker) -> None:
        t0 = time.perf_counter()
        fingerprint = self.context.fingerprints[stage.name]
        resources = {k: r.as_dict() for k, r in stage.resources(self.context.config).items()}
        with tracker.stage(stage.name, {"resources": resources}) as run_id:
            self.context.stage_run_id = run_id
            if "extract" in stage.requires:  # the stage reads the segment embeddings
                log_embeddings_input(self.context.tracking_uri, run_id, self.context.embeddings)
            output = stage.run(self.context)
            record = StageRecord(
                stage.name, fingerprint, output.digest(), output.model_dump(mode="json"),
                datetime.now(timezone.utc).isoformat(), time.perf_counter() - t0,
            )  # fmt: skip
            record.write(self.context.workdir)
            self.context.records[stage.name] = record


def run_alone(stage: Stage, context: StageContext) -> StageOutput:
    """One stage as its own command (``lvmae extract``, ``pretrain``, ``probe``, ``tune``):
    the same :class:`Stage` the main job runs, through the same steps — its inputs and
    output checked, its output directory held (:func:`lvmae.storage.hold_output`), then Ray
    joined (``run.address``, else ``RAY_ADDRESS``, else local), then its ``run`` — with
    what the command named itself in ``context`` (its ``--out``, ``--checkpoint``, run
    name). No stage record is written: a command is not a chain.

    Raises:
        LvmaeError: bad inputs (before Ray starts), ``OutputBusyError`` (another run holds
            the output), or the stage's own errors.
    """
    stage.check(context)
    address = context.config.run.address or os.environ.get("RAY_ADDRESS")
    if address and not ray.is_initialized():
        check_reachable(address)  # before any work
    out = context.embeddings if stage.name == "extract" else context.out(stage.name)
    with hold_output(out, context.out_flag(stage.name)):  # one run per output at a time
        if not getattr(stage, "joins_ray_itself", False):
            connect_ray(context.config.run.address)
        return stage.run(context)


def _chosen(config: RunConfig, stages: Sequence[str] | None, force: Sequence[str]) -> list[str]:
    chosen = list(stages) if stages is not None else list(config.run.stages)
    unknown = sorted(set(chosen) - set(STAGE_NAMES)) + sorted(set(force) - set(STAGE_NAMES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGE_NAMES)}")
    # the config was checked for its own stages (probe and tune need labels, ...)
    outside = [s for s in STAGE_NAMES if s in chosen and s not in config.run.stages]
    if outside:
        raise ConfigError(
            f"--stages {','.join(outside)}: not among the config's run.stages "
            f"({', '.join(config.run.stages)}); add them to run.stages (--set "
            f"run.stages=[...]) so that the config is checked for them"
        )
    return [s for s in STAGE_NAMES if s in chosen]


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
        LvmaeError: a bad config, input, output or cluster address (before any work), an
            unusable MLflow store (before Ray starts), ``OutputBusyError`` (another run
            holds the workdir), or a :class:`StageError` when a stage failed (its MLflow
            runs are marked failed; the stages finished before it keep their records).
    """
    chain = _Chain(config, _chosen(config, stages, force), force)
    address = config.run.address or os.environ.get("RAY_ADDRESS")
    if address and not ray.is_initialized():
        check_reachable(address)  # before any work
    check_output_path(chain.context.workdir, "run.workdir")
    chain.check()  # every input and output, before anything is written
    with hold_output(chain.context.workdir, "run.workdir"):
        return _run_held(chain, config, echo)


def _tracker(config: RunConfig, chain: _Chain) -> RunTracker:
    """The run's MLflow parent run, its store made or opened here.

    Raises:
        TrackingError: the store cannot be opened (``run.tracking_uri`` /
            ``MLFLOW_TRACKING_URI``); DiskFullError: no space for it.
    """
    uri = chain.context.tracking_uri
    try:
        return RunTracker(config, uri, chain.context.workdir)
    except LvmaeError:
        raise
    except Exception as exc:
        raise_if_disk_full(exc, f"the MLflow store {uri}")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(
            f"run.tracking_uri {uri}: cannot open the MLflow store ({first}); fix "
            f"run.tracking_uri or MLFLOW_TRACKING_URI"
        ) from exc


def _run_held(chain: _Chain, config: RunConfig, echo: Callable[[str], None]) -> RunResult:
    """:func:`run_main` once everything is checked and the workdir is held."""
    for stage in chain.stages:
        stage.prepare(chain.context)  # the sample library (idempotent), after every check
    tracker = _tracker(config, chain)
    chain.context.parent_run_id = tracker.parent
    result = RunResult(parent_run_id=tracker.parent, tracking_uri=chain.context.tracking_uri)
    with tracker.parent_run():  # ends FAILED / KILLED if Ray cannot start or Ctrl-C comes
        if any(not chain.is_done(s) for s in chain.stages if s.name != "report"):
            connect_ray(config.run.address)
        for stage in chain.stages:
            if chain.is_done(stage):
                echo(f"[{stage.name}] done earlier, skipped")
                tracker.skipped(stage.name, chain.context.records[stage.name].finished_at)
                result.status[stage.name] = "skipped"
                continue
            echo(f"[{stage.name}] running")
            t0 = time.perf_counter()
            try:
                chain.run_stage(stage, tracker)
            except Exception as exc:
                kept = list(result.status)  # finished (ran or skipped) in this run
                raise StageError(
                    f"stage {stage.name} failed: {type(exc).__name__}: {exc}\n"
                    f"stages kept: {', '.join(kept) or 'none'}; fix the cause and rerun the "
                    f"same command to resume at {stage.name}"
                ) from exc
            result.status[stage.name] = "ran"
            echo(f"[{stage.name}] done in {time.perf_counter() - t0:.1f} s")
    return _result(result, chain.context)


def _result(result: RunResult, context: StageContext) -> RunResult:
    result.records = dict(context.records)
    if "report" in context.records:
        outputs = context.records["report"].outputs
        result.report = {k: v for k, v in outputs.items() if k in ("markdown", "html")}
    for name in ("probe", "tune"):
        if name in context.records:
            rows = context.records[name].outputs.get("results", [])
            result.results.extend(ProbeResult.model_validate(r) for r in rows)
    return result
