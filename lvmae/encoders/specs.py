"""What a frozen encoder is, without torch: the LanguageBind architectures' sizes, how
LanguageBind's model code and hub checkpoints are found, and :func:`describe_encoder`, the
driver's pre-flight view of an encoder (through the registry,
:mod:`lvmae.encoders.registry`).

Kept apart from :mod:`lvmae.encoders.models` so that a process that only plans work (the extraction
driver) does not import torch (≈ 1.7 s on 2 cores, before Ray can start). The loaders here
import LanguageBind's code (and with it torch and transformers) only when a real checkpoint's
config is read. :mod:`lvmae.encoders.models` re-exports every public name. Nothing here imports Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lvmae.encoders.registry import ENCODERS, encoder_spec, resolve
from lvmae.errors import LvmaeError

FRAMES_PER_SEGMENT = 8
"""Frames sampled uniformly per segment (paper §4; the video checkpoints' ``num_frames``)."""
IMAGE_SIZE = 224
"""Side of the square frames the encoder sees, in pixels (paper §4)."""


DEFAULT_CHECKPOINTS: dict[str, str] = {name: spec.checkpoint for name, spec in ENCODERS.items()}
"""Checkpoint used when ``build_encoder(name)`` is given none (the registry's): a Hugging
Face hub id for the LanguageBind presets, ``tiny-seed<seed>`` for ``tiny``."""


TINY_CHECKPOINT = re.compile(r"tiny-seed(\d+)")
"""The ``tiny`` encoder's checkpoint names: ``tiny-seed<N>`` (weights drawn from seed N)."""

CONFIG_FILE = "config.json"
WEIGHTS_FILES = (
    "model.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "pytorch_model.bin.index.json",
)  # fmt: skip
"""What a local checkpoint directory must hold besides :data:`CONFIG_FILE` (one of them;
transformers' names for single-file and sharded weights)."""


class EncoderUnavailableError(LvmaeError, RuntimeError):
    """The encoder's checkpoint cannot be loaded: not on the hub cache and no network, a local
    directory that does not exist or holds no model, or a hub id that is not valid."""


# ----------------------------------------------------------------------------------------
# architecture


@dataclasses.dataclass(frozen=True)
class LanguageBindArch:
    """Sizes of a ``LanguageBindVideo`` model: a CLIP ViT video tower with divided
    space–time attention (``add_time_attn``) plus CLIP's text tower, both projected to
    ``projection_dim``. Widths and dims are channels, ``patch_size`` and ``image_size`` pixels,
    ``num_frames`` frames per segment."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    patch_size: int
    projection_dim: int
    image_size: int = IMAGE_SIZE
    num_frames: int = FRAMES_PER_SEGMENT
    text_hidden_size: int = 32
    text_intermediate_size: int = 64
    text_num_hidden_layers: int = 1
    text_num_attention_heads: int = 2
    text_vocab_size: int = 1000
    text_max_position_embeddings: int = 77

    @classmethod
    def clip(
        cls,
        width: int,
        layers: int,
        heads: int,
        projection_dim: int,
        *,
        text: tuple[int, int, int],
        patch_size: int = 14,
    ) -> LanguageBindArch:
        """A CLIP-sized model: a video tower of ``width`` channels, ``layers`` blocks and
        ``heads`` heads with a 4× MLP and ``patch_size``-px patches, and a text tower of
        ``text = (width, layers, heads)``, also with a 4× MLP, over CLIP's 49,408-token
        vocabulary (Radford et al., 2021, Table 19, whose towers LanguageBind reuses)."""
        text_width, text_layers, text_heads = text
        return cls(
            hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
            num_attention_heads=heads, patch_size=patch_size, projection_dim=projection_dim,
            text_hidden_size=text_width, text_intermediate_size=4 * text_width,
            text_num_hidden_layers=text_layers, text_num_attention_heads=text_heads,
            text_vocab_size=49408,
        )  # fmt: skip

    def to_config(self) -> Any:
        """The ``LanguageBindVideoConfig`` for these sizes (no LoRA, time attention on)."""
        _, config_cls = _languagebind_video()
        return config_cls(
            text_config={
                "vocab_size": self.text_vocab_size,
                "hidden_size": self.text_hidden_size,
                "intermediate_size": self.text_intermediate_size,
                "num_hidden_layers": self.text_num_hidden_layers,
                "num_attention_heads": self.text_num_attention_heads,
                "max_position_embeddings": self.text_max_position_embeddings,
                "projection_dim": self.projection_dim,
            },
            vision_config={
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads,
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "add_time_attn": True,
                "num_frames": self.num_frames,
                "lora_r": 0,
                "projection_dim": self.projection_dim,
            },
            projection_dim=self.projection_dim,
        )


TINY_ARCH = LanguageBindArch(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    patch_size=32,
    projection_dim=64,
)
"""The ``tiny`` encoder: 64-d, 2 layers, 32-px patches (7×7 tokens per frame)."""

VIT_L14_ARCH = LanguageBindArch.clip(1024, 24, 16, 768, text=(768, 12, 12))
"""``LanguageBind/LanguageBind_Video_FT``'s architecture (ViT-L/14 video tower, 768-d)."""

VIT_H14_ARCH = LanguageBindArch.clip(1280, 32, 16, 1024, text=(1024, 24, 16))
"""``LanguageBind/LanguageBind_Video_Huge_V1.5_FT``'s architecture (ViT-H/14, 1024-d)."""


UNUSED_INTEGRATIONS = ("sklearn", "scipy")
"""Packages that transformers imports whenever they are installed, for features a frozen
encoder never uses (assisted generation's ROC curve, object-detection losses' matching).
Hidden while LanguageBind's model code is imported (:func:`lean_model_imports`)."""


def _deferred(module: str, name: str) -> Callable[..., Any]:
    """A stand-in for ``module.name`` that imports ``module`` when first called."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


@contextlib.contextmanager
def lean_model_imports() -> Iterator[None]:
    """Import LanguageBind's model code without what the encoders never run. Without this a
    new worker imports scikit-learn and SciPy through transformers and peft (about 2 of the
    5 CPU-s its model code took to import; ``python -X importtime``, ``benchmarks/RESULTS.md``
    "Fixed start cost"). Inside the block, for this process:

    - :data:`UNUSED_INTEGRATIONS` read as not installed (``sys.modules[name] = None``, how
      Python marks a module absent), so transformers records them as unavailable;
    - ``peft`` (LanguageBind imports ``LoraConfig`` and ``get_peft_model`` at module level;
      only a LoRA checkpoint, ``lora_r > 0``, calls them) is a stand-in whose two names import
      the real package when called.

    Both are undone on exit: modules already imported are left as they are (and nothing is
    hidden once transformers has been imported: it decided at its own import), and importing
    these packages after the block is an ordinary import. While the block runs the change is
    process-wide: the extraction's other thread meanwhile decodes (decord, PyAV, the shot
    detectors), which imports neither package. SymPy still arrives: transformers'
    ``PreTrainedModel`` is defined with ``torch._dynamo`` decorators, and PyTorch's compiler
    imports it.
    """
    # transformers decides what is installed once, when it is first imported: hide the
    # packages only before that (hiding them later breaks its imports that rely on them)
    fresh = "transformers.utils.import_utils" not in sys.modules
    hidden = [m for m in UNUSED_INTEGRATIONS if fresh and m not in sys.modules]
    stand_in = None
    for m in hidden:
        sys.modules[m] = None  # type: ignore[assignment]
    try:
        if "peft" not in sys.modules:
            import transformers  # noqa: F401  (heavy; it looks peft up: not the stand-in)

            stand_in = types.ModuleType("peft")
            stand_in.LoraConfig = _deferred("peft", "LoraConfig")  # type: ignore[attr-defined]
            stand_in.get_peft_model = _deferred("peft", "get_peft_model")  # type: ignore[attr-defined]
            sys.modules["peft"] = stand_in
        yield
    finally:
        for m in hidden:
            if m in sys.modules and sys.modules[m] is None:
                del sys.modules[m]
        if stand_in is not None and sys.modules.get("peft") is stand_in:
            del sys.modules["peft"]


@functools.cache
def _languagebind_video() -> tuple[type, type]:
    """``(LanguageBindVideo, LanguageBindVideoConfig)``, imported without running the
    ``languagebind`` package ``__init__`` (which needs torchvision/torchaudio/pytorchvideo).

    A real ``languagebind`` module already in ``sys.modules`` is left as it is.

    Raises:
        ImportError: the ``languagebind`` distribution is not installed.
    """
    if "languagebind" not in sys.modules:
        spec = importlib.util.find_spec("languagebind")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                "the `languagebind` package is not installed: `pip install languagebind` "
                "(reinstall the project with `make install`)"
            )
        package = types.ModuleType("languagebind")
        package.__path__ = list(spec.submodule_search_locations)
        package.__package__ = "languagebind"
        sys.modules.setdefault("languagebind", package)
    with lean_model_imports():
        from languagebind.video.configuration_video import LanguageBindVideoConfig
        from languagebind.video.modeling_video import LanguageBindVideo

    return LanguageBindVideo, LanguageBindVideoConfig


def _hub_env_kwargs() -> dict[str, Any]:
    """``from_pretrained`` options from the hub environment variables as they are *now*.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` and ``HF_HOME`` once, when it is imported;
    reading them per call lets a worker (or a test) that sets them later be obeyed — and makes
    an offline lookup fail at once instead of after a minute of network retries.
    """
    kwargs: dict[str, Any] = {}
    truthy = {"1", "on", "yes", "true"}
    if any(
        os.environ.get(v, "").strip().lower() in truthy
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        kwargs["local_files_only"] = True
    if os.environ.get("HF_HUB_CACHE"):
        kwargs["cache_dir"] = str(Path(os.environ["HF_HUB_CACHE"]).expanduser())
    elif os.environ.get("HF_HOME"):
        kwargs["cache_dir"] = str(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    return kwargs


def _looks_local(checkpoint: str) -> bool:
    """Whether ``checkpoint`` names a local directory rather than a hub id."""
    return checkpoint.startswith(("/", ".", "~")) or Path(checkpoint).expanduser().exists()


def check_model_dir(checkpoint: str) -> None:
    """A local checkpoint directory must hold a model before ``from_pretrained`` reads it:
    :data:`CONFIG_FILE` and one of :data:`WEIGHTS_FILES` (``from_pretrained`` of a config
    class on a directory without ``config.json`` returns the class defaults, so an empty
    directory would pass the driver's pre-flight with the wrong width). Hub ids and
    directories that do not exist are left to :func:`_from_pretrained`.

    Raises:
        EncoderUnavailableError: an existing directory without them; the message names the
            missing files and how to fill the directory.
    """
    local = Path(checkpoint).expanduser()
    if not (_looks_local(checkpoint) and local.is_dir()):
        return
    missing = []
    if not (local / CONFIG_FILE).is_file():
        missing.append(CONFIG_FILE)
    if not any((local / f).is_file() for f in WEIGHTS_FILES):
        missing.append(f"weights ({' or '.join(WEIGHTS_FILES)})")
    if missing:
        raise EncoderUnavailableError(
            f"encoder checkpoint directory {checkpoint!r} holds no LanguageBindVideo model: "
            f"missing {', '.join(missing)}; pass a directory written by `save_pretrained` or "
            f"filled by `huggingface-cli download REPO --local-dir DIR`"
        )


def _from_pretrained(
    cls: type, checkpoint: str, *, local_hint: str | None = None, **kwargs: Any
) -> Any:
    """``cls.from_pretrained`` on a hub id or local directory, errors made actionable.

    ``local_hint`` replaces the default "what a local directory must hold" advice.

    Raises:
        EncoderUnavailableError: a local path that is not a directory, a checkpoint that
            cannot be found (offline, bad id, missing files), or weights that cannot be
            read (a truncated or corrupt ``model.safetensors``).
    """
    from safetensors import SafetensorError  # small; a dependency of transformers

    local = Path(checkpoint).expanduser()
    looks_local = _looks_local(checkpoint)
    if looks_local and not local.is_dir():
        raise EncoderUnavailableError(
            f"encoder checkpoint directory {checkpoint!r} does not exist (or is not a directory)"
        )
    try:
        return cls.from_pretrained(
            str(local) if looks_local else checkpoint, **kwargs, **_hub_env_kwargs()
        )
    except SafetensorError as exc:  # a truncated download, a file overwritten
        raise EncoderUnavailableError(
            f"cannot load encoder checkpoint {checkpoint!r}: weights unreadable "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"re-download the checkpoint (`huggingface-cli download REPO --local-dir DIR`) "
            f"or save it again"
        ) from exc
    except (OSError, ValueError) as exc:  # OSError: not found/offline; ValueError: bad id
        hint = (
            local_hint or "the directory must hold a LanguageBindVideo `config.json` and weights"
            if looks_local
            else (
                f"download it on a machine with network (`huggingface-cli download "
                f"{checkpoint} --local-dir DIR`) and pass DIR as the checkpoint "
                f"(`--encoder-checkpoint DIR`), or point HF_HOME at a Hugging Face cache "
                f"that holds it"
            )
        )
        raise EncoderUnavailableError(
            f"cannot load encoder checkpoint {checkpoint!r}: {hint} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc


def describe_encoder(name: str, checkpoint: str | None = None, seed: int = 0) -> dict[str, Any]:
    """What :func:`lvmae.encoders.models.build_encoder` would build, from the checkpoint's
    config alone (no weights): ``name``, ``checkpoint``, ``embedding_dim``,
    ``frames_per_segment``, ``image_size``. A cheap pre-flight check on the driver before any
    work starts; the registry entry's ``describe`` does the work.

    Raises:
        ValueError: unknown name (the message lists the known ones).
        EncoderUnavailableError: the checkpoint's config cannot be found (see
            :func:`lvmae.encoders.models.load_languagebind`).
    """
    return resolve(encoder_spec(name).describe)(name, checkpoint, seed)


def tiny_seed(checkpoint: str | None, seed: int) -> int:
    """The weights seed of the ``tiny`` encoder for ``checkpoint`` (None or
    ``tiny-seed<N>``, which sets the seed) and ``seed``.

    Raises:
        ValueError: any other checkpoint, or one that disagrees with a non-zero ``seed``.
    """
    if checkpoint is None:
        return seed
    match = TINY_CHECKPOINT.fullmatch(checkpoint)
    if match is None:
        raise ValueError(
            f"the tiny encoder has no checkpoint to load; got {checkpoint!r}, expected "
            f"'tiny-seed<N>' or none (to load a saved tiny checkpoint directory use "
            f"a languagebind-* encoder name)"
        )
    if seed not in (0, int(match.group(1))):
        raise ValueError(f"checkpoint {checkpoint!r} disagrees with seed={seed}")
    return int(match.group(1))


def describe_tiny(name: str, checkpoint: str | None, seed: int) -> dict[str, Any]:
    """The ``tiny`` encoder's description: its sizes are :data:`TINY_ARCH`'s.

    Raises:
        ValueError: a checkpoint :func:`lvmae.encoders.models.build_tiny` refuses
            (:func:`tiny_seed`).
    """
    return {
        "name": name,
        "checkpoint": f"tiny-seed{tiny_seed(checkpoint, seed)}",
        "embedding_dim": TINY_ARCH.projection_dim,
        "frames_per_segment": TINY_ARCH.num_frames,
        "image_size": TINY_ARCH.image_size,
    }


def describe_languagebind(name: str, checkpoint: str | None, seed: int) -> dict[str, Any]:
    """A LanguageBind checkpoint's description, read from its ``config.json`` (default: the
    registry's checkpoint for ``name``; ``seed`` is unused).

    Raises:
        EncoderUnavailableError: the checkpoint cannot be found, or a local directory holds
            no ``config.json`` or no weights (:func:`check_model_dir`).
    """
    checkpoint = checkpoint or encoder_spec(name).checkpoint
    check_model_dir(checkpoint)
    _, config_cls = _languagebind_video()
    config = _from_pretrained(config_cls, checkpoint)
    return {
        "name": name,
        "checkpoint": checkpoint,
        "embedding_dim": int(config.projection_dim),
        "frames_per_segment": int(config.vision_config.num_frames),
        "image_size": int(config.vision_config.image_size),
    }
