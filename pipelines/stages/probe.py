"""The probe stage: probes on the frozen LV-MAE encoder and the baselines on the same
splits, for every labels file of the run (LV-MAE §8; see
:func:`pipelines.probe.run_probe`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from lvmae.config import ConfigError, LabelsSource, RunConfig
from lvmae.labels import read_labels
from lvmae.probes.results import ProbeResult
from pipelines.connect import Reservation
from pipelines.stages.base import BaseStage, StageContext, StageOutput, sha
from pipelines.stages.pretrain import check_evaluation_inputs, pretrained_checkpoint


class ProbeOutput(StageOutput):
    """The probe results directory and its :class:`ProbeResult` rows."""

    dir: str
    results: list[ProbeResult]

    def digest(self) -> str:
        return sha([r.as_row() for r in self.results])


def check_labels(context: StageContext) -> None:
    """Every labels file of the run reads, and every benchmark source exists.

    Raises:
        LabelsError, ConfigError: a bad labels file or a missing source.
    """
    for item in context.config.run.labels:
        if isinstance(item, LabelsSource):
            if not Path(item.source).exists() and "://" not in item.source:
                raise ConfigError(f"run.labels: {item.dataset} source not found: {item.source}")
        else:
            read_labels(item)


class ProbeStage(BaseStage):
    """Linear / attentive / pooler probes and the baselines, test at the best val epoch."""

    name: ClassVar[str] = "probe"
    upstream: ClassVar[tuple[str, ...]] = ("extract", "pretrain")
    requires: ClassVar[tuple[str, ...]] = ("extract", "pretrain")
    output: ClassVar[type[StageOutput]] = ProbeOutput

    def settings(self, context: StageContext) -> dict[str, Any]:
        # not the CPUs a task reserves or the feature encoder's actors: they change where
        # the work runs, not its results (GPUs do: they decide the probes' device)
        resources = {"cpus_per_task", "encoder_actors"}
        return {
            "probe": context.config.probe.model_dump(mode="json", exclude=resources),
            "labels": context.labels_settings(),
        }

    def resources(self, config: RunConfig) -> dict[str, Reservation]:
        """What each probe-training task reserves (the driver itself only orchestrates;
        a GPU share left None is resolved against the cluster when the stage runs)."""
        from pipelines.probe import probe_reservations  # Ray Tune: only where probes run

        return probe_reservations(config.probe)

    def check(self, context: StageContext) -> None:
        check_labels(context)
        check_evaluation_inputs(context, self.name, context.out(self.name))

    def run(self, context: StageContext) -> ProbeOutput:
        from pipelines.probe import run_probe  # heavy: torch, Ray Tune

        checkpoint = pretrained_checkpoint(context)
        out = context.out(self.name)
        results = run_probe(
            checkpoint, context.embeddings, context.labels_files(), out, context.config.probe,
            tracking_uri=context.tracking_uri, reservations=self.resources(context.config),
        )  # fmt: skip
        return ProbeOutput(dir=out, results=results)
