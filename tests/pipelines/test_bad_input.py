"""Every ``lvmae`` command against every bad input that applies (issue 28): a missing path,
an empty directory, non-video files, an unreadable file, a non-writable output, an empty /
non-mapping / unknown config section, an unknown key, a wrong type, an out-of-range value,
names with quotes, spaces and non-ASCII, a held output directory and a full disk.

Each case runs the real command in this process (:func:`pipelines.cli.main`, what the
``lvmae`` program runs) and checks its exit code (1 for a user error, 2 for click's usage
errors), that stderr holds exactly one ``error:`` line (click's ``Error:`` for usage) naming
the flag, key or file to fix, no traceback, and, for the cases stopped before any work,
that nothing was written anywhere under the case's directory and that Ray did not start.
Names that are legal must work: those cases check the command's output instead.

The held output directory is held by another process (an OS file lock dies with its
process, so the holder must be alive). A full disk is a tmpfs of a few KiB filled up, where
this machine lets the test mount one, else a file-size limit (``RLIMIT_FSIZE``, with
``SIGXFSZ`` ignored so writes fail with ``EFBIG``)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lvmae.storage import LOCK_FILE, segment_schema, write_table_atomic
from pipelines.cli import main
from tests.pipelines.disks import full_disk

REPO = Path(__file__).resolve().parents[2]
ROOT_USER = os.geteuid() == 0  # root reads and writes whatever the modes say


# ------------------------------------------------------------------------------ fixtures


@dataclass
class World:
    """The inputs of the cases, made once (no Ray): a good video, a tiny LV-MAE checkpoint,
    a small extraction output written as ``lvmae extract`` writes it, a labels file, a
    file where a directory is expected, and a directory another process holds."""

    root: Path
    video_dir: Path
    checkpoint: Path
    embeddings: Path
    labels: Path
    a_file: Path
    held: Path
    paths: dict[str, Path] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(tmp_path_factory, scene_video):
    from lvmae.mae.checkpoints import save_checkpoint
    from lvmae.mae.model import LVMAE, model_config
    from lvmae.storage import VIDEO_SCHEMA, write_manifest

    root = tmp_path_factory.mktemp("world")
    video_dir = root / "videos"
    video_dir.mkdir()
    (video_dir / "scenes.mp4").write_bytes(Path(scene_video).read_bytes())
    mcfg = model_config("tiny", input_dim=64, max_tokens=16)
    checkpoint = save_checkpoint(
        root / "ckpt", model_state=LVMAE(mcfg).state_dict(), model_config=mcfg.to_dict()
    )
    embeddings = root / "extract"
    rows = [
        {"video_id": f"v{v}.mp4", "segment_index": i, "start_s": 5.0 * i, "end_s": 5.0 * i + 5,
         "frame_indices": [0], "frame_times_s": [0.0], "embedding": [0.125] * 64,
         "encoder": "tiny", "config_id": "c"}
        for v in range(4) for i in range(3)
    ]  # fmt: skip
    import pyarrow as pa

    write_table_atomic(pa.Table.from_pylist(rows, segment_schema(64)), str(embeddings), "segments")
    videos = [{"video_id": f"v{v}.mp4", "status": "ok", "config_id": "c"} for v in range(4)]
    write_table_atomic(pa.Table.from_pylist(videos, VIDEO_SCHEMA), str(embeddings), "videos")
    write_manifest(str(embeddings), {"config_id": "c", "encoder": {"name": "tiny"}})
    labels = root / "labels.csv"
    labels.write_text("video_id,label\n" + "".join(f"v{v}.mp4,{v % 2}\n" for v in range(4)))
    a_file = root / "a_file.txt"
    a_file.write_text("not a directory")
    held = root / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from lvmae.storage import hold_output
            with hold_output({str(held)!r}):
                print("held", flush=True)
                time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    try:
        yield World(root, video_dir, checkpoint, embeddings, labels, a_file, held)
    finally:
        holder.kill()
        holder.wait(timeout=30)


# --------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One command × one bad input: ``args`` with ``{placeholders}`` (see :func:`_fill`),
    config text written to ``{cfg}``, the expected exit code and the words the message must
    hold. ``prework``: stopped before any work (nothing written, no Ray). ``disk``: run
    with ``{full}`` on a full disk. ``ok``: a legal name that must work (exit 0)."""

    id: str
    args: tuple[str, ...]
    code: int = 1
    words: tuple[str, ...] = ()
    config: str | None = None
    prework: bool = True
    disk: bool = False
    not_root: bool = False


def C(id, *args, code=1, words=(), config=None, **kw) -> Case:  # noqa: N802
    return Case(id, args, code, tuple(words), config, **kw)


CKPT = ("--checkpoint", "{ckpt}")
EMB = ("--embeddings", "{emb}")
LAB = ("--labels", "{labels}")
REPORT_ONLY = "run:\n  input: {videos}\n  workdir: {out}\n  stages: [report]\n"


def _config_cases(cmd: str, section: str, base: tuple[str, ...]) -> list[Case]:
    """The config cases of a command that reads section ``section`` (``--config``)."""
    cfg = (*base, "--config", "{cfg}")
    return [
        C(f"{cmd}-config-missing", *base, "--config", "{root}/nope.yaml", words=["nope.yaml"]),
        C(f"{cmd}-config-unreadable", *cfg, words=["cfg.yaml", "cannot read"], config="a: 1\n",
          not_root=True),
        C(f"{cmd}-config-binary", *cfg, words=["cfg.yaml"], config="\udcff\udcfe"),
        C(f"{cmd}-config-not-yaml", *cfg, words=["cfg.yaml", "invalid YAML"], config="a: [\n"),
        C(f"{cmd}-config-not-mapping", *cfg, words=["cfg.yaml", "mapping"], config="- 1\n"),
        C(f"{cmd}-section-empty", *cfg, words=[section, "empty"], config=f"{section}:\n"),
        C(f"{cmd}-section-not-mapping", *cfg, words=[section, "mapping"],
          config=f"{section}: 5\n"),
        C(f"{cmd}-unknown-key", *cfg, words=["bogus_key"],
          config=f"{section}:\n  bogus_key: 1\n"),
        C(f"{cmd}-set-other-section", *base, "--set", "nosuch.x=1",
          words=["--set nosuch.x", section]),
        C(f"{cmd}-set-unknown-key", *base, "--set", f"{section}.bogus_key=1",
          words=[f"--set {section}.bogus_key"]),
        C(f"{cmd}-set-malformed", *base, "--set", "novalue", words=["--set 'novalue'"]),
    ]  # fmt: skip


def _output_cases(cmd: str, base: tuple[str, ...], out_flag: str = "--out") -> list[Case]:
    """A non-writable output (under a file; a read-only directory) and a held one."""
    return [
        C(f"{cmd}-out-under-a-file", *base, out_flag, "{file}/sub", words=[out_flag, "a_file"]),
        C(f"{cmd}-out-is-a-file", *base, out_flag, "{file}", words=[out_flag, "a_file"]),
        C(f"{cmd}-out-read-only", *base, out_flag, "{ro}/sub", words=[out_flag, "permission"],
          not_root=True),
        C(f"{cmd}-out-held", *base, out_flag, "{held}", words=[out_flag, "in use", "pid"]),
    ]


def _checkpoint_cases(cmd: str, rest: tuple[str, ...]) -> list[Case]:
    """A missing / empty checkpoint; missing, empty or foreign embeddings."""
    return [
        C(f"{cmd}-checkpoint-missing", cmd, "--checkpoint", "{root}/nope", *EMB, *rest,
          words=["nope", "checkpoint"]),
        C(f"{cmd}-checkpoint-empty-dir", cmd, "--checkpoint", "{empty}", *EMB, *rest,
          words=["empty", "checkpoint"]),
        C(f"{cmd}-embeddings-missing", cmd, *CKPT, "--embeddings", "{root}/nope", *rest,
          words=["nope", "segment"]),
        C(f"{cmd}-embeddings-empty-dir", cmd, *CKPT, "--embeddings", "{empty}", *rest,
          words=["empty"]),
        C(f"{cmd}-embeddings-not-parquet", cmd, *CKPT, "--embeddings", "{junk}", *rest,
          words=["junk", "Parquet"]),
    ]  # fmt: skip


EXTRACT = ("extract", "{videos}", "--out", "{out}")
PRETRAIN = ("pretrain", *EMB, "--out", "{out}")
PROBE = ("probe", *CKPT, *EMB, *LAB, "--out", "{out}")
TUNE = ("tune", *CKPT, *EMB, *LAB, "--out", "{out}")

CASES: list[Case] = [
    # ------------------------------------------------------------------------ extract
    C("extract-input-missing", "extract", "{root}/nope", "--out", "{out}",
      words=["nope", "does not exist"]),
    C("extract-input-empty-dir", "extract", "{empty}", "--out", "{out}",
      words=["no video files", "empty"]),
    C("extract-input-not-videos", "extract", "{notvideos}", "--out", "{out}",
      words=["no video files", "notvideos"]),
    C("extract-input-list-missing", "extract", "{root}/list.txt", "--out", "{out}",
      words=["list.txt"]),
    *_output_cases("extract", ("extract", "{videos}")),
    *_config_cases("extract", "extract", EXTRACT),
    C("extract-wrong-type", *EXTRACT, "--set", "extract.batch_size=many",
      words=["extract.batch_size"]),
    C("extract-out-of-range", *EXTRACT, "--set", "extract.segment_s=-1",
      words=["extract.segment_s"]),
    C("extract-option-wrong-type", *EXTRACT, "--batch-size", "x", code=2, words=["--batch-size"]),
    C("extract-unknown-encoder", *EXTRACT, "--encoder", "clip", code=2, words=["--encoder"]),
    C("extract-other-config-in-out", "extract", "{videos}", "--out", "{emb}",
      words=["another configuration", "--overwrite"]),
    C("extract-full-disk", "extract", "{videos}", "--out", "{full}/out",
      words=["no space left"], disk=True),
    # ----------------------------------------------------------------------- pretrain
    C("pretrain-embeddings-missing", "pretrain", "--embeddings", "{root}/nope", "--out", "{out}",
      words=["nope", "segment"]),
    C("pretrain-embeddings-empty-dir", "pretrain", "--embeddings", "{empty}", "--out", "{out}",
      words=["empty"]),
    C("pretrain-embeddings-not-parquet", "pretrain", "--embeddings", "{junk}", "--out", "{out}",
      words=["junk", "Parquet"]),
    *_output_cases("pretrain", ("pretrain", *EMB)),
    *_config_cases("pretrain", "pretrain", PRETRAIN),
    C("pretrain-wrong-type", *PRETRAIN, "--set", "pretrain.epochs=[1]",
      words=["pretrain.epochs"]),
    C("pretrain-out-of-range", *PRETRAIN, "--set", "pretrain.mask_ratio=1.5",
      words=["pretrain.mask_ratio"]),
    C("pretrain-option-wrong-type", *PRETRAIN, "--epochs", "x", code=2, words=["--epochs"]),
    C("pretrain-full-disk", "pretrain", *EMB, "--out", "{full}/out", words=["no space left"],
      disk=True),
    # -------------------------------------------------------------------- probe, tune
    *_checkpoint_cases("probe", (*LAB, "--out", "{out}")),
    C("probe-labels-missing", "probe", *CKPT, *EMB, "--labels", "{root}/nope.csv", "--out", "{out}",
      words=["nope.csv"]),
    C("probe-labels-a-directory", "probe", *CKPT, *EMB, "--labels", "{empty}", "--out", "{out}",
      words=["empty"]),
    C("probe-labels-unreadable", "probe", *CKPT, *EMB, "--labels", "{unreadable}", "--out", "{out}",
      words=["unreadable"], not_root=True),
    C("probe-labels-not-labels", "probe", *CKPT, *EMB, "--labels", "{file}", "--out", "{out}",
      words=["a_file"]),
    *_output_cases("probe", ("probe", *CKPT, *EMB, *LAB)),
    *_config_cases("probe", "probe", PROBE),
    C("probe-wrong-type", *PROBE, "--set", "probe.seeds=many", words=["probe.seeds"]),
    C("probe-out-of-range", *PROBE, "--set", "probe.seeds=0", words=["probe.seeds"]),
    C("probe-unknown-kind", *PROBE, "--probe", "svm", code=2, words=["--probe"]),
    C("probe-unknown-device", *PROBE, "--device", "gpu", words=["probe.device", "gpu"]),
    C("tune-unknown-device", *TUNE, "--set", "tune.device=gpu", words=["tune.device", "gpu"]),
    *_checkpoint_cases("tune", (*LAB, "--out", "{out}")),
    C("tune-labels-missing", "tune", *CKPT, *EMB, "--labels", "{root}/nope.csv", "--out", "{out}",
      words=["nope.csv"]),
    C("tune-space-missing", *TUNE, "--space", "{root}/space.yaml", words=["space.yaml"]),
    *_output_cases("tune", ("tune", *CKPT, *EMB, *LAB)),
    *_config_cases("tune", "tune", TUNE),
    C("tune-out-of-range", *TUNE, "--num-samples", "0", code=2, words=["--num-samples"]),
    # ------------------------------------------------------------------ embed, monitor
    *_checkpoint_cases("embed", ("--out", "{out}")),
    *_output_cases("embed", ("embed", *CKPT, *EMB)),
    C("embed-out-of-range", "embed", *CKPT, *EMB, "--out", "{out}", "--batch-size", "0", code=2,
      words=["--batch-size"]),
    *_checkpoint_cases("monitor", ("--out", "{out}")),
    *_output_cases("monitor", ("monitor", *CKPT, *EMB)),
    C("monitor-captions-missing", "monitor", *CKPT, *EMB, "--captions", "{root}/caps.txt",
      "--out", "{out}", words=["caps.txt"]),
    C("monitor-captions-empty", "monitor", *CKPT, *EMB, "--captions", "{emptyfile}",
      "--out", "{out}", words=["empty.txt", "no captions"]),
    # ------------------------------------------------------------------------- labels
    C("labels-source-missing", "labels", "coin", "{root}/nope.json", "--out", "{out}/l.csv",
      code=2, words=["nope.json"]),
    C("labels-embeddings-missing", "labels", "coin", "{file}", "--out", "{out}/l.csv",
      "--embeddings", "{root}/nope", words=["--embeddings", "nope"]),
    C("labels-embeddings-empty-dir", "labels", "coin", "{file}", "--out", "{out}/l.csv",
      "--embeddings", "{empty}", words=["--embeddings", "empty"]),
    C("labels-out-under-a-file", "labels", "coin", "{file}", "--out", "{file}/sub/l.csv",
      words=["--out", "a_file"]),
    C("labels-lvu-without-task", "labels", "lvu", "{file}", "--out", "{out}/l.csv", code=2,
      words=["--task"]),
    C("labels-not-annotations", "labels", "coin", "{file}", "--out", "{out}/l.csv",
      words=["a_file"]),
    C("labels-out-of-range", "labels", "coin", "{file}", "--out", "{out}/l.csv",
      "--val-fraction", "2", code=2, words=["--val-fraction"]),
    # --------------------------------------------------------------- search, serve, ui
    C("search-embeddings-missing", "search", "a dog", "--embeddings", "{root}/nope",
      words=["nope"]),
    C("search-embeddings-empty-dir", "search", "a dog", "--embeddings", "{empty}",
      words=["empty"]),
    C("search-example-malformed", "search", "--embeddings", "{emb}", "--example", "v0.mp4",
      code=2, words=["--example"]),
    C("search-out-of-range", "search", "a dog", "--embeddings", "{emb}", "--top-k", "0",
      code=2, words=["--top-k"]),
    C("serve-embeddings-missing", "serve", "{root}/nope", words=["nope"]),
    C("ui-no-store", "ui", "{empty}", words=["mlflow.db"]),
    # -------------------------------------------------------------------- make-samples
    C("make-samples-out-under-a-file", "make-samples", "{file}/sub", words=["OUT_DIR", "a_file"]),
    C("make-samples-out-of-range", "make-samples", "{out}", "--min-seconds", "9",
      "--max-seconds", "5", code=2, words=["--min-seconds"]),
    C("make-samples-full-disk", "make-samples", "{full}/lib", "--videos-per-recipe", "1",
      "--min-seconds", "2", "--max-seconds", "2", "--recipes", "testcard",
      words=["no space left"], disk=True),
    # ---------------------------------------------------------------------------- run
    C("run-config-missing", "run", "--config", "{root}/nope.yaml", words=["nope.yaml"]),
    C("run-config-not-mapping", "run", "--config", "{cfg}", words=["cfg.yaml", "mapping"],
      config="[1, 2]\n"),
    C("run-section-empty", "run", "--config", "{cfg}", words=["'extract'", "empty"],
      config=REPORT_ONLY + "extract:\n"),
    C("run-section-not-mapping", "run", "--config", "{cfg}", words=["'pretrain'", "mapping"],
      config=REPORT_ONLY + "pretrain: 5\n"),
    C("run-section-unknown", "run", "--config", "{cfg}", words=["extrac", "extract"],
      config=REPORT_ONLY + "extrac:\n  segment_s: 2\n"),
    C("run-unknown-key", "run", "--config", "{cfg}", words=["run.wrokdir", "workdir"],
      config=REPORT_ONLY + "  wrokdir: x\n"),
    C("run-wrong-type", "run", "--config", "{cfg}", words=["pretrain.epochs"],
      config=REPORT_ONLY + "pretrain:\n  epochs: many\n"),
    C("run-out-of-range", "run", "--config", "{cfg}", "--set", "pretrain.epochs=0",
      words=["--set pretrain.epochs"], config=REPORT_ONLY),
    C("run-unknown-stage", "run", "--config", "{cfg}", "--stages", "extract,polish",
      words=["polish"], config=REPORT_ONLY),
    C("run-input-missing", "run", "--config", "{cfg}", words=["nope", "does not exist"],
      config="run:\n  input: {root}/nope\n  workdir: {out}\n  stages: [extract]\n"),
    C("run-input-not-videos", "run", "--config", "{cfg}", words=["notvideos"],
      config="run:\n  input: {notvideos}\n  workdir: {out}\n  stages: [extract]\n"),
    C("run-labels-missing", "run", "--config", "{cfg}", words=["nope.csv"],
      config="run:\n  input: {videos}\n  workdir: {out}\n"
             "  labels: [{root}/nope.csv]\n  stages: [extract, pretrain, probe]\n"),
    C("run-upstream-missing", "run", "--config", "{cfg}", words=["stage extract", "run.stages"],
      config="run:\n  input: {videos}\n  workdir: {out}\n  embeddings: {emb}\n"
             "  stages: [pretrain]\n"),
    C("run-embeddings-under-a-file", "run", "--config", "{cfg}",
      words=["run.embeddings", "a_file"],
      config="run:\n  input: {videos}\n  workdir: {out}\n  embeddings: {file}/e\n"
             "  stages: [extract]\n"),
    C("run-workdir-under-a-file", "run", "--config", "{cfg}", words=["run.workdir", "a_file"],
      config="run:\n  input: {videos}\n  workdir: {file}/w\n  stages: [report]\n"),
    C("run-workdir-held", "run", "--config", "{cfg}", words=["run.workdir", "in use"],
      config="run:\n  input: {videos}\n  workdir: {held}\n  stages: [report]\n"),
    C("run-tracking-uri-bad", "run", "--config", "{cfg}", words=["run.tracking_uri", "bogus"],
      config=REPORT_ONLY + "  tracking_uri: bogus://nowhere\n", prework=False),
    C("run-full-disk", "run", "--config", "{cfg}", words=["no space left"], disk=True,
      config="run:\n  input: {videos}\n  workdir: {full}/w\n  stages: [report]\n"),
    C("run-print-config-bad-set", "run", "--config", "{cfg}", "--print-config", "--set",
      "run.stages=polish", words=["--set run.stages"], config=REPORT_ONLY),
    # ------------------------------------------------------------------ the CLI itself
    C("unknown-command", "polish", code=2, words=["polish"]),
    C("missing-required-option", "pretrain", "--out", "{out}", code=2, words=["--embeddings"]),
]  # fmt: skip


def _fill(text: str, world: World, case_dir: Path) -> str:
    """``text`` with the case's paths: ``{out}`` (not yet made), ``{cfg}``, ``{full}``
    (a directory on a full disk), and the world's inputs."""
    p = world.paths
    return text.format(
        root=world.root, videos=world.video_dir, ckpt=world.checkpoint, emb=world.embeddings,
        labels=world.labels, file=world.a_file, held=world.held, out=case_dir / "out",
        cfg=case_dir / "cfg.yaml", full=case_dir / "full", empty=p["empty"],
        notvideos=p["notvideos"], junk=p["junk"], ro=p["ro"], unreadable=p["unreadable"],
        emptyfile=p["emptyfile"],
    )  # fmt: skip


@pytest.fixture(scope="module")
def inputs(world):
    """The remaining bad inputs: an empty directory, a directory of non-video files,
    an extraction output holding a non-Parquet file, a read-only directory, an unreadable
    file, an empty file and a tiny Breakfast annotation folder."""
    p = world.paths
    for name in ("empty", "notvideos", "ro"):
        p[name] = world.root / name
        p[name].mkdir()
    (p["notvideos"] / "notes.txt").write_text("not a video")
    (p["notvideos"] / "clip.mp4.txt").write_text("not a video either")
    p["junk"] = world.root / "junk"
    (p["junk"] / "segments").mkdir(parents=True)
    (p["junk"] / "segments" / "part-0.parquet").write_text("this is not Parquet")
    p["ro"].chmod(0o555)
    p["unreadable"] = world.root / "unreadable.csv"
    p["unreadable"].write_text("video_id,label\nv0.mp4,0\n")
    p["unreadable"].chmod(0)
    p["emptyfile"] = world.root / "empty.txt"
    p["emptyfile"].write_text("")
    yield world
    p["ro"].chmod(0o755)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (hidden ones included) → (size, mtime ns); a held
    directory's lock file is left out (trying it touches it, its content stays empty)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in [".", *files]:
            if name == LOCK_FILE:
                continue
            path = Path(dirpath, name)
            with contextlib.suppress(OSError):
                st = path.stat()
                out[str(path)] = (st.st_size if name != "." else 0, st.st_mtime_ns)
    return out


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    """``lvmae ARGS`` in this process: (exit code, stdout, stderr). Log handlers that an
    earlier command bound to an earlier test's (now closed) captured stderr write to this
    one's."""
    for logger in [logging.root, *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and getattr(stream, "closed", False):
                handler.stream = sys.stderr
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _check_message(case: Case, code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code == case.code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if case.code == 2:  # click's usage error: "Usage: ...", "Try ...", "Error: ..."
        errors = [ln for ln in lines if ln.startswith("Error:")]
        assert len(errors) == 1, err
        assert lines[0].startswith("Usage:"), err
    else:
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1, err
    for word in case.words:
        assert word in errors[0], (word, err)
    if os.environ.get("LVMAE_SHOW_CASES"):
        with Path(os.environ["LVMAE_SHOW_CASES"]).open("a") as f:
            print(f"{case.id}: {errors[0]}", file=f)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_stops_before_any_work(case, inputs, tmp_path, capsys):
    import ray

    if case.not_root and ROOT_USER:
        pytest.skip("root reads and writes whatever the file modes say")
    world = inputs
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    if case.config is not None:
        text = _fill(case.config, world, case_dir)
        cfg = case_dir / "cfg.yaml"
        if "\udcff" in text:
            cfg.write_bytes(b"\xff\xfe\x00garbage")
        else:
            cfg.write_text(text)
        if case.not_root:
            cfg.chmod(0)
    args = [_fill(a, world, case_dir) for a in case.args]
    ray_before = ray.is_initialized()
    before = _snapshot(world.root), _snapshot(case_dir)
    if case.disk:
        with full_disk(case_dir / "full"):
            code, _, err = _run(args, capsys)
    else:
        code, _, err = _run(args, capsys)
    _check_message(case, code, err)
    if case.prework and not case.disk:
        assert (_snapshot(world.root), _snapshot(case_dir)) == before, "something was written"
        assert not (case_dir / "out").exists()
        assert ray.is_initialized() == ray_before, "Ray started"


# ------------------------------------------------------------- names that must work


NAMES = ["it's", 'say "hi"', "both ' and \"", "with  spaces", "naïve vidéo 日本"]


def test_run_names_with_quotes_spaces_and_non_ascii_work(inputs, tmp_path, capsys, mlflow_store):
    """``run.name`` reaches MLflow's search filter (the parent run is found again by its
    name): each legal name works, and running it again finds its parent run instead of
    opening another."""
    import yaml
    from mlflow.tracking import MlflowClient

    from tests.pipelines.conftest import seed_store

    workdir = seed_store(mlflow_store, tmp_path / "w é 'q'")
    cfg = tmp_path / "cfg.yaml"
    for name in [*NAMES, NAMES[0], NAMES[2]]:
        cfg.write_text(yaml.safe_dump({"run": {
            "name": name, "input": str(inputs.video_dir), "workdir": str(workdir),
            "stages": ["report"],
        }}))  # fmt: skip
        code, out, err = _run(["run", "--config", str(cfg)], capsys)
        assert code == 0, err
        assert "error:" not in err and "[report]" in out, err
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lvmae").experiment_id])
    parents = [r.data.tags["lvmae.run_name"] for r in runs if r.data.tags["lvmae.stage"] == "run"]
    assert sorted(n.rsplit("-", 1)[0] for n in parents) == sorted(NAMES)  # one each
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.slow
def test_extract_into_a_directory_named_with_quotes_spaces_and_non_ascii(
    inputs, tmp_path, capsys, ray_local, mlflow_store
):
    """The extraction's MLflow run is named after its output directory, and video ids
    after the files: a path with quotes, spaces and non-ASCII extracts."""
    from mlflow.tracking import MlflowClient

    from lvmae.storage import read_videos
    from tests.pipelines.conftest import seed_store

    src = tmp_path / "vidéos d'été"
    src.mkdir()
    (src / "l'été 2.mp4").write_bytes((inputs.video_dir / "scenes.mp4").read_bytes())
    out = seed_store(mlflow_store, tmp_path / 'out "q" \'s\' é')
    code, _, err = _run(["extract", str(src), "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert "error:" not in err and "Traceback" not in err, err
    (row,) = read_videos(str(out)).to_pylist()
    assert (row["video_id"], row["status"]) == ("l'été 2.mp4", "ok")
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("lvmae-extract").experiment_id])
    assert run.data.tags["lvmae.run_name"].startswith(str(out))


def test_debug_flag_and_environment_add_the_traceback(inputs, tmp_path, capsys, monkeypatch):
    args = ["extract", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    code, _, err = _run(args, capsys)
    assert code == 1 and "Traceback" not in err
    code, _, err = _run(["--debug", *args], capsys)
    assert code == 1 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error:")
    code, _, err = _run([*args, "--debug"], capsys)  # after the subcommand too
    assert code == 1 and "Traceback" in err
    monkeypatch.setenv("LVMAE_DEBUG", "1")
    code, _, err = _run(args, capsys)
    assert code == 1 and "Traceback" in err


def test_the_case_table_covers_every_command():
    from pipelines.cli import cli

    commands = {c.args[0] for c in CASES if c.args}
    assert set(cli.commands) - {"demo"} <= commands, set(cli.commands) - commands
