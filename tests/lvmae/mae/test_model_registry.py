"""The pre-trained encoder as a registered MLflow model: signature, version tags, and a
CPU load that reproduces the encoder's [CLS]. Real MLflow (SQLite in a temp dir)."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient

from lvmae.mae.checkpoints import CheckpointError, save_checkpoint
from lvmae.mae.model import LVMAE, model_config
from lvmae.mae.model_registry import REGISTERED_NAME, register_encoder


@pytest.mark.slow
def test_register_and_load_the_encoder(tmp_path, monkeypatch):
    torch.manual_seed(0)
    cfg = model_config("tiny", input_dim=12, max_tokens=16)
    model = LVMAE(cfg).eval()
    ckpt = save_checkpoint(
        tmp_path / "step_7", model_state=model.state_dict(), model_config=cfg.to_dict(),
        train_config={"epochs": 3}, step=7,
    )  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    run = client.create_run(experiment)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    registered = register_encoder(ckpt, tracking_uri=uri, run_id=run.info.run_id)
    assert os.environ.get("MLFLOW_TRACKING_URI") == before  # no process-wide state left
    assert mlflow.get_tracking_uri() != uri
    assert registered.model_uri == f"models:/{REGISTERED_NAME}/1"
    version = client.get_model_version(REGISTERED_NAME, "1")
    assert version.tags["step"] == "7" and '"input_dim": 12' in version.tags["model_config"]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # models:/ URIs resolve in this store
    info = mlflow.models.get_model_info(registered.model_uri)
    inputs = info.signature.inputs.to_dict()
    assert [i["name"] for i in inputs] == ["embeddings", "mask"]
    assert list(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, cfg.width]

    # the environment to load it in: torch and lvmae pinned to what is installed here
    requirements = mlflow.pyfunc.get_model_dependencies(registered.model_uri)
    pins = Path(requirements).read_text().split()
    assert f"torch=={torch.__version__}" in pins
    assert "lvmae==0.1.0" in pins and any(p.startswith("mlflow==") for p in pins)

    loaded = mlflow.pytorch.load_model(registered.model_uri, map_location="cpu")
    x = torch.randn(3, 9, 12)
    real = torch.ones(3, 9, dtype=torch.bool)
    real[1, 5:] = False
    expected, _ = model.encode(x, real)
    torch.testing.assert_close(loaded(x, real), expected, atol=1e-6, rtol=0)
    # a second registration is the next version
    assert register_encoder(ckpt, tracking_uri=uri, run_id=run.info.run_id).version == "2"


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError):
        register_encoder(tmp_path / "nope", tracking_uri=f"sqlite:///{tmp_path}/m.db", run_id="x")
