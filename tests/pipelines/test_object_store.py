"""Archives in object storage, end to end against a real S3-compatible server (moto's, on
127.0.0.1, with IAM authentication; tests/s3server.py): the errors a user can cause stop the
``lvmae`` command before Ray starts with one line naming the URI; ``lvmae run`` reads its
videos from and writes its embeddings to S3, survives a kill -9 mid-extraction and reruns
to exactly one copy of every segment; broken objects are recorded under their URIs; no
secret is written anywhere."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lvmae.storage import StorageError, object_fs, read_segments, read_videos, segment_schema
from pipelines.cli import main
from tests.s3server import free_port

REPO = Path(__file__).resolve().parents[2]
LVMAE = [sys.executable, "-m", "pipelines.cli"]


def _run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


ERROR_CASES = {
    # case: (input, out, what the environment changes, expected URI, expected words)
    "missing output bucket": (
        "s3://videos/", "s3://no-such-bucket/emb", {}, "s3://no-such-bucket/emb",
        "bucket 'no-such-bucket' does not exist",
    ),
    "missing input bucket": (
        "s3://no-such-input/videos/", None, {}, "s3://no-such-input/videos/",
        "bucket 'no-such-input' does not exist",
    ),
    "wrong secret": (
        "s3://videos/", "s3://out/e1", {"AWS_SECRET_ACCESS_KEY": "lvmae-WRONG-secret-0451"},
        "s3://videos/", "credentials are refused (SignatureDoesNotMatch)",
    ),
    "unknown key": (
        "s3://videos/", "s3://out/e2", {"AWS_ACCESS_KEY_ID": "AKIALVMAENOSUCHKEY00"},
        "s3://videos/", "credentials are refused (InvalidAccessKeyId)",
    ),
    "unreachable endpoint": (
        "s3://videos/", "s3://out/e3", {"AWS_ENDPOINT_URL": "http://127.0.0.1:{port}"},
        "s3://videos/", "cannot reach the storage endpoint http://127.0.0.1:{port}",
    ),
    "denied write": (
        "s3://videos/", "s3://out/denied", {"reader": ""}, "s3://out/denied",
        "writing is denied",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_object_store_errors_stop_lvmae_extract_before_ray_with_one_line(  # noqa: PLR0917
    case, s3_archive, s3_env, tmp_path, monkeypatch, capsys, caplog
):
    import ray

    input_uri, out, changes, uri, words = ERROR_CASES[case]
    port = free_port()
    for name, value in changes.items():
        if name == "reader":  # the read-only user's keys
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.reader.access_key_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.reader.secret_access_key)
        else:
            monkeypatch.setenv(name, value.format(port=port))
    out = out or str(tmp_path / "out")
    ray_was_up = ray.is_initialized()
    code, err = _run_cli(["extract", input_uri, "--out", out, "--no-progress"], capsys)
    assert code == 1
    assert err.startswith(f"error: object storage: {uri}: ") and err.count("\n") == 1, err
    assert words.format(port=port) in err and "Traceback" not in err
    if not ray_was_up:
        assert not ray.is_initialized()  # stopped before Ray started
    secrets = {os.environ["AWS_SECRET_ACCESS_KEY"], s3_env.admin.secret_access_key}
    assert not any(s in err or s in caplog.text for s in secrets)
    if case == "denied write":  # the probe object was refused: nothing written
        assert "Contents" not in s3_env.client().list_objects_v2(Bucket="out", Prefix="denied")
    assert not Path(tmp_path / "out").exists()


def test_lvmae_run_with_a_missing_embeddings_bucket_stops_before_ray(
    s3_archive, s3_env, tmp_path, capsys
):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"run": {
        "input": s3_archive, "embeddings": "s3://no-such-bucket/emb",
        "workdir": str(tmp_path / "w"), "stages": ["extract", "pretrain"],
    }}))  # fmt: skip
    code, err = _run_cli(["run", "--config", str(config)], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.startswith("error: object storage: s3://no-such-bucket/emb: bucket ")


def _bucket(server, name: str) -> None:
    s3 = server.client()
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=name)


def _segments(values: list[float], videos: dict[str, int]) -> pa.Table:
    """Segment rows of ``videos`` (id -> segment count), embedding ``[value, index]``."""
    rows = [(v, i) for v, n in videos.items() for i in range(n)]
    return pa.table({
        "video_id": [v for v, _ in rows],
        "segment_index": pa.array([i for _, i in rows], pa.int32()),
        "start_s": [5.0 * i for _, i in rows], "end_s": [5.0 * i + 5 for _, i in rows],
        "frame_indices": [[0]] * len(rows), "frame_times_s": [[0.0]] * len(rows),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array([x for (_, i), v in zip(rows, values, strict=True) for x in (v, i)],
                     pa.float32()), 2),
        "encoder": ["tiny"] * len(rows), "config_id": ["c"] * len(rows),
    }, schema=segment_schema(2))  # fmt: skip


@pytest.mark.slow
def test_jobs_read_embeddings_through_the_configured_endpoint_keeping_the_latest_rows(
    s3_env, monkeypatch
):
    """The endpoint only in ``storage.endpoint_url`` (no AWS_ENDPOINT_URL): the embedding
    width (footers, read here) and the per-video sequences (a Ray Data groupby, in a fresh
    process with its own local Ray, whose workers inherit its environment) read the
    segments from the server; after three rewrites (--overwrite) of the same keys the
    sequences hold the last one written. An unreachable endpoint is named as such, not
    blamed on the files."""
    import json

    from lvmae.config import StorageConfig
    from lvmae.storage import use_object_store, write_table_atomic
    from pipelines.job_inputs import embedding_dim_of
    from tests.fresh import fresh_python

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    settings = StorageConfig(endpoint_url=s3_env.endpoint, max_attempts=2)
    use_object_store(settings)
    _bucket(s3_env, "emb")
    out = f"s3://emb/latest-{os.getpid()}-{time.time_ns()}"
    videos = {"a.mp4": 3, "b.mp4": 2}
    for generation in (1.0, 2.0, 3.0):
        write_table_atomic(_segments([generation] * 5, videos), out, "segments")
    assert embedding_dim_of(out) == 2
    code = (
        "import json, ray\n"
        "from lvmae.config import StorageConfig\n"
        "from lvmae.storage import use_object_store\n"
        "from pipelines.job_inputs import video_sequences\n"
        f"use_object_store(StorageConfig.model_validate_json({settings.model_dump_json()!r}))\n"
        "ray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        f"rows = video_sequences({out!r}).take_all()\n"
        "print(json.dumps({r['video_id']: [float(x) for x in r['embedding']] for r in rows}))\n"
    )
    got = json.loads(fresh_python(code).splitlines()[-1])
    assert got == {v: [x for i in range(n) for x in (3.0, float(i))] for v, n in videos.items()}
    use_object_store(StorageConfig(endpoint_url=f"http://127.0.0.1:{free_port()}",
                                   max_attempts=1, connect_timeout_s=1.0))  # fmt: skip
    with pytest.raises(StorageError, match=f"cannot read {out}/segments/: ") as raised:
        embedding_dim_of(out)
    assert "not a segments" not in str(raised.value)


def test_s3a_outputs_are_written_and_read_back(s3_env, monkeypatch):
    """``s3a://`` (Hadoop's name) works like ``s3://`` for the Parquet outputs; here
    without a configured endpoint, the server given in the URI's options."""
    from lvmae.storage import read_manifest, write_manifest, write_table_atomic

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    host = s3_env.endpoint.partition("://")[2]
    _bucket(s3_env, "emb")
    out = f"s3a://emb/s3a-{os.getpid()}-{time.time_ns()}?endpoint_override={host}&scheme=http"
    write_table_atomic(_segments([1.0], {"a.mp4": 1}), out, "segments")
    write_manifest(out, {"kind": "test"})
    assert read_segments(out)["video_id"].to_pylist() == ["a.mp4"]
    assert read_manifest(out) == {"kind": "test"}


@pytest.fixture(scope="module")
def long_archive(s3_server, tmp_path_factory, broken_videos):
    """Bucket ``long``: six sample videos of 16–24 s (one per default recipe; 8–12
    segments of 2 s each) and four broken files under ``broken/``; bucket ``out``."""
    import shutil

    from lvmae.video.samples import make_samples

    root = tmp_path_factory.mktemp("long-archive")
    make_samples(root / "v", videos_per_recipe=1, min_seconds=16, max_seconds=24, seed=3)
    (root / "v" / "labels.csv").unlink(missing_ok=True)
    (root / "v" / "broken").mkdir()
    for kind in ("zero_byte", "text", "truncated", "partial"):
        shutil.copy(broken_videos[kind], root / "v" / "broken" / f"{kind}.mp4")
    keys = s3_server.upload_tree("long", root / "v")
    s3_server.upload_tree("out", root / "v" / "broken", prefix="unrelated/")  # creates "out"
    return "s3://long/", [k for k in keys if k.endswith(".mp4")]


def _raw_keys(out: str) -> Counter:
    """(video_id, segment_index) → rows across every Parquet file under ``out``/segments,
    duplicates included."""
    fs, path = object_fs(f"{out}/segments", skip_instance_cache=True)  # no cached listing
    keys: Counter = Counter()
    for name in fs.find(path):
        if name.endswith(".parquet") and not Path(name).name.startswith("."):
            with fs.open(name, "rb") as f:
                table = pq.read_table(f, columns=["video_id", "segment_index"])
            keys.update(zip(table["video_id"].to_pylist(), table["segment_index"].to_pylist(),
                            strict=True))  # fmt: skip
    return keys


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_lvmae_run_on_s3_survives_kill_9_and_reruns_exactly_once_without_secrets(
    long_archive, s3_env, tmp_path
):
    """``lvmae extract`` from ``s3://long/`` into ``s3://out/run`` is SIGKILLed once a good
    video is done (the broken ones come first); then ``lvmae run`` (extract + a tiny
    pre-training) reruns it: every segment exactly once, the broken objects failed (the
    damaged one partial where its segments before the damage are there) with reasons
    naming their URIs (never a temporary file), no temporary file left (a killed
    worker's included), pre-training read the embeddings from S3, and the admin's secret
    is nowhere: not in the manifest or any output object, the MLflow store, the workdir,
    or either command's output. Each video is split into ranges of 10 s (decode tasks that
    start reading mid-object)."""
    input_uri, keys = long_archive
    out = "s3://out/run"
    fetch = tmp_path / "fetch"
    fetch.mkdir()
    stale = fetch / f"lvmae-fetch-{_dead_pid()}-0123456789ab.mp4"  # a killed worker's
    stale.write_bytes(b"partial download")
    workdir = tmp_path / "work"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"input": input_uri, "embeddings": out, "workdir": str(workdir),
                "stages": ["extract", "pretrain"]},
        "extract": {"segment_s": 2.0, "batch_size": 4, "flush_s": 0.2, "range_s": 10.0,
                    "storage": {"fetch_dir": str(fetch), "max_attempts": 3}},
        "pretrain": {"preset": "tiny", "num_workers": 1, "epochs": 1, "warmup_epochs": 0,
                     "batch_size": 4},
    }))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "LVMAE_PROGRESS_EVERY_S": "0"}
    env.pop("RAY_ADDRESS", None)  # its own Ray: workers inherit this environment
    logs = {name: tmp_path / f"{name}.txt" for name in ("kill-out", "kill-err")}
    with logs["kill-out"].open("w") as o, logs["kill-err"].open("w") as e:
        proc = subprocess.Popen(
            [*LVMAE, "extract", input_uri, "--out", out, "--config", str(config)],
            env=env, start_new_session=True, stdout=o, stderr=e,
        )  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if "ok" in read_videos(out)["status"].to_pylist():
                    break
            except OSError:
                pass  # the first files are being written
            time.sleep(0.1)
        assert proc.poll() is None, logs["kill-err"].read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    at_kill = _raw_keys(out)
    n_videos = len(keys)
    ok_at_kill = {r["video_id"] for r in read_videos(out).to_pylist() if r["status"] == "ok"}
    assert sum(at_kill.values()) > 0 and 1 <= len(ok_at_kill) < 6  # killed mid-way

    rerun = subprocess.run(
        [*LVMAE, "run", "--config", str(config)], env=env, capture_output=True, text=True,
        timeout=400, check=False,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    videos = {r["video_id"]: r for r in read_videos(out).to_pylist()}
    assert len(videos) == n_videos
    raw = _raw_keys(out)
    broken = {v: r for v, r in videos.items() if v.startswith("broken/")}
    for vid, row in broken.items():  # partial: what it decoded before its damage is there
        held = any(v == vid for v, _ in raw)
        assert row["status"] == ("partial" if held else "failed"), row
        assert f"s3://long/{vid}" in row["error"] and "lvmae-fetch" not in row["error"], row
    good = {v: r for v, r in videos.items() if v not in broken}
    assert len(good) == 6 and {r["status"] for r in good.values()} == {"ok"}
    expected = {(v, i) for v, r in good.items() for i in range(r["segments_planned"])}
    assert set(raw.values()) == {1}  # every segment on S3 exactly once, no duplicate
    assert expected <= set(raw)
    # beyond the good videos' plans: only what the damaged one decoded before its damage
    assert {vid for vid, _ in set(raw) - expected} <= {"broken/partial.mp4"}
    assert read_segments(out).num_rows == len(raw)
    assert not list(fetch.iterdir())  # the stale file and every download are gone
    assert (workdir / "stages" / "pretrain.json").is_file()

    secret = s3_env.admin.secret_access_key.encode()
    fs, root = object_fs(out, skip_instance_cache=True)
    for name in fs.find(root):
        assert secret not in fs.cat_file(name), name
    for path in [p for p in workdir.rglob("*") if p.is_file()] + list(logs.values()):
        assert secret not in path.read_bytes(), path
    assert (workdir / "mlflow.db").is_file()
    assert secret.decode() not in rerun.stdout + rerun.stderr
