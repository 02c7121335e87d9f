"""The ``lvmae`` command.

Every command checks its arguments, configuration, input paths and output directories
before any work starts (before Ray starts or anything is written). An error the user can
fix is one line on stderr, ``error: <message>`` naming the flag, key or file to fix, exit
code 1; a usage error is click's (exit code 2). A full disk (``ENOSPC``, also inside MLflow
or a Ray worker) or an OS refusal (permissions) is one such line too. ``--debug`` (or
``LVMAE_DEBUG=1``) adds the traceback; an unexpected exception is a bug and keeps its
traceback (docs/design.md, "Errors").
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import click
import yaml

from lvmae import __version__
from lvmae.config import (
    BASELINES,
    ENCODER_NAMES,
    LABEL_DATASETS,
    PROBE_KINDS,
    SAMPLE_LIBRARY,
    SHOT_DETECTORS,
    ExtractConfig,
    PretrainConfig,
    ProbeSection,
    RunConfig,
    RunSection,
    TuneSection,
    load_config,
    load_run_config,
    parse_sets,
    read_yaml_mapping,
)
from lvmae.errors import LvmaeError, disk_full_cause
from lvmae.labels import from_source, write_labels
from lvmae.progress import every_s_from_env
from lvmae.storage import StorageError, check_output_path, hold_output, read_videos
from lvmae.video.samples import (
    DEFAULT_RECIPES,
    HARD_ORDER_RECIPES,
    ORDER_RECIPES,
    RECIPES,
    make_samples,
    write_broken_videos,
)
from pipelines.connect import connect_ray, disconnect_ray, set_verbose, stop_on_sigterm


def set_option(section: str):
    """The ``--set`` option of a command that reads config section ``section``."""
    return click.option(
        "--set", "sets", multiple=True, metavar="SECTION.FIELD=VALUE",
        help=f"Override a config field, e.g. --set {section}.FIELD=VALUE (repeatable).",
    )  # fmt: skip


def run_probing(
    stage, section, out: str, embeddings: str, labels, checkpoint: str, **other_sections
):
    """Run a probing stage (``probe`` or ``tune``) alone on ``section``, its config section
    (and ``other_sections`` it reads, e.g. the sweep's ``probe`` recipes): the same stage
    ``lvmae run`` runs, tracked beside the checkpoint's pre-training run."""
    from pipelines.run import run_alone  # heavy (Ray, torch): only for these commands
    from pipelines.stages import StageContext  # heavy, as above

    sections = {stage.name: section, **other_sections}
    run = command_config(workdir=out, embeddings=embeddings, labels=list(labels), **sections)
    context = StageContext.create(
        run, tracking_uri=None, outs={stage.name: out}, checkpoint=checkpoint
    )
    return run_alone(stage, context)


def sweep_recipes(config_file: str | None) -> dict[str, ProbeSection]:
    """``{"probe": section}`` when ``config_file`` is a run config with a ``probe:``
    section, else ``{}``: ``lvmae tune --config`` then starts its sweep from that file's
    probe recipes, as ``lvmae run`` on the same file does (a tune-only file keeps the
    paper's)."""
    if config_file and "probe" in read_yaml_mapping(config_file, "config"):
        return {"probe": load_config(ProbeSection, config_file)}
    return {}


def probe_inputs(command):
    """The inputs of a command that trains probes (``probe``, ``tune``): the pre-trained
    checkpoint, the extraction output, one or more labels files and a YAML config."""
    options = [
        click.option("--checkpoint", required=True,
                     help="Checkpoint or pre-training run directory."),
        click.option("--embeddings", required=True, help="Extraction output (holds segments/)."),
        click.option("--labels", "labels", required=True, multiple=True,
                     help="Labels file (a task)."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="YAML config."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def command_config(*, input: str = "", workdir: str, **sections) -> RunConfig:
    """The :class:`lvmae.config.RunConfig` of a single command: its ``run:`` fields
    (``input``, ``workdir``, ``embeddings``, ``labels``, ``experiment``, ``tracking_uri``;
    the stage list is the command's own) and the command's config section."""
    run_fields = {k: sections.pop(k) for k in ("embeddings", "labels", "experiment",
                                               "tracking_uri") if k in sections}  # fmt: skip
    if run_fields.get("experiment") is None:
        run_fields.pop("experiment", None)
    stage = next(iter(sections))
    run = RunSection(input=input, workdir=workdir, stages=[stage], **run_fields)
    return RunConfig(run=run, **sections)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-v", "--verbose", is_flag=True,
    help="Log at INFO level and show Ray workers' logs (also after the subcommand).",
)  # fmt: skip
@click.option(
    "--debug", is_flag=True,
    help="Print the traceback of an error (also LVMAE_DEBUG=1); errors are one line without.",
)  # fmt: skip
@click.version_option(__version__, "--version", prog_name="lvmae")
def cli(verbose: bool, debug: bool) -> None:
    """lvmae: long-video representations with LV-MAE on Ray."""
    set_verbose(verbose)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@cli.command()
@click.argument("input_path", metavar="INPUT")
@click.option("--out", required=True, help="Output directory (local path or storage URI).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config.")
@click.option("--encoder", type=click.Choice(ENCODER_NAMES), help="Frozen encoder.")
@click.option("--encoder-checkpoint", help="Hub id or local directory of the checkpoint.")
@click.option("--segment-seconds", "segment_s", type=float, help="Segment length [5].")
@click.option("--stride-seconds", "stride_s", type=float, help="Segment stride [= length].")
@click.option("--min-segment-seconds", "min_segment_s", type=float, help="Shortest tail [1].")
@click.option("--frames-per-segment", type=int, help="Frames sampled per segment [8].")
@click.option("--segmenter", type=click.Choice(["fixed", "shots"]), help="Segment plan.")
@click.option(
    "--shot-detector",
    type=click.Choice(list(SHOT_DETECTORS)),
    help="Cut detector of --segmenter shots [transnetv2].",
)
@click.option(
    "--decoder",
    type=click.Choice(["decord", "pyav", "nvdec", "auto"]),
    help="Video decoder [pyav] (nvdec: the encoder actors decode on their GPU; auto: NVDEC "
    "where their GPU can, else PyAV, with the reason in the videos table).",
)
@click.option(
    "--decode-mode",
    type=click.Choice(["exact", "fast"]),
    help="fast: skip non-reference frames, nearest decodable frame [exact].",
)
@click.option("--batch-size", type=int, help="Segments per encoder call [16].")
@click.option("--encoder-actors", type=int, help="Encoder actor pool size [1].")
@click.option(
    "--gpus-per-actor", type=float, help="GPUs per encoder actor [languagebind 1, tiny 0]."
)
@click.option("--flush-seconds", "flush_s", type=float, help="Write output this often [30].")
@click.option("--video-time-limit", "video_time_limit_s", type=float, help="Seconds/video.")
@click.option("--overwrite", is_flag=True, help="Write into an output made with another config.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@set_option("extract")
def extract(input_path, out, config_file, overwrite, no_progress, sets, **options) -> None:
    """Decode and segment the videos under INPUT, embed every segment with the frozen
    encoder, and write Parquet tables under --out.

    INPUT is a directory (searched recursively), a glob, or a text file listing paths.
    """
    from pipelines.run import run_alone  # heavy (Ray): only for this command
    from pipelines.stages import ExtractStage, StageContext  # heavy (the jobs: Ray, torch)

    config = load_config(ExtractConfig, config_file, options, parse_sets(sets))
    workdir = "." if "://" in out else out
    run = command_config(input=input_path, workdir=workdir, embeddings=out, extract=config)
    context = StageContext.create(
        run, tracking_uri=None, overwrite=overwrite, progress=not no_progress,
        outs={"extract": out},
    )  # the job decides where (and whether, for a remote --out) it tracks
    output = run_alone(ExtractStage(), context)
    click.echo(output.summary)
    click.echo(f"outputs: {out}/segments, {out}/videos, {out}/manifest.json")


@cli.command()
@click.option("--embeddings", required=True, help="Extraction output (holds segments/).")
@click.option("--out", required=True, help="Output directory: checkpoints, MLflow store.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config.")
@click.option("--num-workers", type=int, help="Ray Train workers (DDP).")
@click.option("--use-gpu", is_flag=True, default=None, help="One GPU per worker, bf16.")
@click.option("--preset", type=click.Choice(["paper", "base", "small", "tiny"]))
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int, help="Videos per worker per step (global = × workers).")
@click.option("--run-name", help="Same name again resumes from the latest checkpoint.")
@set_option("pretrain")
def pretrain(embeddings, out, config_file, sets, **options) -> None:
    """Pre-train LV-MAE on the segment embeddings under --embeddings (Ray Train DDP)."""
    from lvmae.tracking import mlflow_ui_hint  # heavy (MLflow)
    from pipelines.run import run_alone  # heavy (Ray, torch): only for this command
    from pipelines.stages import PretrainStage, StageContext  # heavy (the jobs: Ray, torch)

    config = load_config(PretrainConfig, config_file, options, parse_sets(sets))
    run = command_config(workdir=out, embeddings=embeddings, experiment=config.experiment,
                         tracking_uri=config.tracking_uri, pretrain=config)  # fmt: skip
    context = StageContext.create(
        run, outs={"pretrain": out}, run_names={"pretrain": config.run_name or "lvmae"}
    )
    output = run_alone(PretrainStage(), context)
    click.echo(f"run {output.run_name}: {json.dumps(output.metrics, default=str)}")
    click.echo(f"checkpoint: {output.checkpoint}")
    if output.model_uri:
        click.echo(f"registered {output.model_uri}")
    click.echo(f"MLflow run {output.mlflow_run_id}; {mlflow_ui_hint(output.tracking_uri)}")


@cli.command()
@click.option("--checkpoint", required=True, help="Checkpoint or pre-training run directory.")
@click.option("--embeddings", required=True, help="Extraction output (holds segments/).")
@click.option("--out", required=True, help="Output directory (representations/).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--actors", default=1, show_default=True, type=click.IntRange(1))
@click.option("--use-gpu", is_flag=True)
def embed(*, checkpoint, embeddings, out, batch_size, actors, use_gpu) -> None:
    """Per-video representations ([CLS] and mean of token outputs) for whole videos."""
    from pipelines.embed import run_embed  # heavy (Ray, torch): only for this command
    from pipelines.job_inputs import check_checkpoint_inputs  # heavy (Ray Data, torch)

    check_checkpoint_inputs(checkpoint, embeddings)
    check_output_path(out)
    with hold_output(out):
        connect_ray()
        result = run_embed(
            checkpoint, embeddings, out, batch_size=batch_size, actors=actors, use_gpu=use_gpu
        )
    click.echo(f"wrote representations of {result.videos} videos to {result.path}")


@cli.command()
@probe_inputs
@click.option(
    "--probe", "probes", type=click.Choice(PROBE_KINDS), multiple=True,
    help="Probe kind; repeat for several (features are computed once) [linear].",
)  # fmt: skip
@click.option(
    "--baseline", "baselines", multiple=True, type=click.Choice(BASELINES),
    help="Also score a baseline on the same splits.",
)  # fmt: skip
@click.option("--device", help="Torch device of the probes: auto, cpu, cuda, cuda:N [auto].")
@click.option("--out", default="work/probe", show_default=True, help="Output directory.")
@set_option("probe")
def probe(checkpoint, embeddings, labels, config_file, out, sets, **options) -> None:
    """Train probes on the frozen encoder (the paper's recipes, changed with e.g.
    --set probe.recipes.linear.lr=1e-3) and score them on the test split at the best
    validation epoch; results table in --out."""
    from pipelines.stages import ProbeStage  # heavy (the jobs: Ray, torch)

    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    options = {k: v for k, v in options.items() if v not in ([], None)}
    if not config_file and "probes" not in options:
        options["probes"] = ["linear"]
    if "baselines" not in options and not config_file:
        options["baselines"] = []
    section = load_config(ProbeSection, config_file, options, parse_sets(sets))
    output = run_probing(ProbeStage(), section, out, embeddings, labels, checkpoint)
    click.echo((Path(out) / "results.md").read_text())
    click.echo(f"{len(output.results)} rows: {Path(out) / 'results.csv'}")


@cli.command()
@probe_inputs
@click.option("--num-samples", type=click.IntRange(1), help="Trials per task [16].")
@click.option("--space", type=click.Path(dir_okay=False), help="Search space YAML.")
@click.option("--max-concurrent", type=click.IntRange(1), help="Trials at once [2].")
@click.option("--out", default="work/tune", show_default=True, help="Output directory.")
@set_option("tune")
def tune(checkpoint, embeddings, labels, config_file, out, sets, **options) -> None:
    """Ray Tune sweep of probe hyperparameters (ASHA + Optuna) per labels file; the best
    configuration is retrained and scored on the test split once."""
    from pipelines.stages import TuneStage  # heavy (the jobs: Ray, torch)

    section = load_config(TuneSection, config_file, options, parse_sets(sets))
    output = run_probing(TuneStage(), section, out, embeddings, labels, checkpoint,
                         **sweep_recipes(config_file))  # fmt: skip
    click.echo((Path(out) / "tune" / "results.md").read_text())
    click.echo(f"{len(output.results)} tasks swept; trials in {Path(out) / 'tune'}")


@cli.command()
@click.argument("dataset", type=click.Choice(LABEL_DATASETS))
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", required=True, help="Labels file to write (.csv or .parquet).")
@click.option("--task", help="LVU task (director, genre, ..., like_ratio, view_count).")
@click.option("--split", "bf_split", default="s1", show_default=True, help="Breakfast split.")
@click.option("--val-fraction", default=0.15, show_default=True, type=click.FloatRange(0, 0.9))
@click.option("--embeddings", help="Match ids to the videos of this extraction output.")
def labels(dataset, source, out, task, bf_split, val_fraction, embeddings) -> None:
    """Convert LVU / COIN / Breakfast annotations into the project's labels format."""
    if dataset == "lvu" and not task:
        raise click.BadParameter("LVU needs --task", param_hint="--task")
    known = None
    if embeddings:
        known = read_videos(embeddings)["video_id"].to_pylist()
        if not known:
            raise StorageError(
                f"--embeddings {embeddings}: no videos table there (expected "
                f"{embeddings.rstrip('/')}/videos/*.parquet, written by `lvmae extract`)"
            )
    check_output_path(str(Path(out).parent), "--out")
    table = from_source(
        dataset, source, task=task, split=bf_split, video_ids=known, val_fraction=val_fraction
    )
    path = write_labels(table, out)
    click.echo(f"wrote {table.num_rows} labelled videos to {path}")


@cli.command()
@click.argument("query", required=False)
@click.option("--embeddings", required=True, help="Extraction output (holds segments/).")
@click.option("--top-k", default=10, show_default=True, type=click.IntRange(1))
@click.option("--example", metavar="VIDEO_ID@SECONDS", help="Search by an example segment.")
@click.option("--exact/--approximate", default=None, help="Force exact or index search.")
@click.option("--rebuild-index", is_flag=True, help="Rebuild the saved approximate index.")
def search(query, embeddings, top_k, example, exact, rebuild_index) -> None:
    """Search the archive's segments by text (QUERY) or by an example segment."""
    from pipelines.search import search as run_search  # heavy (torch): only for this command

    ex = None
    if example:
        video_id, sep, seconds = example.rpartition("@")
        try:
            ex = (video_id, float(seconds))
        except ValueError:
            sep = ""
        if not sep or not video_id:
            raise click.BadParameter("expected VIDEO_ID@SECONDS", param_hint="--example")
    rows = run_search(
        embeddings, query=query, example=ex, top_k=top_k, exact=exact,
        rebuild_index=rebuild_index,
    )  # fmt: skip
    for r in rows:
        click.echo(f"{r['rank']:>3}  {r['score']:.4f}  {r['video_id']}  "
                   f"{r['start_s']:.1f}–{r['end_s']:.1f} s")  # fmt: skip


@cli.command()
@click.option("--checkpoint", required=True, help="Checkpoint or pre-training run directory.")
@click.option("--embeddings", required=True, help="Extraction output (holds segments/).")
@click.option("--captions", help="Caption bank: a text file (one per line) or a labels file.")
@click.option("--out", default="work/monitor", show_default=True, help="Output directory.")
def monitor(checkpoint, embeddings, captions, out) -> None:
    """Reconstruction-retrieval monitor: R@1/5/10 and median rank of reconstructed masked
    segments among the held-out set; nearest captions as HTML with --captions."""
    from pipelines.job_inputs import check_checkpoint_inputs  # heavy (Ray Data, torch)
    from pipelines.monitor import read_captions, run_monitor  # heavy (torch)

    check_checkpoint_inputs(checkpoint, embeddings)
    if captions:
        read_captions(captions)
    check_output_path(out)
    with hold_output(out):  # the reconstruction runs in this process: no Ray
        metrics = run_monitor(checkpoint, embeddings, out, captions=captions)
    click.echo(json.dumps(metrics, indent=2))


@cli.command("make-samples")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--videos-per-recipe", default=SAMPLE_LIBRARY.videos_per_recipe, show_default=True,
              type=click.IntRange(1))  # fmt: skip
@click.option("--min-seconds", default=SAMPLE_LIBRARY.min_seconds, show_default=True,
              type=click.FloatRange(1))  # fmt: skip
@click.option("--max-seconds", default=SAMPLE_LIBRARY.max_seconds, show_default=True,
              type=click.FloatRange(1))  # fmt: skip
@click.option("--width", default=SAMPLE_LIBRARY.width, show_default=True, type=click.IntRange(16))
@click.option("--height", default=SAMPLE_LIBRARY.height, show_default=True, type=click.IntRange(16))
@click.option("--fps", default=SAMPLE_LIBRARY.fps, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=SAMPLE_LIBRARY.seed, show_default=True, type=int)
@click.option(
    "--recipes", type=click.Choice(["default", "order", "hard", *RECIPES]), multiple=True,
    help="Recipes (repeatable): 'order' = the four scene orders of the demo, 'hard' = their "
    "harder variant (six scenes per video, noisier durations) [default: all but hard].",
)  # fmt: skip
@click.option("--with-broken", is_flag=True, help="Also write broken files (bad-input demo).")
def make_samples_cmd(out_dir, with_broken, recipes, **kwargs) -> None:
    """Write procedural long videos (real H.264 mp4) and labels.csv into OUT_DIR."""
    groups = {"default": DEFAULT_RECIPES, "order": ORDER_RECIPES, "hard": HARD_ORDER_RECIPES}
    chosen = [r for name in recipes for r in groups.get(name, (name,))]
    kwargs["recipes"] = list(dict.fromkeys(chosen)) or None

    if kwargs["min_seconds"] > kwargs["max_seconds"]:
        raise click.BadParameter("--min-seconds must not exceed --max-seconds")
    check_output_path(out_dir, "OUT_DIR")
    labels = make_samples(out_dir, **kwargs)
    click.echo(f"wrote sample videos and {labels}")
    if with_broken:
        broken = write_broken_videos(Path(out_dir) / "broken")
        click.echo(f"wrote {len(broken)} broken files under {Path(out_dir) / 'broken'}")


def _print_run_result(result) -> None:
    from lvmae.tracking import mlflow_ui_hint  # heavy (MLflow, torch): only after a run
    from pipelines.report import results_table  # heavy (torch, matplotlib)

    if result.results:
        click.echo("")
        click.echo(results_table(result.results))
    if result.report:
        click.echo(f"report: {result.report.get('html')} (and {result.report.get('markdown')})")
    click.echo(f"MLflow parent run {result.parent_run_id} in {result.tracking_uri}")
    click.echo(mlflow_ui_hint(result.tracking_uri))


@cli.command()
@click.option(
    "--config", "config_file", required=True, type=click.Path(dir_okay=False),
    help="Run config YAML (configs/demo.yaml, configs/paper.yaml, ...).",
)  # fmt: skip
@click.option("--workdir", help="Override run.workdir.")
@click.option("--stages", help="Comma-separated subset of the config's stages.")
@click.option("--force", multiple=True, help="Rerun this stage even if done (repeatable).")
@click.option("--address", help="Ray cluster address (default RAY_ADDRESS or local Ray).")
@click.option("--print-config", is_flag=True, help="Print the resolved config (YAML) and exit.")
@set_option("pretrain")
def run(config_file, workdir, stages, force, address, print_config, sets) -> None:
    """The main job: extract → pretrain → probe → tune → report. Finished stages are
    skipped, so a rerun resumes where the last one stopped."""
    from pipelines.run import run_main  # heavy (Ray, torch, MLflow): only for this command

    given = {"run.workdir": workdir, "run.address": address}  # the options given, then --set
    sets = {k: v for k, v in given.items() if v is not None} | parse_sets(sets)
    config = load_run_config(config_file, sets)
    if print_config:
        click.echo(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), nl=False)
        return
    chosen = [s.strip() for s in stages.split(",") if s.strip()] if stages else None
    result = run_main(config, stages=chosen, force=force, echo=click.echo)
    _print_run_result(result)


@cli.command()
@click.option("--workdir", default="work/demo", show_default=True, type=click.Path())
def demo(workdir) -> None:
    """The whole chain on generated sample videos, on local Ray: videos whose classes
    differ only in scene order → extraction (tiny encoder) → LV-MAE pre-training → linear
    and attentive probes against the mean-pool baseline → a small sweep → report."""
    from pipelines.run import demo_config, run_main  # heavy (Ray, torch, MLflow)

    config = demo_config(workdir)
    result = run_main(config, echo=click.echo)
    _print_run_result(result)
    click.echo(f"search and watch the videos: lvmae serve {config.run.embeddings_uri()}")


@cli.command()
@click.argument("workdir", type=click.Path(file_okay=False), default="work/demo")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
def ui(workdir, host, port) -> None:
    """Serve the MLflow UI on WORKDIR's tracking store (WORKDIR/mlflow.db; the demo's is
    work/demo). Stops with Ctrl-C."""
    from lvmae.tracking import ui_command  # heavy (MLflow): only for this command

    command, uri = ui_command(workdir, host=host, port=port)
    click.echo(f"MLflow UI for {uri}: http://{host}:{port}  (Ctrl-C to stop)")
    sys.exit(subprocess.run(command, check=False).returncode)


@cli.command()
@click.argument("embeddings")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--exact/--approximate", default=None, help="Force exact or index search.")
@click.option("--rebuild-index", is_flag=True, help="Rebuild the saved approximate index.")
@click.option("--cache-dir", help="Thumbnail cache [EMBEDDINGS/thumbnails].")
@click.option(
    "--mlflow-ui", default="http://127.0.0.1:5000", show_default=True,
    help="MLflow UI base URL for run links (`lvmae ui` serves one there).",
)  # fmt: skip
def serve(embeddings, host, port, exact, rebuild_index, cache_dir, mlflow_ui) -> None:
    """A local read-only web app over an extraction's output (EMBEDDINGS): text search with
    thumbnails, playback from a segment, "more like this", video and run pages."""
    from pipelines.serve.server import serve as run_server  # heavy (torch, uvicorn)

    run_server(
        embeddings, host=host, port=port, exact=exact, rebuild_index=rebuild_index,
        cache_dir=cache_dir, mlflow_ui=mlflow_ui, echo=click.echo,
    )  # fmt: skip


GROUP_FLAGS = ("-v", "--verbose", "--debug")


def _verbose_first(argv: list[str]) -> list[str]:
    """``-v`` / ``--verbose`` and ``--debug`` are the group's options; accept them after the
    subcommand too (``lvmae run -v ...``) by moving them to the front (never past a ``--``)."""
    end = argv.index("--") if "--" in argv else len(argv)
    verbose = [a for a in argv[:end] if a in ("-v", "--verbose")][:1]
    debug = ["--debug"] if "--debug" in argv[:end] else []
    rest = [a for a in argv[:end] if a not in GROUP_FLAGS]
    return verbose + debug + rest + argv[end:]


def debug_requested(argv: list[str]) -> bool:
    """``--debug`` among the group's flags, or ``LVMAE_DEBUG`` set to 1 / true / yes."""
    env = os.environ.get("LVMAE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    return env or "--debug" in argv[: argv.index("--") if "--" in argv else len(argv)]


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line: a Ray task's error reduced to its cause (not the
    remote traceback), lines joined with "; "."""
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError
    text = str(cause if isinstance(cause, BaseException) else exc)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or repr(exc)


def _fail(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lvmae`` command: a user error prints one line (``error: ...``)
    and exits 1, a usage error is click's (exit 2); ``--debug`` / ``LVMAE_DEBUG=1`` add the
    traceback. Anything else is a bug and keeps its traceback."""
    argv = _verbose_first(list(sys.argv[1:] if argv is None else argv))
    debug = debug_requested(argv)
    try:
        every_s_from_env()  # LVMAE_PROGRESS_EVERY_S is a number, before any work
        stop_on_sigterm()  # SIGTERM stops a command as Ctrl-C does (runs end KILLED)
        cli.main(args=argv, prog_name="lvmae", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except LvmaeError as exc:
        _fail(one_line(exc), debug)
    except Exception as exc:
        full = disk_full_cause(exc)
        if full is not None:  # a full disk met inside a library (MLflow's store, a worker)
            _fail(f"no space left on the device: {one_line(full)}; the outputs written "
                  f"before stay valid: free space and rerun the same command", debug)  # fmt: skip
        if isinstance(exc, OSError) and exc.filename is not None:  # refused by the OS
            _fail(f"{exc.filename}: {exc.strerror or exc}", debug)
        raise


def entry() -> None:
    """The ``lvmae`` program (console script and ``python -m pipelines.cli``): :func:`main`,
    then Ray is left at once (:func:`~pipelines.connect.disconnect_ray`: 0.5 s sooner than
    Ray's own exit handler, except under ``-v``) and the garbage collector's objects are
    frozen (:func:`gc.freeze`) for the exit.

    Python's last collections at exit walk every object the command left (half a million
    after an extraction: torch, Ray, MLflow); frozen, they are skipped, and the process ends
    about 1.5 s sooner on 2 cores once the command's output and its MLflow run are done.
    Only objects in reference cycles lose their ``__del__`` at exit, which Python never
    promised to run then."""
    try:
        main()
    finally:
        disconnect_ray()
        gc.freeze()


if __name__ == "__main__":
    entry()
