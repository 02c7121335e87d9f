"""Pre-training checkpoints: one directory per checkpoint (docs/design.md, "Data contracts").

::

    <root>/step_000123/
        model.pt          model state dict (tensors only)
        train_state.pt    optimizer / scheduler state, step, epoch, extra (plain data)
        config.json       format_version, model config, train config, step, epoch

Every ``.pt`` file loads with ``torch.load(..., weights_only=True)``: no pickled code, so a
checkpoint from elsewhere cannot run anything when opened. A checkpoint is written into a
hidden temporary directory next to its final place and renamed into place, so a run killed
mid-save never leaves a half-written ``step_*`` directory for :func:`latest_checkpoint` to
pick. Pure PyTorch (no Ray): Ray Train wraps these directories in ``ray.train.Checkpoint``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lvmae.errors import LvmaeError
from lvmae.storage import raise_if_disk_full

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
TRAIN_STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.json"
STEP_DIR_RE = re.compile(r"^step_(\d+)$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


class CheckpointError(LvmaeError, RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or incompatible; the message names the
    file and what to do."""


def step_dir(root: str | os.PathLike, step: int) -> Path:
    """``<root>/step_<step, 6+ digits>``: where the checkpoint of optimizer step ``step``
    goes (``step_000123``).

    Raises:
        ValueError: ``step < 0``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return Path(root) / f"step_{int(step):06d}"


def _strip_wrapper_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix shared by every
    key, repeatedly; keys of a model that merely has a submodule named ``module`` stay."""
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _as_plain_config(config: Any, what: str) -> dict | None:
    """A JSON-ready dict from a dict or pydantic model (tuples become lists)."""
    if config is None:
        return None
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{what} must be a dict, got {type(config).__name__}")
    try:
        return json.loads(json.dumps(dict(config)))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{what} is not JSON-serialisable: {exc}") from exc


_PLAIN_SCALARS = (str, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)


def _check_plain(obj: Any, where: str) -> None:
    """Raise CheckpointError unless ``obj`` is tensors / plain containers, i.e. loadable
    with ``torch.load(weights_only=True)``."""
    if isinstance(obj, (torch.Tensor, *_PLAIN_SCALARS)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which "
        "torch.load(weights_only=True) refuses; store tensors, numbers, strings, lists or dicts"
    )


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    model_state: Mapping[str, Any],
    model_config: Mapping[str, Any],
    train_config: Mapping[str, Any] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    scheduler_state: Mapping[str, Any] | None = None,
    step: int = 0,
    epoch: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory (``model.pt``, ``train_state.pt``, ``config.json``)
    atomically at ``directory`` (usually :func:`step_dir` ``(root, step)``) and return it.

    Files are written into a hidden temporary sibling directory, flushed, and the directory
    is renamed into place, so a kill mid-save leaves either the previous state or the whole
    new checkpoint. An existing checkpoint at ``directory`` is replaced. A ``module.``
    (DDP) or ``_orig_mod.`` (torch.compile) prefix on every key of ``model_state`` is
    stripped, so the checkpoint loads into the bare model.

    Args:
        model_state: the model's ``state_dict()``.
        model_config: what rebuilds the model (JSON-serialisable; pydantic models accepted),
            compared by :func:`check_compatible` on resume.
        train_config: the resolved training config (JSON-serialisable), for the record.
        optimizer_state, scheduler_state: ``state_dict()`` of the optimizer / scheduler.
        step: optimizer steps done; epoch: epochs done (or the current epoch, by the
            caller's convention).
        extra: anything else to resume with (RNG seeds, data positions): tensors and plain
            containers only.

    Raises:
        CheckpointError: a config is not JSON-serialisable, or a state holds objects
            ``torch.load(weights_only=True)`` would refuse (checked before writing).
        DiskFullError: no space left; nothing of the new checkpoint stays and the previous
            ones are untouched.
    """
    directory = Path(directory)
    model_state = _strip_wrapper_prefixes(model_state)
    train_state = {
        "optimizer": None if optimizer_state is None else dict(optimizer_state),
        "scheduler": None if scheduler_state is None else dict(scheduler_state),
        "step": int(step),
        "epoch": int(epoch),
        "extra": None if extra is None else dict(extra),
    }
    _check_plain(model_state, "model_state")
    _check_plain(train_state, "train_state")
    config = {
        "format_version": FORMAT_VERSION,
        "model_config": _as_plain_config(model_config, "model_config"),
        "train_config": _as_plain_config(train_config, "train_config"),
        "step": int(step),
        "epoch": int(epoch),
        "torch_version": torch.__version__,
    }

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old = None
    try:
        for name, obj in ((MODEL_FILE, model_state), (TRAIN_STATE_FILE, train_state)):
            with (tmp / name).open("wb") as f:  # a Python file: ENOSPC keeps its errno
                torch.save(obj, f)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name in (MODEL_FILE, TRAIN_STATE_FILE, CONFIG_FILE):
            _fsync_path(tmp / name)
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            directory.rename(old)
        tmp.rename(directory)
        _fsync_path(directory.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not directory.exists():
            old.rename(directory)  # put the previous checkpoint back
        raise_if_disk_full(exc, f"checkpoint {directory}")  # the previous ones stay
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; {directory} is not a complete checkpoint (pick another one, "
            "e.g. with latest_checkpoint, or delete it)"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path}: unreadable or not valid JSON ({exc}); the checkpoint is corrupt, "
            "resume from an earlier one"
        ) from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unknown format_version {version!r} (this lvmae reads {FORMAT_VERSION}); "
            "load it with the lvmae version that wrote it"
        )
    if not isinstance(config.get("model_config"), dict):
        raise CheckpointError(f"{path}: has no model_config object; the checkpoint is corrupt")
    return config


def read_checkpoint_config(directory: str | os.PathLike) -> dict:
    """The ``config.json`` of a checkpoint (``model_config``, ``train_config``, ``step``,
    ``epoch``) without loading its tensors: what a command checks before any work.

    Raises:
        CheckpointError: missing, unreadable, another format version, or no model config.
    """
    return _read_config(Path(directory))


def _load_pt(path: Path, map_location: Any) -> Any:
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; the checkpoint is incomplete, resume from an earlier one"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot be loaded with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "the file is truncated, corrupt or holds pickled objects; resume from an "
            "earlier checkpoint"
        ) from exc


def load_checkpoint(directory: str | os.PathLike, *, map_location: Any = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Every ``.pt`` file is read with ``torch.load(..., weights_only=True)``; tensors are
    mapped to ``map_location`` (CPU by default).

    Returns:
        ``{"model_state", "model_config", "train_config", "optimizer_state",
        "scheduler_state", "step", "epoch", "extra", "path"}`` (``path``: the directory).

    Raises:
        CheckpointError: the directory or one of its files is missing, a ``.pt`` file is
            truncated/corrupt, ``config.json`` is not valid JSON, or its
            ``format_version`` is unknown; the message names the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory}: no such checkpoint directory (expected {MODEL_FILE}, "
            f"{TRAIN_STATE_FILE} and {CONFIG_FILE} inside it)"
        )
    config = _read_config(directory)
    model_state = _load_pt(directory / MODEL_FILE, map_location)
    train_state = _load_pt(directory / TRAIN_STATE_FILE, map_location)
    if not isinstance(model_state, dict):
        raise CheckpointError(f"{directory / MODEL_FILE}: expected a state dict")
    if not isinstance(train_state, dict):
        raise CheckpointError(f"{directory / TRAIN_STATE_FILE}: expected a dict")
    return {
        "model_state": model_state,
        "model_config": config["model_config"],
        "train_config": config.get("train_config"),
        "optimizer_state": train_state.get("optimizer"),
        "scheduler_state": train_state.get("scheduler"),
        "step": int(train_state.get("step", config.get("step", 0))),
        "epoch": int(train_state.get("epoch", config.get("epoch", 0))),
        "extra": train_state.get("extra"),
        "path": directory,
    }


def check_compatible(ckpt: Mapping[str, Any], model_config: Mapping[str, Any]) -> None:
    """Check that ``model_config`` builds the same model as the checkpoint's.

    Values are compared after a JSON round trip (tuples equal lists); a field present on
    one side only counts as a mismatch.

    Args:
        ckpt: a :func:`load_checkpoint` result.
        model_config: the model config of the run about to resume.

    Raises:
        CheckpointError: listing each mismatching field as ``field: checkpoint=…, now=…``.
    """
    saved = ckpt.get("model_config") or {}
    now = _as_plain_config(model_config, "model_config") or {}
    missing = object()
    diffs = [
        f"{key}: checkpoint={saved.get(key, '<absent>')!r}, now={now.get(key, '<absent>')!r}"
        for key in sorted(set(saved) | set(now))
        if saved.get(key, missing) != now.get(key, missing)
    ]
    if diffs:
        where = ckpt.get("path", "the checkpoint")
        raise CheckpointError(
            f"{where} was written for a different model; mismatching model config fields:\n  "
            + "\n  ".join(diffs)
            + "\nresume with the checkpoint's model settings, or start a new run in a fresh "
            "checkpoint directory"
        )


def _step_dirs(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of ``step_*`` subdirectories of ``root``, highest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found, key=lambda item: item[0], reverse=True)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The ``step_*`` directory under ``root`` with the highest step whose ``config.json``
    loads and whose ``.pt`` files exist, or None (no such directory, or no ``root``).

    Hidden temporary directories of an interrupted save (``.step_*.tmp-*``) and
    incomplete or corrupt ``step_*`` directories are skipped.
    """
    for _, path in _step_dirs(root):
        try:
            _read_config(path)
        except CheckpointError:
            continue
        if (path / MODEL_FILE).is_file() and (path / TRAIN_STATE_FILE).is_file():
            return path
    return None


def prune_checkpoints(root: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all ``step_*`` directories under ``root`` but the ``keep`` highest steps;
    return the deleted paths (highest step first). Other entries are left alone.

    Raises:
        ValueError: ``keep < 1`` (deleting every checkpoint is never what a run wants).
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    doomed = [path for _, path in _step_dirs(root)[keep:]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed
