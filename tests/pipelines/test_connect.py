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
