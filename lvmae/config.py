"""Typed, validated configuration, loaded from YAML and overridden from the command line.

Validation happens at the edge (pydantic): a bad value stops the run before any work with a
message naming the field and what to fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from difflib import get_close_matches
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lvmae.encoders.registry import ENCODER_NAMES
from lvmae.errors import LvmaeError
from lvmae.probes.kinds import KINDS, PROBE_KINDS

# The plug-in registries are plain data (docs/design.md "Plug-ins"): the names a config
# accepts come from them, so a new encoder or probe kind is not listed here again.
EncoderName = Literal[ENCODER_NAMES]  # type: ignore[valid-type]
ProbeKind = Literal[PROBE_KINDS]  # type: ignore[valid-type]
BaselineName = Literal["mean-pool", "transformer"]
ClsSource = Literal["learned", "encoder"]
StageName = Literal["extract", "pretrain", "probe", "tune", "report"]
LabelDataset = Literal["lvu", "coin", "breakfast"]

BASELINES: tuple[str, ...] = get_args(BaselineName)
"""Baselines scored on the same splits as the probes (raw segment embeddings)."""
CLS_SOURCES: tuple[str, ...] = get_args(ClsSource)
"""Where the attentive probe's [CLS] comes from: ``"encoder"`` (the frozen LV-MAE encoder's
own [CLS] output, the paper's, LV-MAE §8) or ``"learned"`` (a new learned token)."""
STAGE_NAMES: tuple[str, ...] = get_args(StageName)
"""The stages of the main job, in chain order (see ``pipelines/stages``)."""
LABEL_DATASETS: tuple[str, ...] = get_args(LabelDataset)
"""Benchmarks whose annotations convert into labels files (see :mod:`lvmae.labels`)."""
ShotDetector = Literal["transnetv2", "adaptive"]
SHOT_DETECTORS: dict[str, tuple[float, float, float, str]] = {
    "transnetv2": (0.5, 0.0, 1.0, "TransNetV2's per-frame transition probability"),
    "adaptive": (3.0, 0.0, float("inf"), "PySceneDetect's adaptive ratio (a frame's content "
                 "change over its neighbours' mean)"),
}  # fmt: skip
"""Cut detectors of ``segmenter: shots`` (see :mod:`lvmae.video.shots`): name -> (default
threshold, lower and upper bound (exclusive), what the threshold is)."""


class ConfigError(LvmaeError, ValueError):
    """A configuration file or value is invalid; the message says what to fix."""


_SECRET_WORDS = ("key", "secret", "token", "password", "credential")


class StorageConfig(BaseModel):
    """How to reach object storage (``s3://``; ``gs://`` takes its defaults): the endpoint
    of an S3-compatible server, the region, and the client's retry and timeout settings
    (botocore's, through s3fs; pyarrow's for the Parquet output). No credentials: those
    come from the standard chains only (AWS environment variables, profiles, instance or
    pod roles; GCS application-default credentials), so no secret is ever written with
    the config into a manifest or MLflow.

    ``endpoint_url`` None: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` if set, else AWS.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (http(s)://host:port); None: env or AWS"
    )
    region: str | None = Field(None, description="S3 region; None: the chain's / us-east-1")
    max_attempts: int = Field(
        5, ge=1, le=20, description="attempts per request (botocore/pyarrow retries, backoff)"
    )
    retry_mode: Literal["standard", "adaptive", "legacy"] = "standard"
    connect_timeout_s: float = Field(10.0, gt=0, description="seconds to connect")
    read_timeout_s: float = Field(60.0, gt=0, description="seconds a read may stall")
    stream: bool = Field(
        True,
        description="decode remote videos with PyAV while they download, whatever `decoder` "
        "(decord needs the whole object first); false: download, then `decoder`",
    )
    fetch_dir: str | None = Field(
        None,
        description="local directory of partial downloads (lvmae-fetch-*); "
        "None: <system temp>/lvmae-fetch",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            secret = [k for k in data if any(w in str(k).lower() for w in _SECRET_WORDS)]
            if secret:
                raise ValueError(
                    f"{', '.join(map(str, secret))}: credentials never go in the config (it "
                    f"is written to the manifest and MLflow); set AWS_ACCESS_KEY_ID / "
                    f"AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or GCS application-default "
                    f"credentials"
                )
        return data

    @model_validator(mode="after")
    def _check(self) -> StorageConfig:
        if self.endpoint_url is not None and "://" not in self.endpoint_url:
            raise ValueError(
                f"endpoint_url {self.endpoint_url!r} needs a scheme: http://host:port or "
                f"https://host"
            )
        return self


class ExtractConfig(BaseModel):
    """Extraction settings (stage 1 of LV-MAE: segments → frozen-encoder embeddings).

    Defaults follow the paper (Naiman et al., ICCV 2025, §3.1 and §4): 5-second segments
    without overlap, 8 frames per segment, 224 px, LanguageBind encoder (``tiny`` here: the
    offline stand-in, see :mod:`lvmae.encoders.models`).
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
    shot_detector: ShotDetector = Field(
        "transnetv2", description="cut detector of segmenter: shots (see SHOT_DETECTORS)"
    )
    shot_threshold: float | None = Field(
        None, description="cut threshold of the shot detector; None: the detector's default"
    )
    shot_min_s: float = Field(2.0, ge=0, description="shots shorter than this are merged, s")
    shot_max_s: float = Field(10.0, gt=0, description="shots longer than this are split, s")
    # frame sampling
    frames_per_segment: int = Field(8, ge=1, le=64)
    image_size: int = Field(224, ge=16, le=1024, description="pixels, square crop")
    # decoding
    decoder: Literal["decord", "pyav", "nvdec", "auto"] = Field(
        "pyav",
        description="pyav or decord: CPU decoders (PyAV by default: per CPU-second it reads "
        "1.02-1.22x (median 1.09) what decord does on 5-min files and 1.85x on a 1-hour one, "
        "as decord's cost per second grows with the file; benchmarks/RESULTS.md); nvdec: the "
        "GPU's video decoder (PyNvVideoCodec), inside the encoder actors, which then take "
        "videos rather than clips (exact mode only); auto: NVDEC where the encoder actors hold "
        "a GPU that decodes the video's codec, else PyAV (the reason is recorded per video: "
        "decoder_reason)",
    )
    nvdec_sessions: int = Field(
        4,
        ge=1,
        le=64,
        description="videos each encoder actor decodes at once with NVDEC (one decoder "
        "session each; a GPU has several NVDEC engines: 7 on an H100)",
    )
    decode_mode: Literal["exact", "fast"] = Field(
        "exact",
        description="exact: the planned frames; fast: PyAV skipping non-reference frames and "
        "the loop filter, the nearest decodable frame to each planned time",
    )
    decode_threads: int = Field(1, ge=0, le=64, description="threads per decoder (0: auto)")
    video_time_limit_s: float = Field(3600.0, gt=0, description="per video, seconds")
    max_clips_in_flight: int = Field(4, ge=1, le=1024, description="per video")
    malloc_arenas: int | None = Field(
        2,
        ge=1,
        le=1024,
        description="glibc malloc arenas of each extraction worker process (MALLOC_ARENA_MAX "
        "in the decode tasks' and encoder actors' runtime env): glibc's default, 8 per core of "
        "the host, let a decode worker grow with every video it decoded; null: glibc's default",
    )
    task_retries: int = Field(
        3,
        ge=0,
        le=100,
        description="times a decode task (or an NVDEC actor's call) runs again after its worker "
        "process died (a native crash in a decoder, the out-of-memory killer); then its video "
        "is recorded as failed and the run goes on (Ray Data's own default retries forever)",
    )
    range_s: float | None = Field(
        600.0,
        gt=0,
        description="a video longer than this many seconds (by its container's header) is "
        "decoded as several tasks, each over a range of about this many seconds of its "
        "segments, so one long video keeps several cores busy (shot segments: cut after one "
        "task detects the shots); null: one task per video",
    )
    # encoder
    encoder: EncoderName = "tiny"
    encoder_checkpoint: str | None = Field(
        None, description="hub id or local directory overriding the preset's checkpoint"
    )
    encoder_seed: int = Field(0, description="weights seed of the tiny encoder")
    batch_size: int = Field(16, ge=1, description="segments per encoder call")
    encoder_actors: int = Field(1, ge=1, description="encoder actor pool size")
    gpus_per_actor: float | None = Field(
        None,
        ge=0,
        description="GPUs per encoder actor; default 1 for languagebind-* (even before a GPU "
        "node is up), 0 for tiny; 0 runs the encoder on CPU",
    )
    encoder_cpus: float | None = Field(
        None,
        ge=0,
        description="CPUs reserved per encoder actor; default 0.25 with a GPU, 1 without",
    )
    decode_cpus: float = Field(1.0, gt=0, description="CPUs reserved per decode task")
    decode_resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources reserved per decode task besides decode_cpus, e.g. "
        "{lvmae_decode: 1} to keep decoding on the nodes that declare it (a CPU worker group)",
    )
    decode_memory_mb: int = Field(
        1536,
        ge=64,
        description="memory reserved per decode task (MiB), for Ray's scheduler; a 720p "
        "task with the tiny encoder inside peaks near 0.9 GiB",
    )
    # output
    rows_per_file: int = Field(
        4096, ge=1, description="most segment rows per Parquet file (a flush writes sooner)"
    )
    flush_s: float = Field(
        30.0, gt=0, description="seconds between writes of finished videos' rows, at most"
    )
    # object storage (input and output URIs): endpoint, retries, timeouts; never credentials
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="after")
    def _check(self) -> ExtractConfig:
        if self.shot_threshold is not None:
            default, low, high, meaning = SHOT_DETECTORS[self.shot_detector]
            if not low < self.shot_threshold < high:
                raise ValueError(
                    f"shot_threshold {self.shot_threshold} is out of range for shot_detector "
                    f"{self.shot_detector!r}: it is {meaning}, in ({low:g}, {high:g}) "
                    f"(default {default:g}; null for the default)"
                )
        if self.shot_min_s > self.shot_max_s:
            raise ValueError(
                f"shot_min_s ({self.shot_min_s}) must not exceed shot_max_s ({self.shot_max_s})"
            )
        if not self.extensions:
            raise ValueError("extensions must name at least one file extension")
        if self.decoder == "nvdec" and self.encoder_gpus() == 0:
            raise ValueError(
                f"decoder nvdec decodes on the encoder actor's GPU, but encoder "
                f"{self.encoder!r} runs on CPU here (gpus_per_actor 0): set gpus_per_actor: "
                f"1 on a cluster with GPUs, or decoder: auto (NVDEC where a GPU is held, "
                f"else the CPU decoders)"
            )
        if self.decoder == "nvdec" and self.decode_mode == "fast":
            raise ValueError(
                "decoder nvdec decodes the planned frames (decode_mode: exact); decode_mode "
                "fast is PyAV skipping frames on the CPU: set decode_mode: exact, or "
                "decoder: auto"
            )
        bad = {k: v for k, v in self.decode_resources.items() if v <= 0 or k in ("CPU", "GPU")}
        if bad:
            raise ValueError(
                f"decode_resources takes custom Ray resources with positive amounts "
                f"(decode_cpus sets the CPUs; decode tasks take no GPU), got {bad}"
            )
        return self

    def encoder_gpus(self) -> float:
        """GPUs per encoder actor: ``gpus_per_actor``, else 1 for the ``languagebind-*``
        encoders (whether or not a GPU node is up yet) and 0 for ``tiny``."""
        if self.gpus_per_actor is not None:
            return self.gpus_per_actor
        return 0.0 if self.encoder == "tiny" else 1.0

    def encoder_cpu_share(self) -> float:
        """CPUs reserved per encoder actor: ``encoder_cpus``, else 0.25 beside a GPU (it only
        feeds the GPU) and 1 when the encoder computes on the CPU."""
        if self.encoder_cpus is not None:
            return self.encoder_cpus
        return 0.25 if self.encoder_gpus() > 0 else 1.0

    def encodes_in_decode_tasks(self) -> bool:
        """The ``tiny`` encoder on CPU costs a tenth of decoding: it runs inside each decode
        task (loaded once per worker process), so every core decodes and no frame crosses
        the object store. Any other encoder gets its own actor pool."""
        return self.encoder == "tiny" and self.encoder_gpus() == 0

    def embedding_fields(self) -> dict[str, Any]:
        """The fields that change the embeddings written (not how fast they are made)."""
        keys = [
            "segmenter", "segment_s", "stride_s", "min_segment_s", "frames_per_segment",
            "image_size", "encoder", "encoder_checkpoint", "encoder_seed", "decode_mode",
        ]  # fmt: skip
        if self.segmenter == "shots":
            keys += ["shot_detector", "shot_min_s", "shot_max_s"]
        fields = {k: getattr(self, k) for k in keys}
        if self.segmenter == "shots":
            fields["shot_threshold"] = self.shot_cut_threshold
        return fields

    @property
    def shot_cut_threshold(self) -> float:
        """``shot_threshold``, or the shot detector's default when it is None."""
        if self.shot_threshold is not None:
            return self.shot_threshold
        return SHOT_DETECTORS[self.shot_detector][0]

    def config_id(self) -> str:
        """Short stable hash of :meth:`embedding_fields`: equal ids ⇒ comparable outputs."""
        blob = json.dumps(self.embedding_fields(), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


class PretrainConfig(BaseModel):
    """Pre-training settings (stage 2 of LV-MAE: the masked-embedding autoencoder).

    Defaults follow the paper (Naiman et al., ICCV 2025, §4; docs/design.md "Reference facts"):
    AdamW betas (0.9, 0.95), weight decay 0.05, ``lr = blr * global_batch / 256`` with blr
    1.5e-4 (MAE's scaling rule), 40 warm-up epochs then cosine to 0 per iteration, batch 16
    **per worker** (as the authors' reference code and MAE: ``global_batch = batch_size *
    num_workers``, 128 on their 8 GPUs), 150 epochs, mask ratio 0.5, semantic masking,
    windows of up to 256 tokens (one token is one ``segment_s`` segment). The model preset
    defaults to ``small`` (``paper`` is the paper's 32-block encoder).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    SECTION: ClassVar[str] = "pretrain"

    # model (None: the preset's value, see lvmae.mae.model.PRESETS)
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
        description="cap: random window of min(len, max_tokens) tokens; random: a duration "
        "uniform in [min_window_s, max_tokens * segment_s] clipped to the video (the "
        "reference code)",
    )
    min_window_s: float = Field(10.0, ge=0, description="shortest 'random' window, seconds")
    segment_s: float = Field(5.0, gt=0, description="seconds per token (segment length)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of videos held out")
    split_seed: int = Field(0, description="seed of the stable train/val split by video id")
    # optimisation
    epochs: int = Field(150, ge=1, description="passes over the training videos")
    batch_size: int = Field(16, ge=1, description="windows per worker per step (global: x workers)")
    batch_tokens: int | None = Field(
        None, ge=1,
        description="token budget instead of batch_size: the most visible (encoder) tokens in "
        "one worker's micro-batch ('max tokens' batching); None: batch_size windows",
    )  # fmt: skip
    accumulate: int = Field(1, ge=1, description="micro-batches per optimizer step per worker")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU"
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the transformer blocks (auto: on CUDA)"
    )
    cuda_graphs: Literal["auto", "on", "off"] = Field(
        "auto",
        description="capture the step once per capacity bucket and replay (auto: on CUDA, "
        "unless attention is split)",
    )
    attention: Literal["auto", "varlen", "padded", "split"] = Field(
        "auto", description="attention kernel over packed rows (auto: varlen on CUDA, split on CPU)"
    )
    capacity_buckets: int = Field(
        4, ge=1, le=16, description="fixed step shapes per run (CUDA graphs): padding <= 1/n"
    )
    blr: float = Field(1.5e-4, gt=0, description="base lr; lr = blr * global batch / 256")
    lr: float | None = Field(None, gt=0, description="absolute peak lr (overrides blr)")
    warmup_epochs: int = Field(40, ge=0, description="linear warm-up epochs")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay (not on 1-D)")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    min_lr: float = Field(0.0, ge=0, description="lr at the end of the cosine")
    clip_grad: float | None = Field(None, gt=0, description="max gradient norm (None: off)")
    seed: int = Field(0, ge=0, description="seed of weights, masks and windows")
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
        # lvmae.mae.sequences.sample_window's rounding: whole seconds in
        # [ceil(min_window_s), floor(max_tokens * segment_s)]
        longest_s = math.floor(self.max_tokens * self.segment_s + 1e-9)
        if self.window == "random" and math.ceil(self.min_window_s - 1e-9) > longest_s:
            raise ValueError(
                f"min_window_s ({self.min_window_s} s, drawn in whole seconds) must fit in "
                f"max_tokens ({self.max_tokens}) segments of {self.segment_s} s ({longest_s} "
                "whole seconds)"
            )
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must each be in [0, 1), got {self.betas}")
        for w, h, side in (
            (self.width, self.heads, "encoder"),
            (self.decoder_width, self.decoder_heads, "decoder"),
        ):
            if w is not None and h is not None and w % h:
                raise ValueError(f"{side} width ({w}) must be divisible by its heads ({h})")
        if self.batch_tokens is not None:
            widest = max(1, math.floor(self.max_tokens * (1.0 - self.mask_ratio)))
            if self.batch_tokens < widest:
                raise ValueError(
                    f"batch_tokens ({self.batch_tokens}) must hold one full window: a "
                    f"{self.max_tokens}-token window keeps {widest} visible tokens at mask_ratio "
                    f"{self.mask_ratio}"
                )
        if self.cuda_graphs == "on" and not self.use_gpu:
            raise ValueError("cuda_graphs: on needs use_gpu: true (CUDA graphs run on GPUs only)")
        if self.cuda_graphs == "on" and self.attention == "split":
            raise ValueError(
                "attention: split reads every batch's window lengths on the host, which a "
                "captured CUDA graph cannot: set attention to varlen, padded or auto, or "
                "cuda_graphs to off or auto (auto runs split without graphs)"
            )
        # the run's peak lr is at most effective_lr() without token budgets (batch_plan only
        # lowers the batch to fit the data); under token budgets it is known from the data
        # only, and batch_plan checks min_lr against it
        if (self.lr is not None or self.batch_tokens is None) and (
            self.min_lr > self.effective_lr()
        ):
            raise ValueError(
                f"min_lr ({self.min_lr}) must not exceed the peak lr ({self.effective_lr()})"
            )
        return self

    def effective_lr(self, global_batch: int | None = None) -> float:
        """Peak learning rate: ``lr`` when set, else ``blr * global_batch / 256`` (MAE's
        scaling rule, used by LV-MAE §4 and the authors' reference code), with
        ``global_batch`` defaulting to :meth:`global_batch_size`."""
        if self.lr is not None:
            return self.lr
        batch = self.global_batch_size() if global_batch is None else global_batch
        return self.blr * batch / 256

    def min_window_tokens(self) -> int:
        """Shortest ``"random"`` window in tokens, as
        :func:`lvmae.mae.sequences.sample_window` draws it: the shortest whole-second
        duration, ``ceil(min_window_s)``, in whole segments (rounded down), at least 1 (10 s
        of 5 s segments: 2 tokens; 10 s of 10 s segments: 1 token, which has no masked token
        to score). A video shorter than that gives a window of its whole length."""
        return max(1, int(math.ceil(self.min_window_s - 1e-9) // self.segment_s))

    def worker_batch_size(self) -> int:
        """Windows per worker per step: ``batch_size``."""
        return self.batch_size

    def global_batch_size(self) -> int:
        """Windows per optimizer step over all workers: ``batch_size * num_workers *
        accumulate`` (with ``batch_tokens``, the lr rule uses the mean windows per step of the
        epoch plan instead: :func:`pipelines.pretrain.batch_plan`)."""
        return self.batch_size * self.num_workers * self.accumulate

    def step_settings(self, device_type: str) -> dict[str, Any]:
        """How the training step runs on ``device_type`` (``"cuda"`` or ``"cpu"``): the
        ``auto`` switches resolved. CUDA: bf16 autocast, compiled blocks, CUDA graphs, varlen
        attention; CPU: fp32, eager, exact shapes, per-window attention (the exact path).
        ``attention: split`` needs the host lengths of every batch, so it runs without CUDA
        graphs (``cuda_graphs: on`` with it is refused by the config check)."""
        cuda = device_type == "cuda"

        def switch(value: str) -> bool:
            return cuda if value == "auto" else value == "on"

        precision = self.precision
        if precision == "auto":
            precision = "bf16" if cuda else "fp32"
        return {
            "precision": precision,
            "compile": switch(self.compile),
            "graphs": cuda and switch(self.cuda_graphs) and self.attention != "split",
            "backend": self.attention,
        }


# ------------------------------------------------------------------------------- probes

PAPER_PROBE_RECIPES: dict[str, dict[str, Any]] = {k: dict(s.recipe) for k, s in KINDS.items()}
"""The paper's probe recipes (LV-MAE §8; docs/design.md "Reference facts"), from the
registry of probe kinds (:data:`lvmae.probes.kinds.KINDS`). The pooler has no recipe of its
own in the paper; it reuses the attentive probe's."""


class ProbeRecipe(BaseModel):
    """Recipe fields of one probe kind, over the paper's (``None``: the paper's value).

    Attributes:
        lr: Adam learning rate.
        epochs: passes over the training split.
        batch_size: videos per step.
        weight_decay: Adam's (L2) weight decay; 0 in the paper.
        dropout: probe dropout; 0 in the paper.
        gamma: per-epoch ExponentialLR factor in ``(0, 1]``; None = the paper's (constant
            lr for the linear probe, 0.9 for the attentive one).
        seed: seeds the probe's init, the shuffling and dropout.
        heads: attention heads of the attentive / pooler probes (8, as in the authors'
            code); must divide the feature width.
        cls_source: the attentive probe's [CLS]: ``"encoder"`` (default; the frozen
            encoder's [CLS] output, adapted by one trainable block: LV-MAE §8 and the
            authors' ``test_ap_movie_clip.py``) or ``"learned"`` (a new learned token; the
            results name it ``attentive-learned``).
        num_queries: learned queries of the pooler.
        batch_norm: the linear probe standardises its input with a BatchNorm without affine
            parameters, as MAE's linear probe does (off in LV-MAE's recipe).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float | None = Field(None, gt=0, allow_inf_nan=False)
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    dropout: float = Field(0.0, ge=0, lt=1)
    gamma: float | None = Field(None, gt=0, le=1)
    seed: int = 0
    heads: int = Field(8, ge=1)
    cls_source: ClsSource = "encoder"
    num_queries: int = Field(1, ge=1)
    batch_norm: bool = False


class ProbeConfig(ProbeRecipe):
    """How to train one probe: its ``kind`` and a :class:`ProbeRecipe` with the paper's
    values filled in (LV-MAE §8: linear, Adam lr 1e-4, 30 epochs, batch 16, constant lr;
    attentive, Adam lr 1e-3, ExponentialLR γ 0.9 per epoch, 20 epochs, batch 16; the pooler
    reuses the attentive recipe). The authors' public code differs (AMSGrad, weight decay
    1e-3, cosine schedule); this follows the paper's text.

    ``ProbeConfig("linear", lr=1e-3)`` and ``ProbeConfig(kind="linear", lr=1e-3)`` are the
    same.

    Raises:
        pydantic.ValidationError (a ``ValueError``): unknown kind or field, bad values.
    """

    kind: ProbeKind

    def __init__(self, kind: str | None = None, /, **data: Any) -> None:
        if kind is not None:
            data["kind"] = kind
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _paper_values(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("kind") in PAPER_PROBE_RECIPES:
            paper = PAPER_PROBE_RECIPES[data["kind"]]
            data = {**data, **{k: v for k, v in paper.items() if data.get(k) is None}}
        return data

    @classmethod
    def paper(cls, kind: str) -> ProbeConfig:
        """The paper's recipe for ``kind``."""
        return cls(kind=kind)

    @classmethod
    def from_recipe(cls, kind: str, *recipes: ProbeRecipe | Mapping[str, Any]) -> ProbeConfig:
        """``kind``'s config with the set fields of ``recipes`` applied in order."""
        fields: dict[str, Any] = {}
        for recipe in recipes:
            if isinstance(recipe, ProbeRecipe):
                fields.update(recipe.model_dump(exclude_unset=True, exclude={"kind"}))
            else:
                fields.update(recipe)
        return cls(kind=kind, **fields)

    @property
    def name(self) -> str:
        """The probe's name in results tables: ``linear``, ``attentive`` (the paper's: the
        encoder's [CLS] adapted by one block), ``attentive-learned`` (a learned [CLS]) or
        ``pooler`` (V-JEPA's attentive pooler)."""
        if KINDS[self.kind].reads_cls and self.cls_source == "learned":
            return f"{self.kind}-learned"
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as a JSON-able dict (for MLflow and run manifests)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: unknown keys or bad values, one line per problem.
        """
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "probe config")) from exc


TORCH_DEVICE = r"^(auto|cpu|cuda(:[0-9]+)?|mps)$"
"""The devices a probe or sweep trial may name (``auto``: CUDA when it holds a GPU)."""


class ProbeSection(BaseModel):
    """The probe stage: probes on the frozen encoder and the baselines scored on the same
    splits (LV-MAE §8, Tables 6–8).

    Every row (probe or baseline × task) is trained ``seeds`` times (seeds ``recipe.seed +
    0 .. seeds - 1``) and reports the mean and standard deviation over them. Each seed
    trains in a Ray task that reserves ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs
    (default: 0.25 when the cluster has GPUs, else 0); ``device: auto`` trains on CUDA when
    the task holds a GPU, else on CPU. The frozen encoder's features are computed by Ray tasks,
    ``encoder_actors`` at once (default: one per GPU of the cluster, at most 8; one CPU task
    without GPUs; the name is kept from when they were an actor pool).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    SECTION: ClassVar[str] = "probe"

    probes: list[ProbeKind] = Field(
        default_factory=lambda: ["linear", "attentive"], min_length=1, description="probe kinds"
    )
    baselines: list[BaselineName] = Field(default_factory=lambda: ["mean-pool"])
    recipes: dict[ProbeKind, ProbeRecipe] = Field(
        default_factory=dict, description="per-probe recipe fields over the paper's"
    )
    device: str = Field(
        "auto", pattern=TORCH_DEVICE,
        description="torch device of the probes: auto (CUDA when the task holds a GPU), cpu, "
        "cuda, cuda:N or mps",
    )  # fmt: skip
    seeds: int = Field(3, ge=1, description="seeds per row: results are mean ± std over them")
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs each probe-training task reserves")
    gpus_per_task: float | None = Field(
        None,
        ge=0,
        description="GPUs per probe-training task (default 0.25 if the cluster has GPUs)",
    )
    encoder_actors: int | None = Field(
        None, ge=1, description="feature tasks at once (default: one per GPU, max 8; else 1)"
    )

    def config(self, kind: str) -> ProbeConfig:
        """The resolved :class:`ProbeConfig` of probe ``kind`` (the paper's recipe with this
        section's recipe for ``kind`` on top)."""
        return ProbeConfig.from_recipe(
            kind, *([self.recipes[kind]] if kind in self.recipes else [])
        )


class TuneSection(BaseModel):
    """The Ray Tune sweep over probe hyperparameters (see :mod:`tune.sweep`).

    The first trial is the probe stage's recipe for ``probes[0]`` and the default space is
    centred on it; the probe kind is swept only when ``probes`` lists several. ASHA measures
    time in percent of each trial's own epochs and stops no trial before ``grace_period`` of
    them. The chosen configuration is retrained ``seeds`` times and scored on the test split
    once per seed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    SECTION: ClassVar[str] = "tune"

    num_samples: int = Field(16, ge=1, description="trials per task")
    space: str | None = Field(None, description="search space YAML (default: built in)")
    max_concurrent: int = Field(2, ge=1, description="trials running at once")
    gpus_per_trial: float | None = Field(
        None, ge=0, description="GPUs per trial (default 0.25 when the cluster has GPUs)"
    )
    seed: int = Field(0, description="seed of the search algorithm")
    probes: list[ProbeKind] = Field(
        default_factory=lambda: ["linear"],
        min_length=1,
        description="probe kinds the sweep may pick; the first one's recipe is the first trial",
    )
    grace_period: float = Field(
        0.5, gt=0, le=1, description="ASHA grace period, as a fraction of each trial's epochs"
    )
    seeds: int = Field(3, ge=1, description="seeds the chosen configuration is retrained with")
    device: str = Field("auto", pattern=TORCH_DEVICE,
                        description="torch device of the trials (auto: CUDA with a GPU), cpu, "
                        "cuda, cuda:N or mps")  # fmt: skip


# ---------------------------------------------------------------------------- the run


class LabelsSource(BaseModel):
    """A labels file made from a public benchmark's annotations during the probe stage
    (matched to the extracted videos' ids): see :func:`lvmae.labels.from_source`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: LabelDataset
    source: str = Field(description="LVU root, COIN.json, or the Breakfast video root")
    task: str | None = Field(None, description="LVU task (director, genre, ..., view_count)")
    split: str = Field("s1", description="Breakfast split (s1..s4)")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="val carved from train")
    name: str | None = Field(None, description="task name in the results (default derived)")

    @model_validator(mode="after")
    def _check(self) -> LabelsSource:
        if self.dataset == "lvu" and not self.task:
            raise ValueError("an LVU labels source needs `task:` (director, genre, ...)")
        return self

    def task_name(self) -> str:
        """The task's name in the results: ``name``, else ``lvu_<task>`` or the dataset."""
        return self.name or (f"lvu_{self.task}" if self.dataset == "lvu" else self.dataset)


class RunSection(BaseModel):
    """Where the main job reads and writes, which stages it runs, and how it is tracked."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    SECTION: ClassVar[str] = "run"

    name: str = Field("lvmae", min_length=1, description="run name (MLflow, checkpoints)")
    input: str = Field(description="videos: directory, glob or list file; path or URI")
    workdir: str = Field(
        "work/run",
        description="local or shared-filesystem directory: stage records, checkpoints, "
        "probe results, report, the default MLflow store",
    )
    embeddings: str | None = Field(
        None, description="extraction output (may be s3:// or gs://); default <workdir>/extract"
    )
    labels: list[str | LabelsSource] = Field(
        default_factory=list, description="labels files (a task each) or benchmark sources"
    )
    stages: list[StageName] = Field(default_factory=lambda: list(STAGE_NAMES))
    experiment: str = Field("lvmae", min_length=1, description="MLflow experiment")
    tracking_uri: str | None = Field(
        None, description="MLflow store (default MLFLOW_TRACKING_URI, else <workdir>/mlflow.db)"
    )
    address: str | None = Field(None, description="Ray cluster (default RAY_ADDRESS or local)")

    @model_validator(mode="after")
    def _check(self) -> RunSection:
        if "://" in self.workdir:
            raise ValueError(
                f"workdir {self.workdir!r} must be a local or shared-filesystem path (it holds "
                f"checkpoints and the MLflow store); put the extraction output in object "
                f"storage with run.embeddings: s3://..."
            )
        if len(set(self.stages)) != len(self.stages) or not self.stages:
            raise ValueError(f"stages must be distinct names from {STAGE_NAMES}, got {self.stages}")
        return self

    def embeddings_uri(self) -> str:
        """The extraction output: ``embeddings``, else ``<workdir>/extract``."""
        return self.embeddings or str(Path(self.workdir) / "extract")


SAMPLE_RECIPES: tuple[str, ...] = (
    "order_abcd",
    "order_badc",
    "order_cdab",
    "order_dcba",
    "hard_abcadb",
    "hard_badbca",
    "hard_cdabab",
    "hard_dbacba",
    "testcard",
    "textures",
)
"""Names of the sample library's classes, in order: the keys of
:data:`lvmae.video.samples.RECIPES`, which checks on import that they agree. Kept here so
that reading a config never imports the video code (PyAV, ffmpeg)."""


class SamplesSection(BaseModel):
    """Generate the procedural sample library into ``run.input`` first (the demo; see
    :func:`lvmae.video.samples.make_samples`); its ``labels.csv`` is added to the run's labels.

    The one home of the library's parameters: the generator
    (:func:`lvmae.video.samples.make_samples`, :func:`~lvmae.video.samples.plan_samples`) and
    ``lvmae make-samples`` take their defaults from this model's (:data:`SAMPLE_LIBRARY`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    SECTION: ClassVar[str] = "samples"

    videos_per_recipe: int = Field(3, ge=1)
    min_seconds: float = Field(60.0, ge=1, description="shortest video, seconds")
    max_seconds: float = Field(600.0, ge=1, description="longest video, seconds")
    recipes: list[str] | None = Field(None, description="default: all recipes")
    width: int = Field(160, ge=16)
    height: int = Field(120, ge=16)
    fps: int = Field(10, ge=1)
    seed: int = 0
    with_broken: bool = Field(True, description="add damaged files (they become failures)")

    @model_validator(mode="after")
    def _check(self) -> SamplesSection:
        if self.min_seconds > self.max_seconds:
            raise ValueError("min_seconds must not exceed max_seconds")
        unknown = sorted(set(self.recipes or ()) - set(SAMPLE_RECIPES))
        if unknown:
            raise ValueError(f"unknown recipes {unknown}; known: {sorted(SAMPLE_RECIPES)}")
        return self


SAMPLE_LIBRARY = SamplesSection()
"""The sample library's default parameters (read by the generator and the CLI)."""


class RunConfig(BaseModel):
    """The main job's whole configuration (one YAML file): ``run``, optional ``samples``,
    and one section per stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: RunSection
    samples: SamplesSection | None = None
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    probe: ProbeSection = Field(default_factory=ProbeSection)
    tune: TuneSection = Field(default_factory=TuneSection)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        wants_labels = {"probe", "tune"} & set(self.run.stages)
        if wants_labels and not self.run.labels and self.samples is None:
            raise ValueError(
                f"stages {sorted(wants_labels)} need run.labels (labels files or benchmark "
                f"sources); add them or drop those stages"
            )
        return self

    def digest(self) -> str:
        """Short hash of the whole configuration."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:8]


# ---------------------------------------------------------------------------- loading


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` → ``X`` (the first pydantic model of a union); other types unchanged."""
    if get_origin(annotation) in (Union, UnionType):
        models = [a for a in get_args(annotation) if hasattr(a, "model_fields")]
        return models[0] if models else annotation
    return annotation


def _fields_at(model: Any, path: Sequence[Any]) -> list[str]:
    """The field names of the pydantic model reached from ``model`` along ``path`` (through
    nested models, optional models, lists and dicts), or [] when it is not a model."""
    node: Any = model
    for part in path:
        fields = getattr(node, "model_fields", None)
        if fields is not None:
            if part not in fields:
                return []
            node = fields[part].annotation
        else:  # list[X] / dict[K, X]: the item's type
            args = get_args(node)
            node = args[-1] if args else None
        node = _unwrap_optional(node)
    return sorted(getattr(node, "model_fields", {}) or [])


def format_validation_error(
    exc: ValidationError,
    source: str,
    overrides: Sequence[str] = (),
    prefix: str = "",
    model: Any = None,
) -> str:
    """One line per problem: ``source: field: message (got value)``. A problem at (or
    under) a dotted key of ``overrides`` is reported as coming from ``--set KEY``;
    ``prefix`` is prepended to field paths (``extract.`` for a section loaded alone). With
    ``model`` (the validated class), an unknown field gets a "did you mean" suggestion."""
    lines = []
    for err in exc.errors():
        parts = [str(p) for p in err["loc"]]
        loc = prefix + ".".join(parts) if parts else prefix.rstrip(".") or "(config)"
        shown = "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict)
        got = f" (got {err['input']!r})" if shown else ""
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and model is not None and parts:
            close = get_close_matches(parts[-1], _fields_at(model, err["loc"][:-1]), n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
        hit = [
            k for k in overrides if loc == k or loc.startswith(k + ".") or k.startswith(loc + ".")
        ]
        where = f"--set {hit[0]}" if hit else source
        lines.append(f"{where}: {loc}: {msg}{got}")
    return "\n".join(lines)


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is ``{}``).

    Raises:
        ConfigError: the file is missing, unreadable, not valid YAML, or not a mapping; the
            message names the file and ``what`` it should hold.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text (YAML) file: {exc.reason}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping ({what}), got {type(loaded).__name__}")
    return loaded


def _section_mapping(value: Any, section: str, source: str) -> dict[str, Any]:
    """The fields of config section ``section`` as read from ``source``.

    Raises:
        ConfigError: the section is empty (``extract:`` alone) or not a mapping."""
    if value is None:
        raise ConfigError(
            f"{source}: section {section!r} is empty: give its fields (e.g. "
            f"'{section}:' then indented 'FIELD: VALUE' lines) or remove the line"
        )
    if not isinstance(value, dict):
        raise ConfigError(
            f"{source}: section {section!r} must be a mapping of FIELD: VALUE, got "
            f"{type(value).__name__} {value!r}"[:300]
        )
    return dict(value)


def parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set`` pairs → overrides: ``("pretrain.epochs=3", "probe.probes=[linear]")`` →
    ``{"pretrain.epochs": 3, "probe.probes": ["linear"]}`` (values parsed as YAML).

    Raises:
        ConfigError: a pair is not ``SECTION.FIELD=VALUE`` or its value is not valid YAML.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or "." not in key or not all(key.split(".")):
            raise ConfigError(
                f"--set {pair!r}: expected SECTION.FIELD=VALUE (e.g. pretrain.epochs=3)"
            )
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: invalid YAML value {value!r}: {exc}") from exc
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, last = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    node[last] = value


def load_run_config(path: str | Path | None, sets: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a run config YAML, then apply ``sets`` keyed by dotted paths
    (``{"run.workdir": "work/x", "pretrain.epochs": 3}``, as :func:`parse_sets` gives).

    Raises:
        ConfigError: missing file, invalid YAML, unknown sections or fields, bad values —
            one line per problem, naming the file or the ``--set`` it came from, and the
            field.
    """
    data = read_yaml_mapping(path, "run config") if path is not None else {}
    for name, value in list(data.items()):
        if name in RunConfig.model_fields and not (name == "samples" and value is None):
            data[name] = _section_mapping(value, name, str(path))
    given = dict(sets or {})  # `--set extract.range_s=null` sets None: it is not ignored
    for key, value in given.items():
        _set_dotted(data, key, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, str(path or "config"), list(given), model=RunConfig)
        ) from exc


def load_config(
    model: type[BaseModel],
    path: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    sets: Mapping[str, Any] | None = None,
) -> Any:
    """Build one section ``model`` (:class:`ExtractConfig`, :class:`PretrainConfig`,
    :class:`ProbeSection`, :class:`TuneSection`) from a YAML file (optional: the fields at
    top level or under the section's name, so a whole run config works too), then a
    command's own ``options`` (``None`` values ignored: an option not given), then ``sets``
    keyed ``SECTION.FIELD`` like everywhere else (``{"extract.batch_size": 8}``; a ``None``
    value, ``--set extract.range_s=null``, sets the field to None).

    Raises:
        ConfigError: missing/unreadable file, invalid YAML, an empty or non-mapping section,
            a ``--set`` for another section, unknown fields, bad values (each naming the
            file or ``--set`` it came from).
    """
    section = model.SECTION  # type: ignore[attr-defined]
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        loaded = read_yaml_mapping(path, "config")
        data = _section_mapping(loaded.get(section, loaded), section, source)
    data.update({k: v for k, v in (options or {}).items() if v is not None})
    given = dict(sets or {})  # a None value is set, not ignored
    for key, value in given.items():
        head, _, rest = key.partition(".")
        if head != section:
            raise ConfigError(
                f"--set {key}: this command reads the {section!r} section; use "
                f"--set {section}.FIELD=VALUE"
            )
        _set_dotted(data, rest, value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, source, list(given), prefix=f"{section}.", model=model)
        ) from exc
