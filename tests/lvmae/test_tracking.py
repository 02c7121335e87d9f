"""MLflow runs the project opens always end: FINISHED, FAILED with the error, or KILLED;
embeddings read are recorded as inputs. Real MLflow (SQLite in a temp dir)."""

from __future__ import annotations

import json
import re

import pytest
from mlflow.tracking import MlflowClient

from lvmae.storage import write_manifest
from lvmae.tracking import (
    log_embeddings_input,
    mlflow_ui_hint,
    nested_under,
    open_run,
    run_status,
    source_tags,
    tracked_run,
)


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _run(uri, run_id):
    return MlflowClient(tracking_uri=uri).get_run(run_id)


def test_a_tracked_run_ends_finished_or_failed_with_the_error(uri, tmp_path):
    with tracked_run(uri, "e", "ok", out=str(tmp_path)) as run_id:
        assert _run(uri, run_id).info.status == "RUNNING"
    assert _run(uri, run_id).info.status == "FINISHED"
    with pytest.raises(ValueError, match="boom"), tracked_run(uri, "e", "bad", out=str(tmp_path)):
        raise ValueError("boom")
    bad = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("e").experiment_id],
        filter_string="tags.`lvmae.run_name` = 'bad'",
    )[0]
    assert bad.info.status == "FAILED"
    assert bad.data.tags["lvmae.error"] == "ValueError: boom"
    with pytest.raises(KeyboardInterrupt), tracked_run(uri, "e", "ok", out=str(tmp_path)) as again:
        raise KeyboardInterrupt
    assert again == run_id  # the same run name is the same run (a resumed job)
    assert _run(uri, run_id).info.status == "KILLED"


@pytest.mark.parametrize("code, status", [(0, "KILLED"), (None, "KILLED"), (2, "FAILED")])
def test_a_run_told_to_stop_is_killed_not_failed(uri, tmp_path, code, status):
    """Ray Tune stops a function trial by raising SystemExit(0) inside it."""
    run_id = open_run(uri, "e", f"stopped-{code}", out=str(tmp_path))
    client = MlflowClient(tracking_uri=uri)
    with pytest.raises(SystemExit), run_status(client, run_id, stopped="stopped by Tune"):
        raise SystemExit(code)
    run = _run(uri, run_id)
    assert run.info.status == status
    assert run.data.tags["lvmae.error"] == ("stopped by Tune" if code != 2 else "SystemExit: 2")


def test_runs_carry_source_tags(uri, tmp_path):
    run_id = open_run(uri, "e", "tagged", out=str(tmp_path))
    tags = _run(uri, run_id).data.tags
    assert tags["mlflow.user"] == source_tags()["mlflow.user"]
    assert len(tags["mlflow.source.git.commit"]) == 40  # the tests run from a git checkout


def test_embeddings_are_logged_as_the_run_input(uri, tmp_path):
    out = tmp_path / "emb"
    out.mkdir()
    write_manifest(str(out), {"config_id": "abc123", "encoder": {"name": "tiny"}})
    run_id = open_run(uri, "e", "reader", out=str(tmp_path))
    log_embeddings_input(uri, run_id, str(out))
    (inp,) = _run(uri, run_id).inputs.dataset_inputs
    assert inp.dataset.digest == "abc123"
    assert json.loads(inp.dataset.source) == {"uri": str(out)}
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "training"}


def test_ui_hint_names_the_command():
    assert mlflow_ui_hint("sqlite:////w/demo/mlflow.db").startswith("MLflow UI: lvmae ui /w/demo")
    assert mlflow_ui_hint("http://mlflow:5000") == "MLflow UI: http://mlflow:5000"


NAMES = ["it's", 'say "hi"', "both ' and \"", "a  b", "naïve 日本"]


def test_open_run_finds_a_run_again_whatever_its_name(uri, tmp_path):
    """Run names are matched in MLflow's search filter, quoted as its grammar allows (or in
    Python when a name holds both quote characters): the same name finds the same run, a
    prefix of it does not, and nested under a parent it is another run, found again."""
    out = str(tmp_path)
    for name in NAMES:
        first = open_run(uri, "exp", name, out=out)
        assert open_run(uri, "exp", name, out=out) == first
        assert open_run(uri, "exp", name[:-1], out=out) != first
        with nested_under("exp", first):
            child = open_run(uri, "exp", name, out=out)
            assert child != first
            assert open_run(uri, "exp", name, out=out) == child


def _schema_and_experiments(db):
    import sqlite3

    def clauses(sql):  # MLflow's own migrations order a table's constraints by hash seed
        body = (sql or "").strip().removesuffix(")")
        return sorted(part.strip() for part in re.split(r",\s*\n", body))

    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        schema = sorted((kind, name, clauses(sql)) for kind, name, sql in rows)
        version = con.execute("SELECT version_num FROM alembic_version").fetchall()
        experiments = con.execute(
            "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments"
            " ORDER BY experiment_id"
        ).fetchall()
    return schema, version, experiments


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """An lvmae cache of this test's own, so the template is made here."""
    from lvmae import tracking

    monkeypatch.setenv("LVMAE_CACHE_DIR", str(tmp_path / "cache"))
    tracking._empty_store.cache_clear()
    yield tmp_path / "cache"
    tracking._empty_store.cache_clear()


def test_a_store_copied_from_the_template_equals_a_migrated_one(own_cache, tmp_path, monkeypatch):
    from lvmae.tracking import prepare_local_store

    for name in ("first", "migrated", "copied"):
        (tmp_path / name).mkdir()
    # the template is made from a run in another directory: nothing of it may leak
    monkeypatch.chdir(tmp_path / "first")
    first = tmp_path / "first" / "mlflow.db"
    prepare_local_store(f"sqlite:///{first}")
    assert list((own_cache / "mlflow").glob("empty-store-*.db")) and first.is_file()

    monkeypatch.chdir(tmp_path / "migrated")
    migrated = tmp_path / "migrated" / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{migrated}").search_experiments()  # MLflow's own way
    monkeypatch.chdir(tmp_path / "copied")
    copied = tmp_path / "copied" / "mlflow.db"
    prepare_local_store(f"sqlite:///{copied}")
    MlflowClient(tracking_uri=f"sqlite:///{copied}").search_experiments()

    a, b = _schema_and_experiments(migrated), _schema_and_experiments(copied)
    assert a[0] == b[0] and a[1] == b[1]  # the same tables, indexes and schema version
    # MLflow made the Default experiment on open, for this directory: equal but the folder
    assert (
        [(i, n, s) for i, n, _, s in a[2]]
        == [(i, n, s) for i, n, _, s in b[2]]
        == [(0, "Default", "active")]
    )
    assert a[2][0][2].replace("migrated", "copied") == b[2][0][2]

    # and it works like one: the same experiment and run ids come next
    ids = []
    for store, out in ((migrated, tmp_path / "migrated"), (copied, tmp_path / "copied")):
        run_id = open_run(f"sqlite:///{store}", "exp", "r", out=str(out))
        ids.append(
            MlflowClient(tracking_uri=f"sqlite:///{store}").get_run(run_id).info.experiment_id
        )
    assert ids[0] == ids[1] == "1"


def test_an_existing_store_is_never_replaced_and_a_bad_cache_is_no_error(
    own_cache, tmp_path, monkeypatch
):
    from lvmae import tracking

    db = tmp_path / "mlflow.db"
    run_id = open_run(f"sqlite:///{db}", "exp", "kept", out=str(tmp_path))
    before = db.read_bytes()
    tracking.prepare_local_store(f"sqlite:///{db}")
    assert db.read_bytes() == before
    assert MlflowClient(tracking_uri=f"sqlite:///{db}").get_run(run_id).info.run_name == "kept"

    # a cache that cannot be written: the store is migrated by MLflow as before
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("LVMAE_CACHE_DIR", str(blocker))
    tracking._empty_store.cache_clear()
    other = tmp_path / "other" / "mlflow.db"
    other.parent.mkdir()
    tracking.prepare_local_store(f"sqlite:///{other}")
    assert not other.exists()  # left to MLflow
    run_id = open_run(f"sqlite:///{other}", "exp", "r", out=str(other.parent))
    assert MlflowClient(tracking_uri=f"sqlite:///{other}").get_run(run_id).info.status == "RUNNING"
