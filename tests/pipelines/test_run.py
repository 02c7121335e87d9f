"""The main job (`lvmae run` / `lvmae demo`) end to end at test size: real sample videos made
by ffmpeg, real extraction, Ray Train pre-training, probes, a Ray Tune sweep, the report, and
a real MLflow SQLite store; stage skipping, failures that keep finished stages, bad input.

The chain runs once per module. Its sample videos and embeddings sit outside its workdir
(``run.input``, ``run.embeddings``), so a test that reruns it with other settings works on a
copy of the workdir (:func:`chain_copy`) whose stage records still match: no test changes
what another one reads."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lvmae.config import STAGE_NAMES as STAGES
from lvmae.config import ConfigError, RunConfig, load_run_config
from pipelines.cli import main
from pipelines.connect import ClusterError, check_reachable
from pipelines.run import RunResult, StageError, demo_config, run_main
from tests.pipelines.conftest import PROBLEM_LINE, copy_outputs

REPO = Path(__file__).resolve().parents[2]


def small_config(workdir: Path, **overrides):
    """The demo's chain at test size: 4 scene-order classes × 4 videos of 12–20 s, a tiny
    LV-MAE for 3 epochs on one worker, the paper's probe recipes for 30 (linear) and 10
    (attentive) epochs (milliseconds on these few videos, enough for the attentive probe to
    learn), a 2-trial sweep. The videos and their embeddings go next to the workdir, not
    into it (so a copy of the workdir still matches its stage records)."""
    space = workdir.parent / f"{workdir.name}-space.yaml"
    space.write_text("probe: {choice: [linear, attentive]}\nlr: 1.0e-3\nepochs: 2\n")
    base = demo_config(workdir)
    data = base.model_dump(mode="json")
    data["run"].update(
        input=str(workdir.parent / f"{workdir.name}-videos"),
        embeddings=str(workdir.parent / f"{workdir.name}-extract"),
    )
    data["samples"].update(videos_per_recipe=4, min_seconds=12, max_seconds=20)
    data["pretrain"].update(
        num_workers=1, epochs=3, warmup_epochs=1, batch_size=4, log_every_steps=1
    )
    data["probe"]["recipes"] = {"linear": {"epochs": 30}, "attentive": {"epochs": 10}}
    data["probe"]["seeds"] = 1
    data["tune"].update(num_samples=2, space=str(space), max_concurrent=1, seeds=1)
    for key, value in overrides.items():
        section, field = key.split(".")
        data[section][field] = value
    return load_run_config(None, {k: v for k, v in _flatten(data).items()})


def _flatten(data: dict) -> dict:
    return {f"{s}.{k}": v for s, fields in data.items() if fields for k, v in fields.items()}


def refit_probes(chain: Chain) -> dict[tuple[str, str], tuple[int, float, float]]:
    """The probe stage's rows fitted again in this process (no Ray): each recipe on the
    same features (the stage's cached encoder features, the raw segment embeddings for
    mean-pool), one thread as in the stage's tasks; the test top-1 counted by hand (a tie
    with the true class is wrong). Per (method, probe): (best epoch, val top-1, top-1)."""
    import torch

    from lvmae.probes.features import evaluate, load_features, load_tasks, raw_features, video_ids
    from pipelines.probe import feature_cache_dir

    config, records = chain.config, chain.result.records
    emb = config.run.embeddings_uri()
    cache = feature_cache_dir(
        records["probe"].outputs["dir"], Path(records["pretrain"].outputs["checkpoint"]), emb
    )
    labels = sorted(str(p) for p in (Path(config.run.workdir) / "labels").glob("*.csv"))
    (task,) = load_tasks(labels, video_ids(emb))
    y = task.labels.targets("test")
    fits = {("lvmae", kind): (load_features(cache), config.probe.config(kind))
            for kind in config.probe.probes}  # fmt: skip
    fits["mean-pool", "linear"] = (raw_features(emb), config.probe.config("linear"))
    threads = torch.get_num_threads()
    torch.set_num_threads(int(config.probe.cpus_per_task))
    try:
        out = {}
        for key, (features, recipe) in fits.items():
            fit = evaluate(task.labels, features, recipe, device="cpu")
            s = fit.test_scores
            right = [all(s[i, t] > s[i, j] for j in range(s.shape[1]) if j != t)
                     for i, t in enumerate(y)]  # fmt: skip
            out[key] = (fit.best_epoch, fit.val_metric, sum(right) / len(right))
        return out
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Chain:
    """The module's run of the chain, read-only: its config, result, progress lines and
    the warnings and errors it printed (:func:`console_problems`)."""

    config: RunConfig
    result: RunResult
    lines: list[str]
    problems: list[str]




class _Collect(logging.Handler):
    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.records: dict[int, logging.LogRecord] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records[id(record)] = record  # once, also when it reaches several loggers


@contextmanager
def console_problems() -> Iterator[list[str]]:
    """What the block prints that a console would show as a warning or an error: log
    records at WARNING or above (the root logger's, and those of Ray and MLflow, whose
    loggers do not propagate), Python warnings (deprecations too, where our code is the
    caller), and lines written straight to file
    descriptor 2 (Ray's C++ core worker) that look like one (:data:`PROBLEM_LINE`). The list
    is filled when the block ends."""
    found: list[str] = []
    handler = _Collect()
    loggers = [logging.getLogger(name) for name in ("", "ray", "mlflow")]
    for logger in loggers:
        logger.addHandler(handler)
    saved = os.dup(2)
    with tempfile.TemporaryFile() as err, warnings.catch_warnings(record=True) as caught:
        # the suite ignores DeprecationWarning (pyproject.toml); one raised where our code
        # calls a library shows on the console (Ray shows its own), so it counts here
        warnings.filterwarnings(
            "default", category=DeprecationWarning, module=r"(pipelines|lvmae|tune)(\.|$)"
        )
        os.dup2(err.fileno(), 2)
        try:
            yield found
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            for logger in loggers:
                logger.removeHandler(handler)
            err.seek(0)
            found += [f"{r.levelname} {r.name}: {r.getMessage()}" for r in handler.records.values()]
            found += [f"{w.category.__name__}: {w.message}" for w in caught]
            text = err.read().decode(errors="replace")
            found += [line for line in text.splitlines() if PROBLEM_LINE.search(line)]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, ray_local) -> Chain:
    workdir = tmp_path_factory.mktemp("run") / "demo"
    config = small_config(workdir)
    lines: list[str] = []
    with console_problems() as problems:
        result = run_main(config, echo=lines.append)
    return Chain(config, result, lines, problems)


def chain_copy(chain: Chain, workdir: Path, **changes) -> RunConfig:
    """The chain's workdir (records, checkpoints, results, MLflow store) copied to
    ``workdir``; returns :func:`config_at` ``workdir``."""
    copy_outputs(Path(chain.config.run.workdir), workdir)
    return config_at(chain, workdir, **changes)


def config_at(chain: Chain, workdir: Path, **changes) -> RunConfig:
    """The chain's config with run.workdir ``workdir`` and ``changes`` (SECTION.FIELD)."""
    data = chain.config.model_dump(mode="json")
    data["run"]["workdir"] = str(workdir)
    for key, value in changes.items():
        section, field = key.split(".")
        data[section][field] = value
    return load_run_config(None, _flatten(data))


def assert_no_run_left_running(workdir: Path) -> None:
    """Every run in the workdir's MLflow store has ended."""
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    assert runs and all(r.info.status != "RUNNING" for r in runs), [
        (r.data.tags.get("lvmae.stage"), r.info.run_name, r.info.status) for r in runs
    ]


def videos_per_class_in_test(config: RunConfig) -> Counter:
    """Test videos per class, counted in the sample library's labels file."""
    with (Path(config.run.input) / "labels.csv").open() as f:
        return Counter(r["label"] for r in csv.DictReader(f) if r["split"] == "test")


def _client(result):
    return MlflowClient(tracking_uri=result.tracking_uri)


@pytest.mark.slow
def test_the_chain_runs_every_stage_and_writes_the_report(chain):
    config, result = chain.config, chain.result
    workdir = Path(config.run.workdir)
    assert result.status == dict.fromkeys(STAGES, "ran")
    for stage in STAGES:
        assert (workdir / "stages" / f"{stage}.json").is_file()
    extract = result.records["extract"].outputs
    assert extract["videos_ok"] >= 16 and extract["segments"] > 0
    assert extract["videos_failed"] >= 4  # the broken sample files: recorded, run went on
    methods = {(r.method, r.probe) for r in result.results}
    assert {("lvmae", "linear"), ("lvmae", "attentive"), ("mean-pool", "linear")} <= methods
    assert any(m == "lvmae-tuned" for m, _ in methods)
    # Every row is scored on the library's test split, counted here from its labels file:
    # its size, and a top-1 that is a whole number of those videos (one seed). The split
    # is balanced, so the mean class accuracy equals the top-1.
    per_class = videos_per_class_in_test(config)
    n_test = sum(per_class.values())
    assert len(per_class) == 4 and len(set(per_class.values())) == 1
    for r in result.results:
        assert (r.test, r.seeds) == (n_test, 1), r
        assert r.top1 * n_test == pytest.approx(round(r.top1 * n_test)), r
        assert r.mean_class_accuracy == pytest.approx(r.top1), r
    # ... and the probe stage's rows are what its probes give when fitted again here, in
    # this process and without Ray, on the stage's features, scored by hand.
    rows = {(r.method, r.probe): r for r in result.results}
    for (method, kind), (best_epoch, val, top1) in refit_probes(chain).items():
        row = rows[(method, kind)]
        assert (row.best_epoch, row.val_top1, row.top1) == (best_epoch, val, top1), row
    md = Path(result.report["markdown"]).read_text()
    html = Path(result.report["html"]).read_text()
    assert "mean-pool" in md and "<table" in html
    figures = {Path(f).name for f in result.records["report"].outputs["figures"]}
    assert {"loss_curves.png", "probe_comparison.png"} <= figures
    assert any(name.startswith("confusion") for name in figures)
    # the matrix shown per task is one of the best LV-MAE rows', the sweep's included
    for task in {r.task for r in result.results}:
        mine = [r for r in result.results if r.task == task and r.method.startswith("lvmae")]
        top = max(r.top1 for r in mine)
        assert any(f"{task}: {r.method} ({r.probe})" in md for r in mine if r.top1 == top), md
    assert any("[pretrain] done" in line for line in chain.lines)


@pytest.mark.slow
def test_the_chain_prints_no_warning_or_error(chain):
    """A WARNING or ERROR line on the console means something is wrong (docs/design.md, "A
    quiet console"); the chain's sample library has broken files, but those are data (rows
    of the videos table), not console noise."""
    assert chain.problems == []


@pytest.mark.slow
def test_one_parent_run_with_a_nested_run_per_stage(chain):
    config, result = chain.config, chain.result
    client = _client(result)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    exp = parent.info.experiment_id
    assert client.get_experiment(exp).name == config.run.experiment
    runs = client.search_runs([exp], max_results=1000)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    stages = {r.data.tags["lvmae.stage"]: r for r in children}
    assert set(stages) == set(STAGES) and len(children) == len(STAGES)
    assert all(r.info.status == "FINISHED" for r in children)
    # each stage's own runs sit under its stage run, in the same experiment
    for stage, inner_stage in (("extract", "extract"), ("pretrain", "pretrain"),
                               ("probe", "probe"), ("tune", "tune")):  # fmt: skip
        below = [r for r in runs if r.data.tags.get("mlflow.parentRunId")
                 == stages[stage].info.run_id]  # fmt: skip
        assert any(r.data.tags.get("lvmae.stage") == inner_stage for r in below), stage
    pretrain = result.records["pretrain"].outputs
    losses = client.get_metric_history(pretrain["mlflow_run_id"], "train/loss")
    steps = int(pretrain["metrics"]["step"])  # log_every_steps = 1: one loss per step
    assert sorted(m.step for m in losses) == list(range(1, steps + 1))
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert {"report/report.md", "report/report.html"} <= artifacts


@pytest.mark.slow
def test_a_rerun_skips_every_finished_stage(chain, tmp_path):
    config = chain_copy(chain, tmp_path / "demo")
    once = run_main(config, echo=lambda _: None)
    again = run_main(config, echo=lambda _: None)
    assert once.status == again.status == dict.fromkeys(STAGES, "skipped")
    for stage in STAGES:
        assert again.records[stage].finished_at == chain.result.records[stage].finished_at
    assert again.parent_run_id == once.parent_run_id  # the same config: the same parent run
    assert_no_run_left_running(tmp_path / "demo")


@pytest.mark.slow
def test_changed_probe_settings_rerun_only_probe_and_report(chain, tmp_path):
    changed = chain_copy(
        chain, tmp_path / "demo", **{"probe.baselines": ["mean-pool", "transformer"]}
    )  # one more row per task
    result = run_main(changed, echo=lambda _: None)
    assert result.status == {
        "extract": "skipped", "pretrain": "skipped", "probe": "ran", "tune": "skipped",
        "report": "ran",
    }  # fmt: skip
    assert result.parent_run_id != chain.result.parent_run_id  # another config, another parent
    assert {r.method for r in result.results} >= {"transformer", "mean-pool", "lvmae"}
    for stage in ("extract", "pretrain", "tune"):
        assert result.records[stage] == chain.result.records[stage]
    assert_no_run_left_running(tmp_path / "demo")


@pytest.mark.slow
def test_a_failing_stage_keeps_the_finished_ones_and_marks_mlflow(chain, tmp_path):
    workdir = tmp_path / "demo"
    broken = chain_copy(  # more workers than videos
        chain, workdir, **{"pretrain.num_workers": 64, "pretrain.batch_size": 64}
    )
    with pytest.raises(StageError, match=r"stage pretrain failed: .*64 workers") as info:
        run_main(broken, echo=lambda _: None)
    assert "stages kept: extract;" in str(info.value)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")  # the copy's
    failed = client.search_runs(
        [client.get_experiment_by_name(broken.run.experiment).experiment_id],
        filter_string="attributes.status = 'FAILED'",
    )
    assert {r.data.tags.get("lvmae.stage") for r in failed} >= {"run", "pretrain"}
    assert_no_run_left_running(workdir)
    # the finished stages' records survived: the original config still skips everything
    again = run_main(config_at(chain, workdir), echo=lambda _: None)
    assert again.status == dict.fromkeys(STAGES, "skipped")


def test_stages_outside_the_configs_run_stages_are_refused(tmp_path):
    """--stages picks among the config's own stages, which the config was checked for (a
    probe stage on a config without labels would otherwise run and fit nothing)."""
    config = small_config(tmp_path / "fresh", **{"run.stages": ["extract", "pretrain"],
                                                  "run.labels": []})  # fmt: skip
    with pytest.raises(ConfigError, match=r"--stages probe: not among the config's run.stages"):
        run_main(config, stages=["extract", "pretrain", "probe"], echo=lambda _: None)
    assert not (tmp_path / "fresh").exists()


def test_embeddings_of_another_config_name_what_lvmae_run_can_change(tmp_path):
    """`lvmae run` has no --out or --overwrite: the message names run.embeddings."""
    config = small_config(tmp_path / "fresh")
    embeddings = Path(config.run.embeddings)
    embeddings.mkdir(parents=True)
    (embeddings / "manifest.json").write_text(json.dumps({"config_id": "another"}))
    with pytest.raises(Exception, match=r"another configuration") as info:
        run_main(config, echo=lambda _: None)
    assert "--set run.embeddings=PATH" in str(info.value)
    assert "--overwrite" not in str(info.value) and "--out" not in str(info.value)


def test_a_stage_alone_needs_its_upstream_outputs(tmp_path):
    config = small_config(tmp_path / "fresh")
    with pytest.raises(StageError, match="reads the outputs of stage extract, which has not run"):
        run_main(config, stages=["probe"], echo=lambda _: None)
    assert not (tmp_path / "fresh" / "stages").exists()


def test_the_parent_run_ends_when_ray_cannot_start(tmp_path, scene_video, monkeypatch):
    """Ray's start fails (or Ctrl-C comes while it starts) after the parent run was made:
    the run ends FAILED / KILLED, not RUNNING for ever."""
    import shutil

    import pipelines.run as run_module

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(scene_video, videos / "a.mp4")
    for error, status in ((ClusterError("refused"), "FAILED"), (KeyboardInterrupt(), "KILLED")):

        def cannot_start(address=None, error=error):
            raise error

        monkeypatch.setattr(run_module, "connect_ray", cannot_start)
        workdir = tmp_path / status
        config = load_run_config(None, {"run.workdir": str(workdir), "run.input": str(videos),
                                        "run.stages": ["extract"], "run.name": "t"})  # fmt: skip
        with pytest.raises(type(error)):
            run_main(config, echo=lambda _: None)
        client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert [r.info.status for r in runs] == [status]


def test_the_demo_command_loads_the_shipped_demo_config(tmp_path):
    shipped = load_run_config(REPO / "configs" / "demo.yaml")
    assert demo_config("work/demo") == shipped
    moved = demo_config(tmp_path / "d")
    assert (moved.run.workdir, moved.run.input) == (
        str(tmp_path / "d"),
        str(tmp_path / "d" / "videos"),
    )
    assert moved.model_copy(update={"run": shipped.run}) == shipped


@pytest.mark.parametrize("name", ["demo", "paper", "lvu", "coin", "breakfast"])
def test_shipped_run_configs_validate(name):
    config = load_run_config(REPO / "configs" / f"{name}.yaml")
    assert config.run.stages == list(STAGES)
    if name != "demo":
        assert config.extract.encoder == "languagebind-video-huge"
        assert config.pretrain.preset == "paper" and config.pretrain.use_gpu


def test_bad_configs_stop_with_a_message_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="run config file not found"):
        load_run_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {input: v}\npretrain: {epochs: -1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: pretrain.epochs: .*greater than"):
        load_run_config(bad)
    bad.write_text("run: {input: v, stages: [extract, probe]}\n")
    with pytest.raises(ConfigError, match=r"need run\.labels"):
        load_run_config(bad)
    bad.write_text("run: {input: v, workdir: 's3://b/w'}\n")
    with pytest.raises(ConfigError, match="shared-filesystem path"):
        load_run_config(bad)
    bad.write_text("run: {input: v, labels: [x.csv]}\nprobe: {recipes: {linear: {lr: -1}}}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: probe.recipes.linear.lr: .*greater than 0"):
        load_run_config(bad)


def test_a_bad_override_names_set_as_its_source(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("run: {input: v, stages: [extract]}\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(good, {"pretrain.epochs": -1, "extract.batch_size": 4})
    assert str(info.value).startswith("--set pretrain.epochs: pretrain.epochs: ")
    assert "good.yaml" not in str(info.value)
    with pytest.raises(ConfigError, match=r"--set probe.recipes.linear.lrr: .*Extra inputs"):
        load_run_config(good, {"probe.recipes.linear.lrr": 1})
    # the file's own mistakes still name the file
    good.write_text("run: {input: v, stages: [extract]}\nextract: {batch_size: 0}\n")
    with pytest.raises(ConfigError, match=r"good.yaml: extract.batch_size"):
        load_run_config(good, {"pretrain.epochs": 2})


def test_run_command_reports_config_errors_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(tmp_path / "nope.yaml")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err == f"error: run config file not found: {tmp_path / 'nope.yaml'}\n", err
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"run: {{input: {tmp_path / 'videos'}, workdir: {tmp_path / 'w'}, stages: [extract]}}\n"
    )
    # The `lvmae` entry point itself, in-process: one line on stderr, exit status 1.
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(bad), "--stages", "bogus"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown stage(s) ['bogus']") and "Traceback" not in err
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_unreachable_cluster_address_stops_before_any_work(tmp_path):
    """In a fresh process: in this one Ray is already up, and a job joins no other cluster
    then (so only a process without Ray shows the check)."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "w"
    cmd = [
        sys.executable, "-m", "pipelines.cli", "demo", "--workdir", str(workdir),
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    result = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, timeout=120, env=env, check=False
    )
    assert result.returncode == 1
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists()  # nothing generated, nothing written


def test_address_forms_are_checked():
    with pytest.raises(ClusterError, match="ray job submit"):
        check_reachable("http://127.0.0.1:8265")
    with pytest.raises(ClusterError, match="needs a host and a port"):
        check_reachable("somehost")
    check_reachable("auto")  # resolved by Ray itself


@pytest.mark.slow
def test_stage_records_are_json_with_fingerprint_and_digest(chain):
    config = chain.config
    record = json.loads((Path(config.run.workdir) / "stages" / "pretrain.json").read_text())
    assert {"fingerprint", "digest", "outputs", "finished_at"} <= set(record)
    assert Path(record["outputs"]["checkpoint"]).is_dir()


@pytest.mark.slow
def test_no_run_is_left_running_and_the_encoder_is_registered(chain, monkeypatch):
    import mlflow.pytorch
    import numpy as np
    import torch

    from lvmae.mae.sequences import sequences_from_table
    from lvmae.storage import read_segments
    from pipelines.job_inputs import EmbedVideos

    config, result = chain.config, chain.result
    client = _client(result)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    assert runs and all(r.info.status != "RUNNING" for r in runs), [
        (r.data.tags.get("lvmae.stage"), r.info.status) for r in runs
    ]
    # the encoder: registered from the stage's checkpoint, with its step
    pretrain = result.records["pretrain"].outputs
    version = client.get_model_version("lvmae-encoder", pretrain["model_uri"].rsplit("/", 1)[1])
    assert version.tags["step"] == str(int(pretrain["metrics"]["step"]))
    # ... and it reproduces `lvmae embed`'s [CLS] for a whole video (embed's own Ray Data
    # actor, called here on one video of at most max_tokens segments: one window)
    seqs = dict(sequences_from_table(read_segments(config.run.embeddings_uri())))
    video_id, seq = next((v, s) for v, s in seqs.items() if len(s) <= config.pretrain.max_tokens)
    batch = {"video_id": np.array([video_id]), "length": np.array([len(seq)]),
             "embedding": [seq.ravel()]}  # fmt: skip
    video = EmbedVideos(pretrain["checkpoint"], device="cpu")(batch).to_pylist()[0]
    assert (video["num_tokens"], video["num_windows"]) == (len(seq), 1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", result.tracking_uri)  # resolve models:/ there
    model = mlflow.pytorch.load_model(pretrain["model_uri"], map_location="cpu")
    x = torch.from_numpy(np.array(seq[None]))  # a writable copy
    cls = model(x, torch.ones(x.shape[:2], dtype=torch.bool)).numpy()[0]
    np.testing.assert_allclose(cls, np.asarray(video["cls"], np.float32), atol=1e-5)
    # the stages that read the embeddings record them as their input (digest = config_id)
    stage_runs = {r.data.tags.get("lvmae.stage"): r for r in runs
                  if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id}  # fmt: skip
    inputs = stage_runs["pretrain"].inputs.dataset_inputs
    assert [i.dataset.digest for i in inputs] == [config.extract.config_id()]
    assert "extract" not in {s for s, r in stage_runs.items() if r.inputs.dataset_inputs}


def test_the_parent_runs_new_store_is_made_from_the_template_not_migrated(tmp_path, monkeypatch):
    """A new workdir's store is a copy of the machine's migrated empty store
    (:func:`lvmae.tracking.prepare_local_store`): MLflow does not run its schema migrations
    for it (seconds of CPU before Ray starts, and two INFO lines on the console)."""
    from lvmae import tracking
    from pipelines.tracking import RunTracker

    monkeypatch.setenv("LVMAE_CACHE_DIR", str(tmp_path / "cache"))
    tracking._empty_store.cache_clear()
    try:
        assert tracking._empty_store() is not None  # made here, once: migrations logged then
        handler = _Collect(logging.INFO)
        db_logger = logging.getLogger("mlflow.store.db.utils")
        level = db_logger.level
        db_logger.addHandler(handler)
        db_logger.setLevel(logging.INFO)
        try:
            workdir = tmp_path / "demo"
            workdir.mkdir()
            uri = f"sqlite:///{workdir / 'mlflow.db'}"
            tracker = RunTracker(demo_config(workdir), uri, str(workdir))
        finally:
            db_logger.removeHandler(handler)
            db_logger.setLevel(level)
        assert [r.getMessage() for r in handler.records.values()] == []
        assert tracker.client.get_run(tracker.parent).info.status == "RUNNING"
        tracker.client.set_terminated(tracker.parent)
    finally:
        tracking._empty_store.cache_clear()
