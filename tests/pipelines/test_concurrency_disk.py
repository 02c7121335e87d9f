"""Concurrent runs and full disks (issue 28 items 3 and 4), with the real ``lvmae extract``
command, real Ray, real Parquet, real MLflow and a real small filesystem where this machine
lets the test mount one (else a file-size limit, see :mod:`tests.pipelines.disks`).

- Two extractions racing into one output directory: one holds it, the other refuses at
  once naming the holder; ``kill -9`` of the holder leaves its lock to be taken over; the
  rerun loses nothing and writes nothing twice.
- A disk that fills up while segments are flushed stops the run with one line; what was
  flushed stays valid; once space is freed the rerun resumes exactly once.
- A full disk during a checkpoint or an MLflow artifact upload is a :class:`DiskFullError`
  (one line), and the earlier checkpoints stay loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lvmae.config import ExtractConfig, load_config
from lvmae.errors import disk_full_cause
from lvmae.storage import (
    HOLDER_FILE,
    DiskFullError,
    OutputBusyError,
    hold_output,
    read_segments,
    read_videos,
)
from tests.pipelines.conftest import kill_once_videos_are_written, seed_store
from tests.pipelines.disks import file_size_limit, limit_preamble, resize_tmpfs, small_disk

REPO = Path(__file__).resolve().parents[2]
LVMAE = [sys.executable, "-m", "pipelines.cli"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _raw_keys(seg_dir: Path) -> Counter:
    """(video_id, segment_index) → rows across every Parquet file, duplicates included."""
    keys: Counter = Counter()
    for path in seg_dir.glob("*.parquet"):
        table = pq.read_table(path, columns=["video_id", "segment_index"])
        keys.update(zip(table["video_id"].to_pylist(), table["segment_index"].to_pylist(),
                        strict=True))  # fmt: skip
    return keys


def _assert_exactly_once(out: Path, n_videos: int) -> None:
    """Every video ok, every planned segment on disk exactly once, none other."""
    videos = read_videos(str(out))
    assert videos.num_rows == n_videos
    assert set(videos["status"].to_pylist()) == {"ok"}
    expected = {
        (r["video_id"], i) for r in videos.to_pylist() for i in range(r["segments_planned"])
    }
    raw = _raw_keys(out / "segments")
    assert set(raw) == expected
    assert set(raw.values()) == {1}, "a segment was written twice"
    assert read_segments(str(out)).num_rows == len(expected)


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """6 videos (one per default recipe) of 20–30 s: 10–15 two-second segments each."""
    from lvmae.video.samples import make_samples

    root = tmp_path_factory.mktemp("race_library")
    make_samples(root, videos_per_recipe=1, min_seconds=20, max_seconds=30, seed=3)
    return root


# ----------------------------------------------------------------------- one holder


def test_a_held_output_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path):
    """No Ray: a process holds a directory; another is refused with the holder's host, pid
    and command; after ``kill -9`` of the holder the lock is free at once (the kernel
    dropped it) and taken over, the holder's details replaced by the new holder's."""
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import time
        from lvmae.storage import hold_output
        with hold_output({str(out)!r}):
            print("held", flush=True)
            time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code, "--holder-tag"], env=_env(),
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError) as info, hold_output(str(out)):
            pass
        message = str(info.value)
        assert f"pid {holder.pid} " in message and os.uname().nodename in message
        assert "--holder-tag" in message and str(out) in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (out / HOLDER_FILE).exists()  # left by the killed run
    with hold_output(str(out)):
        assert f'"pid": {os.getpid()}' in (out / HOLDER_FILE).read_text()
        with hold_output(str(out)):  # re-entrant within a process
            pass
    assert not (out / HOLDER_FILE).exists()


@pytest.mark.slow
def test_racing_extractions_one_refused_kill9_then_rerun_loses_nothing(
    library, tmp_path, ray_local, mlflow_store
):
    """Two ``lvmae extract`` into one directory at once: one refuses (exit 1, one line
    naming the holder's pid), the other works until ``kill -9``; the rerun takes the lock
    over, skips the videos done and every segment is on disk exactly once."""
    n_videos = len(list(library.rglob("*.mp4")))
    out = seed_store(mlflow_store, tmp_path / "out")
    cfg = tmp_path / "extract.yaml"
    cfg.write_text("segment_s: 2.0\nbatch_size: 4\nflush_s: 0.2\n")
    env = _env(RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    procs, logs = [], []
    for i in range(2):
        logs.append(tmp_path / f"stderr{i}.txt")
        with logs[-1].open("w") as err:
            procs.append(subprocess.Popen(
                [*LVMAE, "extract", str(library), "--out", str(out), "--config", str(cfg),
                 "--no-progress"],
                env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err,
            ))  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.05)
        refused = next(i for i, p in enumerate(procs) if p.poll() is not None)
        holder = procs[1 - refused]
        assert procs[refused].returncode == 1
        (line,) = _error_lines(logs[refused].read_text())
        assert "--out" in line and str(out) in line and "in use" in line
        assert f"pid {holder.pid} " in line, line
        kill_once_videos_are_written(holder, out, deadline=deadline)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=60)
    ok_at_kill = {r["video_id"] for r in read_videos(str(out)).to_pylist() if r["status"] == "ok"}
    assert 0 < len(ok_at_kill) < n_videos
    assert set(_raw_keys(out / "segments").values()) == {1}
    assert (out / HOLDER_FILE).exists()  # the killed run's, taken over now

    from pipelines.extract import run_extraction

    again = run_extraction(str(library), str(out), load_config(ExtractConfig, cfg),
                           progress=False)  # fmt: skip
    assert again.videos_skipped == len(ok_at_kill)
    _assert_exactly_once(out, n_videos)
    assert not (out / HOLDER_FILE).exists()


# ------------------------------------------------------------------------ full disks


@pytest.mark.slow
def test_a_disk_full_mid_extraction_stops_with_one_line_and_the_rerun_resumes_exactly_once(
    library, tmp_path, ray_local, mlflow_store
):
    """``--out`` on a 64 KiB filesystem that fills up while segment files are flushed (8
    rows a file): the command stops with one ``error:`` line saying no space is left, the
    files flushed before read back whole (no video row without all its segments), no
    temporary file is left; after the filesystem grows, the rerun writes every missing
    segment once. Without a mountable tmpfs, the child's files may not grow past 20 KiB
    instead."""
    n_videos = len(list(library.rglob("*.mp4")))
    disk = tmp_path / "disk"
    store = seed_store(mlflow_store, tmp_path / "store") / "mlflow.db"  # off the small disk
    cfg = tmp_path / "extract.yaml"
    with small_disk(disk, "64k") as mounted:
        if mounted:
            cfg.write_text("segment_s: 2.0\nbatch_size: 4\nrows_per_file: 8\nflush_s: 0.01\n")
            preamble = ""
        else:  # one file of all the rows at the end outgrows the limit
            cfg.write_text("segment_s: 2.0\nbatch_size: 4\nrows_per_file: 100000\n"
                           "flush_s: 3600\n")  # fmt: skip
            preamble = limit_preamble(20 << 10)
        out = disk / "out"
        if mounted:  # the real command, its MLflow store off the small disk
            code = (
                "from pipelines.cli import main\n"
                f"main(['extract', {str(library)!r}, '--out', {str(out)!r}, '--config', "
                f"{str(cfg)!r}, '--no-progress'])\n"
            )
        else:  # a file-size limit holds for every file: the job untracked, as the CLI ends
            code = preamble + textwrap.dedent(f"""
                import sys
                from lvmae.config import ExtractConfig, load_config
                from lvmae.errors import LvmaeError
                from pipelines.cli import one_line
                from pipelines.extract import run_extraction
                config = load_config(ExtractConfig, {str(cfg)!r})
                try:
                    run_extraction({str(library)!r}, {str(out)!r}, config, progress=False,
                                   track=False)
                except LvmaeError as exc:
                    print("error: " + one_line(exc), file=sys.stderr)
                    sys.exit(1)
            """)
        env = _env(RAY_ADDRESS=ray_local.get_runtime_context().gcs_address,
                   MLFLOW_TRACKING_URI=f"sqlite:///{store}")  # fmt: skip
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=300, check=False)  # fmt: skip
        assert res.returncode == 1, res.stderr
        (line,) = _error_lines(res.stderr)
        assert "no space left" in line
        flushed = _raw_keys(out / "segments") if (out / "segments").exists() else Counter()
        if mounted:
            assert str(out) in line and sum(flushed.values()) >= 8, (line, flushed)
        assert set(flushed.values()) <= {1}
        assert not [p for p in out.rglob(".*.tmp")], "a temporary file was left"
        for row in read_videos(str(out)).to_pylist():  # a video row only after its segments
            assert all(flushed[(row["video_id"], i)] == 1 for i in range(row["segments_planned"]))
        ok_before = {r["video_id"] for r in read_videos(str(out)).to_pylist()
                     if r["status"] == "ok"}  # fmt: skip

        if mounted:
            resize_tmpfs(disk, "16m")  # space freed
        from pipelines.extract import run_extraction

        again = run_extraction(str(library), str(out), load_config(ExtractConfig, cfg),
                               progress=False, tracking_uri=f"sqlite:///{store}")  # fmt: skip
        assert again.videos_skipped == len(ok_before)
        assert again.segments_resumed == sum(
            n for (vid, _), n in flushed.items() if vid not in ok_before
        )
        _assert_exactly_once(out, n_videos)


def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_ones(tmp_path):
    """A checkpoint that does not fit raises :class:`DiskFullError`; no partial directory
    stays, and the previous checkpoint loads."""
    import torch

    from lvmae.mae.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint, step_dir

    state = {"w": torch.zeros(64, 64)}  # 16 KiB of float32
    root = tmp_path / "ckpts"
    with small_disk(root, "64k") as mounted:
        save_checkpoint(step_dir(root, 1), model_state=state, model_config={"d": 64}, step=1)
        big = {"w": torch.zeros(256, 256)}  # 256 KiB: never fits
        if mounted:
            with pytest.raises(DiskFullError) as info:
                save_checkpoint(step_dir(root, 2), model_state=big, model_config={"d": 64},
                                step=2)  # fmt: skip
        else:
            with pytest.raises(DiskFullError) as info, file_size_limit(64 << 10):
                save_checkpoint(step_dir(root, 2), model_state=big, model_config={"d": 64},
                                step=2)  # fmt: skip
        assert "no space left" in str(info.value) and "checkpoint" in str(info.value)
        assert "\n" not in str(info.value)
        assert latest_checkpoint(root) == step_dir(root, 1)
        assert sorted(p.name for p in root.iterdir()) == [step_dir(root, 1).name]
        assert load_checkpoint(step_dir(root, 1))["step"] == 1


def test_a_full_disk_during_an_mlflow_artifact_upload_is_one_line(tmp_path, mlflow_store):
    """MLflow's local artifact store on a full disk: the error it raises is recognised as
    a full disk, and the ``lvmae`` command reports it as one line."""
    from mlflow.tracking import MlflowClient

    from pipelines.cli import one_line

    uri = f"sqlite:///{seed_store(mlflow_store, tmp_path / 'w') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    artifacts = tmp_path / "artifacts"
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(256 << 10))
    with small_disk(artifacts, "64k") as mounted:
        exp = client.create_experiment("x", artifact_location=artifacts.as_uri())
        run = client.create_run(exp)
        if mounted:
            with pytest.raises(Exception) as info:  # whatever MLflow raises on ENOSPC
                client.log_artifact(run.info.run_id, str(payload))
        else:
            with pytest.raises(Exception) as info, file_size_limit(64 << 10):
                client.log_artifact(run.info.run_id, str(payload))
    assert disk_full_cause(info.value) is not None, repr(info.value)
    assert "\n" not in one_line(info.value)
