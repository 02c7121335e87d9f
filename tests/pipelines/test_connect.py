"""Starting a local Ray instance, as the `lvmae` commands do (pipelines/connect.py), in a
fresh interpreter: this one has Ray running already, and the suite sets ``RAY_AUTH_MODE``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipelines.conftest import PROBLEM_LINE

REPO = Path(__file__).resolve().parents[2]

# Ray imported first, as the commands' modules import it before connect_ray runs.
START = """
import ray, ray.data
from pipelines.connect import connect_ray
connect_ray()
print("CPU", ray.cluster_resources().get("CPU", 0), ray.get_runtime_context().gcs_address)
"""



@pytest.mark.slow
def test_a_local_instance_has_token_auth_and_says_nothing_about_it():
    """With ``RAY_AUTH_MODE`` unset, Ray 2.60 turns token authentication on for a new local
    instance and prints a WARNING saying so; the commands ask for it themselves, and the
    console stays quiet. (The token: the suite's ``RAY_AUTH_TOKEN``, never
    ``~/.ray/auth_token``.)"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env["PYTHONPATH"] = str(REPO)
    res = subprocess.run([sys.executable, "-c", START], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.startswith("CPU "), res.stdout
    assert [line for line in res.stderr.splitlines() if PROBLEM_LINE.search(line)] == []


LEAVE = """
import psutil, ray
from ray._private import worker
from pipelines.connect import connect_ray, disconnect_ray, stop_local_monitor
connect_ray()
node = worker._global_node
monitor = node.all_processes["monitor"][0].process
others = [i.process for t, infos in node.all_processes.items() if t != "monitor" for i in infos]
assert stop_local_monitor()
print("monitor", monitor.returncode)  # SIGKILL: -9
print("tasks", ray.get(ray.remote(lambda: "run").remote()))  # the instance still works
disconnect_ray()
print("left", [p.pid for p in others if p.poll() is None], ray.is_initialized())
"""


@pytest.mark.slow
def test_leaving_a_local_instance_stops_its_monitor_first_and_everything_after():
    """``lvmae`` leaving the local instance it started: the autoscaler monitor is killed
    while the rest of Ray still runs (a task still completes), with no word on the console
    (its SIGTERM handler, which ``ray.shutdown()`` would invoke after the GCS had stopped,
    never runs), and then every process of the instance is stopped."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", LEAVE], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.splitlines() == ["monitor -9", "tasks run", "left [] False"], res.stdout
    assert [line for line in res.stderr.splitlines() if PROBLEM_LINE.search(line)] == []


def test_a_task_error_ray_data_ignores_is_one_line_unless_verbose(caplog):
    """Ray Data logs each task error it lets pass (``max_errored_blocks``) with the task's
    traceback; the job records the failure itself, so the console gets one line naming the
    error, and ``-v`` the whole traceback."""
    import logging

    from pipelines.connect import IGNORED_TASK_ERRORS, quiet_libraries

    logger = logging.getLogger(IGNORED_TASK_ERRORS)

    def log_one() -> logging.LogRecord:
        caplog.clear()
        try:
            raise RuntimeError("The worker died unexpectedly.\nCheck the logs.")
        except RuntimeError:
            logger.exception("Ignoring this exception with remaining max_errored_blocks=%d.", 1)
        (record,) = caplog.records
        return record

    with caplog.at_level(logging.ERROR, logger=IGNORED_TASK_ERRORS):
        try:
            quiet_libraries(verbose=False)
            record = log_one()
            assert record.exc_info is None
            assert record.getMessage() == (
                "Ignoring this exception with remaining max_errored_blocks=1. "
                "(RuntimeError: The worker died unexpectedly.)"
            )
            quiet_libraries(verbose=True)
            assert log_one().exc_info is not None
        finally:
            quiet_libraries(verbose=False)
