"""`lvmae extract` submitted with `ray job submit` to a real Ray head (`ray start --head`,
dashboard and job server on 127.0.0.1, token authentication on), outputs read back with
pyarrow; a failing job's error reaches the submitter. The two jobs are submitted together
(fixture ``jobs``) and run side by side on the head.

Only the dashboard is loopback-only: Ray 2.60 replaces a loopback `--node-ip-address` with the
machine's routable address, and the GCS and raylet listen on all interfaces. The token is what
keeps other machines out, so these tests keep it on (and check that it is enforced).

The head is a `ray start --block` process in its own process group with its own temp dir:
the tests stop exactly it (never `ray stop`, which stops every Ray instance of this user on
the machine), and nothing joins it by accident (its address file is in that temp dir, not in
/tmp/ray where a plain `ray.init()` looks).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pytest

from lvmae.storage import read_manifest, read_segments, read_videos
from lvmae.video.samples import Scene, make_video
from lvmae.video.segments import fixed_segments

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
# What the job does not need; Ray also skips what .gitignore lists.
EXCLUDES = [
    ".venv/",
    "work/",
    ".git/",
    "tests/",
    "benchmarks/",
    "*.mp4",
    "**/__pycache__/",
    ".pytest_cache/",
    ".ruff_cache/",
    "*.egg-info/",
    "mlruns/",
    "*.db",
]
DURATIONS = {"a.mp4": 6.0, "sub/b.mp4": 11.0, "c.mp4": 3.0}  # video_id -> seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(token: str) -> dict[str, str]:
    """The environment of the head and of the `ray job` commands that talk to it.

    Ray 2.60's token authentication: `ray start --head` with ``RAY_AUTH_MODE`` unset turns it
    on only when a token already exists (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``), and `ray job submit` sends the token only when ``RAY_AUTH_MODE`` is
    ``token`` in its own environment. So both get the mode and this head's own fresh token
    explicitly (never the user's ``~/.ray/auth_token``). The job's driver inherits both from
    the head, which is how its ``ray.init()`` authenticates to the GCS.
    """
    drop = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_JOB_HEADERS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        # The entrypoint's `python` is this venv's, as in an activated venv on a cluster node.
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        # An idle head needs no drain on SIGTERM; without this its teardown waits up to 30 s.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
    )
    return env


@dataclass
class Head:
    """A `ray start --head --block` process and what it takes to talk to it."""

    process: subprocess.Popen
    temp_dir: Path
    address: str  # the job server (dashboard) URL
    token: str
    env: dict[str, str]

    def get(self, path: str, token: str | None = None) -> tuple[int, str]:
        """HTTP GET on the dashboard with ``token`` (default: the head's) as bearer token."""
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.address + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def processes(self) -> list[psutil.Process]:
        """Live processes of this head: its descendants, plus anything whose command line or
        working directory is in its temp dir (workers, job drivers in their working_dir)."""
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.process.pid)
            for p in [root, *root.children(recursive=True)]:
                found[p.pid] = p
        except psutil.NoSuchProcess:
            pass
        marker = str(self.temp_dir)
        for p in psutil.process_iter(["cmdline", "cwd"]):
            try:
                cmdline = " ".join(p.info["cmdline"] or [])
                if marker in cmdline or (p.info["cwd"] or "").startswith(marker):
                    found[p.pid] = p
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        alive = []
        for p in found.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                continue
        return alive

    def stop(self) -> list[str]:
        """SIGTERM the `ray start --block` process (it stops the processes it started), then
        SIGKILL whatever of this head is still alive; returns what had to be killed."""
        before = self.processes()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        psutil.wait_procs(before, timeout=20)
        leftovers = self.processes()
        described = []
        for p in leftovers:
            try:
                described.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(leftovers, timeout=10)
        return described


def start_head(temp_dir: Path) -> Head:
    """Start a small head on 127.0.0.1 (2 CPUs, dashboard + job server) and wait for its job
    server to answer an authenticated request."""
    token = secrets.token_hex(32)
    env = ray_env(token)
    gcs_port, dashboard_port = free_port(), free_port()
    # Ports that default to fixed numbers are chosen free too, so the head never collides
    # with another Ray instance on this machine.
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        "--include-dashboard=true",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        "--num-cpus=2",
        "--num-gpus=0",
        f"--object-store-memory={200 * 2**20}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    log = (temp_dir / "head.log").open("w")
    process = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    head = Head(process, temp_dir, f"http://127.0.0.1:{dashboard_port}", token, env)
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            head.stop()
            pytest.fail(f"ray start exited {process.returncode}:\n{log_text(temp_dir)}")
        try:
            status, _ = head.get("/api/version")
            if status == 200:
                return head
        except OSError:
            pass
        if time.monotonic() > deadline:
            head.stop()
            pytest.fail(f"the head's job server never answered:\n{log_text(temp_dir)}")
        time.sleep(0.5)


def log_text(temp_dir: Path) -> str:
    return (temp_dir / "head.log").read_text()[-4000:]


@pytest.fixture(scope="module")
def head():
    # Short and private: Ray's unix socket paths live under it (about 100 characters max).
    temp_dir = Path(tempfile.mkdtemp(prefix="lvray-"))
    head = start_head(temp_dir)
    try:
        yield head
    finally:
        leftovers = head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not leftovers, f"stopping the head left processes behind: {leftovers}"


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("job_videos")
    sources = ["testsrc2", "mandelbrot", "life"]
    for i, (video_id, seconds) in enumerate(DURATIONS.items()):
        make_video(root / video_id, [Scene(sources[i], seconds)], width=160, height=120, fps=10)
    return root


def submit(head: Head, *entrypoint: str) -> subprocess.Popen:
    """Start `ray job submit` of ``entrypoint`` with this checkout as working_dir; the command
    waits for the job, and its stdout gets the job's logs."""
    return subprocess.Popen(
        [
            RAY,
            "job",
            "submit",
            "--address",
            head.address,
            "--working-dir",
            str(REPO),
            "--runtime-env-json",
            json.dumps({"excludes": EXCLUDES}),
            "--",
            *entrypoint,
        ],
        env=head.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """The submit command's exit status and output (stdout, then stderr), once it is done."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    return process.returncode, stdout + stderr


@pytest.fixture(scope="module")
def jobs(head, videos, tmp_path_factory, request):
    """The jobs of the tests below that are selected to run, submitted together (a
    submission spends most of its time waiting: on the upload, the job's start, its driver's
    imports); each test reads its own. Yields ``name -> (submit command, output dir)``."""
    root = tmp_path_factory.mktemp("jobs")
    config = root / "bad.yaml"
    config.write_text("extract:\n  segment_s: -5\n")
    extract, failing = root / "extract", root / "failing"
    cli = ["python", "-m", "pipelines.cli", "extract", str(videos)]
    wanted = {
        "extract": (
            test_submitted_extraction_writes_every_video_and_segment,
            [*cli, "--out", str(extract), "--batch-size", "4", "--no-progress"],
            extract,
        ),
        "failing": (
            test_failed_job_exits_non_zero_with_the_commands_error,
            [*cli, "--out", str(failing), "--config", str(config), "--no-progress"],
            failing,
        ),
    }
    selected = {item.name for item in request.session.items}
    started = {
        name: (submit(head, *entrypoint), out)
        for name, (test, entrypoint, out) in wanted.items()
        if test.__name__ in selected
    }
    try:
        yield started
    finally:
        for process, _ in started.values():  # a job whose test failed early still ends first
            if process.returncode is None:
                finished(process)


def test_the_job_server_refuses_requests_without_the_token(head):
    assert head.get("/api/jobs/")[0] == 200
    assert head.get("/api/jobs/", token="")[0] == 401
    assert head.get("/api/jobs/", token=secrets.token_hex(32))[0] == 403


def test_submitted_extraction_writes_every_video_and_segment(head, jobs):
    process, out = jobs["extract"]
    returncode, output = finished(process)
    assert returncode == 0, output[-6000:]
    assert "succeeded" in output
    assert f"videos: {len(DURATIONS)} total" in output  # the driver's summary, via the logs

    videos_table = read_videos(str(out)).to_pylist()
    assert {v["video_id"] for v in videos_table} == set(DURATIONS)
    segments = read_segments(str(out))
    for row in videos_table:
        plan = fixed_segments(DURATIONS[row["video_id"]])
        assert row["status"] == "ok" and row["error"] is None, row
        assert row["segments_planned"] == row["segments_written"] == len(plan), row
        got = segments.filter(pc.equal(segments["video_id"], row["video_id"]))  # in order
        assert got["segment_index"].to_pylist() == list(range(len(plan)))
        assert got["start_s"].to_pylist() == pytest.approx([s.start_s for s in plan], abs=0.05)
    assert segments.num_rows == sum(len(fixed_segments(d)) for d in DURATIONS.values())
    assert read_manifest(str(out))["status"] == "done"

    # Decoded on this head's node, not on a Ray instance the driver started for itself.
    status, body = head.get("/api/v0/nodes")
    assert status == 200, body
    nodes = json.loads(body)["data"]["result"]["result"]
    assert len(nodes) == 1
    assert {v["node_id"] for v in videos_table} == {nodes[0]["node_id"]}


def test_failed_job_exits_non_zero_with_the_commands_error(jobs):
    process, out = jobs["failing"]
    returncode, output = finished(process)
    # `ray job submit` exits 1 for a failed job; the job's own status names the command's
    # exit status, 1 (an LvmaeError), not a crash's
    assert returncode == 1, output[-6000:]
    assert "Job entrypoint command failed with exit code 1" in output, output[-6000:]
    assert "Traceback" not in output, output[-6000:]
    error_lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert error_lines, output[-6000:]
    assert "segment_s" in error_lines[0]
    assert not out.exists()
