"""The suite leaves the user's MLflow server and Ray cluster alone (tests/conftest.py).

A user's shell points ``MLFLOW_TRACKING_URI`` at their tracking server and ``RAY_ADDRESS``
at their Ray head, and that head's address file sits where a plain ``ray.init()`` looks
(``$RAY_TMPDIR/ray/ray_current_cluster``). A pytest run in that environment, of a test that
uses the session's Ray instance and resolves its MLflow store as every job does, must neither
contact the server nor join the head.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.cluster_jobs.conftest import own_processes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")

INNER_TEST = """
import json, os
import ray

def test_inside_the_suite(ray_local, tmp_path):
    from lvmae.tracking import resolve_tracking_uri

    ran = ray.get(ray.remote(lambda: 1).options(num_cpus=0).remote())
    report = {
        "env": {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_TMPDIR")},
        "gcs_address": ray.get_runtime_context().gcs_address,
        "tracking_uri": resolve_tracking_uri(None, str(tmp_path)),
        "tmp_path": str(tmp_path),
        "ran": ran,
    }
    with open(os.environ["INNER_REPORT"], "w") as f:
        json.dump(report, f)
"""


class Listener:
    """A TCP server on loopback that only counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def user_head():
    """The user's Ray head (`ray start --head --block`, no dashboard, token authentication
    off as on many laptops) with its default temp dir under a "user" temp root of its own:
    yields ``(temp_root, gcs_address)``; stopped by killing exactly its processes."""
    root = tempfile.mkdtemp(prefix="lvu-", dir="/tmp")  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(RAY_TMPDIR=root, TMPDIR=root, RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")  # fmt: skip
    port = free_port()
    cmd = [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
           "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--object-store-memory={80 * 2**20}",
           "--disable-usage-stats"]  # fmt: skip
    log = Path(root, "head.log")
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    address_file = Path(root, "ray", "ray_current_cluster")
    try:
        deadline = time.monotonic() + 120
        while not address_file.exists():
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.2)
        yield Path(root), f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for p in own_processes(root):
            p.kill()
        shutil.rmtree(root, ignore_errors=True)


def driver_logs(root: Path) -> list[str]:
    """The logs of the drivers (and of their workers) that joined the head: one file each
    in the head's session directory."""
    logs = root / "ray" / "session_latest" / "logs"
    return sorted(p.name for p in logs.glob("*") if p.name.startswith(("python-core-driver",
                                                                        "worker-")))  # fmt: skip


def test_a_users_mlflow_server_and_ray_head_are_left_alone(tmp_path, user_head):
    root, head_address = user_head
    server = Listener()  # the user's MLflow server: must never be contacted
    before = driver_logs(root)
    inner = tmp_path / "inner"
    inner.mkdir()
    # the suite's conftest as the inner run's plugin (as the top-level conftest there)
    (inner / "conftest.py").write_text('pytest_plugins = ["tests.conftest"]\n')
    (inner / "test_inner.py").write_text(textwrap.dedent(INNER_TEST))
    report = tmp_path / "report.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{server.port}",
           "RAY_ADDRESS": head_address, "RAY_TMPDIR": str(root), "TMPDIR": str(root),
           "INNER_REPORT": str(report), "PYTHONPATH": str(REPO)}  # fmt: skip
    try:
        res = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
             str(inner), "-c", os.devnull, str(inner)],
            cwd=inner, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        server.close()
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    got = json.loads(report.read_text())
    assert got["ran"] == 1
    # inside the suite: none of the user's variables, a Ray temp dir of the suite's own
    assert got["env"]["MLFLOW_TRACKING_URI"] is None and got["env"]["RAY_ADDRESS"] is None
    assert not got["env"]["RAY_TMPDIR"].startswith(str(root))
    # the session's Ray instance is its own, and jobs track into the test's directory
    assert got["gcs_address"] != head_address
    assert got["tracking_uri"] == f"sqlite:///{Path(got['tmp_path']) / 'mlflow.db'}"
    # the user's side: no connection to the server, no driver or worker on the head
    assert server.connections == 0
    assert driver_logs(root) == before
    assert not Path(got["env"]["RAY_TMPDIR"]).exists()  # the suite's Ray dir is removed
