"""``lvmae monitor``: the reconstruction-retrieval monitor of a checkpoint, on demand
(LV-MAE §4.4, Fig. 6). Metrics go to ``<out>/monitor.json`` and to the checkpoint's MLflow
pre-training run; with a caption bank, ``<out>/monitor.html`` shows nearest captions."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from lvmae.errors import LvmaeError
from lvmae.labels import read_labels
from lvmae.mae.checkpoints import load_checkpoint
from lvmae.mae.model import LVMAE, LVMAEConfig
from lvmae.mae.monitor import caption_report_html, reconstruct, retrieval_metrics
from lvmae.mae.sequences import sequences_from_table, split_of
from lvmae.storage import StorageError, read_segments
from lvmae.tracking import metric_key, resolve_tracking_uri, tracked_run
from pipelines.job_inputs import embedding_dim_of, resolve_checkpoint, text_encoder

log = logging.getLogger(__name__)


class CaptionsError(LvmaeError, ValueError):
    """A caption bank is missing or empty."""


def read_captions(path: str) -> list[str]:
    """A caption bank: a text file (one caption per line) or a labels file (its label
    names, with ``_`` read as spaces).

    Raises:
        CaptionsError: the file is missing or holds no caption.
    """
    p = Path(path)
    if not p.is_file():
        raise CaptionsError(f"--captions {path}: no such file")
    if p.suffix.lower() in (".csv", ".parquet"):
        captions = [c.replace("_", " ") for c in read_labels(path).classes]
    else:
        captions = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not captions:
        raise CaptionsError(f"--captions {path}: no captions (one per line, or a labels file)")
    return captions


def run_monitor(
    checkpoint: str,
    embeddings: str,
    out: str,
    *,
    captions: str | None = None,
    max_videos: int = 256,
    tracking_uri: str | None = None,
) -> dict:
    """Reconstruction-retrieval metrics of ``checkpoint`` on the held-out videos of
    ``embeddings`` (the validation split of its pre-training run, else all videos).

    Returns the metrics (``R@1``, ``R@5``, ``R@10``, ``median_rank``, ...).

    Raises:
        CheckpointError, StorageError: unreadable checkpoint, missing embeddings or another
            embedding width.
    """
    import torch

    ckpt = resolve_checkpoint(checkpoint)
    state = load_checkpoint(ckpt)
    mcfg = LVMAEConfig.from_dict(state["model_config"])
    dim = embedding_dim_of(embeddings)
    if dim != mcfg.input_dim:
        raise StorageError(
            f"the checkpoint was trained on {mcfg.input_dim}-d embeddings but {embeddings!r} "
            f"holds {dim}-d ones"
        )
    train_cfg = state.get("train_config") or {}
    frac, seed = train_cfg.get("val_fraction", 0.0), train_cfg.get("split_seed", 0)
    table = read_segments(embeddings, columns=["video_id", "segment_index", "embedding"])
    pairs = [(v, s) for v, s in sequences_from_table(table) if len(s) >= 2]
    held_out = [(v, s) for v, s in pairs if frac and split_of(v, frac, seed) == "val"]
    if not held_out:
        log.warning("no validation videos in the checkpoint's split: monitoring all videos")
        held_out = pairs
    held_out = held_out[:max_videos]
    model = LVMAE(mcfg)
    model.load_state_dict(state["model_state"])
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    ids, seqs = [v for v, _ in held_out], [s for _, s in held_out]
    rec = reconstruct(
        model,
        seqs,
        mask_ratio=train_cfg.get("mask_ratio", 0.5),
        masking=train_cfg.get("masking", "semantic"),
    )
    metrics = retrieval_metrics(rec)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "monitor.json").write_text(
        json.dumps({"checkpoint": str(ckpt), **metrics}, indent=2)
    )
    files = [out_dir / "monitor.json"]
    if captions:
        bank = read_captions(captions)
        page = caption_report_html(
            rec, seqs, ids, bank, text_encoder(embeddings).encode_text(bank),
            segment_s=train_cfg.get("segment_s", 5.0),
        )  # fmt: skip
        (out_dir / "monitor.html").write_text(page)
        files.append(out_dir / "monitor.html")
    uri = resolve_tracking_uri(tracking_uri, out, near=ckpt)
    with tracked_run(
        uri,
        train_cfg.get("experiment", "lvmae-pretrain"),
        train_cfg.get("run_name") or "lvmae",
        out=out,
        tags={"lvmae.stage": "pretrain"},
    ) as run_id:
        step = int(state["step"])
        client = MlflowClient(tracking_uri=uri)
        ts = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[
                Metric(metric_key(f"monitor/{k}"), float(v), ts, step) for k, v in metrics.items()
            ],
        )
        for f in files:
            client.log_artifact(run_id, str(f), artifact_path="monitor")
    return metrics
