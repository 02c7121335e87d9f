"""The whole Ray Data extraction on real generated videos (and broken files), read back with
pyarrow; resume; bad input through the real `lvmae` command."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from lvmae.config import ExtractConfig, load_config
from lvmae.storage import read_manifest, read_segments, read_videos
from lvmae.video.segments import fixed_segments
from pipelines.cli import main
from pipelines.extract import ExtractError, run_extraction
from tests.fresh import fresh_python
from tests.pipelines.conftest import kill_once_videos_are_written, seed_store

LVMAE = [sys.executable, "-m", "pipelines.cli"]
BROKEN = ["zero_byte", "truncated", "text", "audio_only", "unreadable", "partial"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, scene_video, wide_video, vfr_video, broken_videos):
    """Five good videos (two in a sub-folder) and six broken files."""
    root = tmp_path_factory.mktemp("archive")
    (root / "sub").mkdir()
    shutil.copy(scene_video, root / "scenes.mp4")
    shutil.copy(wide_video, root / "sub" / "wide.mp4")
    shutil.copy(vfr_video, root / "sub" / "vfr.mp4")
    shutil.copy(scene_video, root / "scenes_copy.mkv")  # another extension, same content
    shutil.copy(wide_video, root / "wide_again.mp4")
    (root / "broken").mkdir()
    for kind in BROKEN:
        src = broken_videos[kind]
        if src.is_symlink():
            (root / "broken" / src.name).symlink_to(src.readlink())
        else:
            shutil.copy(src, root / "broken" / src.name)
    (root / "notes.txt").write_text("not a video, not listed")
    return root


def rows_of(table, video_id):
    return table.filter(pc.equal(table["video_id"], video_id))


GOOD = {
    "scenes.mp4": 12.0,
    "scenes_copy.mkv": 12.0,
    "sub/wide.mp4": 7.0,
    "sub/vfr.mp4": 8.0,
    "wide_again.mp4": 7.0,
}


@pytest.fixture(scope="module")
def extracted(archive, tmp_path_factory, ray_local, mlflow_store):
    """The archive extracted once (into an output holding an empty MLflow store)."""
    out = seed_store(mlflow_store, tmp_path_factory.mktemp("out") / "extract")
    config = ExtractConfig(batch_size=4, rows_per_file=8, flush_s=0.1)
    summary = run_extraction(str(archive), str(out), config, progress=False)
    return out, config, summary


@pytest.mark.slow
def test_every_good_video_has_its_planned_segments(extracted):
    out, config, _ = extracted
    segments = read_segments(str(out))
    assert segments.schema.field("embedding").type.list_size == 64  # the tiny encoder
    for video_id, duration in GOOD.items():
        rows = rows_of(segments, video_id)
        plan = fixed_segments(duration)
        assert rows["segment_index"].to_pylist() == list(range(len(plan))), video_id
        assert np.allclose(rows["start_s"].to_numpy(), [s.start_s for s in plan], atol=0.05)
        assert len(rows["frame_indices"][0].as_py()) == 8
    emb = np.stack(segments["embedding"].to_numpy(zero_copy_only=False))
    assert emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # the same content gives the same embeddings; different content different ones
    a = rows_of(segments, "scenes.mp4")["embedding"].to_pylist()
    b = rows_of(segments, "scenes_copy.mkv")["embedding"].to_pylist()
    assert np.allclose(a, b, atol=1e-5)
    assert not np.allclose(a[0], a[1], atol=1e-3)
    assert set(segments["encoder"].to_pylist()) == {"tiny"}
    assert set(segments["config_id"].to_pylist()) == {config.config_id()}


@pytest.mark.slow
def test_every_input_video_has_a_row_and_broken_ones_say_why(extracted):
    out, _, summary = extracted
    videos = read_videos(str(out)).to_pylist()
    by_id = {v["video_id"]: v for v in videos}
    assert set(by_id) == set(GOOD) | {f"broken/{k}.mp4" for k in BROKEN}
    for vid, duration in GOOD.items():
        assert by_id[vid]["status"] == "ok" and by_id[vid]["error"] is None
        assert by_id[vid]["duration_s"] == pytest.approx(duration, abs=0.1)
        planned = len(fixed_segments(duration))
        assert by_id[vid]["segments_planned"] == by_id[vid]["segments_written"] == planned
    for kind in BROKEN:
        row = by_id[f"broken/{kind}.mp4"]
        assert row["status"] == ("partial" if kind == "partial" else "failed"), kind
        assert row["error"], kind
    assert summary.videos_ok == len(GOOD)
    assert summary.videos_failed == len(BROKEN) - 1 and summary.videos_partial == 1
    assert set(summary.failures) == {f"broken/{k}.mp4" for k in BROKEN}
    assert summary.segments_written == read_segments(str(out)).num_rows
    assert "segments written" in summary.format()


@pytest.mark.slow
def test_manifest_records_config_encoder_and_versions(extracted):
    out, config, summary = extracted
    manifest = read_manifest(str(out))
    assert manifest["config_id"] == config.config_id()
    assert manifest["config"]["segment_s"] == 5.0
    assert manifest["encoder"]["name"] == "tiny" and manifest["encoder"]["embedding_dim"] == 64
    assert {"ray", "torch", "decord", "pyarrow"} <= set(manifest["versions"])
    assert manifest["status"] == "done"
    assert manifest["summary"]["segments_written"] == summary.segments_written


@pytest.mark.slow
def test_rerun_skips_finished_videos_and_redoes_the_rest(extracted, archive):
    out, config, _ = extracted
    before = read_segments(str(out)).num_rows
    again = run_extraction(str(archive), str(out), config, progress=False)
    assert again.videos_skipped == len(GOOD)
    assert again.videos_failed + again.videos_partial == len(BROKEN)
    # the partial video is redone (its segments written again) but read back once
    assert read_segments(str(out)).num_rows == before


@pytest.mark.slow
def test_another_config_into_the_same_output_is_refused(extracted, archive):
    out, _, _ = extracted
    files = sorted(p.name for p in (out / "segments").iterdir())
    with pytest.raises(ExtractError, match="another configuration"):
        run_extraction(str(archive), str(out), ExtractConfig(segment_s=2.0), progress=False)
    assert sorted(p.name for p in (out / "segments").iterdir()) == files


def store_templates(root: Path) -> set[Path]:
    """The temporary directories in which extractions prepare a new MLflow store, under the
    test's own temporary directory ``root``."""
    return set(root.glob("lvmae-store-*"))


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.slow
def test_shots_segmenter_and_pyav_decoder_through_the_pipeline(
    tmp_path, scene_video, ray_local, monkeypatch
):
    from mlflow.tracking import MlflowClient

    # this test's own temporary directory for the code's temporary files (the store's
    # template), so what another extraction on the machine leaves in /tmp cannot matter
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    out = tmp_path / "out"
    config = ExtractConfig(segmenter="shots", shot_min_s=1.0, decoder="pyav", batch_size=2)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{scene_video}\n")
    # importing mlflow leaves its loggers at INFO, as a fresh `lvmae extract` has them
    # while the new store is created
    mlflow_log, records = logging.getLogger("mlflow"), _Records()
    level = mlflow_log.level
    mlflow_log.setLevel(logging.INFO)
    mlflow_log.addHandler(records)
    try:
        summary = run_extraction(str(listing), str(out), config, progress=False)
    finally:
        mlflow_log.removeHandler(records)
        mlflow_log.setLevel(level)
    assert summary.videos_ok == 1
    # the store's creation logged nothing at INFO (its schema migrations on the console)
    assert [r.getMessage() for r in records.records if r.levelno < logging.WARNING] == []
    # a new output gets its store (prepared while Ray started) with the run, and no
    # temporary directory is left behind
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("lvmae-extract").experiment_id])
    assert run.info.status == "FINISHED"
    assert store_templates(temp) == set()
    seg = read_segments(str(out))
    bounds = np.array([seg["start_s"].to_pylist(), seg["end_s"].to_pylist()]).T
    # the scene changes at 4 s and 8 s, within a frame or two (TransNetV2 on 10-fps video)
    assert np.allclose(bounds, [(0, 4), (4, 8), (8, 12)], atol=0.25), bounds
    (row,) = read_videos(str(out)).to_pylist()
    assert row["decoder"] == "pyav" and row["shot_detector"] == "transnetv2"
    assert np.allclose(row["cuts_s"], [4, 8], atol=0.25)


# --------------------------------------------------------------------- the real command


def run_main(capsys, *args) -> tuple[int, str]:
    """``lvmae ARGS`` in this process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, capsys.readouterr().err


def test_missing_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    code, err = run_main(capsys, "extract", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert code == 1
    assert "input path does not exist" in err
    assert not (tmp_path / "o").exists()


def test_empty_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no videos here")
    code, err = run_main(capsys, "extract", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert code == 1
    assert "no video files" in err
    assert not (tmp_path / "o").exists()


def test_unknown_encoder_is_a_usage_error(tmp_path, scene_video, capsys):
    code, err = run_main(
        capsys, "extract", str(scene_video), "--out", str(tmp_path / "o"), "--encoder", "clip"
    )
    assert code == 2
    assert "clip" in err and "tiny" in err
    assert not (tmp_path / "o").exists()


def test_bad_config_file_is_a_clear_error(tmp_path, scene_video, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("extract:\n  segment_s: -5\n  frames_per_segmnt: 8\n")
    code, err = run_main(
        capsys, "extract", str(scene_video.parent), "--out", str(tmp_path / "o"),
        "--config", str(cfg), "--set", "extract.decode_mode=quick",
    )  # fmt: skip
    assert code == 1
    assert "segment_s" in err and "frames_per_segmnt" in err
    assert "--set extract.decode_mode" in err and "fast" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_unavailable_languagebind_checkpoint_stops_before_any_work(tmp_path, scene_video):
    env_home = tmp_path / "hf"
    env_home.mkdir()
    res = subprocess.run(
        [
            *LVMAE,
            "extract",
            str(scene_video.parent),
            "--out",
            str(tmp_path / "o"),
            "--encoder",
            "languagebind-video-huge",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "HF_HOME": str(env_home),
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        },
    )
    assert res.returncode == 1
    assert "LanguageBind/LanguageBind_Video_Huge_V1.5_FT" in res.stderr
    assert not (tmp_path / "o").exists()


def test_the_extraction_driver_plans_without_torch():
    """The driver's modules and its encoder pre-flight leave torch to the workers: its
    import costs ≈ 1.7 s on 2 cores before Ray can start (lvmae.encoders.specs)."""
    code = (
        "import sys; import pipelines.cli, pipelines.extract; "
        "from lvmae.encoders.specs import describe_encoder; "
        "assert describe_encoder('tiny')['embedding_dim'] == 64; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    assert fresh_python(code) == "[]"


def _raw_keys(seg_dir: Path) -> Counter:
    """(video_id, segment_index) → rows across every Parquet file, duplicates included."""
    keys: Counter = Counter()
    for path in seg_dir.glob("*.parquet"):
        table = pq.read_table(path, columns=["video_id", "segment_index"])
        ids, indices = table["video_id"].to_pylist(), table["segment_index"].to_pylist()
        keys.update(zip(ids, indices, strict=True))
    return keys


@pytest.mark.slow
def test_killed_run_streams_output_then_rerun_reads_every_segment_exactly_once(
    tmp_path, ray_local, mlflow_store
):
    """``lvmae extract`` SIGKILLed once output is on disk (so output lands while the run goes
    on), with progress lines and MLflow step metrics already there; the rerun (here, through
    ``run_extraction``) skips the finished videos, decodes in the others only the segments
    missing from disk, and every segment ends up on disk exactly once.

    The killed command joins this session's Ray instance (``RAY_ADDRESS``) rather than
    starting one of its own, and writes into an output directory that already holds an
    empty MLflow store: seconds of start-up before any work, nothing the test looks at."""
    from mlflow.tracking import MlflowClient

    from lvmae.video.samples import make_samples

    videos = tmp_path / "videos"
    # 6 videos (one per default recipe) of 20–30 segments: once the decode workers are up,
    # a few seconds of work are left when the kill comes (after 2 videos are done)
    make_samples(videos, videos_per_recipe=1, min_seconds=40, max_seconds=60, seed=3)
    n_videos = len(list(videos.rglob("*.mp4")))
    out = seed_store(mlflow_store, tmp_path / "out")
    cfg = tmp_path / "extract.yaml"
    cfg.write_text("segment_s: 2.0\nbatch_size: 4\nflush_s: 0.2\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "LVMAE_PROGRESS_EVERY_S": "0",
        "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
    }
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*LVMAE, "extract", str(videos), "--out", str(out), "--config", str(cfg)],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    seg_dir = out / "segments"
    deadline = time.monotonic() + 240
    try:
        kill_once_videos_are_written(proc, out, deadline=deadline)
    finally:
        proc.wait(timeout=60)
    at_kill = _raw_keys(seg_dir)
    done_at_kill = read_videos(str(out))
    ok_at_kill = {r["video_id"] for r in done_at_kill.to_pylist() if r["status"] == "ok"}
    assert sum(at_kill.values()) > 0 and ok_at_kill
    assert len(ok_at_kill) < n_videos  # really killed mid-way
    # every finished video's segments were on disk before its row
    for row in done_at_kill.to_pylist():
        assert all(at_kill[(row["video_id"], i)] == 1 for i in range(row["segments_planned"]))
    # progress reached the log (no TTY) and MLflow while the run went on
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("extract: ")]
    assert any(f"/{n_videos} videos" in ln and "ETA" in ln for ln in lines), lines
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("lvmae-extract").experiment_id])
    history = client.get_metric_history(run.info.run_id, "progress.videos_done")
    assert history and 0 < max(m.value for m in history) < n_videos

    config = load_config(ExtractConfig, cfg)  # as the command read it: the same config_id
    again = run_extraction(str(videos), str(out), config, progress=False)
    assert (again.videos_total, again.videos_skipped) == (n_videos, len(ok_at_kill))
    assert again.videos_ok == n_videos - len(ok_at_kill)
    raw = _raw_keys(seg_dir)
    videos_table = read_videos(str(out))
    assert videos_table.num_rows == n_videos
    assert set(videos_table["status"].to_pylist()) == {"ok"}
    seg = read_segments(str(out))
    expected = set()
    for row in videos_table.to_pylist():
        vid, n = row["video_id"], row["segments_planned"]
        expected |= {(vid, i) for i in range(n)}
        assert rows_of(seg, vid)["segment_index"].to_pylist() == list(range(n)), vid
    assert set(raw) == expected
    # no duplicates at all: the rerun skipped the finished videos and, in the videos the
    # kill cut off, the segments already on disk
    assert set(raw.values()) == {1}
    resumed = sum(n for (vid, _), n in at_kill.items() if vid not in ok_at_kill)
    assert again.segments_written == len(expected) - sum(at_kill.values())
    assert again.segments_resumed == resumed


@pytest.mark.slow
def test_rerun_decodes_only_the_segments_missing_from_disk(tmp_path, scene_video, ray_local):
    """A run killed after some of a video's segments reached disk, before its videos row:
    the rerun decodes the other segments only, and every segment is on disk once."""
    out = tmp_path / "out"
    config = ExtractConfig(segment_s=2.0, batch_size=2)
    run_extraction(str(scene_video), str(out), config, progress=False, track=False)
    full = read_segments(str(out))
    assert full.num_rows == 6
    # what a kill leaves: no videos row, and only segments 0 and 3 on disk
    shutil.rmtree(out / "videos")
    shutil.rmtree(out / "segments")
    keep = full.filter(pc.is_in(full["segment_index"], pa.array([0, 3], pa.int32())))
    (out / "segments").mkdir()
    pq.write_table(keep, out / "segments" / "part-kept.parquet")

    again = run_extraction(str(scene_video), str(out), config, progress=False, track=False)
    assert again.videos_ok == 1 and again.segments_resumed == 2
    assert again.segments_written == 4
    assert set(_raw_keys(out / "segments").values()) == {1}
    back = read_segments(str(out))
    assert back["segment_index"].to_pylist() == list(range(6))
    assert np.allclose(back["embedding"].to_pylist(), full["embedding"].to_pylist(), atol=1e-6)
    (row,) = read_videos(str(out)).to_pylist()
    assert (row["status"], row["segments_planned"], row["segments_written"]) == ("ok", 6, 4)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from lvmae.encoders.models import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.mark.slow
def test_tiny_encodes_inside_the_decode_tasks_and_other_encoders_get_an_actor_pool(
    scene_video, tiny_checkpoint, ray_local
):
    from lvmae.video.inputs import list_videos
    from pipelines.extract import build_dataset

    todo = list_videos(str(scene_video), (".mp4",))
    ds = build_dataset(todo, ExtractConfig())
    rows = ds.take_all()
    assert [r["segment_index"] for r in rows if r["segment_index"] < 0] == [-1]
    assert {len(r["embedding"]) for r in rows} == {64}
    assert "EncodeClips" not in ds.stats()
    config = ExtractConfig(
        encoder="languagebind-video-ft", encoder_checkpoint=str(tiny_checkpoint), gpus_per_actor=0
    )
    ds = build_dataset(todo, config)
    rows = ds.take_all()
    stats = ds.stats()
    # decoding scales out over CPU tasks: not fused into the encoder actors
    assert "decode_videos->" not in stats and "->MapBatches(EncodeClips)" not in stats
    assert "MapBatches(decode_videos)" in stats and "MapBatches(EncodeClips)" in stats
    assert sum(r["segment_index"] >= 0 for r in rows) == 3


def test_each_embedded_batch_leaves_a_decode_task_as_one_block(scene_video, ray_local):
    """Where the decode tasks embed, each batch of ``batch_size`` segments reaches the driver
    as one block: a task may hold only two blocks the driver has not taken, so batches cut
    into small blocks made it wait for the driver."""
    from lvmae.encoders.specs import describe_encoder
    from lvmae.video.inputs import list_videos
    from pipelines.extract import _data_context, build_dataset

    config = ExtractConfig(segment_s=1.0, batch_size=4)  # scene_video: 12 s, 12 segments
    todo = list_videos(str(scene_video), (".mp4",))
    encoder = describe_encoder(config.encoder, None, config.encoder_seed)
    with _data_context(config, encoder, 1, id_bytes=len(todo[0].video_id)):
        ds = build_dataset(todo, config)
    rows = [len(b["segment_index"]) for b in ds.iter_batches(batch_size=None)]
    assert rows == [4, 4, 4, 1], rows  # three batches, then the video's report row


@pytest.mark.slow
def test_real_encoder_without_any_gpu_is_refused_before_any_work(
    tmp_path, scene_video, tiny_checkpoint, ray_local, monkeypatch
):
    temp = tmp_path / "temp"  # the code's temporary files: this test's own
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    config = ExtractConfig(encoder="languagebind-video-ft", encoder_checkpoint=str(tiny_checkpoint))
    assert config.encoder_gpus() == 1.0  # GPUs by default for real encoders
    with pytest.raises(ExtractError, match="gpus_per_actor"):
        run_extraction(str(scene_video), str(tmp_path / "out"), config, progress=False)
    assert not (tmp_path / "out").exists()
    assert store_templates(temp) == set()  # the store prepared meanwhile is gone too


@pytest.mark.slow
def test_run_is_tracked_in_mlflow_with_config_summary_and_manifest(extracted):
    from mlflow.tracking import MlflowClient

    out, _, summary = extracted
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lvmae-extract")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["extract.segment_s"] == "5.0"
    assert run.data.params["encoder.name"] == "tiny"
    first = {  # each rerun into this output logs its own summary at the next step
        key: next(m.value for m in client.get_metric_history(run.info.run_id, key) if m.step == 0)
        for key in ("segments_written", "videos_failed")
    }
    assert first == {
        "segments_written": summary.segments_written,
        "videos_failed": summary.videos_failed,
    }
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert artifacts == ["manifest.json"]
    assert (out / "mlartifacts").is_dir()  # artifacts beside the outputs, not in the cwd
    # the run ended, and says where its code came from
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.git.commit"] and run.data.tags["mlflow.user"]


def test_warm_up_builds_the_encoder_where_decode_tasks_will_run(ray_local, tmp_path):
    """The workers started while the driver sets up: as many as will decode at once, the
    tiny encoder built in each, a failure returned (the decode tasks record it), never
    raised; none when fewer tasks than slots (a task would take a free slot in a new worker
    before the warm-ups end), nor where the encoder has its own actors."""
    from pipelines.extract import extract_reservations, warm_decode_workers

    config = ExtractConfig()
    decode = extract_reservations(config)["decode"]
    slots = int(ray_local.cluster_resources()["CPU"] // decode.cpus)
    assert slots >= 2
    refs = warm_decode_workers(config, decode, slots)
    assert len(refs) == slots and ray_local.get(refs) == [None] * slots
    assert len(ray_local.get(warm_decode_workers(config, decode, 50))) == slots
    assert warm_decode_workers(config, decode, slots - 1) == []
    assert warm_decode_workers(config, decode, 0) == []
    # memory a task reserves counts too: room for one task, so one warm-up for one task
    memory_mb = int(ray_local.cluster_resources()["memory"] / 2**20 * 0.6)
    one = dataclasses.replace(decode, memory_mb=memory_mb)
    assert ray_local.get(warm_decode_workers(config, one, 1)) == [None]

    own_actors = ExtractConfig(encoder="languagebind-video-ft", gpus_per_actor=0)
    assert warm_decode_workers(own_actors, decode, 5) == []

    missing = tmp_path / "no-such-checkpoint"
    broken = ExtractConfig(encoder_checkpoint=str(missing))
    errors = ray_local.get(warm_decode_workers(broken, decode, slots))
    assert len(errors) == slots and all("no-such-checkpoint" in e for e in errors)


def _arena_setting() -> str | None:
    return os.environ.get("MALLOC_ARENA_MAX")


def test_extraction_workers_run_with_bounded_malloc_arenas(ray_local):
    """Decode tasks, their warm-ups and encoder actors get ``MALLOC_ARENA_MAX`` in their
    runtime env (``extract.malloc_arenas``), so glibc cannot give every new decoding thread
    an arena of its own; ``null`` leaves the job's environment as it is."""
    from pipelines.extract import worker_options

    probe = ray_local.remote(_arena_setting)
    assert ray_local.get(probe.options(**worker_options(ExtractConfig())).remote()) == "2"
    four = worker_options(ExtractConfig(malloc_arenas=4))
    assert ray_local.get(probe.options(**four).remote()) == "4"
    assert worker_options(ExtractConfig(malloc_arenas=None)) == {}
    # the job's own workers: the environment Ray started with (glibc's default unless set)
    assert ray_local.get(probe.remote()) == os.environ.get("MALLOC_ARENA_MAX")


def test_the_writer_writes_the_first_rows_and_the_first_finished_video_at_once(tmp_path):
    """Files are written by rows and by time, but the first segment rows and the first
    finished video's row reach disk as they arrive: a run shows both tables early. After
    that, a video's row waits for ``flush_s`` (or for ``rows_per_file`` segment rows)."""
    from lvmae.video.inputs import VideoSource
    from pipelines.extract import OutputWriter, _video_row

    def video_row_for(video_id: str) -> dict:
        report = {"status": "ok", "num_clips": 4, "num_segments": 4}
        return _video_row(VideoSource(video_id, f"/videos/{video_id}"), report, "c0")

    now = [0.0]
    writer = OutputWriter(str(tmp_path), flush_s=30.0, rows_per_file=100, clock=lambda: now[0])

    def files(table: str) -> int:
        return len(list((tmp_path / table).glob("*.parquet")))

    segments = pa.table({"video_id": ["a.mp4"] * 4, "segment_index": list(range(4))})
    writer.add_segments(segments)
    assert writer.maybe_flush() and (files("segments"), files("videos")) == (1, 0)
    now[0] = 5.0
    writer.add_segments(segments)
    assert not writer.maybe_flush()  # within flush_s, no video finished
    writer.add_video(video_row_for("a.mp4"))
    assert writer.maybe_flush() and (files("segments"), files("videos")) == (2, 1)
    now[0] = 10.0
    writer.add_video(video_row_for("b.mp4"))
    assert not writer.maybe_flush()  # the second video waits for flush_s
    now[0] = 35.0
    assert writer.maybe_flush() and files("videos") == 2
    assert sorted(read_videos(str(tmp_path))["video_id"].to_pylist()) == ["a.mp4", "b.mp4"]
