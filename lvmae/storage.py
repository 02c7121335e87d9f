"""The extraction output on disk (docs/design.md, "Data contracts").

``<out>/segments/*.parquet``
    one row per segment: ``video_id``, ``segment_index`` (0-based, time order), ``start_s``,
    ``end_s``, ``frame_indices`` / ``frame_times_s`` (the frames the encoder saw),
    ``embedding`` (fixed-size list of float32, L2-normalised), ``encoder``, ``config_id``.
``<out>/videos/*.parquet``
    one row per input video and attempt: metadata, ``status`` (ok / partial / failed),
    ``error`` and ``node_id`` (the Ray node that decoded it); readers keep each video's
    latest row.
``<out>/manifest.json``
    the resolved config, encoder identity, library versions and the last run's summary.

Files are written under a hidden temporary name and renamed into place, so a killed run
never leaves a half-written file where readers look; reruns may repeat rows, and readers
key on ``(video_id, segment_index)`` to read each segment exactly once. Any pyarrow
filesystem URI works as ``<out>`` (local paths, ``s3://``, ``gs://``).

Before any work, a job checks that a local output can be written
(:func:`check_output_path`); while it writes, it holds the directory
(:func:`hold_output`: one run at a time, the holder named in ``<out>/.lvmae.holder.json``).
A full disk stops a write with :class:`DiskFullError`; the files already renamed into place
stay valid, and the rerun resumes (docs/design.md, "Errors" and "Concurrency").

Object storage (docs/design.md, "Object storage"): :func:`use_object_store` sets the
process's :class:`~lvmae.config.StorageConfig` (endpoint, retries, timeouts; never
credentials, which come from the standard chains), :func:`object_fs` opens a URI with it
through fsspec (s3fs, gcsfs), and :func:`check_object_store` turns a missing bucket, refused
credentials, an unreachable endpoint or a denied write into one :class:`ObjectStoreError`
line naming the URI, before any work starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lvmae.config import StorageConfig
from lvmae.errors import LvmaeError, disk_full_cause

log = logging.getLogger(__name__)

SEGMENTS_DIR = "segments"
VIDEOS_DIR = "videos"
MANIFEST = "manifest.json"
LOCK_FILE = ".lvmae.lock"
HOLDER_FILE = ".lvmae.holder.json"

VIDEO_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("decoder", pa.string()),
        ("decoder_reason", pa.string()),  # why not the configured decoder (decoder: auto)
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_frames", pa.int64()),
        ("segments_planned", pa.int32()),  # the segment plan's length
        ("segments_written", pa.int32()),  # segment rows written for the video by this attempt
        ("shot_detector", pa.string()),  # segmenter: shots — the cut detector, else null
        ("cuts_s", pa.list_(pa.float64())),  # its cut times, seconds (null: fixed segments)
        ("size_bytes", pa.int64()),
        ("decode_s", pa.float64()),
        ("node_id", pa.string()),  # the Ray node that decoded the video (hex id)
        ("config_id", pa.string()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)


def segment_schema(embedding_dim: int) -> pa.Schema:
    """Arrow schema of the segments table for ``embedding_dim``-wide embeddings."""
    return pa.schema(
        [
            ("video_id", pa.string()),
            ("segment_index", pa.int32()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("frame_indices", pa.list_(pa.int64())),
            ("frame_times_s", pa.list_(pa.float64())),
            ("embedding", pa.list_(pa.float32(), embedding_dim)),
            ("encoder", pa.string()),
            ("config_id", pa.string()),
        ]
    )


class StorageError(LvmaeError, ValueError):
    """An output directory is missing, empty or inconsistent; the message says what to fix."""


class DiskFullError(StorageError, OSError):
    """No space left (``ENOSPC``, a quota, or a file-size limit) while writing an output;
    what was written before stays valid, and rerunning the same command once space is freed
    resumes."""


class OutputBusyError(StorageError):
    """Another run holds the output directory (:func:`hold_output`); the message names it."""


def raise_if_disk_full(exc: BaseException, what: str) -> None:
    """Raise a :class:`DiskFullError` (from ``exc``) when ``exc``, raised while writing
    ``what``, says the disk is full (:func:`lvmae.errors.disk_full_cause`); else return."""
    cause = disk_full_cause(exc)
    if cause is None:
        return
    reason = getattr(cause, "strerror", None) or "no space left on device"
    raise DiskFullError(
        f"no space left writing {what} ({reason}): the outputs written before stay valid; "
        f"free space and rerun the same command to resume"
    ) from exc


def check_output_path(out: str, flag: str = "--out") -> None:
    """Fail before any work when the local output ``out`` cannot be written: it is a file,
    a part of its path is a file, or the directory (or the nearest existing parent, where
    it would be made) is not writable. Nothing is created. A URI (``s3://``, ...) is left
    to the object-store checks.

    Raises:
        StorageError: naming ``flag``, the path and what to fix.
    """
    if "://" in out:
        return
    path = Path(out).absolute()
    if path.exists() and not path.is_dir():
        raise StorageError(f"{flag} {out}: exists and is not a directory; give a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise StorageError(f"{flag} {out}: {probe} is a file, not a directory; give another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" (it would be made in {probe})"
        raise StorageError(
            f"{flag} {out}: permission denied, cannot write{where}; give a writable directory"
        )


def _holder() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] or "python",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _read_holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def hold_output(out: str, flag: str = "--out") -> Iterator[None]:
    """Hold the local output directory ``out`` (made if missing) for the block: one run at a
    time. The lock is an OS file lock (``flock`` on ``<out>/.lvmae.lock``, the ``filelock``
    library), so the kernel releases it when its process dies, ``kill -9`` included: a lock
    left by a killed run is taken over at once (logged with the old holder's details). The
    holder (host, pid, command, start time) is written next to it, to
    ``<out>/.lvmae.holder.json``. Re-entrant within a process (``lvmae run`` holding its
    workdir while a stage writes into it). A directory it made is removed again when the
    block leaves nothing in it (a run refused after the lock, e.g. by the cluster's GPU
    check, writes nothing). A URI is not held (object stores have no such locks).

    Raises:
        OutputBusyError: another live run holds ``out``; the message names it.
        StorageError, DiskFullError: ``out`` cannot be made.
    """
    if "://" in out:
        yield
        return
    from filelock import FileLock, Timeout  # an OS lock (fcntl.flock) on Unix

    root = Path(out).absolute()
    made = None  # the topmost directory this call makes, removed again if left empty
    if not root.exists():
        made = root
        while not made.parent.exists():
            made = made.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise_if_disk_full(exc, str(root))
        raise StorageError(
            f"{flag} {out}: cannot make the directory ({exc.strerror or exc})"
        ) from exc
    lock = FileLock(
        root / LOCK_FILE, timeout=0, is_singleton=True, thread_local=False,
        fallback_to_soft=False,
    )  # fmt: skip
    nested = lock.is_locked
    holder_path = root / HOLDER_FILE
    try:
        lock.acquire()
    except Timeout:
        held = _read_holder(holder_path)
        for _ in range(20):  # the holder writes its details just after taking the lock
            if held is not None:
                break
            time.sleep(0.05)
            held = _read_holder(holder_path)
        held = held or {}
        who = (
            f"pid {held.get('pid', '?')} on {held.get('host', '?')}, started "
            f"{held.get('started_at', '?')}: {held.get('command', '?')}"
            if held else "a run that is starting"
        )  # fmt: skip
        raise OutputBusyError(
            f"{flag} {out} is in use by another run ({who}); wait for it to finish or give "
            f"another {flag}"
        ) from None
    try:
        if not nested:
            left = _read_holder(holder_path)
            if left is not None:
                log.info("taking over %s, left locked by a run that ended (pid %s on %s, "
                         "started %s)", out, left.get("pid"), left.get("host"),
                         left.get("started_at"))  # fmt: skip
            tmp = holder_path.with_name(f".{HOLDER_FILE}.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(_holder(), indent=2))
                tmp.replace(holder_path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise_if_disk_full(exc, str(holder_path))
                raise
        yield
    finally:
        if not nested:
            holder_path.unlink(missing_ok=True)
        lock.release()
        if made is not None and not nested:
            _remove_if_empty(root, made)


def _remove_if_empty(root: Path, top: Path) -> None:
    """A run that wrote nothing leaves nothing: ``root`` (holding only the lock file) and its
    parents up to ``top``, all made by :func:`hold_output`, are removed."""
    with contextlib.suppress(OSError):
        if {p.name for p in root.iterdir()} <= {LOCK_FILE}:
            (root / LOCK_FILE).unlink(missing_ok=True)
            node = root
            while True:
                node.rmdir()
                if node == top:
                    break
                node = node.parent


def arrow_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``uri`` and the path in it (what pyarrow's and Ray Data's
    readers take as ``filesystem`` and path). ``s3://`` or ``s3a://`` with an endpoint
    (``storage.endpoint_url``, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) gets an
    :class:`pyarrow.fs.S3FileSystem` with the process's retry and timeout settings;
    anything else pyarrow resolves itself (``s3a://`` read as ``s3://``; AWS: the bucket's
    region; credentials from the standard chain).

    Raises:
        pyarrow.ArrowInvalid: a scheme pyarrow does not know.
        OSError: the filesystem cannot be reached (e.g. the bucket's region lookup).
    """
    if "://" not in uri:
        uri = str(Path(uri).absolute())
    protocol, _, rest = uri.partition("://")
    endpoint = endpoint_url()
    if protocol in ("s3", "s3a") and endpoint:
        scheme, _, host = endpoint.partition("://")
        s = _SETTINGS
        fs = pafs.S3FileSystem(
            endpoint_override=host.rstrip("/"),
            scheme=scheme,
            region=s.region or os.environ.get("AWS_REGION") or "us-east-1",
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=s.max_attempts),
            connect_timeout=s.connect_timeout_s,
            request_timeout=s.read_timeout_s,
        )
        return fs, rest.rstrip("/")
    if protocol == "s3a":  # Hadoop's name for S3, which pyarrow does not know
        uri = f"s3://{rest}"
    return pafs.FileSystem.from_uri(uri)


# ----------------------------------------------------------------------------- object storage

_SETTINGS = StorageConfig()

_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


class ObjectStoreError(LvmaeError, OSError):
    """Object storage cannot be used as asked (missing bucket, refused credentials,
    unreachable endpoint, denied write, missing client package); one line naming the URI."""


def use_object_store(settings: StorageConfig) -> None:
    """Make ``settings`` the process's object-storage settings (read by :func:`object_fs`,
    the Parquet output and the decode workers, which get them with their config)."""
    global _SETTINGS  # noqa: PLW0603 - one setting per process, like logging's level
    _SETTINGS = settings


def object_store_settings() -> StorageConfig:
    """The process's :class:`~lvmae.config.StorageConfig` (see :func:`use_object_store`)."""
    return _SETTINGS


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names object storage or another non-local fsspec filesystem."""
    return "://" in str(uri) and not str(uri).startswith("file://")


def endpoint_url(settings: StorageConfig | None = None) -> str | None:
    """The S3 endpoint: ``settings.endpoint_url``, else ``AWS_ENDPOINT_URL_S3``, else
    ``AWS_ENDPOINT_URL`` (botocore's own variables), else None (AWS)."""
    s = settings or _SETTINGS
    return (
        s.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )


def fsspec_options(
    protocol: str, settings: StorageConfig | None = None, *, attempts: int | None = None
) -> dict[str, Any]:
    """fsspec keyword arguments for ``protocol`` under ``settings`` (default: the
    process's). ``s3``: the endpoint, region and botocore's ``retries`` (``max_attempts``
    in ``retry_mode``, exponential backoff) and timeouts, through s3fs's ``config_kwargs``
    (:func:`object_fs` gives s3fs's own retries of a body read cut off mid-stream the same
    count). ``attempts``
    overrides the count (the quick checks of :func:`check_object_store`)."""
    s = settings or _SETTINGS
    n = attempts or s.max_attempts
    if protocol in ("s3", "s3a"):
        client: dict[str, Any] = {}
        if s.region:
            client["region_name"] = s.region
        options: dict[str, Any] = {
            "config_kwargs": {
                "retries": {"max_attempts": n, "mode": s.retry_mode},
                "connect_timeout": s.connect_timeout_s,
                "read_timeout": s.read_timeout_s,
            },
            "client_kwargs": client,
        }
        if endpoint_url(s):
            options["endpoint_url"] = endpoint_url(s)
        return options
    return {}  # gcsfs: its own retries with backoff; credentials from ADC


def object_fs(
    uri: str, settings: StorageConfig | None = None, *, attempts: int | None = None, **extra: Any
):
    """``(fsspec filesystem, path)`` of ``uri`` with :func:`fsspec_options` (``attempts``
    as there; ``extra``: more fsspec arguments, e.g. ``skip_instance_cache=True``).

    Raises:
        ObjectStoreError: the protocol's client package is not installed.
    """
    from fsspec.core import url_to_fs

    protocol = str(uri).split("://", 1)[0] if is_remote(uri) else "file"
    try:
        fs, path = url_to_fs(
            str(uri), **fsspec_options(protocol, settings, attempts=attempts), **extra
        )
    except ImportError as exc:
        package = _PACKAGES.get(protocol, protocol)
        raise ObjectStoreError(
            f"{uri}: reading {protocol}:// needs the {package} package "
            f"(pip install 'lvmae[{'gcs' if package == 'gcsfs' else 's3'}]'): {exc}"
        ) from None
    if protocol in ("s3", "s3a"):
        fs.retries = attempts or (settings or _SETTINGS).max_attempts  # s3fs: a class default
    return fs, path


def _error_code(exc: BaseException) -> str:
    """The service's error code (``NoSuchBucket``, ``403``...) in ``exc`` or its causes."""
    seen = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
        seen = seen.__cause__ or seen.__context__
    return ""


def storage_error_reason(
    exc: BaseException, *, bucket: str, endpoint: str | None, writing: bool
) -> str:
    """What went wrong with an object-store call, in words a user can act on (one line):
    an unreachable endpoint, refused credentials, a missing bucket, a denied write, ..."""
    code = _error_code(exc)
    names = {type(e).__name__ for e in _chain(exc)}
    text = " ".join(str(exc).split())
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                "ConnectionRefusedError", "ServerDisconnectedError"} or (
        "connect" in text.lower() and not code
    ):  # fmt: skip
        return (
            f"cannot reach the storage endpoint {endpoint or '(AWS default)'} ({text}); check "
            f"storage.endpoint_url / AWS_ENDPOINT_URL and that the server is up"
        )
    if names & {"NoCredentialsError", "PartialCredentialsError"}:
        return (
            "no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "AWS_PROFILE (GCS: application-default credentials)"
        )
    if code in ("NoSuchBucket", "404") or ("FileNotFoundError" in names and code != "NoSuchKey"):
        return f"bucket {bucket!r} does not exist; create it or fix the URI"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                "InvalidClientTokenId", "AuthFailure"):  # fmt: skip
        return (
            f"the credentials are refused ({code}); check AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY / AWS_PROFILE"
        )
    if code in ("AccessDenied", "403", "AllAccessDisabled") or "PermissionError" in names:
        what = "writing is" if writing else "access is"
        return (
            f"{what} denied (HTTP 403: wrong credentials, or no permission for this bucket "
            f"and prefix); check the credentials and the bucket's policy"
        )
    return f"{type(exc).__name__}: {text}"


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], exc
    while seen is not None and len(out) < 10:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


def check_object_store(uri: str, *, write: bool, settings: StorageConfig | None = None) -> None:
    """Check, with a few quick requests, that ``uri`` (object storage; a local path is left
    to the local checks) can be read, and written when ``write``: the bucket exists, the
    credentials are accepted, the endpoint answers, and (``write``) a small probe object
    can be written under ``uri`` and deleted again. Two attempts per request, not the
    run's ``max_attempts``, so a dead endpoint is reported in seconds.

    Raises:
        ObjectStoreError: one line, ``object storage: <uri>: <what to fix>``.
    """
    if not is_remote(uri):
        return
    protocol, _, rest = str(uri).partition("://")
    bucket, _, key = rest.partition("/")
    prefix = key.split("*")[0].split("?")[0].split("[")[0]
    s = settings or _SETTINGS
    endpoint = endpoint_url(s) if protocol in ("s3", "s3a") else None
    if protocol in ("s3", "s3a", "gs", "gcs") and not bucket:
        raise ObjectStoreError(f"object storage: {uri}: no bucket in the URI")
    fs, _ = object_fs(uri, s, attempts=2, skip_instance_cache=True)  # no cached credentials
    probe = f"{rest.rstrip('/')}/.lvmae-write-check-{uuid.uuid4().hex}"
    try:
        if protocol in ("s3", "s3a"):  # a listing answers with the clearest error codes
            fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        else:
            fs.ls(bucket if protocol in ("gs", "gcs") else rest, detail=False)
        if write:
            fs.pipe_file(probe, b"lvmae write check\n")
            fs.rm_file(probe)
    except Exception as exc:
        reason = storage_error_reason(exc, bucket=bucket, endpoint=endpoint, writing=write)
        raise ObjectStoreError(f"object storage: {uri}: {reason}") from None


def write_table_atomic(table: pa.Table, out: str, subdir: str) -> str:
    """Write ``table`` as one Parquet file in ``<out>/<subdir>/``: first under a hidden
    temporary name, then renamed, so readers never see a partial file. The name,
    ``part-<time_ns>-<uuid>.parquet`` (nanoseconds zero-padded to 20 digits), sorts in
    write order, the order readers keep the last row of a key in. Returns its path."""
    fs, root = arrow_fs(out)
    directory = f"{root.rstrip('/')}/{subdir}"
    fs.create_dir(directory, recursive=True)
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex}.parquet"
    tmp = f"{directory}/.{name}.tmp"
    try:
        with fs.open_output_stream(tmp) as sink:
            pq.write_table(table, sink)
        fs.move(tmp, f"{directory}/{name}")
    except OSError as exc:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)  # never left to fill the disk further
        raise_if_disk_full(exc, f"{table.num_rows} rows to {directory}/")
        raise
    return f"{directory}/{name}"


def _in_write_order(directory: str, fs: pafs.FileSystem, **options: Any) -> pads.Dataset:
    """The Parquet dataset of ``directory`` with its files sorted by path: write order for
    the files :func:`write_table_atomic` names, so a table read from it has each file's
    rows after those of the files written before it."""
    dataset = pads.dataset(directory, filesystem=fs, format="parquet", **options)
    if not dataset.files:
        return dataset
    return pads.dataset(sorted(dataset.files), filesystem=fs, format="parquet", **options)


def _read_dir(out: str, subdir: str) -> pa.Table | None:
    fs, root = arrow_fs(out)
    directory = f"{root.rstrip('/')}/{subdir}"
    info = fs.get_file_info(directory)
    if info.type != pafs.FileType.Directory:
        return None
    dataset = _in_write_order(directory, fs)
    if not dataset.files:
        return None
    return dataset.to_table()


def keep_last(table: pa.Table, keys: list[str]) -> pa.Table:
    """Rows of ``table`` deduplicated on ``keys``, keeping each key's last row (in table
    order, which is write order for a table read with its files sorted by path; by an
    ``updated_at`` column first when there is one, ties in table order). The rows kept
    stay in table order."""
    if table.num_rows == 0:
        return table
    if "updated_at" in table.column_names:
        table = table.sort_by([("updated_at", "ascending")])
    table = table.append_column("__row", pa.array(np.arange(table.num_rows)))
    last = table.group_by(keys, use_threads=False).aggregate([("__row", "max")])
    table = table.take(np.sort(last["__row_max"].to_numpy()))
    return table.drop_columns(["__row"])


def segments_bytes(out: str) -> int:
    """Bytes of the segments table's Parquet files under ``out`` (a listing, no data read);
    0 when there are none."""
    fs, root = arrow_fs(out)
    selector = pafs.FileSelector(f"{root.rstrip('/')}/{SEGMENTS_DIR}", allow_not_found=True)
    infos = fs.get_file_info(selector)
    return sum(i.size or 0 for i in infos if i.is_file and i.path.endswith(".parquet"))


def segment_files(embeddings: str) -> list[tuple[str, int]]:
    """``(name, bytes)`` of each Parquet file of the segments table under ``embeddings`` (a
    local directory or an object-store URI: the storage's listing, no data read), sorted
    by name; empty when there are none."""
    fs, root = arrow_fs(embeddings)
    selector = pafs.FileSelector(f"{root.rstrip('/')}/{SEGMENTS_DIR}", allow_not_found=True)
    return sorted(
        (info.base_name, int(info.size or 0))
        for info in fs.get_file_info(selector)
        if info.is_file and info.base_name.endswith(".parquet")
    )


def read_segments(out: str, *, columns: list[str] | None = None) -> pa.Table:
    """The segments table under ``out``, each ``(video_id, segment_index)`` exactly once,
    sorted by video then segment.

    Raises:
        StorageError: ``out`` has no segments (missing directory or no files).
    """
    table = _read_dir(out, SEGMENTS_DIR)
    if table is None:
        raise StorageError(
            f"no segment embeddings under {out!r}: expected Parquet files in "
            f"{out.rstrip('/')}/{SEGMENTS_DIR}/ (run `lvmae extract INPUT --out {out}` first)"
        )
    table = keep_last(table, ["video_id", "segment_index"])
    table = table.sort_by([("video_id", "ascending"), ("segment_index", "ascending")])
    return table.select(columns) if columns else table


def written_segments(out: str, config_id: str) -> dict[str, list[int]]:
    """Video id → indices of its segments on disk under ``out`` made with ``config_id``
    (reads only the key columns); empty when there are none. What a resumed run skips."""
    fs, root = arrow_fs(out)
    directory = f"{root.rstrip('/')}/{SEGMENTS_DIR}"
    if fs.get_file_info(directory).type != pafs.FileType.Directory:
        return {}
    dataset = pads.dataset(directory, filesystem=fs, format="parquet")
    if not dataset.files:
        return {}
    keys = dataset.to_table(
        columns=["video_id", "segment_index"], filter=pads.field("config_id") == config_id
    )
    found: dict[str, set[int]] = {}
    for vid, idx in zip(
        keys["video_id"].to_pylist(), keys["segment_index"].to_pylist(), strict=True
    ):
        found.setdefault(vid, set()).add(idx)
    return {vid: sorted(indices) for vid, indices in found.items()}


def read_videos(out: str) -> pa.Table:
    """The videos table under ``out``, one row per ``video_id`` (its latest), sorted by id;
    an empty table with :data:`VIDEO_SCHEMA` when there is none yet.

    Every file is read as :data:`VIDEO_SCHEMA`: a column that files written by an older
    version lack (``cuts_s``, ``shot_detector``, ``decoder_reason``) reads as null there,
    and a column the schema no longer has is left out.
    """
    fs, root = arrow_fs(out)
    directory = f"{root.rstrip('/')}/{VIDEOS_DIR}"
    if fs.get_file_info(directory).type != pafs.FileType.Directory:
        return VIDEO_SCHEMA.empty_table()
    dataset = _in_write_order(directory, fs, schema=VIDEO_SCHEMA)
    if not dataset.files:
        return VIDEO_SCHEMA.empty_table()
    return keep_last(dataset.to_table(), ["video_id"]).sort_by("video_id")


def read_manifest(out: str) -> dict | None:
    """``<out>/manifest.json`` as a dict, or None when absent."""
    fs, root = arrow_fs(out)
    path = f"{root.rstrip('/')}/{MANIFEST}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def write_manifest(out: str, manifest: dict) -> None:
    """Write ``<out>/manifest.json`` (atomically: temporary name, then rename)."""
    fs, root = arrow_fs(out)
    fs.create_dir(root, recursive=True)
    tmp = f"{root.rstrip('/')}/.{MANIFEST}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
        fs.move(tmp, f"{root.rstrip('/')}/{MANIFEST}")
    except OSError as exc:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise_if_disk_full(exc, f"{out.rstrip('/')}/{MANIFEST}")
        raise
