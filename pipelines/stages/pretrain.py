"""The pre-training stage: LV-MAE over the extracted segment embeddings (Ray Train DDP;
see :func:`pipelines.pretrain.run_pretrain`)."""

from __future__ import annotations

from typing import Any, ClassVar

from lvmae.config import RunConfig
from lvmae.storage import check_object_store, check_output_path
from lvmae.tracking import log_embeddings_input
from pipelines.connect import Reservation
from pipelines.stages.base import BaseStage, StageContext, StageError, StageOutput, numbers, sha


class PretrainOutput(StageOutput):
    """The latest checkpoint directory, the run's name, its MLflow run id and its last
    metrics (``step``, ``train/epoch_loss``, ``val/loss``, ...)."""

    checkpoint: str
    run_name: str
    mlflow_run_id: str | None
    metrics: dict[str, float]
    model_uri: str | None = None
    tracking_uri: str = ""

    def digest(self) -> str:
        return sha([self.checkpoint, self.metrics.get("step")])


class PretrainStage(BaseStage):
    """Pre-train the masked-embedding autoencoder (LV-MAE stage 2, §3.2 and §4)."""

    name: ClassVar[str] = "pretrain"
    upstream: ClassVar[tuple[str, ...]] = ("extract",)
    requires: ClassVar[tuple[str, ...]] = ("extract",)
    output: ClassVar[type[StageOutput]] = PretrainOutput

    def settings(self, context: StageContext) -> dict[str, Any]:
        # what changes neither the trained weights nor where they go: how often the run
        # logs, validates, monitors and checkpoints, how many checkpoints it keeps, and
        # how many worker-group restarts it allows (validation draws from its own seed)
        skip = {"tracking_uri", "run_name", "experiment", "log_every_steps", "val_every_epochs",
                "monitor_every_epochs", "checkpoint_every_steps", "keep_checkpoints",
                "max_failures"}  # fmt: skip
        fields = context.config.pretrain.model_dump(mode="json")
        return {k: v for k, v in fields.items() if k not in skip}

    def resources(self, config: RunConfig) -> dict[str, Reservation]:
        from pipelines.pretrain import pretrain_reservations  # torch and Ray Train: here only

        return pretrain_reservations(config.pretrain)

    def check(self, context: StageContext) -> None:
        """The output can be written; the embeddings' width and, when the run has a
        checkpoint already, that it loads and fits the model (before Ray starts); not when
        this invocation extracts them first."""
        check_output_path(context.out(self.name), context.out_flag(self.name))
        if "extract" in context.pending:
            return
        check_object_store(context.embeddings, write=False)  # s3:// / gs:// embeddings
        from pipelines.pretrain import preflight  # heavy: torch, Ray Train

        preflight(context.embeddings, context.out(self.name), context.config.pretrain,
                  context.run_name(self.name))  # fmt: skip

    def run(self, context: StageContext) -> PretrainOutput:
        """Pre-train, then log the embeddings as the run's input dataset and register the
        encoder as an MLflow model (what ``lvmae pretrain`` and ``lvmae run`` both do)."""
        from pipelines.pretrain import run_pretrain  # heavy: torch, Ray Train

        result = run_pretrain(
            context.embeddings, context.out(self.name), context.config.pretrain,
            run_name=context.run_name(self.name), tracking_uri=context.tracking_uri,
            reservations=self.resources(context.config),
        )  # fmt: skip
        if result.checkpoint is None:
            raise StageError("pre-training finished without a checkpoint")
        model_uri = None
        if result.mlflow_run_id is not None:
            log_embeddings_input(result.tracking_uri, result.mlflow_run_id, context.embeddings)
            from lvmae.mae.model_registry import register_encoder  # mlflow.pytorch: torch

            model_uri = register_encoder(
                result.checkpoint, tracking_uri=result.tracking_uri, run_id=result.mlflow_run_id
            ).model_uri
        return PretrainOutput(
            checkpoint=result.checkpoint,
            run_name=result.run_name,
            mlflow_run_id=result.mlflow_run_id,
            metrics=numbers(result.metrics),
            model_uri=model_uri,
            tracking_uri=result.tracking_uri,
        )


def check_evaluation_inputs(context: StageContext, stage: str, out: str) -> None:
    """What a stage evaluating a checkpoint (probe, tune) checks before any work: its
    output ``out`` can be written, the checkpoint reads (``--checkpoint``, or the
    pre-training stage's when it ran earlier) and the embeddings have its width; inputs
    that this invocation makes first (``context.pending``) are not there yet.

    Raises:
        StorageError, CheckpointError: naming the flag or path to fix.
    """
    # torch (checkpoints, the frozen encoder): imported by the stages that evaluate only
    from pipelines.job_inputs import check_checkpoint_inputs, embedding_dim_of, resolve_checkpoint

    check_output_path(out, context.out_flag(stage))
    if context.checkpoint is None and ("pretrain" in context.pending
                                       or "pretrain" not in context.records):  # fmt: skip
        if "extract" not in context.pending:
            embedding_dim_of(context.embeddings)
        return
    checkpoint = pretrained_checkpoint(context)
    if "extract" in context.pending:
        resolve_checkpoint(checkpoint)
    else:
        check_checkpoint_inputs(checkpoint, context.embeddings)


def pretrained_checkpoint(context: StageContext) -> str:
    """The checkpoint a stage evaluates: the command's ``--checkpoint``, else the one the
    pre-training stage of this run left."""
    return context.checkpoint or context.output("pretrain", PretrainOutput).checkpoint
