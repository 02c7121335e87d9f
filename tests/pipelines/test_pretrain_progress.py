"""Pre-training progress on the driver, without Ray: the driver follows the epochs and
losses rank 0 logs to the MLflow run (a real SQLite store) while ``fit`` runs in a thread."""

from __future__ import annotations

import io
import time

import pytest
from mlflow.tracking import MlflowClient

from lvmae.progress import Progress
from lvmae.tracking import open_run
from pipelines.pretrain import epoch_status, fit_with_progress


@pytest.fixture
def run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = open_run(uri, "progress", "p", out=str(tmp_path))
    return MlflowClient(tracking_uri=uri), run_id


def log_epoch(client: MlflowClient, run_id: str, epoch: int, train: float, val: float) -> None:
    step = 10 * epoch
    client.log_metric(run_id, "epoch", epoch, step=step)
    client.log_metric(run_id, "train/epoch_loss", train, step=step)
    client.log_metric(run_id, "val/loss", val, step=step)


def test_epoch_status_reads_the_last_epoch_and_losses(run):
    client, run_id = run
    assert epoch_status(client, run_id) == (0, {})
    log_epoch(client, run_id, 1, 0.5, 0.75)
    log_epoch(client, run_id, 2, 0.25, 0.625)
    client.log_metric(run_id, "epoch", 1, step=10)  # a restarted worker re-logs epoch 1
    assert epoch_status(client, run_id) == (2, {"train_loss": "0.25", "val_loss": "0.625"})


def test_fit_with_progress_shows_epochs_and_losses_while_fit_runs(run):
    client, run_id = run
    stream = io.StringIO()  # not a TTY: plain lines (every update, with every_s=0)
    bar = Progress(2, "pretrain", "epochs", every_s=0, stream=stream)

    def fit() -> str:
        log_epoch(client, run_id, 1, 0.5, 0.75)
        deadline = time.monotonic() + 120
        while "1/2 epochs" not in stream.getvalue():  # wait until the driver showed it
            assert time.monotonic() < deadline, "the driver never showed epoch 1"
            time.sleep(0.02)
        log_epoch(client, run_id, 2, 0.25, 0.625)
        return "fitted"

    with bar:
        assert fit_with_progress(fit, client, run_id, bar, poll_s=0.05) == "fitted"
    lines = stream.getvalue().splitlines()
    assert any(
        "pretrain: 1/2 epochs" in ln and "train_loss=0.5 val_loss=0.75" in ln for ln in lines
    )
    assert "pretrain: 2/2 epochs (100%)" in lines[-1]
    assert "train_loss=0.25 val_loss=0.625" in lines[-1]


def test_fit_with_progress_reraises_what_fit_raised(run):
    client, run_id = run
    bar = Progress(3, "pretrain", "epochs", enabled=False)

    def fit():
        raise FloatingPointError("non-finite training loss")

    with pytest.raises(FloatingPointError, match="non-finite"):
        fit_with_progress(fit, client, run_id, bar, poll_s=0.05)
