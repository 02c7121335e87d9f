"""A decoder that crashes on one file, as the tests stage it: every Ray worker process that
has the file open is SIGKILLed, as a native crash in a decoder (or the out-of-memory killer)
would end it. Used by tests/pipelines/test_extract_crash.py and, on the NVDEC route, by
tests/cluster_jobs/extract_on_cluster.py."""

from __future__ import annotations

import os
import threading

import psutil


class KillWhoOpens(threading.Thread):
    """SIGKILL every Ray worker process that has ``path`` open, as a decoder that crashes on
    that file would die, at most ``limit`` times, and only once ``ready()`` is true; counts
    the kills (processes killed: one that is still dying, its files still open, when the
    next scan comes is not killed or counted again)."""

    def __init__(self, path, *, limit: int | None = None, ready=lambda: True) -> None:
        super().__init__(daemon=True)
        self.path, self.limit, self.ready = str(path), limit, ready
        self.kills, self.stop = 0, threading.Event()
        self.killed: set[int] = set()

    def run(self) -> None:
        me = os.getpid()  # the driver reads the file's header itself
        while not self.stop.wait(0.005) and (self.limit is None or self.kills < self.limit):
            if not self.ready():
                continue
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmd = proc.info["cmdline"] or []
                pid = proc.info["pid"]
                if pid == me or pid in self.killed or not cmd or not cmd[0].startswith("ray::"):
                    continue
                try:
                    if any(f.path == self.path for f in proc.open_files()):
                        proc.kill()
                        self.killed.add(pid)
                        self.kills += 1
                except psutil.Error:
                    pass  # gone meanwhile
