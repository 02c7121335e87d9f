"""The stage list of the main job: names, upstream links, typed outputs, no cycle."""

from __future__ import annotations

from pathlib import Path

import pytest

from lvmae.config import STAGE_NAMES, load_run_config
from pipelines.stages import STAGES, StageContext, StageOutput, StageRecord, stage_named
from pipelines.stages.base import BaseStage


def test_the_stage_list_matches_the_config_names():
    assert tuple(s.name for s in STAGES) == STAGE_NAMES
    assert stage_named("probe").name == "probe"
    with pytest.raises(KeyError):
        stage_named("nope")


def test_every_upstream_exists_comes_earlier_and_there_is_no_cycle():
    position = {s.name: i for i, s in enumerate(STAGES)}
    for stage in STAGES:
        assert set(stage.requires) <= set(stage.upstream), stage.name
        for name in stage.upstream:
            assert name in position, f"{stage.name}: unknown upstream {name}"
            assert position[name] < position[stage.name], f"{stage.name} reads {name} later"
    # an explicit cycle search too (the ordering check above implies none, but a reordered
    # list with a back edge must be caught here)
    graph = {s.name: set(s.upstream) for s in STAGES}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for up in graph[name]:
                visit(up, (*path, name))
            done.add(name)

    for name in graph:
        visit(name, ())


def test_every_stage_declares_its_parts(tmp_path):
    config = load_run_config(None, {"run.input": "v", "run.labels": ["x.csv"]})
    context = StageContext(config, f"sqlite:///{tmp_path}/m.db")
    for stage in STAGES:
        assert issubclass(stage.output, StageOutput), stage.name
        assert isinstance(stage, BaseStage)
        resources = stage.resources(config)
        assert resources and all(r.cpus > 0 for r in resources.values()), stage.name
        assert all(r.gpus is None or r.gpus >= 0 for r in resources.values())
        settings = stage.settings(context)
        assert settings == stage.settings(context)  # deterministic


def test_records_round_trip_and_typed_outputs_read_back(tmp_path):
    from pipelines.stages.pretrain import PretrainOutput

    output = PretrainOutput(checkpoint="c", run_name="r", mlflow_run_id=None, metrics={"step": 3})
    record = StageRecord("pretrain", "f", output.digest(), output.model_dump(mode="json"))
    record.write(str(tmp_path))
    again = StageRecord.read(str(tmp_path), "pretrain")
    assert again == record
    config = load_run_config(
        None, {"run.input": "v", "run.workdir": str(tmp_path), "run.stages": ["pretrain"]}
    )
    context = StageContext(config, "sqlite:///x.db", records={"pretrain": again})
    assert context.output("pretrain", PretrainOutput) == output
    assert output.digest() != PretrainOutput(**{**output.model_dump(), "checkpoint": "d"}).digest()


def test_the_trainer_reserves_what_the_pretrain_stage_declares(tmp_path):
    """Stage.resources() is what the executor reserves: Ray Train's scaling config is built
    from the pre-training stage's reservation (workers, CPUs and GPUs per worker)."""
    from pipelines.pretrain import _trainer
    from pipelines.stages import PretrainStage

    config = load_run_config(None, {"run.input": "v", "run.labels": ["x.csv"],
                                    "pretrain.num_workers": 3, "pretrain.use_gpu": True})
    declared = PretrainStage().resources(config)["worker"]
    trainer = _trainer(config.pretrain, str(tmp_path), "r", None,
                       reservations=PretrainStage().resources(config))  # fmt: skip
    scaling = trainer.scaling_config
    assert (declared.count, declared.cpus, declared.gpus) == (3, 1.0, 1.0)
    assert scaling.num_workers == 3 and scaling.use_gpu
    assert scaling.resources_per_worker == {"CPU": 1.0, "GPU": 1.0}


def _settings(stage: str, tmp_path, **overrides) -> dict:
    base = {"run.input": "v", "run.labels": ["x.csv"], "run.workdir": str(tmp_path)}
    config = load_run_config(None, {**base, **overrides})
    return stage_named(stage).settings(StageContext(config, f"sqlite:///{tmp_path}/m.db"))


@pytest.mark.parametrize(
    ("stage", "changes", "keeps"),
    [
        (
            "extract",
            [{"extract.frames_per_segment": 4}, {"extract.extensions": [".mkv"]},
             {"samples.videos_per_recipe": 2}, {"run.embeddings": "elsewhere"}],
            [{"extract.flush_s": 5.0}],
        ),
        (
            "pretrain",
            [{"pretrain.mask_ratio": 0.75}, {"pretrain.epochs": 300}, {"pretrain.num_workers": 2}],
            [{"pretrain.log_every_steps": 1}, {"pretrain.keep_checkpoints": 9},
             {"pretrain.checkpoint_every_steps": 7}, {"pretrain.max_failures": 0},
             {"pretrain.val_every_epochs": 5}],
        ),
        (
            "probe",
            [{"probe.seeds": 1}, {"probe.gpus_per_task": 1.0}],
            [{"probe.cpus_per_task": 2.0}, {"probe.encoder_actors": 3}],
        ),
    ],
)  # fmt: skip
def test_a_stage_reruns_for_what_changes_its_output_and_only_for_that(
    stage, changes, keeps, tmp_path
):
    """A setting that changes a stage's output changes its fingerprint (so the stage and
    those after it run again); one that only changes how the run logs, checkpoints or
    reserves resources does not (a new fingerprint is a new pre-training run from scratch)."""
    base = _settings(stage, tmp_path)
    for change in changes:
        assert _settings(stage, tmp_path, **change) != base, change
    for keep in keeps:
        assert _settings(stage, tmp_path, **keep) == base, keep


def test_other_embeddings_of_the_same_videos_rerun_the_stages_after_extraction():
    from pipelines.stages.extract import ExtractOutput

    fields = {"embeddings": "e", "videos_ok": 1, "videos_partial": 0, "videos_failed": 0,
              "segments": 3, "hours_of_video": 0.1, "last_wall_s": 1.0, "failures": {},
              "videos_digest": "v", "config_id": "c1"}  # fmt: skip
    one = ExtractOutput(**fields)
    assert ExtractOutput(**{**fields, "config_id": "c2"}).digest() != one.digest()
    assert ExtractOutput(**{**fields, "embeddings": "f"}).digest() != one.digest()
    assert ExtractOutput(**fields).digest() == one.digest()


def test_the_report_leaves_out_results_of_stages_the_config_does_not_run(tmp_path):
    """A probe record left in the workdir by another config is not this config's result."""
    from lvmae.probes.results import ProbeResult
    from pipelines.stages.probe import ProbeOutput

    row = ProbeResult(method="lvmae", probe="linear", task="stale", kind="classification",
                      train=4, val=2, test=2, best_epoch=0, val_top1=0.5, top1=0.5)  # fmt: skip
    output = ProbeOutput(dir=str(tmp_path / "probe"), results=[row])
    records = {"probe": StageRecord("probe", "f", output.digest(), output.model_dump(mode="json"))}
    for stages, shown in ((["report"], False), (["probe", "report"], True)):
        config = load_run_config(None, {"run.input": "v", "run.workdir": str(tmp_path),
                                        "run.stages": stages, "run.labels": ["x.csv"]})  # fmt: skip
        context = StageContext(config, f"sqlite:///{tmp_path}/m.db", records=dict(records))
        report = stage_named("report").run(context)
        assert ("stale" in Path(report.markdown).read_text()) is shown, stages
