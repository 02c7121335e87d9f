"""Shared fixtures: real mp4 files made by ffmpeg, a session-scoped local Ray instance.

The suite is isolated from the machine it runs on (docs/design.md, "Tests"). Before any
fixture, test module or Ray import runs, this module clears every ``MLFLOW_*`` and ``RAY_*``
variable of the caller's environment (``MLFLOW_TRACKING_URI``, ``RAY_ADDRESS``, a token path:
anything that would send runs to the user's MLflow server or join the user's Ray cluster)
and gives the session a Ray temporary directory of its own (``RAY_TMPDIR``, short for Ray's
unix socket paths), where Ray looks for a running local cluster and starts its own, and a
fresh Ray token of its own (never ``~/.ray/auth_token``), and an lvmae cache directory of
its own (``LVMAE_CACHE_DIR``: the migrated empty MLflow store). ``lvmae`` subprocesses of the
tests inherit all of this; a test that needs one of these variables sets it itself.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

ISOLATED_PREFIXES = ("MLFLOW_", "RAY_")


def isolate_environment() -> str:
    """Clear the caller's ``MLFLOW_*`` / ``RAY_*`` variables and set the suite's own: a
    private Ray temp dir (returned; removed by :func:`pytest_unconfigure`), token
    authentication with a fresh token, Ray's usage stats and log deduplication off, and
    the lvmae cache inside that temp dir."""
    for name in [k for k in os.environ if k.startswith(ISOLATED_PREFIXES)]:
        del os.environ[name]
    # under /tmp whatever TMPDIR says: Ray's socket paths (about 107 characters at most) live
    # below it, about 60 characters deeper
    ray_tmp = tempfile.mkdtemp(prefix="lvmae-t-", dir="/tmp" if Path("/tmp").is_dir() else None)
    os.environ.update(
        RAY_TMPDIR=ray_tmp,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DEDUP_LOGS="0",
        LVMAE_CACHE_DIR=str(Path(ray_tmp) / "cache"),  # the session's own (lvmae.tracking)
    )
    return ray_tmp


# At import, before pytest configures plugins or collects a test module: nothing imported
# later (Ray, MLflow, the project) can have read the caller's variables.
SESSION_RAY_TMPDIR = isolate_environment()


def pytest_unconfigure(config):
    shutil.rmtree(SESSION_RAY_TMPDIR, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def scene_video(media_dir):
    """12 s, 160x120 @ 10 fps, three 4-second scenes of very different sources."""
    from lvmae.video.samples import Scene, make_video

    return make_video(
        media_dir / "scenes.mp4",
        [Scene("smptebars", 4.0), Scene("mandelbrot", 4.0), Scene("life", 4.0)],
        width=160,
        height=120,
        fps=10,
    )


@pytest.fixture(scope="session")
def wide_video(media_dir):
    """7 s, 320x180 @ 25 fps (16:9, so the crop matters)."""
    from lvmae.video.samples import Scene, make_video

    return make_video(
        media_dir / "wide.mp4", [Scene("testsrc2", 7.0)], width=320, height=180, fps=25
    )


@pytest.fixture(scope="session")
def vfr_video(media_dir):
    from lvmae.video.samples import make_vfr_video

    return make_vfr_video(media_dir / "vfr.mp4", segments=((5, 4.0), (25, 4.0)))


@pytest.fixture(scope="session")
def broken_videos(media_dir, scene_video):
    from lvmae.video.samples import write_broken_videos

    return write_broken_videos(media_dir / "broken", good_video=scene_video)


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray instance for the whole session."""
    import ray

    if not ray.is_initialized():
        # "local": a new instance (under RAY_TMPDIR), never a running cluster found on the
        # machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    from pipelines.connect import stop_local_monitor

    stop_local_monitor()  # else ray.shutdown() waits out the monitor's 1-s grace
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto's, its own subprocess) on 127.0.0.1 with IAM
    authentication: ``.admin`` may do anything, ``.reader`` only get and list
    (:mod:`tests.s3server`). Stopped at the end of the session."""
    from tests.s3server import s3_server as start

    with start(tmp_path_factory.mktemp("s3") / "server.log") as server:
        yield server


@pytest.fixture(scope="session")
def s3_archive(s3_server, scene_video, wide_video, broken_videos):
    """Bucket ``videos``: two good ffmpeg-made mp4s (one in a sub-folder) and four broken
    files under ``broken/``; and an empty bucket ``out`` for outputs. Returns the input
    URI, ``s3://videos/``."""
    import shutil

    root = scene_video.parent / "s3-archive"
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "broken").mkdir(exist_ok=True)
    shutil.copy(scene_video, root / "scenes.mp4")
    shutil.copy(wide_video, root / "sub" / "wide.mp4")
    for kind in ("zero_byte", "text", "truncated", "partial"):
        shutil.copy(broken_videos[kind], root / "broken" / f"{kind}.mp4")
    s3_server.upload_tree("videos", root)
    s3_server.client().create_bucket(Bucket="out")
    return "s3://videos/"


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This test's environment points AWS clients at :func:`s3_server` as its admin (undone
    after the test), with this process's object-storage settings back to the defaults."""
    from lvmae.config import StorageConfig
    from lvmae.storage import use_object_store

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    use_object_store(StorageConfig())
    yield s3_server
    use_object_store(StorageConfig())
