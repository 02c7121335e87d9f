"""What every stage of the main job shares: the :class:`Stage` protocol, typed outputs,
stage records and the :class:`StageContext` a stage runs in (docs/design.md, "Stages of the
main job").

A stage is one small class in one module of this package. It declares its ``name``, the
stages whose outputs it reads (``upstream``; ``requires`` are those that must have run), the
settings that fingerprint it, the Ray resources it asks for, and ``run(context)``, which
returns a typed :class:`StageOutput`. The runner (:mod:`pipelines.run`) iterates the ordered
list :data:`pipelines.stages.STAGES`, and a finished stage leaves a :class:`StageRecord`
under ``<workdir>/stages/<name>.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from lvmae.config import LabelsSource, RunConfig
from lvmae.errors import LvmaeError
from lvmae.labels import from_source, write_labels
from lvmae.storage import read_videos, use_object_store
from lvmae.tracking import resolve_tracking_uri
from lvmae.video.samples import HARD_ORDER_RECIPES, ORDER_RECIPES
from pipelines.connect import Reservation

log = logging.getLogger(__name__)

STAGES_DIR = "stages"


class StageError(LvmaeError, RuntimeError):
    """A stage of ``lvmae run`` failed or cannot start; the message names the stage, the
    cause and the stages whose outputs are kept."""


def sha(obj: Any) -> str:
    """16 hex digits of the SHA-1 of ``obj`` as sorted JSON (fingerprints and digests)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | None) -> str | None:
    """16 hex digits of a file's SHA-1; ``"missing"`` for a missing file, None for None."""
    if path is None:
        return None
    p = Path(path)
    return hashlib.sha1(p.read_bytes()).hexdigest()[:16] if p.is_file() else "missing"


class StageOutput(BaseModel):
    """A stage's typed result, stored in its record. :meth:`digest` identifies the outputs
    that downstream stages read: equal digests ⇒ downstream stages need not rerun."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def digest(self) -> str:
        """Digest of the outputs (default: of every field)."""
        return sha(self.model_dump(mode="json"))


OutputT = TypeVar("OutputT", bound=StageOutput)


@dataclass
class StageRecord:
    """What a finished stage left: its ``fingerprint`` (settings + upstream digests),
    ``digest`` (outputs), ``outputs`` (the :class:`StageOutput` as JSON), when it finished
    and how long it took (seconds)."""

    stage: str
    fingerprint: str
    digest: str
    outputs: dict[str, Any]
    finished_at: str = ""
    wall_s: float = 0.0

    @classmethod
    def read(cls, workdir: str, stage: str) -> StageRecord | None:
        """``<workdir>/stages/<stage>.json``, or None when missing or unreadable."""
        path = Path(workdir) / STAGES_DIR / f"{stage}.json"
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            log.warning("ignoring an unreadable stage record %s", path)
            return None

    def write(self, workdir: str) -> Path:
        """Write the record atomically (temporary file, then rename); returns its path."""
        path = Path(workdir) / STAGES_DIR / f"{self.stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2, sort_keys=True, default=str))
        tmp.replace(path)
        return path


class Stage(Protocol):
    """One stage of the main job.

    Attributes:
        name: the stage's name in configs, records and MLflow.
        upstream: stages whose output digests enter this stage's fingerprint (those that
            ran in this workdir and are among ``run.stages``).
        requires: stages whose outputs this stage reads and that must have finished with
            the current config (a subset of ``upstream``).
        output: the :class:`StageOutput` type that :meth:`run` returns.
    """

    name: ClassVar[str]
    upstream: ClassVar[tuple[str, ...]]
    requires: ClassVar[tuple[str, ...]]
    output: ClassVar[type[StageOutput]]

    def settings(self, context: StageContext) -> dict[str, Any]:
        """The settings that fingerprint the stage (JSON-able)."""
        ...

    def resources(self, config: RunConfig) -> dict[str, Reservation]:
        """What each unit of the stage's work reserves on the Ray cluster (decode task,
        encoder actor, Train worker, probe task, sweep trial): the runner logs it, and the
        stage hands this very value to its job, which reserves exactly it."""
        ...

    def prepare(self, context: StageContext) -> None:
        """Work before the inputs are checked (the sample library); usually nothing."""
        ...

    def check(self, context: StageContext) -> None:
        """Check this stage's inputs before any stage runs; raises an :class:`LvmaeError`."""
        ...

    def run(self, context: StageContext) -> StageOutput:
        """Do the stage's work and return its typed output."""
        ...


@dataclass
class StageContext:
    """What a stage runs with: the run's config, its paths, the MLflow store and the
    records of the stages finished so far."""

    config: RunConfig
    tracking_uri: str | None
    records: dict[str, StageRecord] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    stage_run_id: str | None = None
    parent_run_id: str | None = None
    outs: dict[str, str] = field(default_factory=dict)
    run_names: dict[str, str] = field(default_factory=dict)
    checkpoint: str | None = None
    overwrite: bool = False
    progress: bool = True
    pending: set[str] = field(default_factory=set)
    _labels: list[str] | None = field(default=None, repr=False)

    @classmethod
    def create(cls, config: RunConfig, **given: Any) -> StageContext:
        """The context of a run of ``config``, its MLflow store resolved once for every
        stage (:func:`lvmae.tracking.resolve_tracking_uri` of ``run.tracking_uri`` and the
        workdir). ``given``: what a single command names itself (``outs``, ``run_names``,
        ``checkpoint``, ``overwrite``, ``progress``, or ``tracking_uri=None`` to let the job
        decide). ``pending``: the stages this invocation will run (set by the runner), so
        a stage checks only inputs that exist before it starts, not upstream outputs."""
        use_object_store(config.extract.storage)  # every stage reads object storage alike
        if "tracking_uri" not in given:
            workdir = str(Path(config.run.workdir))
            given["tracking_uri"] = resolve_tracking_uri(config.run.tracking_uri, workdir)
        return cls(config, **given)

    def out(self, stage: str, default: str | None = None) -> str:
        """Where ``stage`` writes: the command's ``--out``, else ``default``, else
        ``<workdir>/<stage>``."""
        return self.outs.get(stage) or default or self.path(stage)

    def out_flag(self, stage: str) -> str:
        """What names ``stage``'s output in an error: the command's ``--out``, else
        ``run.workdir``."""
        return "--out" if stage in self.outs else "run.workdir"

    def run_name(self, stage: str) -> str:
        """The name of ``stage``'s own run (MLflow, checkpoints): the command's, else
        ``<run.name>-<the stage's fingerprint>`` (one per config)."""
        if stage in self.run_names:
            return self.run_names[stage]
        return f"{self.config.run.name}-{self.fingerprint(stage)[:8]}"

    @property
    def workdir(self) -> str:
        """``run.workdir``: records, checkpoints, probe results, report."""
        return str(Path(self.config.run.workdir))

    @property
    def embeddings(self) -> str:
        """The extraction output (``run.embeddings`` or ``<workdir>/extract``)."""
        return self.config.run.embeddings_uri()

    def path(self, *parts: str) -> str:
        """A path under the workdir."""
        return str(Path(self.workdir, *parts))

    def fingerprint(self, stage: str) -> str:
        """The fingerprint of ``stage`` under the current config (set by the runner)."""
        return self.fingerprints[stage]

    def output(self, stage: str, kind: type[OutputT]) -> OutputT:
        """The typed output of a finished ``stage``.

        Raises:
            StageError: the stage has no record, or its record does not parse as ``kind``.
        """
        record = self.records.get(stage)
        if record is None:
            raise StageError(f"stage {stage} has not run in {self.workdir}")
        try:
            return kind.model_validate(record.outputs)
        except ValidationError as exc:
            raise StageError(
                f"the record of stage {stage} in {self.workdir} is from another version; "
                f"rerun it with --force {stage}"
            ) from exc

    def labels_settings(self) -> list[dict[str, Any]]:
        """The run's labels as fingerprint settings (a file's content digest)."""
        c = self.config
        items: list[dict[str, Any]] = [
            x.model_dump() if isinstance(x, LabelsSource) else {"path": x, "sha": file_digest(x)}
            for x in c.run.labels
        ]
        if c.samples is not None:
            items.append({"samples": c.samples.model_dump(mode="json")})
        return items

    def labels_files(self) -> list[str]:
        """The run's labels files, made once per run (probe and tune share them): files as
        given; benchmark sources converted with :func:`lvmae.labels.from_source`, matched
        to the extracted video ids, into ``<workdir>/labels/<task>.csv``; the sample
        library's ``labels.csv`` copied there, named after what tells its classes apart."""
        if self._labels is not None:
            return self._labels
        paths, known = [], None
        for item in self.config.run.labels:
            if isinstance(item, str):
                paths.append(item)
                continue
            if known is None:
                known = read_videos(self.embeddings)["video_id"].to_pylist()
            table = from_source(
                item.dataset, item.source, task=item.task, split=item.split,
                video_ids=known, val_fraction=item.val_fraction,
            )  # fmt: skip
            paths.append(str(write_labels(table, self.path("labels", f"{item.task_name()}.csv"))))
        samples = self.config.samples
        if samples is not None:
            recipes = samples.recipes
            orders = {*ORDER_RECIPES, *HARD_ORDER_RECIPES}
            name = "scene_order" if recipes and set(recipes) <= orders else "recipe"
            target = Path(self.path("labels", f"{name}.csv"))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(self.config.run.input) / "labels.csv", target)
            paths.append(str(target))
        self._labels = list(dict.fromkeys(paths))
        return self._labels


class BaseStage:
    """Defaults for the optional parts of :class:`Stage`."""

    requires: ClassVar[tuple[str, ...]] = ()
    joins_ray_itself: ClassVar[bool] = False
    """True for a stage whose job joins Ray itself, later (extraction overlaps Ray's start
    with its own set-up); a single command then leaves joining to it."""

    def resources(self, config: RunConfig) -> dict[str, Reservation]:
        return {"driver": Reservation(1.0)}

    def prepare(self, context: StageContext) -> None:
        return None

    def check(self, context: StageContext) -> None:
        return None


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The real-number entries of ``metrics`` (bools left out)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
