"""The main job's MLflow runs: one parent run per run name and config, one nested run per
stage (found again on a rerun of the same config), and every run a stage opens through
:func:`lvmae.tracking.open_run` nested under its stage's run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lvmae.config import RunConfig
from lvmae.tracking import (
    end_run,
    nested_under,
    open_run,
    run_status,
    system_metrics,
    tracking_client,
)


class RunTracker:
    """The parent run of one ``lvmae run`` and its stage runs.

    Args:
        config: the run's config (its sections become the parent's params).
        tracking_uri: the MLflow store.
        workdir: where a new local experiment keeps its artifacts.
    """

    def __init__(self, config: RunConfig, tracking_uri: str, workdir: str) -> None:
        self.uri = tracking_uri
        self.client = tracking_client(tracking_uri)
        self.experiment = config.run.experiment
        self.workdir = workdir
        params = {"config.digest": config.digest(), "run.workdir": workdir}
        for section, values in config.model_dump(mode="json").items():
            if isinstance(values, dict):
                params.update({f"{section}.{k}": v for k, v in values.items()})
        self.parent = open_run(
            tracking_uri, self.experiment, f"{config.run.name}-{config.digest()}",
            out=workdir, tags={"lvmae.stage": "run"}, params=params,
        )  # fmt: skip

    def open_stage(self, stage: str, params: dict | None = None) -> str:
        """The stage's run under the parent (found again on a rerun of the same config)."""
        with nested_under(self.experiment, self.parent):
            return open_run(
                self.uri, self.experiment, stage, out=self.workdir,
                tags={"lvmae.stage": stage}, params=params,
            )  # fmt: skip

    @contextmanager
    def stage(self, stage: str, params: dict | None = None) -> Iterator[str]:
        """Run a stage inside its MLflow run: FINISHED on success, FAILED (with the error
        as the ``lvmae.error`` tag) or KILLED on an exception, which propagates; runs still
        open below it end the same way (:func:`lvmae.tracking.run_status`)."""
        run_id = self.open_stage(stage, params)
        with (
            run_status(self.client, run_id, children=True),
            nested_under(self.experiment, run_id),
            system_metrics(run_id, self.uri),
        ):
            yield run_id

    @contextmanager
    def parent_run(self) -> Iterator[str]:
        """The parent run, ended with the whole run (and the runs still open below it)."""
        with run_status(self.client, self.parent, children=True):
            yield self.parent

    def skipped(self, stage: str, finished_at: str) -> None:
        """Record that ``stage`` was skipped (done at ``finished_at``)."""
        run_id = self.open_stage(stage)
        if self.client.get_run(run_id).info.status == "FINISHED":
            return  # this parent ran (or skipped) the stage before: keep what its run says
        self.client.set_tag(run_id, "lvmae.stage_status", "skipped")
        self.client.set_tag(run_id, "lvmae.done_at", finished_at)
        end_run(self.client, run_id, None)
