"""The local multi-node clusters of ``test_multinode.py`` and ``test_probe_placement.py``, each
in a subprocess of its own (``extract_on_cluster``, ``probe_on_cluster``): the pytest process
may hold a Ray instance, and a driver connects to one cluster at a time.

Both subprocesses start together, when the first of those modules needs its own (and only
those whose module has a selected test); each module's fixture then waits for its own
(:meth:`ClusterJob.result`). Side by side on 2 cores they took 79 s, against 57 s + 37 s one
after the other: each waits on node and actor starts for part of its time. Starting them
beside the job-submission tests as well gained nothing (those slowed down as much)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


def own_processes(marker: str) -> list[psutil.Process]:
    """Live processes whose command line mentions ``marker`` (a test's Ray temp dir)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []) and p.status() != "zombie":
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@dataclass
class ClusterJob:
    """One cluster script running in a subprocess of its own (its own process group and Ray
    temp dir)."""

    proc: subprocess.Popen
    ray_tmp: str
    out: Path  # what the script writes
    outcome: tuple[str, list[int]] | None = field(default=None)

    def result(self, timeout_s: float = 540) -> tuple[str, list[int]]:
        """Wait for the script (killed after ``timeout_s``), kill what its clusters left
        behind and remove its temp dir; returns its last stdout line (a JSON line) and the
        PIDs it left behind. Fails the test with its stderr when it failed."""
        if self.outcome is None:
            try:
                stdout, stderr = self.proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                stdout, stderr = self.proc.communicate()
            leftovers = own_processes(self.ray_tmp)
            for p in leftovers:
                p.kill()
            shutil.rmtree(self.ray_tmp, ignore_errors=True)
            assert self.proc.returncode == 0, stderr[-6000:]
            self.outcome = (stdout.strip().splitlines()[-1], [p.pid for p in leftovers])
        return self.outcome

    def stop(self) -> None:
        """Kill the script's process group if it still runs (its module was not run)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()
            for p in own_processes(self.ray_tmp):
                p.kill()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def start_cluster_job(module: str, out: Path, *args: str) -> ClusterJob:
    """``python -m tests.cluster_jobs.<module> ARGS`` (writing under ``out``) in its own
    process group, with a private, short Ray temp dir (the Cluster writes its address file
    there instead of /tmp/ray, where another user's plain `ray.init()` would find and join
    it, and the teardown can tell this job's Ray processes from everybody else's) and token
    authentication on, with a fresh token for this cluster only."""
    ray_tmp = tempfile.mkdtemp(prefix="lvray-")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO))  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", f"tests.cluster_jobs.{module}", *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    return ClusterJob(proc, ray_tmp, out)


@pytest.fixture(scope="session")
def cluster_jobs(request, tmp_path_factory) -> dict[str, ClusterJob]:
    """``"multinode"`` and ``"probe"``: the cluster scripts of the modules with a selected
    test, started together. Yields name → :class:`ClusterJob`; stops what still runs at the
    end of the session."""
    # Project imports here, not at module level: this conftest loads for every test run.
    from tests.cluster_jobs import test_multinode

    selected = {Path(item.fspath).stem for item in request.session.items}
    jobs = {}
    if "test_multinode" in selected:
        videos = tmp_path_factory.mktemp("multinode_videos")
        out = tmp_path_factory.mktemp("multinode_out")
        jobs["multinode"] = start_cluster_job(
            "extract_on_cluster", out, *test_multinode.job_args(videos, out)
        )
    if "test_probe_placement" in selected:
        root = tmp_path_factory.mktemp("probe_cluster")
        jobs["probe"] = start_cluster_job("probe_on_cluster", root, str(root))
    yield jobs
    for job in jobs.values():
        job.stop()
