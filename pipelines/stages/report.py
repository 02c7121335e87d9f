"""The report stage: ``report.md`` / ``report.html`` with the pre-training loss curves,
the probe comparison and confusion matrices (see :func:`pipelines.report.write_report`),
logged to the stage's MLflow run and to the parent run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from lvmae.tracking import mlflow_ui_hint
from pipelines.report import anchor_confusion_matrices, write_report
from pipelines.stages.base import BaseStage, StageContext, StageOutput, sha
from pipelines.stages.extract import ExtractOutput
from pipelines.stages.pretrain import PretrainOutput
from pipelines.stages.probe import ProbeOutput
from pipelines.stages.tune import TuneOutput


class ReportOutput(StageOutput):
    """The report's files; the digest is the Markdown's."""

    markdown: str
    html: str
    figures: list[str]
    markdown_digest: str

    def digest(self) -> str:
        return self.markdown_digest


def loss_history(tracking_uri: str, run_id: str | None) -> dict[str, list[tuple[int, float]]]:
    """``train/loss`` and ``val/loss`` of the pre-training MLflow run, as (step, value)."""
    if not run_id:
        return {}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    history = {}
    for key in ("train/loss", "val/loss"):
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        if points:
            history[key] = points
    return history


def summary_of(context: StageContext) -> dict[str, Any]:
    """The report's summary table from the records of the stages that ran."""
    summary: dict[str, Any] = {"run": context.config.run.name, "config": context.config.digest()}
    if "extract" in context.records:
        ex = context.output("extract", ExtractOutput)
        summary["videos ok / partial / failed"] = (
            f"{ex.videos_ok} / {ex.videos_partial} / {ex.videos_failed}"
        )
        summary["segments"] = ex.segments
        summary["hours of video"] = ex.hours_of_video
    if "pretrain" in context.records:
        pt = context.output("pretrain", PretrainOutput)
        summary["pre-training steps"] = pt.metrics.get("step")
        summary["final train loss"] = pt.metrics.get("train/epoch_loss")
        summary["final val loss"] = pt.metrics.get("val/loss")
        summary["checkpoint"] = pt.checkpoint
    return summary


class ReportStage(BaseStage):
    """Summarise whichever stages ran."""

    name: ClassVar[str] = "report"
    upstream: ClassVar[tuple[str, ...]] = ("extract", "pretrain", "probe", "tune")
    output: ClassVar[type[StageOutput]] = ReportOutput

    def settings(self, context: StageContext) -> dict[str, Any]:
        return {"report": 1}

    def run(self, context: StageContext) -> ReportOutput:
        # each output's confusion matrices by absolute path: the probe's and the sweep's
        # share file names (confusion_<task>_<method>_<probe>.png) under different folders
        # only the stages of this config: a record of one it no longer runs is another
        # config's (its digest is not in the report's fingerprint either)
        results = []
        stages = context.config.run.stages
        if "probe" in context.records and "probe" in stages:
            probe = context.output("probe", ProbeOutput)
            results += anchor_confusion_matrices(probe.results, probe.dir)
        if "tune" in context.records and "tune" in stages:
            tuned = context.output("tune", TuneOutput)
            results += anchor_confusion_matrices(tuned.results, tuned.dir)
        run_id = None
        if "pretrain" in context.records:
            run_id = context.output("pretrain", PretrainOutput).mlflow_run_id
        out = Path(context.path("report"))
        files = write_report(
            out,
            title=f"lvmae run {context.config.run.name}",
            summary=summary_of(context),
            loss_history=loss_history(context.tracking_uri, run_id),
            results=results,
            notes=[mlflow_ui_hint(context.tracking_uri)],
        )
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=context.tracking_uri)
        if context.stage_run_id is not None:
            client.log_artifacts(context.stage_run_id, str(out))
        if context.parent_run_id is not None:
            client.log_artifacts(context.parent_run_id, str(out), "report")
        return ReportOutput(
            markdown=str(files.markdown),
            html=str(files.html),
            figures=[str(f) for f in files.figures],
            markdown_digest=sha([files.markdown.read_text()]),
        )
