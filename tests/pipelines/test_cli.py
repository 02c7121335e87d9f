"""The `lvmae` command's conveniences: --version, -v anywhere, --print-config, "did you
mean" for misspelt fields, and `lvmae ui` serving a real MLflow store over loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from lvmae import __version__
from lvmae.config import ConfigError, load_run_config
from pipelines.cli import _verbose_first, cli, main

REPO = Path(__file__).resolve().parents[2]


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"lvmae, version {__version__}"


PROBE = """
import atexit, gc, sys
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))
sys.argv = ["lvmae", *sys.argv[1:]]
from pipelines.cli import entry
entry()
"""


@pytest.mark.parametrize("args", [["--version"], ["extract", "no-such-dir", "--out", "o"]])
def test_the_program_freezes_the_collector_before_exit_whatever_the_outcome(tmp_path, args):
    """The program skips Python's last collections at exit (see ``entry``); the installed
    ``lvmae`` command is that program, and Ray's and MLflow's exit handlers still run."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="lvmae")
    assert script.value == "pipelines.cli:entry"
    res = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == (0 if args == ["--version"] else 1), res.stderr
    assert "frozen at exit: True" in res.stdout


def test_verbose_is_accepted_after_the_subcommand():
    assert _verbose_first(["run", "--config", "c.yaml", "-v"]) == [
        "-v",
        "run",
        "--config",
        "c.yaml",
    ]
    assert _verbose_first(["-v", "demo", "--verbose"]) == ["-v", "demo"]
    assert _verbose_first(["run", "--", "-v"]) == ["run", "--", "-v"]  # after --: an argument


def test_print_config_round_trips(tmp_path, capsys):
    main(["run", "--config", str(REPO / "configs" / "demo.yaml"), "--print-config",
          "--set", "pretrain.epochs=7", "-v"])  # fmt: skip
    printed = capsys.readouterr().out
    path = tmp_path / "resolved.yaml"
    path.write_text(printed)
    resolved = load_run_config(path)
    assert resolved == load_run_config(REPO / "configs" / "demo.yaml", {"pretrain.epochs": 7})
    assert yaml.safe_load(printed)["pretrain"]["epochs"] == 7
    assert not (tmp_path / "work").exists()  # nothing ran


def test_a_misspelt_field_gets_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"pretrain.epocs: .*did you mean 'epochs'\?"):
        load_run_config(REPO / "configs" / "demo.yaml", {"pretrain.epocs": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {input: v, stages: [extract]}\nextract: {segmnet_s: 2}\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml: extract.segmnet_s: .*did you mean 'segment_s'"
    ):
        load_run_config(bad)
    with pytest.raises(ConfigError, match=r"probe.recipes.linear.lrr: .*did you mean 'lr'"):
        load_run_config(REPO / "configs" / "demo.yaml", {"probe.recipes.linear.lrr": 1})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_ui_serves_the_store_over_loopback(tmp_path):
    store = tmp_path / "w"
    store.mkdir()
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.create_experiment("ui-test", artifact_location=(store / "a").as_uri())
    run = client.create_run(experiment, run_name="served")
    client.log_metric(run.info.run_id, "top1", 0.75)
    port = _free_port()
    # Without MLflow's background job runner: another Python process, for server-side jobs
    # that neither the UI nor the runs API below use; starting beside the server on 2 cores,
    # it doubled the time to the first answer.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "ui", str(store), "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        runs = None
        for _ in range(900):  # MLflow's server takes 5-20 s to start on a busy 2-core machine
            try:
                runs = _post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment]})
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
        assert runs is not None, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert [r["info"]["run_name"] for r in runs["runs"]] == ["served"]
        metrics = {m["key"]: m["value"] for m in runs["runs"][0]["data"]["metrics"]}
        assert metrics == {"top1": 0.75}
        with urllib.request.urlopen(base, timeout=5) as page:  # the UI itself
            assert page.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    first = proc.stdout.read().splitlines()[0]
    assert first.startswith("MLflow UI for sqlite:///") and f"http://127.0.0.1:{port}" in first


def test_ui_without_a_store_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["ui", str(tmp_path)])
    assert info.value.code == 1


def test_tune_with_a_run_config_sweeps_from_its_probe_recipes(tmp_path):
    """`lvmae tune --config run.yaml` reads the file's probe recipes, as `lvmae run` does on
    it; a tune-only file (fields at top level) keeps the paper's."""
    from pipelines.cli import sweep_recipes

    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(
        "probe:\n  recipes:\n    linear: {lr: 0.01, epochs: 7}\ntune:\n  seeds: 1\n"
    )
    (probe,) = sweep_recipes(str(run_yaml)).values()
    assert (probe.recipes["linear"].lr, probe.recipes["linear"].epochs) == (0.01, 7)
    tune_only = tmp_path / "tune.yaml"
    tune_only.write_text("num_samples: 4\n")
    assert sweep_recipes(str(tune_only)) == {} and sweep_recipes(None) == {}


@pytest.mark.slow
def test_sigterm_stops_a_command_as_ctrl_c_does(tmp_path, scene_video):
    """`ray job stop`, a deleted pod, `kill`: the extraction's MLflow run ends KILLED (Ray's
    own handler ended the process at once, the run left RUNNING), the command says
    `aborted` (exit 130) and its local Ray instance is gone."""
    import contextlib
    import sqlite3

    videos = tmp_path / "videos"
    videos.mkdir()
    for k in range(3):
        (videos / f"v{k}.mp4").write_bytes(Path(scene_video).read_bytes())
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "extract", str(videos), "--out", str(out),
         "--set", "extract.flush_s=600"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    def statuses() -> list:
        try:
            with contextlib.closing(sqlite3.connect(out / "mlflow.db", timeout=30)) as db:
                return db.execute("select status from runs").fetchall()
        except sqlite3.Error:
            return []

    try:
        status: list = []
        for _ in range(300):  # its MLflow run opens once Ray is up (5-30 s on 2 cores)
            if proc.poll() is not None or (status := statuses()):
                break
            time.sleep(0.5)
        assert status == [("RUNNING",)], proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(1.0)  # the extraction under way
        proc.send_signal(signal.SIGTERM)
        text, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and text.rstrip().endswith("aborted"), text
    assert statuses() == [("KILLED",)]
    # Ray names its session folder after the driver's pid: none of its processes is left
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert f"_{proc.pid}/" not in ps.stdout
