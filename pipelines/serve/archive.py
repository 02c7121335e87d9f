"""What ``lvmae serve`` shows: an extraction's output read once, checked at start, with the
search state loaded in a background thread whose progress and errors the pages display.

Nothing a request names reaches the filesystem: videos are addressed by :func:`video_key`
(a hash of the ``video_id``) and looked up in the videos table the extraction recorded;
segments by that key and their ``segment_index``; report figures by their number in a list
made at start. Any other name is a 404.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lvmae.errors import LvmaeError
from lvmae.storage import (
    MANIFEST,
    SEGMENTS_DIR,
    VIDEOS_DIR,
    read_segments,
    read_videos,
)
from lvmae.video.thumbnails import ThumbnailCache
from pipelines.search import Searcher, SegmentMatrix, segment_matrix

log = logging.getLogger(__name__)

SEGMENT_COLUMNS = ("video_id", "segment_index", "start_s", "end_s", "embedding")
REPORT_FIGURES = ("report", "figures")  # <workdir>/report/figures, beside <workdir>/extract
MLFLOW_UI = "http://127.0.0.1:5000"  # where `lvmae ui` serves the store


class ServeError(LvmaeError, ValueError):
    """The output cannot be served (missing, not an extraction output, corrupt files)."""


def video_key(video_id: str) -> str:
    """The id by which pages and URLs name a video: 16 hex digits of SHA-1(video_id)."""
    return hashlib.sha1(video_id.encode()).hexdigest()[:16]


@dataclass
class Video:
    """One row of the videos table, as the pages show it; ``path`` is the local file when
    the recorded ``uri`` is one that exists (else None: nothing to play)."""

    key: str
    video_id: str
    status: str
    error: str | None
    uri: str | None
    path: Path | None
    row: dict[str, Any]
    segments: tuple[int, int] = (0, 0)  # its rows [lo, hi) of the segment matrix

    @property
    def cuts_s(self) -> list[float]:
        return list(self.row.get("cuts_s") or [])


@dataclass
class LoadState:
    """The background load: ``stage`` (what it is doing), ``done`` / ``error``."""

    stage: str = "starting"
    started: float = field(default_factory=time.monotonic)
    done: bool = False
    error: str | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _local_path(uri: str | None) -> Path | None:
    if not uri:
        return None
    if "://" in uri:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            return None
        uri = unquote(parsed.path)
    path = Path(uri)
    return path if path.is_file() else None


def check_output(embeddings: str) -> dict:
    """The manifest of the extraction output at ``embeddings`` after checking that it can be
    served: a local directory with a readable ``manifest.json`` naming its encoder and
    config, and Parquet segment files whose footers read and whose schema has the columns
    searched. Returns the manifest.

    Raises:
        ServeError: what is missing or corrupt, in one line.
    """
    if "://" in embeddings and not embeddings.startswith("file://"):
        raise ServeError(f"lvmae serve needs a local output directory, not {embeddings!r}")
    root = Path(embeddings.removeprefix("file://"))
    if not root.is_dir():
        raise ServeError(f"no extraction output at {str(root)!r}: the directory does not exist")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ServeError(
            f"{str(root)!r} has no {MANIFEST}: is it an `lvmae extract` output directory?"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServeError(f"{manifest_path} is unreadable or not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("encoder"), dict):
        raise ServeError(f"{manifest_path} names no encoder: not an `lvmae extract` manifest")
    if not manifest.get("config_id"):
        raise ServeError(f"{manifest_path} has no config_id: not an `lvmae extract` manifest")
    files = sorted((root / SEGMENTS_DIR).glob("*.parquet"))
    if not files:
        raise ServeError(
            f"no segment embeddings under {str(root)!r}: expected Parquet files in "
            f"{root / SEGMENTS_DIR}/ (run `lvmae extract INPUT --out {root}` first)"
        )
    for f in [*files, *sorted((root / VIDEOS_DIR).glob("*.parquet"))]:
        try:
            schema = pq.read_schema(f)
        except (OSError, pa.ArrowException) as exc:
            raise ServeError(f"{f} is not a readable Parquet file: {exc}") from exc
        if f.parent.name == SEGMENTS_DIR:
            missing = [c for c in SEGMENT_COLUMNS if c not in schema.names]
            if missing:
                raise ServeError(f"{f} lacks the segment columns {', '.join(missing)}")
    return manifest


def mlflow_run_link(embeddings: Path, manifest: dict, ui: str) -> dict | None:
    """The extraction's MLflow run (experiment ``lvmae-extract``, run name ending in its
    ``config_id``) found in a SQLite store at ``<out>/mlflow.db`` or ``<out>/../mlflow.db``
    (the main job's), opened read-only; ``{"url", "run_id", "store"}`` or None."""
    suffix = f":{manifest.get('config_id')}"
    for store in (embeddings / "mlflow.db", embeddings.parent / "mlflow.db"):
        if not store.is_file():
            continue
        try:
            con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
            try:
                row = con.execute(
                    "SELECT r.run_uuid, r.experiment_id FROM runs r JOIN experiments e "
                    "ON r.experiment_id = e.experiment_id WHERE e.name = 'lvmae-extract' "
                    "AND r.name LIKE ? ORDER BY r.start_time DESC LIMIT 1",
                    (f"%{suffix}",),
                ).fetchone()
            finally:
                con.close()
        except sqlite3.Error as exc:  # a store of another schema: no link, not an error
            log.info("cannot read %s: %s", store, exc)
            continue
        if row:
            run_id, exp = row
            return {
                "url": f"{ui.rstrip('/')}/#/experiments/{exp}/runs/{run_id}",
                "run_id": run_id,
                "store": str(store),
                "workdir": str(store.parent),
            }
    return None


class Archive:
    """An extraction output served read-only.

    Construction is quick and checks everything a user can get wrong (:func:`check_output`);
    :meth:`start` then reads the segments and builds the search state in a thread, and
    :attr:`state` tells the pages how far it got.

    Args:
        embeddings: the extraction output directory.
        exact: exact search (True), the approximate index (False), or by size (None).
        rebuild_index: rebuild a saved approximate index.
        cache_dir: thumbnail cache root; default ``<embeddings>/thumbnails``, or a user cache
            directory when the output is not writable.
        mlflow_ui: base URL of the MLflow UI for run links.
    """

    def __init__(
        self,
        embeddings: str,
        *,
        exact: bool | None = None,
        rebuild_index: bool = False,
        cache_dir: str | None = None,
        mlflow_ui: str = MLFLOW_UI,
    ) -> None:
        self.manifest = check_output(embeddings)
        self.root = Path(embeddings.removeprefix("file://")).absolute()
        self.embeddings = str(self.root)
        self.config_id = str(self.manifest["config_id"])
        self.exact, self.rebuild_index = exact, rebuild_index
        try:
            table = read_videos(self.embeddings)
        except (OSError, pa.ArrowException) as exc:
            raise ServeError(
                f"the videos table under {self.embeddings!r} is unreadable: {exc}"
            ) from exc
        self.videos: dict[str, Video] = {}
        for row in table.to_pylist():
            key = video_key(row["video_id"])
            self.videos[key] = Video(
                key, row["video_id"], row["status"], row["error"], row["uri"],
                _local_path(row["uri"]), row,
            )  # fmt: skip
        self.by_id = {v.video_id: v for v in self.videos.values()}
        self.thumbnails = ThumbnailCache(cache_dir or default_cache_dir(self.root))
        self.mlflow = mlflow_run_link(self.root, self.manifest, mlflow_ui)
        fig_dir = self.root.parent.joinpath(*REPORT_FIGURES)
        self.figures: list[Path] = sorted(fig_dir.glob("*.png")) if fig_dir.is_dir() else []
        self.state = LoadState()
        self.searcher: Searcher | None = None
        self.thumb_times: np.ndarray = np.zeros(0)
        self._thread: threading.Thread | None = None
        self._counts = {"ok": 0, "partial": 0, "failed": 0}
        for v in self.videos.values():
            self._counts[v.status] = self._counts.get(v.status, 0) + 1
        self._order: list[Video] | None = None
        self._order_lock = threading.Lock()

    # ---------------------------------------------------------------- loading

    def start(self) -> Archive:
        """Load the segments and the search state in a daemon thread (see :attr:`state`)."""
        self._thread = threading.Thread(target=self._load, name="lvmae-serve-load", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> LoadState:
        """Block until the background load ends (tests, benchmarks); returns the state."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def _load(self) -> None:
        try:
            self.state.stage = "reading the segment embeddings"
            table = read_segments(self.embeddings, columns=[*SEGMENT_COLUMNS, "frame_times_s"])
            segs = segment_matrix(table)
            self.thumb_times = _thumb_times(table)
            self._attach_segments(segs)
            n = len(segs.video_id)
            approximate = self.exact is False or (self.exact is None and n > _exact_max())
            self.state.stage = (
                f"loading or building the approximate index over {n:,} segments"
                if approximate else f"preparing exact search over {n:,} segments"
            )  # fmt: skip
            searcher = Searcher(
                self.embeddings, exact=self.exact, rebuild_index=self.rebuild_index,
                segments=segs,
            )  # fmt: skip
            self.state.stage = "loading the text encoder"
            searcher.text_vector("warm up")
            self.searcher = searcher
            self.state.stage = "ready"
            self.state.done = True
        except Exception as exc:  # shown on every page; the server keeps serving the rest
            log.exception("loading %s failed", self.embeddings)
            self.state.error = f"{type(exc).__name__}: {exc}" if not isinstance(
                exc, LvmaeError) else str(exc)  # fmt: skip
            self.state.done = True

    def _attach_segments(self, segs: SegmentMatrix) -> None:
        ids = np.asarray(segs.video_id, dtype=object)
        if len(ids) == 0:
            return
        change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [len(ids)]])
        for lo, hi in zip(starts, ends, strict=True):
            video = self.by_id.get(ids[lo])
            if video is not None:
                video.segments = (int(lo), int(hi))

    # ---------------------------------------------------------------- queries

    def segment_row(self, key: str, segment_index: int) -> int | None:
        """Row of segment ``segment_index`` of video ``key`` in the matrix, or None."""
        video = self.videos.get(key)
        if video is None or self.searcher is None:
            return None
        lo, hi = video.segments
        idx = self.searcher.segments.segment_index[lo:hi]
        pos = int(np.searchsorted(idx, segment_index))
        return lo + pos if pos < len(idx) and idx[pos] == segment_index else None

    def segment(self, row: int) -> dict:
        """The segment at matrix ``row`` as the pages show it."""
        segs = self.searcher.segments
        video = self.by_id.get(segs.video_id[row])
        return {
            "row": row,
            "video_id": segs.video_id[row],
            "key": video.key if video else video_key(segs.video_id[row]),
            "segment_index": int(segs.segment_index[row]),
            "start_s": float(segs.start_s[row]),
            "end_s": float(segs.end_s[row]),
        }

    def thumbnail(self, key: str, segment_index: int) -> bytes | None:
        """JPEG bytes of a recorded segment's thumbnail, None when there is no such segment.

        Raises:
            DecodeError: the video cannot be decoded (the file changed or disappeared).
        """
        row = self.segment_row(key, segment_index)
        video = self.videos.get(key)
        if row is None or video is None or video.path is None:
            return None
        return self.thumbnails.get(
            self.config_id, video.video_id, segment_index, str(video.path),
            float(self.thumb_times[row]),
        )  # fmt: skip

    def counts(self) -> dict[str, int]:
        """Videos by status (``ok``, ``partial``, ``failed``, any other recorded), counted at
        construction: every page shows them."""
        return dict(self._counts)

    def run_order(self) -> list[Video]:
        """Every video, those not ``ok`` (failed, partial) first, then by id: the run
        page's order, sorted once (seconds for 100k videos: call it off the event loop)."""
        with self._order_lock:
            if self._order is None:
                self._order = sorted(
                    self.videos.values(), key=lambda v: (v.status == "ok", v.video_id)
                )
            return self._order


def _exact_max() -> int:
    from pipelines.search import EXACT_MAX  # the same threshold as `lvmae search`

    return EXACT_MAX


def _thumb_times(table: pa.Table) -> np.ndarray:
    """``[N]`` seconds: each segment's thumbnail time, :func:`thumbnail_time` vectorised (the
    middle frame the encoder saw, else the segment's midpoint)."""
    if "frame_times_s" not in table.column_names:
        return (table["start_s"].to_numpy() + table["end_s"].to_numpy()) / 2
    times = table["frame_times_s"].combine_chunks()
    starts, ends = table["start_s"].to_numpy(), table["end_s"].to_numpy()
    offsets = times.offsets.to_numpy()
    values = times.values.to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    out = (starts + ends) / 2
    has = (lengths > 0) & ~np.asarray(times.is_null(), dtype=bool)
    out[has] = values[offsets[:-1][has] + lengths[has] // 2]
    return out


def default_cache_dir(root: Path) -> Path:
    """``<out>/thumbnails`` when the output is writable, else
    ``$XDG_CACHE_HOME/lvmae/thumbnails/<hash of the output path>``."""
    if os.access(root, os.W_OK):
        return root / "thumbnails"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lvmae" / "thumbnails" / hashlib.sha1(str(root).encode()).hexdigest()[:12]
