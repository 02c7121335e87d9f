"""The sweep stage: Ray Tune over probe hyperparameters for every labels file of the run;
the best configuration is scored on the test split once (see
:func:`pipelines.probe.run_sweep` and :mod:`tune.sweep`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from lvmae.config import RunConfig
from lvmae.probes.results import ProbeResult
from pipelines.connect import Reservation
from pipelines.stages.base import BaseStage, StageContext, StageOutput, file_digest, sha
from pipelines.stages.pretrain import check_evaluation_inputs, pretrained_checkpoint
from pipelines.stages.probe import check_labels


class TuneOutput(StageOutput):
    """The sweep's directory and its tuned :class:`ProbeResult` rows (one per task)."""

    dir: str
    results: list[ProbeResult]

    def digest(self) -> str:
        return sha([r.as_row() for r in self.results])


class TuneStage(BaseStage):
    """ASHA + Optuna over the probe recipe; trials never see the test split."""

    name: ClassVar[str] = "tune"
    upstream: ClassVar[tuple[str, ...]] = ("extract", "pretrain")
    requires: ClassVar[tuple[str, ...]] = ("extract", "pretrain")
    output: ClassVar[type[StageOutput]] = TuneOutput

    def settings(self, context: StageContext) -> dict[str, Any]:
        t = context.config.tune
        return {
            "tune": t.model_dump(mode="json"),
            "recipes": {k: context.config.probe.config(k).to_dict() for k in t.probes},
            "space": file_digest(t.space),
            "labels": context.labels_settings(),
        }

    def resources(self, config: RunConfig) -> dict[str, Reservation]:
        from pipelines.probe import tune_reservations  # Ray Tune: only where it runs

        return tune_reservations(config.tune)

    def check(self, context: StageContext) -> None:
        check_labels(context)
        check_evaluation_inputs(context, self.name, context.out(self.name, context.path("probe")))
        from tune.space import load_space  # heavy: Ray Tune

        t = context.config.tune
        load_space(t.space, recipes={k: context.config.probe.config(k) for k in t.probes})

    def run(self, context: StageContext) -> TuneOutput:
        from pipelines.probe import run_sweep  # heavy: torch, Ray Tune

        checkpoint = pretrained_checkpoint(context)
        out = context.out(self.name, context.path("probe"))  # shares the probe's feature cache
        results = run_sweep(
            checkpoint, context.embeddings, context.labels_files(), out, context.config.tune,
            probe=context.config.probe, tracking_uri=context.tracking_uri, verbose=0,
            reservations=self.resources(context.config),
        )  # fmt: skip
        return TuneOutput(dir=str(Path(out) / "tune"), results=results)
