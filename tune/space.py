"""Search spaces of the probe sweep: which recipe fields a sweep may vary, how a YAML file
describes their ranges, and how a trial's sampled values become a
:class:`~lvmae.config.ProbeConfig`.

A space file maps a parameter of :data:`KNOBS` to one sampler of :data:`SAMPLERS` with its
arguments, or to a constant::

    probe: {choice: [linear, attentive]}
    lr: {loguniform: [1.0e-5, 3.0e-3]}
    batch_size: 16
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray import tune

from lvmae.config import ConfigError, ProbeConfig, read_yaml_mapping

__all__ = ["DEFAULT_SPACE", "KNOBS", "SAMPLERS", "load_space", "max_epochs", "probe_config"]

DEFAULT_SPACE: dict[str, dict[str, list[Any]]] = {
    "probe": {"choice": ["linear", "attentive"]},
    "lr": {"loguniform": [1e-5, 3e-3]},
    "weight_decay": {"loguniform": [1e-6, 1e-2]},
    "batch_size": {"choice": [8, 16, 32]},
    "epochs": {"choice": [10, 20, 30]},
    "dropout": {"uniform": [0.0, 0.3]},
}
"""The space swept when none is given: probe kind, Adam lr and weight decay, batch size
(videos), epochs and dropout."""

SAMPLERS = ("choice", "uniform", "loguniform", "randint", "grid")
"""Samplers a space file may use (Ray Tune's ``choice``, ``uniform``, ``loguniform``,
``randint`` and ``grid_search``)."""

KNOBS = {"probe", "lr", "weight_decay", "batch_size", "epochs", "dropout", "gamma"}
"""The parameters a sweep may vary: ``probe`` (the kind) and recipe fields of
:class:`~lvmae.config.ProbeConfig`."""

_RECIPE_KNOBS = ("lr", "weight_decay", "batch_size", "epochs", "dropout", "gamma")


def _sampler(name: str, sampler: str, args: Any) -> Any:
    """One Tune domain from a sampler name and its arguments."""
    try:
        if sampler in ("choice", "grid"):
            return (tune.choice if sampler == "choice" else tune.grid_search)(list(args))
        low, high = (float(a) for a in args)
        if sampler == "randint":
            return tune.randint(int(low), int(high))
        return getattr(tune, sampler)(low, high)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"search space: {name}: bad {sampler} arguments {args!r}") from exc


def load_space(path: str | None = None) -> dict[str, Any]:
    """A Tune search space from YAML (``{param: {sampler: args}}``, samplers
    ``choice``/``uniform``/``loguniform``/``randint``/``grid``, or a plain constant);
    :data:`DEFAULT_SPACE` when ``path`` is None.

    Raises:
        ConfigError: unreadable file, unknown parameter or sampler, bad arguments.
    """
    spec: Mapping[str, Any] = DEFAULT_SPACE
    if path is not None:
        spec = read_yaml_mapping(path, "search space")
    space: dict[str, Any] = {}
    for name, value in spec.items():
        if name not in KNOBS:
            raise ConfigError(f"search space: unknown parameter {name!r}; known: {sorted(KNOBS)}")
        if not isinstance(value, dict):
            space[name] = value
            continue
        if len(value) != 1 or next(iter(value)) not in SAMPLERS:
            raise ConfigError(
                f"search space: {name}: expected one sampler of {SAMPLERS}, got {value!r}"
            )
        sampler, args = next(iter(value.items()))
        space[name] = _sampler(name, sampler, args)
    return space


def max_epochs(space: Mapping[str, Any]) -> int:
    """The most epochs a trial of ``space`` can run (ASHA's ``max_t``); 30 (the linear
    probe's paper recipe) when the space does not vary ``epochs``."""
    epochs = space.get("epochs", 30)
    if hasattr(epochs, "categories"):
        return max(epochs.categories)
    if isinstance(epochs, dict) and "grid_search" in epochs:
        return max(epochs["grid_search"])
    if hasattr(epochs, "upper"):
        return int(epochs.upper)
    return int(epochs)


def probe_config(params: Mapping[str, Any]) -> ProbeConfig:
    """The probe recipe of one trial's sampled ``params`` (kind ``params["probe"]``, linear
    when not swept; unswept fields keep the paper's values for that kind).

    Raises:
        pydantic.ValidationError (a ``ValueError``): a sampled value out of range.
    """
    kind = params.get("probe", "linear")
    return ProbeConfig(kind=kind, **{k: params[k] for k in _RECIPE_KNOBS if k in params})
