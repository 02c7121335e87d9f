"""Which videos a run takes: a directory (recursive, by extension), a glob, or a text file
listing paths — local paths or any fsspec URI (``s3://``, ``gs://``, ...).

Every video gets its ``video_id``: its path relative to the input root, in POSIX form
(docs/design.md, "Data contracts"); labels files refer to videos by it.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs

from lvmae.config import StorageConfig
from lvmae.errors import LvmaeError
from lvmae.storage import is_remote, object_fs
from lvmae.video.remote import RemoteVideo

LIST_SUFFIXES = (".txt", ".lst", ".list")


class InputError(LvmaeError, ValueError):
    """The input names no videos, or cannot be read; the message says what to fix."""


@dataclass(frozen=True)
class VideoSource:
    """One input video: ``video_id`` (relative POSIX path), ``uri`` (what fsspec opens:
    a local path or a URL) and ``size_bytes`` (None when unknown)."""

    video_id: str
    uri: str
    size_bytes: int | None = None


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def list_videos(input_path: str, extensions: Sequence[str]) -> list[VideoSource]:
    """List the videos named by ``input_path``, sorted by ``video_id``.

    - one video file: that video; its id is its file name;
    - a directory: every file below it (recursive) whose extension is in ``extensions``
      (case-insensitive); ids are relative to the directory;
    - a glob (``videos/**/*.mp4``): the matching files; ids are relative to the glob's
      longest literal directory prefix;
    - a ``.txt``/``.lst``/``.list`` file: one path or URI per line (blank lines and ``#``
      comments skipped; relative paths are relative to the list file); ids are relative to
      the list file's directory, or else to the listed files' common parent.

    Raises:
        InputError: the path does not exist, or names no video files.
    """
    extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    fs, root = object_fs(input_path)
    prefix = input_path.split("://", 1)[0] + "://" if "://" in input_path else ""
    if _has_magic(root):
        literal = root.split("*")[0].split("?")[0].split("[")[0]
        base = literal.rstrip("/") if literal.endswith("/") else posixpath.dirname(literal)
        files = sorted(p for p in fs.glob(root) if not fs.isdir(p))
        what = f"files matching {input_path!r}"
    elif fs.isdir(root):
        base = root.rstrip("/")
        files = sorted(p for p in fs.find(root) if p.lower().endswith(extensions))
        what = f"video files ({', '.join(extensions)}) under {input_path!r}"
    elif fs.isfile(root) and root.lower().endswith(extensions):
        base, files = posixpath.dirname(root), [root]
        what = "video"
    elif fs.isfile(root):
        if not root.lower().endswith(LIST_SUFFIXES):
            raise InputError(
                f"{input_path!r} is neither a video ({', '.join(extensions)}) nor a list of "
                f"videos; give a video, a directory, a glob, or a text file "
                f"({', '.join(LIST_SUFFIXES)}) with one video path per line"
            )
        base, files = _read_list(fs, root, prefix)
        what = f"video paths in {input_path!r}"
    else:
        raise InputError(f"input path does not exist: {input_path!r}")
    if not files:
        raise InputError(f"no {what}")
    sources = []
    for p in files:
        rel = posixpath.relpath(_strip(p), _strip(base)) if base else _strip(p).lstrip("/")
        if rel.startswith("../"):
            rel = _strip(p).lstrip("/")
        size = None
        with contextlib.suppress(Exception):
            size = fs.size(p)
        uri = p if "://" in p else prefix + p
        sources.append(VideoSource(rel, uri, size))
    ids = [s.video_id for s in sources]
    if len(set(ids)) != len(ids):
        raise InputError(f"{input_path!r} names the same video more than once")
    return sorted(sources, key=lambda s: s.video_id)


def _strip(p: str) -> str:
    return p.split("://", 1)[1] if "://" in p else p


def _read_list(fs, list_path: str, prefix: str) -> tuple[str, list[str]]:
    list_dir = posixpath.dirname(list_path)
    entries = []
    with fs.open(list_path, "r") as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "://" in line or posixpath.isabs(line):
                entries.append(line)
            else:
                entries.append(posixpath.join(list_dir, line))
    if not entries:
        return list_dir, []
    stripped = [_strip(e) for e in entries]
    if all(not posixpath.relpath(s, list_dir).startswith("../") for s in stripped):
        return list_dir, entries
    return posixpath.commonpath([posixpath.dirname(s) for s in stripped]), entries


@contextlib.contextmanager
def video_source(uri: str, settings: StorageConfig | None = None) -> Iterator[Path | RemoteVideo]:
    """What a decoder reads ``uri`` from: the file itself (a :class:`~pathlib.Path`) when
    local, else a :class:`~lvmae.video.remote.RemoteVideo` downloading it into a bounded,
    recognisable temporary file that decoding may read while it arrives (deleted on exit).

    Raises:
        RemoteReadError: the object cannot be read (the message names ``uri``).
    """
    fs, path = url_to_fs(uri) if not is_remote(uri) else (None, uri)
    if fs is not None and isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        yield Path(path)
        return
    with RemoteVideo(uri, settings) as remote:
        yield remote
