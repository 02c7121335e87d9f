"""The pre-trained LV-MAE encoder as an MLflow model: logged with a signature and an input
example, registered as ``lvmae-encoder`` with the checkpoint's step and configuration, and
loadable on CPU with ``mlflow.pytorch.load_model`` (docs/design.md, "Data contracts").

The logged model is :class:`EncoderModule`: the frozen LV-MAE encoder (LV-MAE §3.2) mapping
a batch of segment-embedding sequences and their real-token mask to the [CLS]
representation of each video window.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from torch import Tensor, nn

from lvmae.mae.checkpoints import load_checkpoint
from lvmae.mae.model import LVMAE, LVMAEConfig

REGISTERED_NAME = "lvmae-encoder"
"""The registry name of the pre-trained encoder."""
MODEL_REQUIREMENTS = ("cloudpickle", "lvmae", "numpy", "pandas", "torch")
"""The distributions that loading the logged encoder imports: its class is lvmae's, MLflow
pickles it with cloudpickle, and MLflow's pyfunc loader imports pandas (MLflow adds itself)."""


class EncoderModule(nn.Module):
    """The frozen LV-MAE encoder as one module for serving.

    ``forward(embeddings, mask)``: ``embeddings`` float32 ``[B, L, D]`` segment embeddings
    (``L <= max_tokens`` tokens of ``segment_s`` seconds), ``mask`` bool ``[B, L]`` (True =
    real token, False = [PAD]) → float32 ``[B, W]``, the encoder's [CLS] output after its
    final norm (what ``lvmae embed`` writes as ``cls``). Raises ``ValueError`` on a window
    longer than ``max_tokens`` or mismatched shapes.
    """

    def __init__(self, model: LVMAE) -> None:
        super().__init__()
        self.model = model.eval()

    @torch.no_grad()
    def forward(self, embeddings: Tensor, mask: Tensor) -> Tensor:
        cls, _ = self.model.encode(embeddings.float(), mask.bool())
        return cls


def encoder_from_checkpoint(checkpoint: str | Path) -> tuple[EncoderModule, dict]:
    """:class:`EncoderModule` with the weights of a checkpoint directory, and the
    checkpoint's state (``model_config``, ``train_config``, ``step``, ...).

    Raises:
        CheckpointError: a missing or unreadable checkpoint.
    """
    state = load_checkpoint(checkpoint, map_location="cpu")
    model = LVMAE(LVMAEConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model_state"])
    return EncoderModule(model), state


def signature_of(config: LVMAEConfig) -> ModelSignature:
    """``embeddings`` ``[-1, -1, D]`` float32 and ``mask`` ``[-1, -1]`` bool →
    ``[-1, W]`` float32."""
    inputs = Schema([
        TensorSpec(np.dtype(np.float32), (-1, -1, config.input_dim), "embeddings"),
        TensorSpec(np.dtype(np.bool_), (-1, -1), "mask"),
    ])  # fmt: skip
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, config.width), "cls")])
    return ModelSignature(inputs=inputs, outputs=outputs)


@dataclass(frozen=True)
class RegisteredEncoder:
    """Where the encoder went: the model URI (``models:/lvmae-encoder/<version>``), the
    registered ``version`` and the MLflow ``run_id`` it was logged to."""

    model_uri: str
    version: str
    run_id: str


def model_requirements() -> list[str]:
    """:data:`MODEL_REQUIREMENTS` pinned to the versions installed here (those not installed
    as distributions are left out). Given to MLflow explicitly, so it does not infer them:
    its inference loads the model in a new Python process, seconds per registration."""
    pins = []
    for name in MODEL_REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def register_encoder(
    checkpoint: str | Path, *, tracking_uri: str, run_id: str, name: str = REGISTERED_NAME
) -> RegisteredEncoder:
    """Log the checkpoint's encoder to ``run_id`` as an MLflow PyTorch model (signature,
    input example) and register it as ``name``; the version carries the checkpoint's
    ``step``, its directory and its model/train configs as tags.

    Raises:
        CheckpointError: a missing or unreadable checkpoint.
    """
    module, state = encoder_from_checkpoint(checkpoint)
    config = module.model.config
    example = {
        "embeddings": np.zeros((1, 2, config.input_dim), np.float32),
        "mask": np.ones((1, 2), np.bool_),
    }
    # MLflow's fluent API needs a process-wide tracking URI (it also exports it as
    # MLFLOW_TRACKING_URI); the previous one is put back below, so nothing leaks out.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    # Two input tensors (embeddings + mask), loaded with mlflow.pytorch.load_model: the
    # PyTorch pyfunc server takes one array, so MLflow's serving-input check can only warn.
    # MLflow's notes on this kind of model (pickled, serving input, local torch version
    # label, "registered model ...") are not the user's business: errors still raise.
    quiet = logging.getLogger("mlflow")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with mlflow.start_run(run_id=run_id), contextlib.redirect_stderr(io.StringIO()):
            info = mlflow.pytorch.log_model(
                module,
                name="encoder",
                signature=signature_of(config),
                input_example=example,
                registered_model_name=name,
                await_registration_for=60,
                serialization_format="pickle",  # the module class lives in lvmae (importable)
                pip_requirements=model_requirements(),
            )
    finally:
        quiet.setLevel(level)
        mlflow.set_tracking_uri(previous)
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri=tracking_uri)
    tags = {
        "step": str(state["step"]),
        "checkpoint": str(Path(checkpoint).absolute()),
        "model_config": json.dumps(state["model_config"], sort_keys=True),
        "train_config": json.dumps(state["train_config"], sort_keys=True, default=str)[:5000],
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return RegisteredEncoder(f"models:/{name}/{version}", version, run_id)
