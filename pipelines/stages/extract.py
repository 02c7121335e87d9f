"""The extraction stage: the videos of ``run.input`` → segment embeddings (Ray Data; see
:func:`pipelines.extract.run_extraction`). With a ``samples:`` section, the procedural
sample library is written into ``run.input`` first (the demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from lvmae.config import RunConfig
from lvmae.encoders.specs import describe_encoder
from lvmae.storage import check_object_store, check_output_path, read_videos, use_object_store
from lvmae.video.inputs import list_videos
from lvmae.video.samples import make_samples, write_broken_videos
from lvmae.video.shots import describe_detector
from pipelines.connect import Reservation
from pipelines.extract import check_previous_output, extract_reservations, run_extraction
from pipelines.stages.base import BaseStage, StageContext, StageOutput, sha


class ExtractOutput(StageOutput):
    """Where the embeddings are and what became of the videos (counts, hours of video,
    the non-``ok`` videos by id); ``videos_digest`` identifies the videos table and
    ``config_id`` the settings the embeddings were made with (both, with ``embeddings``,
    enter :meth:`digest`: other embeddings of the same videos rerun the stages after)."""

    embeddings: str
    videos_ok: int
    videos_partial: int
    videos_failed: int
    segments: int
    hours_of_video: float
    last_wall_s: float
    failures: dict[str, str]
    videos_digest: str
    summary: str = ""
    config_id: str = ""

    def digest(self) -> str:
        return sha([self.videos_digest, self.embeddings, self.config_id])


def make_samples_for(config: RunConfig) -> Path | None:
    """Write the sample library of ``config.samples`` into ``run.input`` (idempotent).
    Returns its labels file, or None when the config has no ``samples:`` section."""
    s = config.samples
    if s is None:
        return None
    labels = make_samples(
        config.run.input, videos_per_recipe=s.videos_per_recipe, min_seconds=s.min_seconds,
        max_seconds=s.max_seconds, width=s.width, height=s.height, fps=s.fps, seed=s.seed,
        recipes=s.recipes,
    )  # fmt: skip
    if s.with_broken:
        write_broken_videos(Path(config.run.input) / "broken")
    return labels


class ExtractStage(BaseStage):
    """Decode, segment and embed every video (LV-MAE stage 1, §3.1)."""

    name: ClassVar[str] = "extract"
    upstream: ClassVar[tuple[str, ...]] = ()
    output: ClassVar[type[StageOutput]] = ExtractOutput
    joins_ray_itself: ClassVar[bool] = True  # Ray starts while its MLflow store is made

    def settings(self, context: StageContext) -> dict[str, Any]:
        """The input (with ``samples:``, the library's settings), which files of it are
        videos, the output, and the settings the embeddings depend on. The input is not
        listed here: a later ``lvmae run`` must not need the videos once they are embedded.
        Videos added to the input are extracted by ``--force extract`` (which keeps what
        is done)."""
        c = context.config
        return {
            "input": c.run.input,
            "samples": None if c.samples is None else c.samples.model_dump(mode="json"),
            "extensions": list(c.extract.extensions),
            "embeddings": context.embeddings,
            "config_id": c.extract.config_id(),
        }

    def resources(self, config: RunConfig) -> dict[str, Reservation]:
        return extract_reservations(config.extract)

    def prepare(self, context: StageContext) -> None:
        make_samples_for(context.config)

    def check(self, context: StageContext) -> None:
        """The input lists videos (or, with ``samples:``, the library can be written
        there), the encoder and shot detector are available, and the output can be written
        and holds no other configuration's embeddings (unless ``overwrite``)."""
        e = context.config.extract
        use_object_store(e.storage)
        if context.config.samples is None:
            check_object_store(context.config.run.input, write=False)
            list_videos(context.config.run.input, e.extensions)
        else:  # the library is generated there first (prepare), after every check
            check_output_path(context.config.run.input, "run.input")
        check_object_store(context.embeddings, write=True)
        describe_encoder(e.encoder, e.encoder_checkpoint, e.encoder_seed)
        describe_detector(e)  # the shot detector's weights are installed (shot plans)
        flag = "--out" if self.name in context.outs else "run.embeddings"
        check_output_path(context.embeddings, flag)
        check_previous_output(context.embeddings, e, overwrite=context.overwrite, flag=flag)

    def run(self, context: StageContext) -> ExtractOutput:
        summary = run_extraction(
            context.config.run.input,
            context.embeddings,
            context.config.extract,
            overwrite=context.overwrite,
            progress=context.progress,
            tracking_uri=context.tracking_uri,
            reservations=self.resources(context.config),
        )
        videos = read_videos(context.embeddings)
        rows = sorted(
            zip(
                videos["video_id"].to_pylist(),
                videos["status"].to_pylist(),
                videos["segments_planned"].to_pylist(),
                videos["segments_written"].to_pylist(),
                videos["duration_s"].to_pylist(),
                strict=True,
            )
        )
        done = [r for r in rows if r[1] != "failed"]
        statuses = [r[1] for r in rows]
        # an ok video has its whole plan on disk (perhaps over several attempts); a partial
        # one at least what its last attempt wrote
        on_disk = [(r[2] if r[1] == "ok" else r[3]) or 0 for r in done]
        return ExtractOutput(
            embeddings=context.embeddings,
            videos_ok=statuses.count("ok"),
            videos_partial=statuses.count("partial"),
            videos_failed=statuses.count("failed"),
            segments=int(sum(on_disk)),
            hours_of_video=round(sum(r[4] or 0.0 for r in done) / 3600, 4),
            last_wall_s=round(summary.wall_s, 2),
            failures={r[0]: r[1] for r in rows if r[1] != "ok"},
            videos_digest=sha([list(r[:3]) for r in rows]),
            summary=summary.format(),
            config_id=context.config.extract.config_id(),
        )
