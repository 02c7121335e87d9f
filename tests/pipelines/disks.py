"""Small and full disks for the tests (issue 28): a tmpfs of a few KiB where this machine
lets a test mount one (root with ``CAP_SYS_ADMIN``), else a file-size limit
(``RLIMIT_FSIZE``; ``SIGXFSZ`` ignored, so a write past it fails with ``EFBIG``, which the
project treats like ``ENOSPC``)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path


def mount_tmpfs(path: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` (``"48k"``) at ``path``; False where that is not allowed
    (or where ``LVMAE_TEST_NO_MOUNT=1`` asks to try the file-size-limit fallback)."""
    if os.environ.get("LVMAE_TEST_NO_MOUNT") == "1":
        return False
    try:
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


def resize_tmpfs(path: Path, size: str) -> None:
    """Give the tmpfs at ``path`` ``size`` (space freed)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, timeout=10)


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, timeout=10, capture_output=True)


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[bool]:
    """``path`` (made) on a tmpfs of ``size`` for the block; yields False, mounting nothing,
    where no tmpfs can be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    if not mount_tmpfs(path, size):
        yield False
        return
    try:
        yield True
    finally:
        unmount(path)


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """No file of this process grows past ``limit`` bytes during the block (``EFBIG``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


@contextlib.contextmanager
def full_disk(path: Path) -> Iterator[bool]:
    """``path`` on a full disk for the block: a 16 KiB tmpfs filled to the last byte; else
    no file of this process may grow at all. Yields whether a tmpfs was mounted."""
    with small_disk(path, "16k") as mounted:
        if mounted:
            with contextlib.suppress(OSError), (path / ".filler").open("wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            yield True
            return
        with file_size_limit(0):
            yield False


def limit_preamble(limit: int) -> str:
    """Python source that puts a file-size limit of ``limit`` bytes on the process running
    it (the fallback of a child process where no tmpfs can be mounted)."""
    return (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, "
        "resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
    )
