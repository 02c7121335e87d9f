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


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is ``{}``).

    Raises:
        ConfigError: the file is missing, not valid YAML, or not a mapping; the message names
            the file and ``what`` it should hold.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping ({what}), got {type(loaded).__name__}")
    return loaded


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
        source = str(path)
        loaded = read_yaml_mapping(path, "config")
        section = getattr(model, "SECTION", None)
        data = dict(loaded.get(section, loaded)) if section else loaded
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


class PretrainConfig(BaseModel):
    """Pre-training settings (stage 2 of LV-MAE: the masked-embedding autoencoder).

    Defaults follow the paper (Naiman et al., ICCV 2025, §4; DESIGN.md "Reference facts"):
    AdamW betas (0.9, 0.95), weight decay 0.05, ``lr = blr * batch / 256`` with blr 1.5e-4
    (MAE's scaling rule), 40 warm-up epochs then cosine to 0 per iteration, global batch 16,
    150 epochs, mask ratio 0.5, semantic masking, windows of up to 256 tokens (one token is
    one ``segment_s`` segment). The model preset defaults to ``small`` (``paper`` is the
    paper's 32-block encoder).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    SECTION: ClassVar[str] = "pretrain"

    # model (None: the preset's value, see lvmae.model.PRESETS)
    preset: Literal["paper", "base", "small", "tiny"] = Field(
        "small", description="model size preset; 'paper' is LV-MAE §4's"
    )
    width: int | None = Field(None, ge=1, description="encoder width (None: preset's)")
    depth: int | None = Field(None, ge=1, description="encoder blocks (None: preset's)")
    heads: int | None = Field(None, ge=1, description="encoder heads (None: preset's)")
    decoder_width: int | None = Field(None, ge=1, description="decoder width (None: preset's)")
    decoder_depth: int | None = Field(None, ge=1, description="decoder blocks (None: preset's)")
    decoder_heads: int | None = Field(None, ge=1, description="decoder heads (None: preset's)")
    max_tokens: int = Field(256, ge=2, description="token cap per window (256 × 5 s ≈ 21 min)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout rate in the blocks")
    drop_path: float = Field(0.0, ge=0, lt=1, description="stochastic depth rate")
    # masking and loss
    mask_ratio: float = Field(0.5, gt=0, lt=1, description="fraction of real tokens masked")
    masking: Literal["semantic", "random"] = Field(
        "semantic", description="semantic: mask the most redundant tokens (the paper's)"
    )
    decoder_fraction: float = Field(
        1.0, gt=0, le=1, description="fraction of masked tokens reconstructed and scored"
    )
    loss: Literal["mse", "cosine"] = Field(
        "mse", description="mse to the L2-normalised target (the paper's), or cosine"
    )
    # data
    min_tokens: int = Field(2, ge=2, description="videos with fewer segments are skipped")
    window: Literal["cap", "random"] = Field(
        "cap",
        description="cap: random window of min(len, max_tokens) tokens; random: random "
        "duration between min_window_s and the cap (the reference code)",
    )
    min_window_s: float = Field(10.0, ge=0, description="shortest 'random' window, seconds")
    segment_s: float = Field(5.0, gt=0, description="seconds per token (segment length)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of videos held out")
    split_seed: int = Field(0, description="seed of the stable train/val split by video id")
    # optimisation
    epochs: int = Field(150, ge=1, description="passes over the training videos")
    batch_size: int = Field(16, ge=1, description="GLOBAL batch (windows), split over workers")
    blr: float = Field(1.5e-4, gt=0, description="base lr; lr = blr * batch_size / 256")
    lr: float | None = Field(None, gt=0, description="absolute peak lr (overrides blr)")
    warmup_epochs: int = Field(40, ge=0, description="linear warm-up epochs")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay (not on 1-D)")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    min_lr: float = Field(0.0, ge=0, description="lr at the end of the cosine")
    clip_grad: float | None = Field(None, gt=0, description="max gradient norm (None: off)")
    seed: int = Field(0, description="seed of weights, masks and windows")
    # run
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks)")
    use_gpu: bool = Field(False, description="one GPU per worker")
    checkpoint_every_steps: int = Field(100, ge=1, description="optimizer steps per checkpoint")
    keep_checkpoints: int = Field(3, ge=1, description="newest checkpoints kept")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts (-1: no limit)")
    experiment: str = Field("lvmae-pretrain", min_length=1, description="MLflow experiment")
    run_name: str | None = Field(
        None, description="run name (MLflow run and checkpoint directory; default 'lvmae')"
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (None: a SQLite store next to the outputs)"
    )
    log_every_steps: int = Field(10, ge=1, description="optimizer steps per metrics log")
    val_every_epochs: int = Field(1, ge=1, description="epochs per validation pass")
    monitor_every_epochs: int = Field(
        0, ge=0, description="epochs per reconstruction-retrieval monitor (R@k; 0: off)"
    )

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs})"
            )
        if self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"
            )
        if self.window == "random" and self.min_window_tokens() > self.max_tokens:
            raise ValueError(
                f"min_window_s ({self.min_window_s} s = {self.min_window_tokens()} tokens of "
                f"{self.segment_s} s) must fit in max_tokens ({self.max_tokens})"
            )
        if self.batch_size % self.num_workers:
            raise ValueError(
                f"batch_size ({self.batch_size}) is the global batch and must be divisible by "
                f"num_workers ({self.num_workers})"
            )
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must each be in [0, 1), got {self.betas}")
        for w, h, side in (
            (self.width, self.heads, "encoder"),
            (self.decoder_width, self.decoder_heads, "decoder"),
        ):
            if w is not None and h is not None and w % h:
                raise ValueError(f"{side} width ({w}) must be divisible by its heads ({h})")
        if self.min_lr > self.effective_lr():
            raise ValueError(
                f"min_lr ({self.min_lr}) must not exceed the peak lr ({self.effective_lr()})"
            )
        return self

    def effective_lr(self) -> float:
        """Peak learning rate: ``lr`` when set, else ``blr * batch_size / 256`` (the MAE
        scaling rule used by LV-MAE §4, with the global batch)."""
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256

    def min_window_tokens(self) -> int:
        """Shortest ``"random"`` window in tokens: ``ceil(min_window_s / segment_s)``, at
        least ``min_tokens`` (10 s of 5 s segments: 2 tokens)."""
        import math

        return max(self.min_tokens, math.ceil(self.min_window_s / self.segment_s - 1e-9))

    def worker_batch_size(self) -> int:
        """Windows per worker per step: ``batch_size / num_workers``."""
        return self.batch_size // self.num_workers
