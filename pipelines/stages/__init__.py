"""The stages of the main job (``lvmae run``), in chain order: one module per stage, one
small class per module (docs/design.md, "Stages of the main job"). Adding a stage means a
new module and one entry in :data:`STAGES`."""

from __future__ import annotations

from pipelines.stages.base import (
    Stage,
    StageContext,
    StageError,
    StageOutput,
    StageRecord,
)
from pipelines.stages.extract import ExtractOutput, ExtractStage
from pipelines.stages.pretrain import PretrainOutput, PretrainStage
from pipelines.stages.probe import ProbeOutput, ProbeStage
from pipelines.stages.report import ReportOutput, ReportStage
from pipelines.stages.tune import TuneOutput, TuneStage

STAGES: tuple[Stage, ...] = (
    ExtractStage(),
    PretrainStage(),
    ProbeStage(),
    TuneStage(),
    ReportStage(),
)
"""Every stage, in the order the runner takes them."""

__all__ = [
    "STAGES",
    "ExtractOutput",
    "ExtractStage",
    "PretrainOutput",
    "PretrainStage",
    "ProbeOutput",
    "ProbeStage",
    "ReportOutput",
    "ReportStage",
    "Stage",
    "StageContext",
    "StageError",
    "StageOutput",
    "StageRecord",
    "TuneOutput",
    "TuneStage",
    "stage_named",
]


def stage_named(name: str) -> Stage:
    """The stage called ``name``; KeyError for an unknown name."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(name)
