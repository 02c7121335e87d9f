"""Extraction on Ray Data: long videos → 5-second segments → frozen encoder → Parquet.

The Ray side stays thin; the per-video and per-batch logic lives in :mod:`lvmae`::

    list videos (driver)
      → plan     (only for a video longer than range_s with shot segments: a CPU task
                  detects its shots once and yields its segment plan's ranges, one row each)
      → decode   (CPU tasks, one video each: lvmae.video.clips.read_clips_bounded; at most
                  max_clips_in_flight clips in memory, one report per video). The tiny
                  encoder on CPU runs right here, loaded once per worker process.
      → encode   (otherwise: an actor pool; languagebind-* take one GPU each by default,
                  and a quarter CPU; see ExtractConfig.encoder_gpus)
      or, with NVDEC (decoder nvdec, or auto where the encoder actors' GPU has it: see
      nvdec_route), no decode tasks: the encoder actors take the videos themselves, decode
      them on the GPU (nvdec_sessions at once each) and embed them, frames never leaving it
      → driver   (OutputWriter: segment rows and, once all of a video's segments are on
                  disk, its videos-table row, written as the first video finishes and then
                  every flush_s seconds or rows_per_file rows; progress; MLflow step metrics)

Embeddings are a few KiB per segment, so the driver writes them itself: no write task
competes with decoding for CPUs, and a video's row never lands before its segments.

Resume: a video whose row says ``ok`` under the same config is skipped on a rerun; anything
else is redone, and readers key on ``(video_id, segment_index)``, so a run killed at any
point and rerun reads back every segment exactly once.
"""

from __future__ import annotations

import functools
import gc
import importlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from lvmae import __version__
from lvmae.config import ExtractConfig
from lvmae.encoders.specs import describe_encoder
from lvmae.errors import LvmaeError
from lvmae.progress import Progress
from lvmae.storage import (
    VIDEO_SCHEMA,
    DiskFullError,
    StorageError,
    check_object_store,
    check_output_path,
    hold_output,
    object_fs,
    read_manifest,
    read_videos,
    segment_schema,
    use_object_store,
    write_manifest,
    write_table_atomic,
    written_segments,
)
from lvmae.video.clips import Clip, SegmentPlan, VideoReport, read_clips_bounded
from lvmae.video.decoding import container_duration
from lvmae.video.inputs import VideoSource, list_videos, video_source
from lvmae.video.nvdec import EMULATE_ENV, emulated, nvdec_blocker
from lvmae.video.remote import fetch_dir, remove_stale
from lvmae.video.segments import segment_ranges, split_plan
from lvmae.video.shots import describe_detector, detector_versions
from pipelines.connect import Reservation, connect_ray, library_log_level

if TYPE_CHECKING:
    from lvmae.encoders.models import FrozenEncoder

log = logging.getLogger(__name__)


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
        "frames": _stack([c.frames for c in clips]),
        "report": np.array([""] * len(clips), dtype=object),
    }


def _stack(frames: list) -> Any:
    """``[n, T, S, S, 3]`` uint8: numpy, or a torch tensor where NVDEC left them on the GPU."""
    if isinstance(frames[0], np.ndarray):
        return np.stack(frames)
    import torch  # only where a clip holds a tensor: torch is loaded already

    return torch.stack(frames)


def _report_batch(
    video_id: str, report: VideoReport, config: ExtractConfig, node_id: str | None, share: dict
) -> dict:
    """One marker row (``segment_index == -1``) carrying, as JSON, the report of one task's
    share of a video (``share``: its ``part`` of ``parts`` segment ranges) and the Ray node
    that decoded it."""
    t, s = config.frames_per_segment, config.image_size
    payload = {**asdict(report), "node_id": node_id, **share}
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


_LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder-load")
_PLANNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lvmae-ranges")


@functools.lru_cache(maxsize=2)
def _worker_encoder(name: str, checkpoint: str | None, seed: int) -> FrozenEncoder:
    """The frozen encoder of this worker process, built on first use (Ray reuses workers)."""
    from lvmae.encoders.models import build_encoder  # torch: workers only, never the driver

    return build_encoder(name, checkpoint=checkpoint, seed=seed)


def _warm_worker(config_json: str) -> str | None:
    """A decode worker's start, done ahead (:func:`warm_decode_workers`): the decode stage
    imported and the frozen encoder built into this process's cache. Never raises: a
    failure is returned (the real task meets it again and records it per video)."""
    try:
        config = ExtractConfig.model_validate_json(config_json)
        _worker_encoder(config.encoder, config.encoder_checkpoint, config.encoder_seed)
        import av  # noqa: F401
        import decord  # noqa: F401  (the readers' own imports)
    except Exception as exc:  # reported by the decode tasks, per video
        return f"{type(exc).__name__}: {exc}"
    return None


MALLOC_ARENA_ENV = "MALLOC_ARENA_MAX"


def worker_options(config: ExtractConfig) -> dict[str, Any]:
    """Ray options every extraction worker gets (decode and shot-planning tasks, their
    warm-ups, encoder actors): ``runtime_env`` with ``MALLOC_ARENA_MAX`` =
    ``config.malloc_arenas`` (Ray merges it into the job's own runtime env). glibc gives
    each thread that allocates an arena of its own, up to 8 per core of the host, and an arena
    keeps its peak: a worker that starts a decoding thread (and the decoder its threads) for
    every video or range grew by about 45 MiB per 10-min range of 720p, without bound in
    sight; with 2 arenas it stays flat (docs/design.md, "Memory per decode worker"). Empty when
    ``malloc_arenas`` is None."""
    if config.malloc_arenas is None:
        return {}
    return {"runtime_env": {"env_vars": {MALLOC_ARENA_ENV: str(config.malloc_arenas)}}}


def decode_task_options(config: ExtractConfig, reservation: Reservation) -> dict[str, Any]:
    """Ray options of a decode (or shot-planning) task and of its warm-up, from what a decode
    task reserves: ``num_cpus``, ``memory`` in bytes (None when not declared: declared, it
    also keeps Ray Data from fusing decoding into the encoder actors, so decoding scales out
    over CPU tasks), ``resources`` when given, and :func:`worker_options`."""
    return {
        "num_cpus": reservation.cpus,
        "memory": (reservation.memory_mb or 0) * 2**20 or None,
        **({"resources": dict(reservation.resources)} if reservation.resources else {}),
        **worker_options(config),
    }


def warm_decode_workers(config: ExtractConfig, reservation: Reservation, tasks: int) -> list[Any]:
    """Start, as soon as Ray is up, the worker processes the first decode tasks will run in,
    and build the encoder there, while the driver still opens its MLflow run, reads what is
    on disk and plans the dataset (:func:`_extract_held`). Ray reuses a job's idle workers,
    so the first tasks find the encoder built: a new worker spends about 4 CPU-s importing
    torch and LanguageBind's model code (``benchmarks/RESULTS.md``, "Fixed start cost").

    One warm-up per decode slot (the cluster's CPUs, memory and ``decode_resources``, over
    what a task reserves: the fewest of these), reserving what a decode task does; none when
    ``tasks`` are fewer than the slots (the first task would find a free slot before the
    warm-ups end, and Ray would start a new worker for it that builds the encoder again), and
    none unless the encoder runs inside the decode tasks
    (:meth:`ExtractConfig.encodes_in_decode_tasks`). Returns the warm-ups' object refs (a
    failure inside one is returned, not raised)."""
    import ray

    if not config.encodes_in_decode_tasks() or tasks <= 0:
        return []
    options = decode_task_options(config, reservation)  # Ray gives the tasks these workers
    have = ray.cluster_resources()
    need = {
        "CPU": reservation.cpus or 0.0, "memory": options["memory"] or 0,
        **options.get("resources", {}),
    }  # fmt: skip
    slots = min((int(have.get(k, 0.0) // v) for k, v in need.items() if v > 0), default=tasks)
    if tasks < slots:
        # a free slot would take the first task before its warm-up ends, in a new worker
        # that builds the encoder again: the warm-up would be a second build, never used
        return []
    warm = ray.remote(_warm_worker).options(**options)
    config_json = config.model_dump_json()
    return [warm.remote(config_json) for _ in range(slots)]


def output_block_bytes(config: ExtractConfig, embedding_dim: int, id_bytes: int = 0) -> int:
    """Ray Data's ``target_max_block_size`` where the decode tasks (or NVDEC actors) yield
    embeddings: 0.8 of a ``batch_size``-row batch's size in bytes, estimated per row as the
    embedding (``4 * embedding_dim``), the frame indices and times (``16 *
    frames_per_segment``), the video id (``id_bytes``, the longest) and 64 for the rest
    (within 1 % of Ray Data's size of a real row). Ray Data hands a task's output on once it
    holds more than this and slices a block of 1.5 times this or more, so each yielded batch
    leaves the task at once, as one block. Smaller blocks stall the task: it may have 2
    blocks that the driver has not taken yet (Ray Data's streaming-generator buffer), and
    with blocks of 2 rows each worker of a 2-core run waited 7 s of its 30 for the driver
    (``benchmarks/RESULTS.md``, "Exact decoding without the frames nothing needs; one block
    per batch")."""
    row = 4 * embedding_dim + 16 * config.frames_per_segment + id_bytes + 64
    return max(1, int(0.8 * config.batch_size * row))


def _embed(batch: dict[str, np.ndarray], encoder: FrozenEncoder) -> dict[str, np.ndarray]:
    """Replace ``frames`` by ``embedding`` (``[n, D]`` float32; zeros on report rows)."""
    frames = batch.pop("frames")
    is_clip = batch["segment_index"] >= 0
    emb = np.zeros((len(is_clip), encoder.embedding_dim), dtype=np.float32)
    if is_clip.all():
        emb[:] = encoder.encode(frames)  # numpy, or torch on the encoder's GPU (NVDEC)
    elif is_clip.any():
        emb[is_clip] = encoder.encode(frames[is_clip])
    batch["embedding"] = emb
    return batch


def decode_videos(batch: dict[str, np.ndarray], config_json: str):
    """Ray Data stage: for each input video row (``video_id``, ``uri``, ``done``: indices
    of its segments already on disk, skipped; ``first``/``stop``/``part``/``parts``: its
    range; ``plan``: a shipped shot plan; ``why_cpu``: the run's reason for a CPU decoder
    under ``decoder: auto``) yield batches of clips (``frames``: ``[n, T, S, S, 3]`` uint8)
    and, last, its report row. Where the encoder runs in the decode tasks
    (:meth:`ExtractConfig.encodes_in_decode_tasks`), the batches carry ``embedding``
    (``[n, D]``) instead of frames."""
    import ray

    config = ExtractConfig.model_validate_json(config_json)
    use_object_store(config.storage)  # this worker's endpoint and retries (not credentials)
    loading = None
    if config.encodes_in_decode_tasks():
        # Built in a thread while the first clips decode (a new worker spends seconds
        # importing the model code); instant once this worker has it.
        loading = _LOADER.submit(
            _worker_encoder, config.encoder, config.encoder_checkpoint, config.encoder_seed
        )

    def out(rows: dict) -> dict:
        return _embed(rows, loading.result()) if loading is not None else rows

    context = ray.get_runtime_context()
    gpus = context.get_accelerator_ids().get("GPU", [])
    yield from _video_batches(batch, config, out, node_id=context.get_node_id(), gpus=gpus)


def _video_batches(batch, config: ExtractConfig, out, *, node_id, gpus) -> Iterator[dict]:
    """The batches of :func:`decode_videos` for the video rows of ``batch``, each passed
    through ``out`` (embedding them, or not), decoded in this process with the GPUs ``gpus``
    (Ray's ids; NVDEC only where it holds one)."""
    rows = zip(
        batch["video_id"], batch["uri"], batch["done"], batch["first"], batch["stop"],
        batch["part"], batch["parts"], batch["plan"], batch["why_cpu"], strict=True,
    )  # fmt: skip
    for video_id, uri, done, first, stop, part, parts, planned, why_cpu in rows:
        chunk: list[Clip] = []
        index_range = (int(first), None if stop < 0 else int(stop))
        share = {"part": int(part), "parts": int(parts)}
        shipped = json.loads(planned) if planned else {}  # from plan_shots
        if "report" in shipped:  # its planning failed: that is its report
            report = VideoReport.from_dict(shipped["report"])
            yield out(_report_batch(video_id, report, config, node_id, share))
            continue
        try:
            with video_source(str(uri), config.storage) as source:
                local = getattr(source, "local_path", None)
                skip = frozenset(done.tolist())
                which = {"skip": skip, "index_range": index_range, "gpus": gpus,
                         "cpu_reason": why_cpu or None}  # fmt: skip
                if "plan" in shipped:
                    which["plan"] = SegmentPlan.from_dict(shipped["plan"])
                for item in read_clips_bounded(source, config, **which):
                    if isinstance(item, Clip):
                        chunk.append(item)
                        if len(chunk) >= config.batch_size:  # one block (output_block_bytes)
                            yield out(_clip_batch(video_id, chunk))
                            chunk = []
                        continue
                    if chunk:
                        yield out(_clip_batch(video_id, chunk))
                        chunk = []
                    _name_object(item, local, uri)
                    item.decode_s += shipped.get("plan_s", 0.0)  # the planning's time
                    yield out(_report_batch(video_id, item, config, node_id, share))
        except Exception as exc:  # the object cannot be read (after the client's retries)
            if chunk:
                yield out(_clip_batch(video_id, chunk))
            reason = str(exc) if str(uri) in str(exc) else f"cannot read {uri}: {exc}"
            report = VideoReport("failed", reason)
            yield out(_report_batch(video_id, report, config, node_id, share))


def _name_object(report: VideoReport, local: Path | None, uri: str) -> None:
    """Name the object, not its local copy, in ``report.error``."""
    if report.error and local is not None:
        error = report.error.replace(str(local), str(uri))
        report.error = error if str(uri) in error else f"{uri}: {error}"


def plan_shots(batch: dict[str, np.ndarray], config_json: str) -> Iterator[dict]:
    """Ray Data stage before :func:`decode_videos` in a run with a long shot-segmented
    video (``split``; :func:`plan_ranges`): plan each such video once (open it and detect
    its shots, :func:`lvmae.video.clips.read_clips` with ``plan_only``, under the same time
    limit), cut the plan into ranges of about ``range_s`` seconds
    (:func:`lvmae.video.segments.split_plan`) and yield one row per range, ``part`` of
    ``parts``, each carrying the plan as JSON in ``plan`` (segment times and the shot
    results, tens of KiB per hour of video; the first range also the planning's seconds,
    ``plan_s``, added to its decode seconds). A video whose planning fails yields one row
    whose ``plan`` holds that failure's report, which :func:`decode_videos` passes on as
    the video's report. Other rows pass through unchanged."""
    import ray

    config = ExtractConfig.model_validate_json(config_json)
    use_object_store(config.storage)
    gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    for i in range(len(batch["video_id"])):
        row = {k: v[i : i + 1] for k, v in batch.items()}
        if not row["split"][0]:
            yield row
            continue
        uri = str(row["uri"][0])
        plan, report = None, VideoReport("failed", f"{uri}: planning gave no report")
        try:
            with video_source(uri, config.storage) as source:
                for item in read_clips_bounded(source, config, plan_only=True, gpus=gpus):
                    if isinstance(item, SegmentPlan):
                        plan = item
                    else:
                        report = item
                _name_object(report, getattr(source, "local_path", None), uri)
        except Exception as exc:  # the object cannot be read (after the client's retries)
            reason = str(exc) if uri in str(exc) else f"cannot read {uri}: {exc}"
            report = VideoReport("failed", reason)
        if plan is None:
            failed = json.dumps({"report": asdict(report)}, default=str)
            yield {**row, "split": np.zeros(1, bool), "plan": np.array([failed], dtype=object)}
            continue
        ranges = split_plan(plan.segments, range_s=config.range_s or float("inf"))
        n, shipped = len(ranges), json.dumps(plan.to_dict())
        seconds = [report.decode_s] + [0.0] * (n - 1)  # the planning's, counted once
        yield {
            **{k: np.repeat(v, n, axis=0) for k, v in row.items()},
            "split": np.zeros(n, bool),
            "first": np.array([a for a, _ in ranges]),
            "stop": np.array([-1 if b is None else b for _, b in ranges]),
            "part": np.arange(n),
            "parts": np.full(n, n),
            "plan": np.array(
                [f'{{"plan_s": {t!r}, "plan": {shipped}}}' for t in seconds], dtype=object
            ),
        }


class EncodeClips:
    """Ray Data actor: the frozen encoder, loaded once per actor; adds ``embedding``
    (``[n, D]`` float32, L2-normalised) and drops ``frames``."""

    def __init__(self, config_json: str) -> None:
        from lvmae.encoders.models import build_encoder  # torch: workers only, never the driver

        config = ExtractConfig.model_validate_json(config_json)
        self.encoder = build_encoder(
            config.encoder, checkpoint=config.encoder_checkpoint, seed=config.encoder_seed
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _embed(batch, self.encoder)


class DecodeEncodeVideos:
    """Ray Data actor for the NVDEC route (:func:`nvdec_route`): the frozen encoder on this
    actor's GPU, loaded once; each call takes video rows (as :func:`decode_videos` does) and
    yields their segments embedded (``embedding`` ``[n, D]`` float32, no ``frames``) and,
    last, each video's report row. Decoding runs on the same GPU (NVDEC:
    :class:`~lvmae.video.nvdec.NvdecReader`; a video NVDEC cannot decode, such as AV1 on
    Hopper, is read with PyAV here, its reason recorded), in a thread per video
    (:func:`~lvmae.video.clips.read_clips_bounded`), so decoding overlaps encoding; Ray Data
    runs ``nvdec_sessions`` calls at once per actor."""

    def __init__(self, config_json: str, emulate: bool = False) -> None:
        import ray

        from lvmae.encoders.models import build_encoder  # torch: workers only, never the driver

        if emulate:  # the driver's LVMAE_NVDEC_EMULATE (tests): this worker emulates too
            os.environ[EMULATE_ENV] = "1"
        self.config = ExtractConfig.model_validate_json(config_json)
        use_object_store(self.config.storage)
        c = self.config
        self.encoder = build_encoder(
            c.encoder, checkpoint=c.encoder_checkpoint, seed=c.encoder_seed
        )
        context = ray.get_runtime_context()
        self.node_id = context.get_node_id()
        self.gpus = context.get_accelerator_ids().get("GPU", [])

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        def out(rows: dict) -> dict:
            return _embed(rows, self.encoder)

        yield from _video_batches(batch, self.config, out, node_id=self.node_id, gpus=self.gpus)


def _nvdec_probe(emulate: bool) -> str | None:
    """Run on a GPU worker: why NVDEC cannot decode there (no codec looked at yet), or None.
    ``emulate``: the driver's :data:`~lvmae.video.nvdec.EMULATE_ENV`."""
    import ray

    if emulate:
        os.environ[EMULATE_ENV] = "1"
    gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    return nvdec_blocker(gpus, None)


def nvdec_route(
    config: ExtractConfig, encode: Reservation | None, *, timeout_s: float = 600.0
) -> str | None:
    """Whether this run decodes on the encoder actors' GPUs (NVDEC), decided once before any
    video: None when it does, else why not (one line, recorded per video as
    ``decoder_reason`` under ``decoder: auto``). No probe when the config settles it (a CPU
    decoder asked for, an encoder on CPU, ``decode_mode: fast``); else one task reserving
    what an encoder actor does checks its worker (:func:`lvmae.video.nvdec.nvdec_blocker`:
    PyNvVideoCodec, ``libnvcuvid``). Each video's codec is checked where it is decoded.

    Raises:
        ExtractError: ``decoder: nvdec`` where NVDEC cannot decode (nothing written yet).
    """
    if config.decoder not in ("nvdec", "auto"):
        return None
    if encode is None or not encode.gpus:
        reason = "the encoder runs on CPU (gpus_per_actor 0); NVDEC decodes in GPU encoder actors"
    elif config.decode_mode == "fast":
        reason = "decode_mode fast reads with PyAV skipping frames; NVDEC decodes exact frames"
    else:
        import ray

        probe = ray.remote(_nvdec_probe).options(num_gpus=encode.gpus, num_cpus=encode.cpus)
        try:
            reason = ray.get(probe.remote(emulated()), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            reason = f"no GPU worker took the NVDEC check within {timeout_s:g} s"
    if reason is not None and config.decoder == "nvdec":
        raise ExtractError(
            f"decoder nvdec cannot decode on this cluster's GPU workers: {reason}. Install "
            f"PyNvVideoCodec in the GPU image and expose the driver's video library "
            f"(NVIDIA_DRIVER_CAPABILITIES=compute,utility,video), or use decoder: auto"
        )
    return reason


def segment_table(batch: dict[str, np.ndarray], encoder: str, config_id: str, dim: int):
    """The batch's segment rows (``segment_index >= 0``) as an Arrow table of
    :func:`lvmae.storage.segment_schema`."""
    is_clip = batch["segment_index"] >= 0
    n = int(is_clip.sum())
    return pa.table(
        {
            "video_id": pa.array(batch["video_id"][is_clip].tolist(), pa.string()),
            "segment_index": pa.array(batch["segment_index"][is_clip], pa.int32()),
            "start_s": pa.array(batch["start_s"][is_clip], pa.float64()),
            "end_s": pa.array(batch["end_s"][is_clip], pa.float64()),
            "frame_indices": pa.array(list(batch["frame_indices"][is_clip]), pa.list_(pa.int64())),
            "frame_times_s": pa.array(
                list(batch["frame_times_s"][is_clip]), pa.list_(pa.float64())
            ),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(batch["embedding"][is_clip].astype(np.float32).ravel()), dim
            ),
            "encoder": pa.array([encoder] * n, pa.string()),
            "config_id": pa.array([config_id] * n, pa.string()),
        },
        schema=segment_schema(dim),
    )


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
    segments_resumed: int = 0
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
            f"segments written: {self.segments_written}"
            + (f" ({self.segments_resumed} already on disk)" if self.segments_resumed else ""),
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
        "decoder_reason": report.get("decoder_reason"),
        "duration_s": info.get("duration_s"),
        "fps": info.get("fps"),
        "width": info.get("width"),
        "height": info.get("height"),
        "num_frames": info.get("num_frames"),
        "segments_planned": report.get("num_segments", 0),
        "segments_written": report.get("num_clips", 0),
        "shot_detector": report.get("shot_detector"),
        "cuts_s": report.get("cuts_s"),
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
    versions.update({k: v or "not installed" for k, v in detector_versions().items()})
    return versions


def check_previous_output(
    out: str, config: ExtractConfig, *, overwrite: bool, flag: str = "--out"
) -> None:
    """Check ``out`` against an earlier run's manifest (before any work; writes nothing).
    ``flag`` names where ``out`` came from in the messages (``--out`` for ``lvmae extract``,
    ``run.embeddings`` for ``lvmae run``, which has no ``--overwrite``).

    Raises:
        ExtractError: ``out`` holds outputs of another configuration (and not ``overwrite``).
        StorageError: its manifest is unreadable.
    """
    try:
        previous = read_manifest(out)
    except (OSError, ValueError) as exc:
        raise StorageError(
            f"{out}/manifest.json: unreadable ({exc}); move it away or give another {flag}"
        ) from exc
    if previous and previous.get("config_id") != config.config_id() and not overwrite:
        instead = (
            "Write to a new --out directory, or pass --overwrite to add to it anyway."
            if flag == "--out"
            else f"Set {flag} to a new directory (e.g. --set {flag}=PATH), or move it away."
        )
        raise ExtractError(
            f"{out!r} already holds embeddings made with another configuration "
            f"(config_id {previous.get('config_id')}, encoder "
            f"{previous.get('config', {}).get('encoder')}); this run's is "
            f"{config.config_id()}. {instead}"
        )


def prepare_output(out: str, config: ExtractConfig, encoder: dict, *, overwrite: bool) -> dict:
    """Check ``out`` (:func:`check_previous_output`) and write this run's manifest.

    Raises:
        ExtractError: ``out`` holds outputs of another configuration (and not ``overwrite``).
        DiskFullError: no space for the manifest.
    """
    check_previous_output(out, config, overwrite=overwrite)
    manifest = {
        "kind": "lvmae.extract",
        "config": config.model_dump(mode="json"),
        "config_id": config.config_id(),
        "encoder": encoder,
        "shot_detector": describe_detector(config),
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
    reservations: dict[str, Reservation] | None = None,
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
        reservations: what each decode task and encoder actor reserves (the stage's
            :meth:`~pipelines.stages.ExtractStage.resources`; default
            :func:`extract_reservations`).

    Returns:
        The run's :class:`ExtractionSummary` (also written into the manifest).

    Raises:
        InputError: the input names no videos / does not exist (nothing written).
        StorageError: ``out`` cannot be written (nothing written, Ray not started).
        OutputBusyError: another run holds ``out`` (:func:`lvmae.storage.hold_output`).
        ObjectStoreError: an ``s3://``/``gs://`` input or output cannot be read or written
            (missing bucket, refused credentials, unreachable endpoint, denied write).
        ExtractError, EncoderUnavailableError: the run cannot start (nothing written).
        DiskFullError: no space left while writing; the files written stay valid and a
            rerun resumes.
    """
    t0 = time.perf_counter()
    use_object_store(config.storage)
    remove_stale(fetch_dir(config.storage))  # a killed run's partial downloads, this node
    check_object_store(input_path, write=False)
    check_object_store(out, write=True)
    sources = list_videos(input_path, config.extensions)
    encoder = describe_encoder(config.encoder, config.encoder_checkpoint, config.encoder_seed)
    check_output_path(out)
    check_previous_output(out, config, overwrite=overwrite)
    with hold_output(out):  # one run at a time; a killed holder's lock is taken over
        return _extract_held(
            sources, encoder, out, config, t0=t0, overwrite=overwrite, progress=progress,
            tracking_uri=tracking_uri, track=track, reservations=reservations,
        )  # fmt: skip


def _not_done(sources: list[VideoSource], out: str, config_id: str) -> list[VideoSource]:
    """The sources whose videos-table row in ``out`` is not ``ok`` under ``config_id``."""
    done = read_videos(out)
    rows = zip(
        done["video_id"].to_pylist(), done["status"].to_pylist(), done["config_id"].to_pylist(),
        strict=True,
    )  # fmt: skip
    done_ids = {v for v, status, c in rows if status == "ok" and c == config_id}
    return [s for s in sources if s.video_id not in done_ids]


def _extract_held(
    sources, encoder, out, config, *, t0, overwrite, progress, tracking_uri, track, reservations
) -> ExtractionSummary:
    """:func:`run_extraction` once its checks passed and ``out`` is held."""
    config_id = config.config_id()
    todo = _not_done(sources, out, config_id)
    warm = _WarmStore(out, tracking_uri) if track else None
    # Ray Data's modules (about 0.6 CPU-s) load while Ray's processes start (mostly waiting),
    # and so are the videos' headers read, for their ranges (ranged GETs for object storage)
    threading.Thread(target=importlib.import_module, args=("ray.data",), daemon=True).start()
    planning = _PLANNER.submit(plan_ranges, todo, config)
    try:
        connect_ray()
        reserve = reservations or extract_reservations(config)
        ranges = planning.result()
        # at most one per task: a video, or each range of a long one (a long shot-segmented
        # video counts once: its ranges are cut later)
        tasks = len(todo) + sum(len(r) - 1 for r in ranges.values() if r)
        warm_decode_workers(config, reserve["decode"], tasks)
        if warm is not None:
            warm.join()
        check_gpus(config)
        # nvdec impossible: stops here; nothing to do: no GPU worker asked
        why_cpu = nvdec_route(config, reserve.get("encode")) if todo else None
        manifest = prepare_output(out, config, encoder, overwrite=overwrite)
        if warm is not None:
            warm.place()
    finally:
        if warm is not None:
            warm.discard()
    summary = ExtractionSummary(videos_total=len(sources), videos_skipped=len(sources) - len(todo))
    written = written_segments(out, config_id) if todo else {}
    summary.segments_resumed = sum(len(written.get(s.video_id, ())) for s in todo)
    with _tracking(out, manifest, tracking_uri, track) as (run_id, uri):
        if todo:
            on_flush = _step_logger(run_id, uri)
            _run_pipeline(
                todo, out, config, encoder, summary,
                done=written, progress=progress, on_flush=on_flush, reservations=reservations,
                why_cpu=why_cpu, ranges=ranges,
            )  # fmt: skip
        summary.wall_s = time.perf_counter() - t0
        manifest.update(
            status="done",
            finished_at=datetime.now(timezone.utc).isoformat(),
            summary=summary.to_dict(),
        )
        write_manifest(out, manifest)
        if run_id is not None:
            _log_summary(run_id, uri, manifest, summary)
    return summary


class _WarmStore:
    """MLflow loaded, and the run's SQLite store made ready, in a thread while Ray starts
    (both take seconds, Ray's start mostly waiting). An existing store is opened (a rerun).
    A new one is created in a temporary directory (a copy of the migrated empty store,
    :func:`lvmae.tracking.prepare_local_store`, else MLflow's migrations: about 2 CPU-s) and
    moved to ``<out>/mlflow.db`` only when :meth:`place` is called, once the output checks
    passed: a refused run still writes nothing. Errors are left for the real use."""

    def __init__(self, out: str, tracking_uri: str | None) -> None:
        self.out, self.tracking_uri = out, tracking_uri
        self.template: Path | None = None
        self.thread = threading.Thread(target=self._warm, name="mlflow-warm-up", daemon=True)
        self.thread.start()

    def _warm(self) -> None:
        try:
            from mlflow.tracking import MlflowClient  # mlflow: driver only

            from lvmae.tracking import (  # loads mlflow
                STORE_FILE,
                prepare_local_store,
                resolve_tracking_uri,
            )

            # importing mlflow set its loggers to INFO (Ray may still be starting, so
            # connect_ray has not quietened them): the schema migrations stay off the console
            logging.getLogger("mlflow").setLevel(library_log_level())

            given = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            if given is None and "://" in self.out:
                return  # a remote output is not tracked without MLFLOW_TRACKING_URI
            uri, template = resolve_tracking_uri(given, self.out), None
            if given is None and not Path(self.out, STORE_FILE).exists():
                template = Path(tempfile.mkdtemp(prefix="lvmae-store-")) / STORE_FILE
                uri = f"sqlite:///{template}"
            prepare_local_store(uri)  # a copy of this machine's migrated empty store
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            self.template = template
        except Exception as exc:  # reported where the store is really used
            log.debug("MLflow warm-up: %s", exc)

    def join(self) -> None:
        self.thread.join()

    def place(self) -> None:
        """Move the new store made ready to ``<out>/mlflow.db`` if there is still none."""
        from lvmae.tracking import STORE_FILE  # loaded by the warm-up already

        self.join()
        target = Path(self.out, STORE_FILE)
        if self.template is not None and not target.exists():
            shutil.move(self.template, target)

    def discard(self) -> None:
        """Remove the temporary directory of a new store (placed or not)."""
        self.join()
        if self.template is not None:
            shutil.rmtree(self.template.parent, ignore_errors=True)
            self.template = None


@contextmanager
def _tracking(out: str, manifest: dict, tracking_uri: str | None, track: bool) -> Iterator:
    """The extraction's MLflow run (experiment ``lvmae-extract``, one per output directory
    and config: the config and encoder as params), open while the work runs and ended
    FINISHED or FAILED; yields its id and the store's URI, or Nones when not tracking
    (``track=False``, or a remote output without ``MLFLOW_TRACKING_URI``)."""
    from lvmae.tracking import resolve_tracking_uri, tracked_run  # mlflow: driver only

    if not track:
        yield None, None
        return
    if tracking_uri is None and "://" in out and not os.environ.get("MLFLOW_TRACKING_URI"):
        log.warning("no MLflow tracking for remote output %s: set MLFLOW_TRACKING_URI", out)
        yield None, None
        return
    uri = resolve_tracking_uri(tracking_uri, out)
    params = {f"extract.{k}": v for k, v in manifest["config"].items()}
    params.update({f"encoder.{k}": v for k, v in manifest["encoder"].items()})
    with tracked_run(
        uri, "lvmae-extract", f"{out.rstrip('/')}:{manifest['config_id']}", out=out,
        tags={"lvmae.stage": "extract", "lvmae.out": out}, params=params,
        with_system_metrics=True,
    ) as run_id:  # fmt: skip
        yield run_id, uri


def _step_logger(run_id: str | None, uri: str):
    """A callback logging the running counts as MLflow step metrics (``progress.*``, step =
    videos done) at every write of the output; a no-op when not tracking."""
    if run_id is None:
        return lambda counts: None
    from mlflow.entities import Metric  # mlflow: driver only (decode workers never load it)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)

    def log_counts(counts: dict[str, float]) -> None:
        ts, step = int(time.time() * 1000), int(counts["videos_done"])
        metrics = [Metric(f"progress.{k}", float(v), ts, step) for k, v in counts.items()]
        try:
            client.log_batch(run_id, metrics=metrics)
        except Exception as exc:  # tracking trouble must not stop the extraction
            log.warning("could not log progress to MLflow: %s", exc)

    return log_counts


def _log_summary(run_id: str, uri: str, manifest: dict, summary: ExtractionSummary) -> None:
    """The summary as metrics (one step per run into this output) and the manifest."""
    from mlflow.entities import Metric  # mlflow: driver only (decode workers never load it)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    metrics = {k: v for k, v in summary.to_dict().items() if isinstance(v, int | float)}
    ts = int(time.time() * 1000)
    step = len(client.get_metric_history(run_id, "segments_written"))
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.json"
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        client.log_artifact(run_id, str(path))


class OutputWriter:
    """The driver's side of durable output: buffers segment rows and finished videos' rows,
    and writes them (segments first, then the videos that are complete) as Parquet files,
    each atomically.

    A write happens as soon as the first rows arrive and as soon as the first video is
    finished (so both tables show on disk early in a run), then whenever ``flush_s`` seconds
    have passed since the last one or ``rows_per_file`` segment rows are waiting, so files
    are sized by rows and by time. A video's row is written only once all its segment rows
    are on disk. A kill at any moment loses at most the rows received since the last write:
    the rerun skips the videos with an ``ok`` row and, in the others, the segments already
    on disk.
    """

    def __init__(self, out: str, *, flush_s: float, rows_per_file: int, clock=time.monotonic):
        self.out, self.flush_s, self.rows_per_file, self.clock = out, flush_s, rows_per_file, clock
        self.segments: list[pa.Table] = []
        self.videos: list[dict] = []
        self.pending_rows = 0
        self.last_write = -float("inf")  # the first rows are written at once
        self.videos_written = 0  # the first finished video's row is written at once too
        self.files_written = 0

    def add_segments(self, table: pa.Table) -> None:
        if table.num_rows:
            self.segments.append(table)
            self.pending_rows += table.num_rows
        if self.pending_rows >= self.rows_per_file:
            self._write_segments()

    def add_video(self, row: dict) -> None:
        self.videos.append(row)

    def maybe_flush(self) -> bool:
        """Write now if rows are waiting and ``flush_s`` has passed, or the first finished
        video is waiting; True if it wrote."""
        first_video = bool(self.videos) and not self.videos_written
        due = self.clock() - self.last_write >= self.flush_s
        if (self.videos or self.segments) and (due or first_video):
            self.flush()
            return True
        return False

    def flush(self) -> None:
        """Write every buffered row: segments, then the finished videos."""
        self._write_segments()
        if self.videos:
            write_table_atomic(pa.Table.from_pylist(self.videos, VIDEO_SCHEMA), self.out, "videos")
            self.files_written += 1
            self.videos_written += len(self.videos)
            self.videos = []
        self.last_write = self.clock()

    def _write_segments(self) -> None:
        if self.segments:
            write_table_atomic(pa.concat_tables(self.segments), self.out, "segments")
            self.files_written += 1
            self.segments, self.pending_rows = [], 0


def check_gpus(config: ExtractConfig) -> None:
    """Stop before any work when the encoder asks for GPUs the cluster can never provide.

    GPUs can come when the cluster has them now, or when its autoscaler has a node group
    with GPUs (KubeRay and ``ray up`` clusters report their node groups to Ray). A cluster
    with neither (a local Ray instance on a machine without GPUs) never will.

    Raises:
        ExtractError: naming ``extract.gpus_per_actor`` and how to run on CPU.
    """
    import ray
    from ray._private.state import state  # how Ray Train/Data read the autoscaler's limits

    encode = extract_reservations(config).get("encode")
    gpus = (encode.gpus or 0.0) if encode is not None else 0.0
    if gpus <= 0 or ray.cluster_resources().get("GPU", 0) >= gpus:
        return
    try:
        limits = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # an older GCS without autoscaler state: assume it cannot
        limits = {}
    if limits.get("GPU", 0) >= gpus:
        log.info("no GPU node is up yet; the autoscaler can add one (up to %s GPUs)", limits)
        return
    raise ExtractError(
        f"encoder {config.encoder} asks for {gpus:g} GPU per actor "
        f"(extract.gpus_per_actor), but this Ray cluster has no GPU and no autoscaler "
        f"node group with one. Run it on a cluster with GPUs, or set "
        f"--set extract.gpus_per_actor=0 to run the encoder on CPU (slow)."
    )


def extract_reservations(config: ExtractConfig) -> dict[str, Reservation]:
    """What extraction reserves: per decode task (``decode``: ``decode_cpus``,
    ``decode_memory_mb``, ``decode_resources``) and, unless the encoder runs inside the
    decode tasks, per encoder actor (``encode``: ``encoder_cpu_share()``,
    ``encoder_gpus()``, ``encoder_actors`` of them).
    :meth:`pipelines.stages.ExtractStage.resources` returns this, and :func:`build_dataset`
    reserves it."""
    out = {
        "decode": Reservation(
            config.decode_cpus, 0.0, config.decode_memory_mb, resources=config.decode_resources
        )
    }
    if not config.encodes_in_decode_tasks():
        out["encode"] = Reservation(
            config.encoder_cpu_share(), config.encoder_gpus(), count=config.encoder_actors
        )
    return out


def _header_duration(uri: str) -> float | None:
    from fsspec.implementations.local import LocalFileSystem

    fs, path = object_fs(uri)  # the configured endpoint and retries
    if isinstance(fs, LocalFileSystem):
        return container_duration(path)
    try:
        with fs.open(path, "rb") as f:  # ranged reads of the header, not a download
            return container_duration(f)
    except Exception:  # unreadable: the decode task records why
        return None


def plan_ranges(
    todo: list[VideoSource], config: ExtractConfig, *, threads: int = 8
) -> dict[str, list[tuple[int, int | None]] | None]:
    """The videos longer than ``config.range_s`` seconds (by their container's header, read
    by ``threads`` threads on the driver), decoded by several tasks over ranges of their
    segments. Fixed segments: the ranges themselves,
    :func:`~lvmae.video.segments.segment_ranges`. Shot segments: None, since their ranges
    are cut after the shots are detected (:func:`plan_shots`, once per video). Empty when
    ``range_s`` is None. Videos kept whole, and those whose header gives no duration, are
    left out (one task each)."""
    if config.range_s is None:
        return {}
    stride = config.stride_s or config.segment_s
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lvmae-probe") as pool:
        durations = list(pool.map(_header_duration, [s.uri for s in todo]))
    out: dict[str, list[tuple[int, int | None]] | None] = {}
    for source, duration in zip(todo, durations, strict=True):
        if duration is None or duration <= config.range_s:
            continue
        if config.segmenter == "shots":
            out[source.video_id] = None
            continue
        own = segment_ranges(duration, range_s=config.range_s, stride_s=stride)
        if len(own) > 1:
            out[source.video_id] = own
    return out


def build_dataset(
    todo: list[VideoSource],
    config: ExtractConfig,
    done: dict[str, list[int]] | None = None,
    reservations: dict[str, Reservation] | None = None,
    ranges: dict[str, list[tuple[int, int | None]] | None] | None = None,
    *,
    nvdec: bool = False,
    why_cpu: str | None = None,
):
    """The extraction as a lazy Ray Dataset: decode (CPU tasks, one per video or, for a
    video in ``ranges`` (:func:`plan_ranges`), one per range of its segments) and, unless
    the encoder runs inside them, encode (actor pool with ``encoder_gpus()`` GPUs and
    ``encoder_cpu_share()`` CPUs each). A long video with shot segments (None in
    ``ranges``) is planned first by a task of its own (:func:`plan_shots`, reserving what a
    decode task does), whose rows, one per range, are split into blocks of one row, so each
    range is again a decode task of its own. Rows: ``video_id``, ``segment_index`` (-1 for a
    video's report row), ``start_s``, ``end_s``, ``frame_indices``, ``frame_times_s``,
    ``embedding``, ``report`` (JSON or empty). ``done`` maps a video to the indices of its
    segments already on disk (not decoded again). ``reservations``: what each decode task
    and encoder actor reserves (default :func:`extract_reservations`). ``nvdec``: no decode
    tasks; the encoder actors decode the videos on their GPU (:class:`DecodeEncodeVideos`,
    ``nvdec_sessions`` videos at once each). ``why_cpu``: the run's reason for a CPU decoder
    under ``decoder: auto`` (:func:`nvdec_route`), recorded per video."""
    import ray
    from ray.data import ActorPoolStrategy

    config_json = config.model_dump_json()
    done = done or {}
    ranges = ranges or {}
    items = [
        {
            "video_id": s.video_id, "uri": s.uri, "done": np.asarray(done.get(s.video_id, [])),
            "first": first, "stop": -1 if stop is None else stop, "part": part, "parts": len(own),
            "split": s.video_id in ranges and ranges[s.video_id] is None, "plan": "",
            "why_cpu": why_cpu or "",
        }
        for s in todo
        for own in [ranges.get(s.video_id) or [(0, None)]]
        for part, (first, stop) in enumerate(own)
    ]  # fmt: skip
    reserve = reservations or extract_reservations(config)
    decode = reserve["decode"]
    on_cpu = {
        "batch_size": 1,
        "fn_kwargs": {"config_json": config_json},
        **decode_task_options(config, decode),
    }
    tasks = {"max_retries": config.task_retries}
    actors = {"max_task_retries": config.task_retries}  # an actor restarts; its call stops
    # one block, so one decode task, per item: the ranges of a long video run side by side
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    if any(item["split"] for item in items):
        ds = _map_batches(ds, plan_shots, tasks, **on_cpu)
        ds = ds.repartition(target_num_rows_per_block=1)
    encode = reserve.get("encode")
    if nvdec:
        if encode is None or not encode.gpus:
            raise ExtractError("the NVDEC route needs encoder actors with a GPU")
        pool = ActorPoolStrategy(
            size=encode.count or 1,
            max_concurrent_calls_per_actor=config.nvdec_sessions,
            # no call queued behind them: an actor that dies ends every call it was sent,
            # and one sent while a file that crashes the decoder ran would end with it
            max_tasks_in_flight_per_actor=config.nvdec_sessions,
            enable_true_multi_threading=True,
        )
        return _map_batches(
            ds,
            DecodeEncodeVideos,
            actors,
            fn_constructor_kwargs={"config_json": config_json, "emulate": emulated()},
            batch_size=1,  # one video (or range) per call: nvdec_sessions calls at once
            compute=pool,
            num_gpus=encode.gpus,
            num_cpus=encode.cpus,
            **worker_options(config),
        )
    ds = _map_batches(ds, decode_videos, tasks, **on_cpu)
    if encode is None:
        return ds
    return _map_batches(
        ds,
        EncodeClips,
        actors,
        fn_constructor_kwargs={"config_json": config_json},
        batch_size=config.batch_size,
        compute=ActorPoolStrategy(size=encode.count or 1),
        num_gpus=encode.gpus or 0.0,
        num_cpus=encode.cpus,
        **worker_options(config),
    )


def _map_batches(ds, fn, retries: dict[str, int], **options):
    """``ds.map_batches(fn, **options)`` with Ray's retry options ``retries``
    (``max_retries`` for tasks, ``max_task_retries`` for actors; ``extract.task_retries``).
    Ray Data's default retries a task, or an actor's call, whose worker died, forever: one file
    that crashes its decoder would keep the run from ending. Bounded, the video is recorded
    as failed and the run goes on (:meth:`_Bookkeeping.finish_missing`). Ray Data 2.60 takes
    these options only through its ``ray_remote_args``, deprecated for 2.64 with no named
    replacement yet: that warning is silenced here (a test checks that a crashing worker's
    video is recorded as failed)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(fn, **options, **retries)


def merge_reports(parts: list[dict]) -> dict:
    """One video's report from the reports of its ranges (one, for a video kept whole):
    ``num_clips`` and ``decode_s`` summed; ``ok`` when every range is, else ``partial``
    when any range is (a file cut short; segments held on disk from an earlier run,
    :func:`~lvmae.video.clips.read_clips`: as when kept whole) or any clip was written,
    else ``failed``; each
    distinct error once, naming the ranges that report it (``part i/n``, ``parts i and j of
    n``), or bare when every range does (the file's error, as one task reports it); the
    plan's fields (``info``, ``num_segments``, shots) from the first range that has them."""
    if len(parts) == 1:
        return parts[0]
    parts = sorted(parts, key=lambda p: p.get("part", 0))
    merged = dict(next((p for p in parts if p.get("info")), parts[0]))
    merged["num_clips"] = sum(p.get("num_clips", 0) for p in parts)
    merged["decode_s"] = sum(p.get("decode_s") or 0.0 for p in parts)
    merged["num_segments"] = max(p.get("num_segments", 0) for p in parts)
    n = max(p.get("parts", len(parts)) for p in parts)
    by_error: dict[str, list[int]] = defaultdict(list)  # in range order
    for p in parts:
        if p.get("error"):
            by_error[p["error"]].append(p.get("part", 0) + 1)
    merged["error"] = "; ".join(_name_parts(e, nums, n) for e, nums in by_error.items()) or None
    if all(p["status"] == "ok" for p in parts):
        merged["status"] = "ok"
    elif any(p["status"] == "partial" for p in parts) or merged["num_clips"]:
        merged["status"] = "partial"
    else:
        merged["status"] = "failed"
    merged.pop("part", None)
    merged.pop("parts", None)
    return merged


def _name_parts(error: str, nums: list[int], n: int) -> str:
    """``error`` prefixed with the ranges (1-based ``nums`` of ``n``) that report it."""
    if len(nums) == n:
        return error
    if len(nums) == 1:
        return f"part {nums[0]}/{n}: {error}"
    listed = ", ".join(str(i) for i in nums[:-1])
    return f"parts {listed} and {nums[-1]} of {n}: {error}"


class _Bookkeeping:
    """The driver's view of the run: segments received per video, reports, finished videos,
    the summary and the progress shown."""

    def __init__(self, todo, config, summary, writer, *, progress: Progress, on_flush) -> None:
        self.by_id = {s.video_id: s for s in todo}
        self.config_id, self.retries = config.config_id(), config.task_retries
        self.lost_hint = ""  # appended to the error of a video whose task never reported
        self.summary, self.writer, self.bar, self.on_flush = summary, writer, progress, on_flush
        self.received: dict[str, int] = defaultdict(int)
        self.part_reports: dict[str, dict[int, dict]] = defaultdict(dict)
        self.reports: dict[str, dict] = {}
        self.finished: set[str] = set()
        # the indices received, per unfinished video, where it may be decoded again
        # (:meth:`lost`); segments received before that, per video decoded again
        self.indices: dict[str, set[int]] | None = None
        self.earlier: dict[str, int] = defaultdict(int)
        self.t0 = time.perf_counter()

    def add(self, batch: dict[str, np.ndarray], table: pa.Table) -> None:
        self.writer.add_segments(table)
        for vid, idx, rep in zip(
            batch["video_id"], batch["segment_index"], batch["report"], strict=True
        ):
            if idx >= 0:
                self.received[vid] += 1
                self.summary.segments_written += 1
                if self.indices is not None:
                    self.indices.setdefault(vid, set()).add(int(idx))
            else:
                part = json.loads(rep)
                self.part_reports[vid][part.get("part", 0)] = part
                if len(self.part_reports[vid]) == part.get("parts", 1):
                    self.reports[vid] = merge_reports(list(self.part_reports[vid].values()))
            report = self.reports.get(vid)
            if report and vid not in self.finished and self.received[vid] >= report["num_clips"]:
                self.finish(vid, report)
        if self.writer.maybe_flush():
            self.on_flush(self.counts())

    def lost(self) -> list[str]:
        """The unfinished videos none of whose decoding reported (their worker died)."""
        return [v for v in self.by_id if v not in self.finished and v not in self.reports]

    def decode_again(self, video_ids: list[str], done: dict[str, list[int]]) -> dict:
        """Forget what ``video_ids``' decoding reported, to decode them again; returns
        ``done`` with the segments they sent so far (these stay counted, and are not decoded
        again). Needs ``indices`` (kept from the start of the run)."""
        again = dict(done)
        for vid in video_ids:
            got = (self.indices or {}).pop(vid, set())
            again[vid] = sorted(set(done.get(vid, ())) | got)
            self.earlier[vid] += self.received.pop(vid, 0)
            self.part_reports.pop(vid, None)
        return again

    def finish(self, video_id: str, report: dict) -> None:
        self.finished.add(video_id)
        if self.indices is not None:
            self.indices.pop(video_id, None)
        status, s = report["status"], self.summary
        setattr(s, f"videos_{status}", getattr(s, f"videos_{status}") + 1)
        if status != "ok":
            s.failures[video_id] = report.get("error") or "unknown error"
        s.video_seconds += float((report.get("info") or {}).get("duration_s") or 0.0)
        row = _video_row(self.by_id[video_id], report, self.config_id)
        row["segments_written"] = self.received[video_id] + self.earlier[video_id]
        self.writer.add_video(row)
        counts = self.counts()
        self.bar.update(
            1, segments=s.segments_written, failed=len(s.failures),
            video_h=f"{counts['video_hours']:.2f}", video_h_per_h=f"{counts['video_h_per_h']:.0f}",
        )  # fmt: skip

    def finish_missing(self) -> None:
        """Videos whose task died without a report (a native crash, out of memory)."""
        for vid in self.by_id:
            if vid in self.finished:
                continue
            got = self.received[vid] + self.earlier[vid]
            parts = self.part_reports.get(vid)
            report = self.reports.get(vid) or (merge_reports(list(parts.values())) if parts else {
                "status": "failed", "num_clips": got
            })  # fmt: skip
            lost = (
                f"no result: its decode task ended without a report after {1 + self.retries} "
                f"tries (its worker died: a native crash in a decoder, or out of memory)"
                f"{self.lost_hint}"
            )
            errors = [report["error"]] if report.get("error") else []
            if vid in self.reports:  # every task reported: segments went missing after it
                errors.append(
                    f"{self.received[vid]} of {report['num_clips']} decoded segments arrived: "
                    f"the rest were lost after decoding (an encoder actor that died?)"
                )
            elif parts:  # a ranged video: name each range that never reported
                n = max(p.get("parts", 1) for p in parts.values())
                errors += [f"part {i + 1}/{n}: {lost}" for i in range(n) if i not in parts]
            error = "; ".join(errors) or lost
            self.finish(vid, {**report, "status": "partial" if got else "failed", "error": error})

    def counts(self) -> dict[str, float]:
        """Step metrics for MLflow: videos done, segments, failures, hours of video and
        hours of video per wall-clock hour."""
        s, hours = self.summary, self.summary.video_seconds / 3600
        elapsed_h = max((time.perf_counter() - self.t0) / 3600, 1e-9)
        return {
            "videos_done": float(len(self.finished)),
            "segments_written": float(s.segments_written),
            "videos_not_ok": float(len(s.failures)),
            "video_hours": hours,
            "video_h_per_h": hours / elapsed_h,
        }


@contextmanager
def _data_context(
    config: ExtractConfig, encoder: dict, n_tasks: int, *, nvdec: bool = False, id_bytes: int = 0
) -> Iterator[None]:
    """Ray Data settings for the extraction's dataset, restored afterwards: no progress bars
    (ours count videos), a crashed decode task loses one video rather than the run (up to
    ``n_tasks`` of them; negative: no limit), and,
    where decode tasks (or, with ``nvdec``, the encoder actors) embed, one output block per
    encoder batch (:func:`output_block_bytes`), so segments reach the driver (and disk)
    while a long video is still being decoded, and a task seldom waits for the driver."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.max_errored_blocks, ctx.target_max_block_size
    ctx.enable_progress_bars = False
    ctx.max_errored_blocks = n_tasks
    if config.encodes_in_decode_tasks() or nvdec:
        dim = encoder["embedding_dim"]
        ctx.target_max_block_size = output_block_bytes(config, dim, id_bytes)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.max_errored_blocks, ctx.target_max_block_size = saved


def _decode_lost_alone(todo, config, encoder, book, *, done, reserve, ranges, id_bytes) -> None:
    """The NVDEC route's second pass: decode again, one video per encoder actor at a time
    (``nvdec_sessions = 1``), the videos none of whose calls reported because their actor
    died. An actor's death (a native crash in the GPU decoder) ends every call it had in
    flight, and Ray retries them together in the restarted actor, so a file that crashes
    the decoder took up to ``nvdec_sessions - 1`` good videos with it, on every try. Alone,
    only that file fails. The segments the first pass received are kept and not decoded
    again. The first pass's dataset must be released by then: its restarted actor holds its
    GPU until the next garbage collection."""
    gc.collect()
    lost = set(book.lost())
    log.warning(
        "%d video(s) ended with an encoder actor that died (NVDEC): decoding them again one "
        "at a time, to tell a file that crashes the decoder from the others", len(lost),
    )  # fmt: skip
    again = [s for s in todo if s.video_id in lost]
    done = book.decode_again(sorted(lost), done or {})
    ranges = {v: r for v, r in ranges.items() if v in lost}
    alone = config.model_copy(update={"nvdec_sessions": 1})
    book.lost_hint = (
        "; it was decoded again alone (nvdec_sessions = 1) after an encoder actor died "
        "with it, and died again: the file itself crashes the decoder"
    )
    _extract_pass(
        again, alone, encoder, book, done=done, reserve=reserve, ranges=ranges, nvdec=True,
        why_cpu=None, id_bytes=id_bytes,
    )  # fmt: skip


def _extract_pass(
    todo, config, encoder, book, *, done, reserve, ranges, nvdec, why_cpu, id_bytes
) -> None:  # fmt: skip
    """One Ray Data pass of the extraction (:func:`build_dataset`) over ``todo``, each batch
    handed to ``book`` as it arrives. The dataset lives only here: once this returns, a
    garbage collection frees the actors it ran."""
    # a shot-segmented video's range count is known only once its shots are: no limit then
    tasks = -1 if None in ranges.values() else len(todo) + sum(map(len, ranges.values()))
    dim, config_id = encoder["embedding_dim"], config.config_id()
    with _data_context(config, encoder, tasks, nvdec=nvdec, id_bytes=id_bytes):
        ds = build_dataset(todo, config, done, reserve, ranges, nvdec=nvdec, why_cpu=why_cpu)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        book.add(batch, segment_table(batch, encoder["name"], config_id, dim))


def _run_pipeline(
    todo, out, config, encoder, summary, *, done, progress, on_flush, reservations, why_cpu,
    ranges,
) -> None:  # fmt: skip
    writer = OutputWriter(out, flush_s=config.flush_s, rows_per_file=config.rows_per_file)
    bar = Progress(len(todo), "extract", "videos", enabled=progress)
    book = _Bookkeeping(todo, config, summary, writer, progress=bar, on_flush=on_flush)
    full = False
    if ranges:
        log.info(
            "%d of %d videos are longer than %g s: decoded as ranges of their segments%s",
            len(ranges), len(todo), config.range_s,
            " (cut after their shots are detected)" if config.segmenter == "shots" else
            f" ({sum(len(r or ()) for r in ranges.values())} ranges)",
        )  # fmt: skip
    reserve = reservations or extract_reservations(config)
    nvdec = config.decoder in ("nvdec", "auto") and why_cpu is None
    # on the NVDEC route an encoder actor that dies ends every video it was decoding (up to
    # nvdec_sessions): those are decoded again, one at a time (:func:`_decode_lost_alone`)
    isolate = nvdec and config.nvdec_sessions > 1
    book.indices = {} if isolate else None
    if nvdec:
        log.info("decoding on the encoder actors' GPUs (NVDEC)")
    try:
        id_bytes = max((len(s.video_id.encode()) for s in todo), default=0)
        _extract_pass(
            todo, config, encoder, book, done=done, reserve=reserve, ranges=ranges,
            nvdec=nvdec, why_cpu=why_cpu, id_bytes=id_bytes,
        )  # fmt: skip
        if isolate and book.lost():
            _decode_lost_alone(
                todo, config, encoder, book, done=done, reserve=reserve, ranges=ranges,
                id_bytes=id_bytes,
            )  # fmt: skip
        book.finish_missing()
    except DiskFullError:
        full = True  # nothing more can be written: what is on disk stays as it is
        raise
    finally:
        if not full:
            writer.flush()
        bar.close()
        on_flush(book.counts())
        # an actor Ray restarted after its worker died (a crash on the NVDEC route) stays
        # referenced from a cycle until the next garbage collection, holding its GPU: a
        # later stage of the same driver (pre-training in `lvmae run`) would wait for it.
        # Tasks hold nothing once done: the tiny encoder's runs skip the 0.26-s collection
        if nvdec or not config.encodes_in_decode_tasks():
            gc.collect()
