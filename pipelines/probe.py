"""Probes on the frozen LV-MAE encoder, and the baselines on the same splits (stage 3 of
Naiman et al., ICCV 2025, §8, Tables 6–8).

The encoder runs once per video (Ray Data actor pool, :class:`pipelines.embed.EmbedVideos`)
and its outputs are cached under ``<out>/features/<checkpoint key>/``: per video the mean of
the token outputs ``[W]``, the [CLS] output ``[W]`` and every token's output ``[L, W]``.
Probes then train on the cache (:func:`lvmae.probes.train_probe`), never re-running the
encoder. Baselines use the raw segment embeddings: ``mean-pool`` (their mean → linear
probe) and ``transformer`` (a small transformer trained from scratch: the paper's
"LanguageBind-Transformer" row).

Outputs: ``results.csv`` / ``results.md`` (one row per method × task), a confusion-matrix
PNG per classification row, all logged to MLflow (experiment ``lvmae-probe``).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from lvmae.labels import LabelSet, read_labels
from lvmae.probes import ProbeConfig, ProbeData, TransformerBaseline, train_probe
from lvmae.storage import read_segments

log = logging.getLogger(__name__)

FEATURES_DIR = "features"
BASELINES = ("mean-pool", "transformer")


class ProbeError(ValueError):
    """A probe run cannot start; the message says what to fix."""


# --------------------------------------------------------------------------- features


def feature_cache_dir(out: str, checkpoint: Path) -> Path:
    """``<out>/features/<key>``: the key changes when the checkpoint's weights do."""
    model = checkpoint / "model.pt"
    stat = model.stat()
    key = hashlib.sha1(f"{model.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return Path(out) / FEATURES_DIR / key.hexdigest()[:12]


def compute_features(checkpoint: str, embeddings: str, out: str) -> Path:
    """Frozen LV-MAE features for every video under ``embeddings``, computed once and cached
    (Parquet: ``video_id``, ``num_tokens``, ``cls`` ``[W]``, ``mean`` ``[W]``, ``tokens``
    ``[L * W]``). A finished cache is reused.

    Raises:
        CheckpointError, StorageError: see :func:`pipelines.embed.run_embed`.
    """
    from pipelines.embed import encoded_videos, resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    target = feature_cache_dir(out, ckpt)
    if (target / "_SUCCESS").is_file():
        return target
    feats = encoded_videos(ckpt, embeddings, with_tokens=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    feats.write_parquet(str(tmp))
    (tmp / "_SUCCESS").touch()
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


@dataclass
class Features:
    """Per-video features: ``pooled`` ``[W]`` (mean over tokens), ``cls`` ``[W]`` (None for
    raw embeddings), ``tokens`` ``[L, W]``."""

    pooled: dict[str, np.ndarray]
    cls: dict[str, np.ndarray] | None
    tokens: dict[str, np.ndarray]


def load_features(path: Path) -> Features:
    """Read a feature cache written by :func:`compute_features`."""
    table = pq.read_table(path)
    pooled, cls, tokens = {}, {}, {}
    for row in table.to_pylist():
        vid = row["video_id"]
        pooled[vid] = np.asarray(row["mean"], np.float32)
        cls[vid] = np.asarray(row["cls"], np.float32)
        tokens[vid] = np.asarray(row["tokens"], np.float32).reshape(row["num_tokens"], -1)
    return Features(pooled, cls, tokens)


def raw_features(embeddings: str) -> Features:
    """The raw segment embeddings as features (for the baselines): per video its ordered
    ``[L, D]`` sequence and its mean."""
    from lvmae.sequences import sequences_from_table

    table = read_segments(embeddings, columns=["video_id", "segment_index", "embedding"])
    tokens = dict(sequences_from_table(table))
    return Features({v: t.mean(0) for v, t in tokens.items()}, None, tokens)


def probe_data(labels: LabelSet, split: str, features: Features) -> ProbeData:
    """One split's :class:`~lvmae.probes.ProbeData` from cached features."""
    ids = labels.split(split)["video_id"].to_pylist()
    return ProbeData(
        y=labels.targets(split),
        pooled=np.stack([features.pooled[v] for v in ids]),
        tokens=[features.tokens[v] for v in ids],
        cls=np.stack([features.cls[v] for v in ids]) if features.cls else None,
    )


def load_task(labels_path: str, available: set[str]) -> tuple[LabelSet, list[str]]:
    """Read a labels file and keep the videos that have embeddings; returns the unknown
    video ids (reported by the caller). Raises ProbeError when no split survives."""
    from lvmae.labels import LabelsError

    labels = read_labels(labels_path)
    kept, unknown = labels.restrict_to(available)
    try:
        for split in ("train", "val", "test"):
            kept.split(split)
    except LabelsError as exc:
        raise ProbeError(
            f"{labels_path}: after dropping {len(unknown)} labelled videos without "
            f"embeddings: {exc}"
        ) from exc
    return kept, unknown


# --------------------------------------------------------------------------- running


def evaluate(
    labels: LabelSet,
    features: Features,
    config: ProbeConfig,
    *,
    model=None,
    device: str = "cpu",
    on_epoch=None,
    use_test: bool = True,
):
    """Train one probe on ``labels``' splits; test scores at the best validation epoch.
    With ``use_test=False`` the validation split stands in for the test split (sweeps must
    not see the test labels)."""
    train = probe_data(labels, "train", features)
    val = probe_data(labels, "val", features)
    test = probe_data(labels, "test", features) if use_test else val
    return train_probe(
        train,
        val,
        test,
        config=config,
        task=labels.task,
        n_classes=labels.num_classes if labels.task == "classification" else None,
        device=device,
        on_epoch=on_epoch,
        model=model,
    )


def _row(method: str, probe: str, *, task: str, labels: LabelSet, result, out: Path) -> dict:
    from lvmae.metrics import classification_report, confusion_matrix, plot_confusion_matrix

    row = {
        "method": method,
        "probe": probe,
        "task": task,
        "kind": labels.task,
        "train": labels.split_sizes()["train"],
        "val": labels.split_sizes()["val"],
        "test": labels.split_sizes()["test"],
        "best_epoch": result.best_epoch,
        result.metric: result.val_metric,
    }
    if labels.task == "classification":
        y = labels.targets("test")
        report = classification_report(result.test_scores, y, labels.classes)
        row["top1"] = report["top1"]
        if "top5" in report:
            row["top5"] = report["top5"]
        row["mean_class_accuracy"] = report["mean_class_accuracy"]
        cm = confusion_matrix(result.test_predictions, y, labels.num_classes)
        png = out / f"confusion_{task}_{method}_{probe}.png"
        plot_confusion_matrix(cm, labels.classes, png, title=f"{task}: {method} ({probe})")
        row["confusion_matrix"] = png.name
    else:
        row.update(result.test_metrics)
    return row


def write_results(rows: list[dict], out: Path) -> tuple[Path, Path]:
    """``results.csv`` and ``results.md`` (one row per method × task)."""
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    csv_path, md_path = out / "results.csv", out / "results.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(v):
        if isinstance(v, float):
            return "–" if math.isnan(v) else f"{v:.4f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def run_probe(
    checkpoint: str,
    embeddings: str,
    labels_paths: list[str],
    out: str,
    *,
    probe: str | Sequence[str] = "linear",
    baselines: tuple[str, ...] = (),
    overrides: dict | None = None,
    recipes: dict[str, dict] | None = None,
    tracking_uri: str | None = None,
    device: str = "cpu",
) -> list[dict]:
    """Probe the frozen encoder (and score ``baselines``) on every labels file (a task
    each); write ``results.csv``/``results.md`` and confusion matrices under ``out``; log
    every row to MLflow.

    Args:
        probe: one probe kind or several (``linear``, ``attentive``, ``pooler``); the
            encoder's features are computed once for all of them.
        overrides: recipe fields applied to every probe kind.
        recipes: per-kind recipe fields (``{"linear": {"lr": 1e-3}}``), over ``overrides``.
            The ``mean-pool`` baseline trains with the linear probe's recipe, so the two
            linear rows differ only in their features.

    Raises:
        ProbeError, LabelsError, StorageError, CheckpointError: bad input (before training).
    """
    unknown_baselines = sorted(set(baselines) - set(BASELINES))
    if unknown_baselines:
        raise ProbeError(f"unknown baseline(s) {unknown_baselines}; choose from {BASELINES}")
    kinds = [probe] if isinstance(probe, str) else list(dict.fromkeys(probe))
    if not kinds:
        raise ProbeError("no probe kind given")
    recipes = recipes or {}
    try:
        configs = {k: ProbeConfig(kind=k, **{**(overrides or {}), **recipes.get(k, {})})
                   for k in [*kinds, "linear"]}  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise ProbeError(f"bad probe recipe: {exc}") from exc
    available = set(read_segments(embeddings, columns=["video_id"])["video_id"].to_pylist())
    tasks = []
    for path in labels_paths:
        labels, unknown = load_task(path, available)
        if unknown:
            log.warning(
                "%s: %d labelled videos have no embeddings and are skipped (e.g. %s)",
                path, len(unknown), ", ".join(unknown[:3]),
            )  # fmt: skip
        tasks.append((Path(path).stem, labels, len(unknown)))
    lvmae = load_features(compute_features(checkpoint, embeddings, out))
    raw = raw_features(embeddings) if baselines else None
    out_dir = Path(out)
    rows = []
    for task, labels, n_unknown in tasks:
        for kind in kinds:
            result = evaluate(labels, lvmae, configs[kind], device=device)
            rows.append(
                _row("lvmae", kind, task=task, labels=labels, result=result, out=out_dir)
                | {"skipped": n_unknown}
            )
        if "mean-pool" in baselines:
            res = evaluate(labels, raw, configs["linear"], device=device)
            rows.append(
                _row("mean-pool", "linear", task=task, labels=labels, result=res, out=out_dir)
            )
        if "transformer" in baselines:
            dim = next(iter(raw.tokens.values())).shape[1]
            n_out = labels.num_classes if labels.task == "classification" else 1
            cfg = ProbeConfig.paper("attentive")
            res = evaluate(labels, raw, cfg, model=TransformerBaseline(dim, n_out), device=device)
            rows.append(
                _row("transformer", "scratch", task=task, labels=labels, result=res, out=out_dir)
            )
    csv_path, md_path = write_results(rows, out_dir)
    _track(
        rows, configs, [csv_path, md_path], out=out, tracking_uri=tracking_uri,
        checkpoint=checkpoint,
    )  # fmt: skip
    return rows


def _track(rows, configs, files, *, out, tracking_uri, checkpoint) -> None:
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import open_run, tracking_uri_near

    uri = tracking_uri or tracking_uri_near(checkpoint, out)
    client = MlflowClient(tracking_uri=uri)
    for row in rows:
        name = f"{row['task']}:{row['method']}:{row['probe']}"
        config = configs.get(row["probe"], configs["linear"])
        run_id = open_run(
            uri, "lvmae-probe", name, out=out, tags={"lvmae.stage": "probe"},
            params={**{f"probe.{k}": v for k, v in config.to_dict().items()},
                    "method": row["method"], "task": row["task"]},
        )  # fmt: skip
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                client.log_metric(run_id, key, float(value))
        if row.get("confusion_matrix"):
            client.log_artifact(run_id, str(Path(out) / row["confusion_matrix"]))
        for f in files:
            client.log_artifact(run_id, str(f))
