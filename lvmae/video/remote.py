"""Videos in object storage, read while they download (docs/design.md, "Object storage").

A :class:`RemoteVideo` copies one object (``s3://``, ``gs://``, any fsspec URL) into a
temporary file in a background thread, in ``chunk_bytes`` pieces through the client's own
retries (:func:`lvmae.storage.fsspec_options`). Decoding does not wait for the copy:

- :meth:`RemoteVideo.open` gives a file-like object over the partial file: a read of bytes
  that have arrived returns at once, a read just past them waits for the download, and a
  read far ahead of it (an mp4 whose index, the ``moov`` box, sits at the end) is served by
  a ranged request. PyAV decodes from it, so the first segment comes after its own bytes,
  not after the whole object.
- :meth:`RemoteVideo.wait` gives the file's path once complete, for what needs a path
  (decord, the shot detectors).

Temporary disk is one object per video being read (a decode task reads one video at a
time), deleted when the video is done. The files are named
``lvmae-fetch-<pid>-<random>.<ext>`` in :func:`fetch_dir` (the video's extension last, for
the decoders' format probing); a killed worker's files are
removed by the next :class:`RemoteVideo` on that machine (:func:`remove_stale`: the owner
process is gone).
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import tempfile
import threading
import uuid
from pathlib import Path

from lvmae.config import StorageConfig
from lvmae.errors import LvmaeError
from lvmae.storage import object_fs, object_store_settings, storage_error_reason

PREFIX = "lvmae-fetch-"
CHUNK_BYTES = 4 << 20


def fetch_dir(settings: StorageConfig | None = None) -> Path:
    """Where partial downloads go: ``settings.fetch_dir``, else ``<system temp>/lvmae-fetch``."""
    if settings is not None and settings.fetch_dir:
        return Path(settings.fetch_dir)
    return Path(tempfile.gettempdir()) / "lvmae-fetch"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(directory: Path) -> list[Path]:
    """Delete the partial downloads in ``directory`` whose owner process (the pid in the
    name) no longer runs, e.g. after a worker was killed. Returns what was removed."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.glob(f"{PREFIX}*"):
        try:
            pid = int(path.name[len(PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


class RemoteReadError(LvmaeError, OSError):
    """The object could not be read (after the client's retries); names the URI. Raised
    inside decode tasks, where it becomes the video's recorded failure."""


class RemoteVideo:
    """One object being copied to a local temporary file; a context manager (the copy
    starts on enter, and on exit stops and the file is deleted).

    Attributes:
        uri: the object's URI (what error messages name).
        name: its base name.
        size: bytes, from the store's metadata.
        local_path: the temporary file (complete only after :meth:`wait`).
    """

    def __init__(
        self,
        uri: str,
        settings: StorageConfig | None = None,
        *,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.uri = str(uri)
        self.name = posixpath.basename(self.uri)
        self.settings = settings or object_store_settings()
        self.chunk_bytes = chunk_bytes
        self.fs, self.path = object_fs(self.uri, self.settings)
        self.size = 0
        self.local_path: Path | None = None
        self._have = 0  # bytes on local disk, from offset 0
        self._done = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def __enter__(self) -> RemoteVideo:
        directory = fetch_dir(self.settings)
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale(directory)
        try:
            self.size = int(self.fs.size(self.path))
        except Exception as exc:
            raise self._failure(exc) from None
        ext = posixpath.splitext(self.path)[1]
        self.local_path = directory / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}{ext}"
        self.local_path.touch()
        self._thread = threading.Thread(
            target=self._download, name=f"fetch:{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the copy and delete the temporary file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.local_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.local_path.unlink()

    def _download(self) -> None:
        try:
            with (
                self.fs.open(
                    self.path, "rb", block_size=self.chunk_bytes, cache_type="none"
                ) as src,
                open(self.local_path, "r+b") as dst,  # noqa: PTH123 - a plain binary file
            ):
                while not self._stop.is_set():
                    data = src.read(self.chunk_bytes)
                    if not data:
                        break
                    dst.write(data)
                    dst.flush()
                    with self._cond:
                        self._have += len(data)
                        self._cond.notify_all()
            if not self._stop.is_set() and self._have < self.size:
                raise RemoteReadError(f"the object ended after {self._have} of {self.size} bytes")
        except BaseException as exc:
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _failure(self, exc: BaseException) -> RemoteReadError:
        bucket = self.uri.split("://", 1)[-1].split("/", 1)[0]
        reason = storage_error_reason(exc, bucket=bucket, endpoint=None, writing=False)
        return RemoteReadError(f"cannot read {self.uri}: {reason}")

    # -- access

    @property
    def bytes_local(self) -> int:
        """Bytes copied so far."""
        return self._have

    def wait(self) -> Path:
        """The complete local copy's path, once the download is done.

        Raises:
            RemoteReadError: the download failed (message names the URI and the cause).
        """
        with self._cond:
            while not self._done:
                self._cond.wait(0.5)
        if self._error is not None:
            raise self._failure(self._error)
        assert self.local_path is not None
        return self.local_path

    def open(self) -> io.BufferedReader:
        """A binary, seekable file object over the object, readable while it downloads."""
        return io.BufferedReader(_GrowingFile(self), buffer_size=1 << 16)

    def _wait_for(self, end: int, far: int) -> bool:
        """Wait until bytes ``[0, end)`` are local; False when ``end`` is more than ``far``
        bytes ahead of the download (read it with a ranged request instead).

        Raises:
            RemoteReadError: the download failed.
        """
        with self._cond:
            while self._have < end and not self._done:
                if end - self._have > far:
                    return False
                self._cond.wait(0.5)
            if self._have < end and self._error is not None:
                raise self._failure(self._error)
            return True

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object with one ranged request (client retries).

        Raises:
            RemoteReadError: naming the URI.
        """
        try:
            return self.fs.cat_file(self.path, start=start, end=end)
        except Exception as exc:
            raise self._failure(exc) from None


class _GrowingFile(io.RawIOBase):
    """Raw reads of a :class:`RemoteVideo` (see the module docstring)."""

    def __init__(self, video: RemoteVideo) -> None:
        super().__init__()
        self.video = video
        self.pos = 0
        self.local = open(video.local_path, "rb")  # noqa: SIM115, PTH123 - closed in close()
        self.far = 2 * video.chunk_bytes
        self.cached = (0, b"")  # the last ranged read: (offset, bytes)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.video.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        size = self.video.size
        if self.pos >= size:
            return 0
        end = min(self.pos + len(buffer), size)
        start, data = self.cached
        if not (start <= self.pos and end <= start + len(data)):
            if self.video._wait_for(end, self.far):
                self.local.seek(self.pos)
                n = self.local.readinto(memoryview(buffer)[: end - self.pos])
                self.pos += n
                return n
            fetch_end = min(max(end, self.pos + self.video.chunk_bytes), size)
            self.cached = (self.pos, self.video.read_range(self.pos, fetch_end))
            start, data = self.cached
        n = end - self.pos
        buffer[:n] = data[self.pos - start : self.pos - start + n]
        self.pos += n
        return n

    def close(self) -> None:
        self.local.close()
        super().close()
