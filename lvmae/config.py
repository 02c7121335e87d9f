"""Typed, validated configuration, loaded from YAML and overridden from the command line.

Validation happens at the edge (pydantic): a bad value stops the run before any work with a
message naming the field and what to fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENCODER_CHOICES = ("tiny", "languagebind-video-ft", "languagebind-video-huge")


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message says what to fix."""


class ExtractConfig(BaseModel):
    """Extraction settings (stage 1 of LV-MAE: segments → frozen-encoder embeddings).

    Defaults follow the paper (Naiman et al., ICCV 2025, §3.1 and §4): 5-second segments
    without overlap, 8 frames per segment, 224 px, LanguageBind encoder (``tiny`` here: the
    offline stand-in, see :mod:`lvmae.encoders`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    SECTION: ClassVar[str] = "extract"

    # what goes in
    extensions: tuple[str, ...] = Field(
        (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v"),
        description="file extensions taken when the input is a directory or a glob",
    )
    # segment plan
    segmenter: Literal["fixed", "shots"] = "fixed"
    segment_s: float = Field(5.0, gt=0, description="segment length, seconds")
    stride_s: float | None = Field(None, gt=0, description="seconds between segment starts")
    min_segment_s: float = Field(1.0, ge=0, description="shortest trailing segment kept, s")
    shot_threshold: float = Field(0.3, gt=0, lt=1, description="histogram distance of a cut")
    shot_min_s: float = Field(2.0, ge=0, description="shots shorter than this are merged, s")
    shot_max_s: float = Field(10.0, gt=0, description="shots longer than this are split, s")
    shot_analysis_fps: float = Field(4.0, gt=0, description="frames/s decoded to find cuts")
    # frame sampling
    frames_per_segment: int = Field(8, ge=1, le=64)
    image_size: int = Field(224, ge=16, le=1024, description="pixels, square crop")
    # decoding
    decoder: Literal["decord", "pyav"] = "decord"
    decode_threads: int = Field(1, ge=0, le=64, description="threads per decoder (0: auto)")
    video_time_limit_s: float = Field(3600.0, gt=0, description="per video, seconds")
    max_clips_in_flight: int = Field(4, ge=1, le=1024, description="per video")
    # encoder
    encoder: Literal["tiny", "languagebind-video-ft", "languagebind-video-huge"] = "tiny"
    encoder_checkpoint: str | None = Field(
        None, description="hub id or local directory overriding the preset's checkpoint"
    )
    encoder_seed: int = Field(0, description="weights seed of the tiny encoder")
    batch_size: int = Field(16, ge=1, description="segments per encoder call")
    encoder_actors: int = Field(1, ge=1, description="encoder actor pool size")
    gpus_per_actor: float | None = Field(
        None, ge=0, description="GPUs per encoder actor; default 1 when the cluster has GPUs"
    )
    decode_cpus: float = Field(1.0, gt=0, description="CPUs reserved per decode task")
    decode_memory_mb: int = Field(
        1024, ge=64, description="memory reserved per decode task (MiB), for Ray's scheduler"
    )
    # output
    rows_per_file: int = Field(256, ge=1, description="segment rows per Parquet file")

    @model_validator(mode="after")
    def _check(self) -> ExtractConfig:
        if self.shot_min_s > self.shot_max_s:
            raise ValueError(
                f"shot_min_s ({self.shot_min_s}) must not exceed shot_max_s ({self.shot_max_s})"
            )
        if not self.extensions:
            raise ValueError("extensions must name at least one file extension")
        return self

    def embedding_fields(self) -> dict[str, Any]:
        """The fields that change the embeddings written (not how fast they are made)."""
        keys = [
            "segmenter", "segment_s", "stride_s", "min_segment_s", "frames_per_segment",
            "image_size", "encoder", "encoder_checkpoint", "encoder_seed",
        ]  # fmt: skip
        if self.segmenter == "shots":
            keys += ["shot_threshold", "shot_min_s", "shot_max_s", "shot_analysis_fps"]
        return {k: getattr(self, k) for k in keys}

    def config_id(self) -> str:
        """Short stable hash of :meth:`embedding_fields`: equal ids ⇒ comparable outputs."""
        blob = json.dumps(self.embedding_fields(), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: ``source: field: message (got value)``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(config)"
        got = f" (got {err['input']!r})" if "input" in err and err["type"] != "missing" else ""
        lines.append(f"{source}: {loc}: {err['msg']}{got}")
    return "\n".join(lines)


def load_config(
    model: type[BaseModel], path: str | Path | None = None, overrides: dict | None = None
) -> Any:
    """Build ``model`` from a YAML file (optional) plus overrides (``None`` values ignored).

    A YAML file may hold the fields at top level or under a section named after the stage
    (``extract:``).

    Raises:
        ConfigError: missing/unreadable file, invalid YAML, unknown fields, bad values.
    """
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping of settings, got {type(loaded).__name__}"
            )
        section = getattr(model, "SECTION", None)
        data = dict(loaded.get(section, loaded)) if section else loaded
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc
