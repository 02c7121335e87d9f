"""Extraction on Ray Data: long videos → 5-second segments → frozen encoder → Parquet.

The Ray side stays thin; the per-video and per-batch logic lives in :mod:`lvmae`::

    list videos (driver)
      → decode   (CPU tasks, one video each: lvmae.clips.read_clips_bounded; emits small
                  per-segment clips, never a row per decoded frame, and one report per video)
      → encode   (actor pool, ActorPoolStrategy; one GPU per actor where GPUs exist)
      → write    (tasks: segment rows to Parquet, atomically)
      → driver   (counts each video's written segments; records its row in the videos table
                  once all its segments are on disk; progress; summary)

Resume: a video whose row says ``ok`` under the same config is skipped on a rerun; anything
else is redone, and readers key on ``(video_id, segment_index)``, so a run killed at any
point and rerun reads back every segment exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from lvmae import __version__
from lvmae.clips import Clip, VideoReport, read_clips_bounded
from lvmae.config import ExtractConfig
from lvmae.encoders import build_encoder, describe_encoder
from lvmae.errors import LvmaeError
from lvmae.inputs import VideoSource, list_videos, local_copy
from lvmae.progress import Progress
from lvmae.storage import (
    VIDEO_SCHEMA,
    read_manifest,
    read_videos,
    segment_schema,
    write_manifest,
    write_table_atomic,
)
from lvmae.tracking import default_tracking_uri, tracked_run
from pipelines.connect import connect_ray

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 10.0  # the driver writes finished videos' rows at least this often


class ExtractError(LvmaeError, RuntimeError):
    """The run cannot start (bad output directory, encoder unavailable, ...)."""


# ----------------------------------------------------------------------------- stages


def _clip_batch(video_id: str, clips: list[Clip]) -> dict[str, np.ndarray]:
    return {
        "video_id": np.array([video_id] * len(clips), dtype=object),
        "segment_index": np.array([c.segment.index for c in clips], dtype=np.int32),
        "start_s": np.array([c.segment.start_s for c in clips], dtype=np.float64),
        "end_s": np.array([c.segment.end_s for c in clips], dtype=np.float64),
        "frame_indices": np.stack([c.frame_indices for c in clips]).astype(np.int64),
        "frame_times_s": np.stack([c.frame_times_s for c in clips]).astype(np.float64),
        "frames": np.stack([c.frames for c in clips]),
        "report": np.array([""] * len(clips), dtype=object),
    }


def _report_batch(
    video_id: str, report: VideoReport, config: ExtractConfig, node_id: str | None
) -> dict:
    """One marker row (``segment_index == -1``) carrying the video's report, and the Ray
    node that decoded the video, as JSON."""
    t, s = config.frames_per_segment, config.image_size
    payload = {**asdict(report), "node_id": node_id}
    return {
        "video_id": np.array([video_id], dtype=object),
        "segment_index": np.array([-1], dtype=np.int32),
        "start_s": np.zeros(1),
        "end_s": np.zeros(1),
        "frame_indices": np.zeros((1, t), dtype=np.int64),
        "frame_times_s": np.zeros((1, t)),
        "frames": np.zeros((1, t, s, s, 3), dtype=np.uint8),
        "report": np.array([json.dumps(payload, default=str)], dtype=object),
    }


def decode_videos(batch: dict[str, np.ndarray], config_json: str):
    """Ray Data stage: for each input video row (``video_id``, ``uri``) yield batches of
    clips (``frames``: ``[n, T, S, S, 3]`` uint8) and, last, its report row."""
    import ray

    config = ExtractConfig.model_validate_json(config_json)
    node_id = ray.get_runtime_context().get_node_id()
    for video_id, uri in zip(batch["video_id"], batch["uri"], strict=True):
        chunk: list[Clip] = []
        try:
            with local_copy(str(uri)) as path:
                for item in read_clips_bounded(path, config):
                    if isinstance(item, Clip):
                        chunk.append(item)
                        if len(chunk) >= config.batch_size:
                            yield _clip_batch(video_id, chunk)
                            chunk = []
                        continue
                    if chunk:
                        yield _clip_batch(video_id, chunk)
                        chunk = []
                    yield _report_batch(video_id, item, config, node_id)
        except Exception as exc:  # the copy from remote storage failed
            if chunk:
                yield _clip_batch(video_id, chunk)
            yield _report_batch(
                video_id, VideoReport("failed", f"cannot read {uri}: {exc}"), config, node_id
            )


class EncodeClips:
    """Ray Data actor: the frozen encoder, loaded once per actor; adds ``embedding``
    (``[n, D]`` float32, L2-normalised) and drops ``frames``."""

    def __init__(self, config_json: str) -> None:

        config = ExtractConfig.model_validate_json(config_json)
        self.encoder = build_encoder(
            config.encoder, checkpoint=config.encoder_checkpoint, seed=config.encoder_seed
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames = batch.pop("frames")
        is_clip = batch["segment_index"] >= 0
        emb = np.zeros((len(is_clip), self.encoder.embedding_dim), dtype=np.float32)
        if is_clip.any():
            emb[is_clip] = self.encoder.encode(frames[is_clip])
        batch["embedding"] = emb
        return batch


def write_segments(
    batch: dict[str, np.ndarray], out: str, encoder: str, config_id: str, dim: int
) -> dict[str, np.ndarray]:
    """Ray Data stage: write the batch's segment rows as one Parquet file (atomically);
    return ``video_id``/``segment_index``/``report`` for the driver's bookkeeping."""
    is_clip = batch["segment_index"] >= 0
    n = int(is_clip.sum())
    if n:
        table = pa.table(
            {
                "video_id": pa.array(batch["video_id"][is_clip].tolist(), pa.string()),
                "segment_index": pa.array(batch["segment_index"][is_clip], pa.int32()),
                "start_s": pa.array(batch["start_s"][is_clip], pa.float64()),
                "end_s": pa.array(batch["end_s"][is_clip], pa.float64()),
                "frame_indices": pa.array(list(batch["frame_indices"][is_clip])),
                "frame_times_s": pa.array(list(batch["frame_times_s"][is_clip])),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(batch["embedding"][is_clip].astype(np.float32).ravel()), dim
                ),
                "encoder": pa.array([encoder] * n, pa.string()),
                "config_id": pa.array([config_id] * n, pa.string()),
            },
            schema=segment_schema(dim),
        )
        write_table_atomic(table, out, "segments")
    return {
        "video_id": batch["video_id"],
        "segment_index": batch["segment_index"],
        "report": batch["report"],
    }


# ----------------------------------------------------------------------------- driver


@dataclass
class ExtractionSummary:
    """What one extraction run did. Durations in seconds; ``failures`` maps video_id to
    its error for every video not ``ok``."""

    videos_total: int = 0
    videos_skipped: int = 0
    videos_ok: int = 0
    videos_partial: int = 0
    videos_failed: int = 0
    segments_written: int = 0
    video_seconds: float = 0.0
    wall_s: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def video_seconds_per_wall_second(self) -> float:
        return self.video_seconds / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["video_seconds_per_wall_second"] = self.video_seconds_per_wall_second
        return d

    def format(self) -> str:
        lines = [
            f"videos: {self.videos_total} total, {self.videos_skipped} already done, "
            f"{self.videos_ok} ok, {self.videos_partial} partial, {self.videos_failed} failed",
            f"segments written: {self.segments_written}",
            f"video processed: {self.video_seconds / 3600:.3f} h in {self.wall_s:.1f} s "
            f"({self.video_seconds_per_wall_second:.1f} s of video per second, "
            f"{self.segments_written / max(self.wall_s, 1e-9):.1f} segments/s)",
        ]
        for vid, err in sorted(self.failures.items()):
            lines.append(f"  not ok: {vid}: {err}")
        return "\n".join(lines)


def _video_row(source: VideoSource, report: dict, config_id: str) -> dict:
    info = report.get("info") or {}
    return {
        "video_id": source.video_id,
        "uri": source.uri,
        "status": report["status"],
        "error": report.get("error"),
        "decoder": info.get("decoder"),
        "duration_s": info.get("duration_s"),
        "fps": info.get("fps"),
        "width": info.get("width"),
        "height": info.get("height"),
        "num_frames": info.get("num_frames"),
        "num_segments": report.get("num_clips", 0),
        "size_bytes": source.size_bytes,
        "decode_s": report.get("decode_s"),
        "node_id": report.get("node_id"),
        "config_id": config_id,
        "updated_at": datetime.now(timezone.utc),
    }


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the output (for the run manifest)."""
    import importlib.metadata as md

    names = ["torch", "ray", "decord", "av", "pyarrow", "transformers", "languagebind", "numpy"]
    versions = {"lvmae": __version__}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def prepare_output(out: str, config: ExtractConfig, encoder: dict, *, overwrite: bool) -> dict:
    """Check ``out`` against an earlier run's manifest and write this run's manifest.

    Raises:
        ExtractError: ``out`` holds outputs of another configuration (and not ``overwrite``).
    """
    previous = read_manifest(out)
    if previous and previous.get("config_id") != config.config_id() and not overwrite:
        raise ExtractError(
            f"{out!r} already holds embeddings made with another configuration "
            f"(config_id {previous.get('config_id')}, encoder "
            f"{previous.get('config', {}).get('encoder')}); this run's is "
            f"{config.config_id()}. Write to a new --out directory, or pass --overwrite to "
            f"add to it anyway."
        )
    manifest = {
        "kind": "lvmae.extract",
        "config": config.model_dump(mode="json"),
        "config_id": config.config_id(),
        "encoder": encoder,
        "versions": library_versions(),
        "started_at": datetime.now(timezone.utc).isoformat(),
        "status": "running",
    }
    write_manifest(out, manifest)
    return manifest


def run_extraction(
    input_path: str,
    out: str,
    config: ExtractConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    tracking_uri: str | None = None,
    track: bool = True,
) -> ExtractionSummary:
    """Extract segment embeddings for every video under ``input_path`` into ``out``.

    Starts (or joins, via ``RAY_ADDRESS``) a Ray instance unless one is initialised.
    Bad videos become ``failed``/``partial`` rows of the videos table; the run goes on.

    Args:
        input_path: directory, glob or list file; local path or fsspec URI.
        out: output directory (local path or pyarrow filesystem URI).
        config: extraction settings.
        overwrite: allow writing into an output made with another configuration.
        progress: show progress: a bar on a TTY, else a line every 30 s
            (:class:`lvmae.progress.Progress`).
        tracking_uri: MLflow store; default ``MLFLOW_TRACKING_URI`` or
            ``sqlite:///<out>/mlflow.db`` (experiment ``lvmae-extract``, one run per output
            directory and config: params = resolved config, metrics = the summary, the
            manifest as an artifact).
        track: log to MLflow at all.

    Returns:
        The run's :class:`ExtractionSummary` (also written into the manifest).

    Raises:
        InputError: the input names no videos / does not exist (nothing written).
        ExtractError, EncoderUnavailableError: the run cannot start (nothing written).
    """
    t0 = time.perf_counter()
    sources = list_videos(input_path, config.extensions)
    encoder = describe_encoder(config.encoder, config.encoder_checkpoint, config.encoder_seed)
    manifest = prepare_output(out, config, encoder, overwrite=overwrite)
    config_id = config.config_id()

    done = read_videos(out)
    done_ids = {
        v
        for v, s, c in zip(
            done["video_id"].to_pylist(),
            done["status"].to_pylist(),
            done["config_id"].to_pylist(),
            strict=True,
        )
        if s == "ok" and c == config_id
    }
    todo = [s for s in sources if s.video_id not in done_ids]
    summary = ExtractionSummary(videos_total=len(sources), videos_skipped=len(sources) - len(todo))
    with _tracking(out, manifest, tracking_uri, track) as run_id:
        if todo:
            _run_pipeline(todo, out, config, encoder, summary, progress=progress)
        summary.wall_s = time.perf_counter() - t0
        manifest.update(
            status="done",
            finished_at=datetime.now(timezone.utc).isoformat(),
            summary=summary.to_dict(),
        )
        write_manifest(out, manifest)
        if run_id is not None:
            _log_summary(run_id, tracking_uri or default_tracking_uri(out), manifest, summary)
    return summary


@contextmanager
def _tracking(out: str, manifest: dict, tracking_uri: str | None, track: bool) -> Iterator:
    """The extraction's MLflow run (experiment ``lvmae-extract``, one per output directory
    and config: the config and encoder as params), open while the work runs and ended
    FINISHED or FAILED; yields its id, or None when not tracking (``track=False``, or a
    remote output without ``MLFLOW_TRACKING_URI``)."""
    if not track:
        yield None
        return
    if tracking_uri is None and "://" in out and not os.environ.get("MLFLOW_TRACKING_URI"):
        log.warning("no MLflow tracking for remote output %s: set MLFLOW_TRACKING_URI", out)
        yield None
        return
    uri = tracking_uri or default_tracking_uri(out)
    params = {f"extract.{k}": v for k, v in manifest["config"].items()}
    params.update({f"encoder.{k}": v for k, v in manifest["encoder"].items()})
    with tracked_run(
        uri, "lvmae-extract", f"{out.rstrip('/')}:{manifest['config_id']}", out=out,
        tags={"lvmae.stage": "extract", "lvmae.out": out}, params=params,
        with_system_metrics=True,
    ) as run_id:  # fmt: skip
        yield run_id


def _log_summary(run_id: str, uri: str, manifest: dict, summary: ExtractionSummary) -> None:
    """The summary as metrics (one step per run into this output) and the manifest."""
    client = MlflowClient(tracking_uri=uri)
    metrics = {k: v for k, v in summary.to_dict().items() if isinstance(v, int | float)}
    ts = int(time.time() * 1000)
    step = len(client.get_metric_history(run_id, "segments_written"))
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.json"
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        client.log_artifact(run_id, str(path))


def _ray_init() -> None:
    connect_ray()


def build_dataset(todo: list[VideoSource], out: str, config: ExtractConfig, encoder: dict):
    """The extraction as a lazy Ray Dataset: decode (CPU tasks) → encode (actor pool) →
    write (tasks). Its rows are the driver's bookkeeping: ``video_id``,
    ``segment_index`` (-1 for a video's report row) and ``report`` (JSON or empty)."""
    import ray
    from ray.data import ActorPoolStrategy

    config_json = config.model_dump_json()
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    ds = ray.data.from_items(
        [{"video_id": s.video_id, "uri": s.uri} for s in todo], override_num_blocks=len(todo)
    )
    ds = ds.map_batches(
        decode_videos,
        batch_size=1,
        fn_kwargs={"config_json": config_json},
        num_cpus=config.decode_cpus,
        # Declared memory also keeps Ray Data from fusing decoding into the encoder actors:
        # decoding must scale out over CPU tasks, not run serially inside the actor pool.
        memory=config.decode_memory_mb * 2**20,
    )
    ds = ds.map_batches(
        EncodeClips,
        fn_constructor_kwargs={"config_json": config_json},
        batch_size=config.batch_size,
        compute=ActorPoolStrategy(size=config.encoder_actors),
        num_gpus=gpus,
        num_cpus=1 if not gpus else 0.5,
    )
    return ds.map_batches(
        write_segments,
        batch_size=config.rows_per_file,
        fn_kwargs={
            "out": out,
            "encoder": encoder["name"],
            "config_id": config.config_id(),
            "dim": encoder["embedding_dim"],
        },
        num_cpus=0.25,
    )


def _run_pipeline(todo, out, config, encoder, summary, *, progress) -> None:
    from ray.data import DataContext

    _ray_init()
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.max_errored_blocks = len(todo)  # a crashed decode task loses one video, not the run
    config_id = config.config_id()
    by_id = {s.video_id: s for s in todo}
    ds = build_dataset(todo, out, config, encoder)

    written: dict[str, int] = defaultdict(int)
    reports: dict[str, dict] = {}
    finished: set[str] = set()
    pending_rows: list[dict] = []
    last_flush = bar_t0 = time.perf_counter()
    bar = Progress(len(todo), "extract", "videos", enabled=progress)

    def flush() -> None:
        nonlocal pending_rows, last_flush
        if pending_rows:
            write_table_atomic(pa.Table.from_pylist(pending_rows, VIDEO_SCHEMA), out, "videos")
            pending_rows = []
        last_flush = time.perf_counter()

    def finish(video_id: str, report: dict) -> None:
        finished.add(video_id)
        status = report["status"]
        setattr(summary, f"videos_{status}", getattr(summary, f"videos_{status}") + 1)
        if status != "ok":
            summary.failures[video_id] = report.get("error") or "unknown error"
        summary.video_seconds += float((report.get("info") or {}).get("duration_s") or 0.0)
        pending_rows.append(_video_row(by_id[video_id], report, config_id))
        hours = summary.video_seconds / 3600
        rate = hours / max((time.perf_counter() - bar_t0) / 3600, 1e-9)
        bar.update(
            1, segments=summary.segments_written, failed=len(summary.failures),
            video_h=f"{hours:.2f}", video_h_per_h=f"{rate:.0f}",
        )  # fmt: skip

    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for vid, idx, rep in zip(
                batch["video_id"], batch["segment_index"], batch["report"], strict=True
            ):
                if idx >= 0:
                    written[vid] += 1
                    summary.segments_written += 1
                else:
                    reports[vid] = json.loads(rep)
                done = vid in reports and written[vid] >= reports[vid].get("num_clips", 0)
                if done and vid not in finished:
                    finish(vid, reports[vid])
            if time.perf_counter() - last_flush > FLUSH_EVERY_S:
                flush()
        for vid in by_id:
            if vid not in finished:  # its task died (e.g. a native crash in the decoder)
                report = reports.get(vid) or {"status": "failed", "num_clips": written[vid]}
                report = {
                    **report,
                    "status": "partial" if written[vid] else "failed",
                    "error": report.get("error")
                    or "no result: the decode task died (native crash or out of memory?)",
                }
                finish(vid, report)
    finally:
        flush()
        bar.close()
