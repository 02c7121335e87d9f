"""Search spaces of the probe sweep: which recipe fields a sweep may vary, how a YAML file
describes their ranges, the default space centred on the recipe, the recipe as the first
trial, and how a trial's sampled values become a :class:`~lvmae.config.ProbeConfig`.

A space file maps a parameter of :data:`KNOBS` to one sampler of :data:`SAMPLERS` with its
arguments, or to a constant::

    probe: {choice: [linear, attentive]}
    lr: {loguniform: [1.0e-5, 3.0e-3]}
    batch_size: 16

Without a file, :func:`default_space_spec` centres the space on the recipe being tuned
(lr ÷10..×10, batch size and epochs ×½, ×1, ×1.5–2, dropout 0–0.3) and sweeps the probe
kind only when several kinds are asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ray import tune
from ray.tune.search.sample import Domain

from lvmae.config import ConfigError, ProbeConfig, read_yaml_mapping

__all__ = [
    "KNOBS",
    "SAMPLERS",
    "default_space_spec",
    "load_space",
    "max_epochs",
    "probe_config",
    "recipe_point",
]

SAMPLERS = ("choice", "uniform", "loguniform", "randint", "grid")
"""Samplers a space file may use (Ray Tune's ``choice``, ``uniform``, ``loguniform``,
``randint`` and ``grid_search``)."""

KNOBS = {"probe", "lr", "weight_decay", "batch_size", "epochs", "dropout", "gamma"}
"""The parameters a sweep may vary: ``probe`` (the kind) and recipe fields of
:class:`~lvmae.config.ProbeConfig`."""

_RECIPE_KNOBS = ("lr", "weight_decay", "batch_size", "epochs", "dropout", "gamma")


def _paper_recipes() -> dict[str, ProbeConfig]:
    return {"linear": ProbeConfig.paper("linear")}


def default_space_spec(recipes: Mapping[str, ProbeConfig]) -> dict[str, Any]:
    """The default space (as a space file would write it), centred on the first recipe of
    ``recipes`` (kind → resolved recipe): lr log-uniform in [lr/10, 10·lr]; batch size and
    epochs among {½, 1, 1.5}× the recipe's (batch size also 2×); weight decay among
    {0, 1e-4, 1e-3, 1e-2} plus the recipe's; dropout uniform in [0, 0.3]. The probe kind is
    a choice only when ``recipes`` holds several kinds.

    Raises:
        ValueError: ``recipes`` is empty.
    """
    if not recipes:
        raise ValueError("default_space_spec needs at least one recipe")
    kinds = list(recipes)
    r = recipes[kinds[0]]
    assert r.lr is not None and r.epochs is not None and r.batch_size is not None
    batches = sorted({max(1, r.batch_size // 2), r.batch_size, 2 * r.batch_size})
    epochs = sorted({max(1, r.epochs // 2), r.epochs, math.ceil(1.5 * r.epochs)})
    spec: dict[str, Any] = {
        "lr": {"loguniform": [r.lr / 10, r.lr * 10]},
        "batch_size": {"choice": batches},
        "epochs": {"choice": epochs},
        "weight_decay": {"choice": sorted({0.0, 1e-4, 1e-3, 1e-2, r.weight_decay})},
        "dropout": {"uniform": [0.0, 0.3]},
    }
    if len(kinds) > 1:
        spec = {"probe": {"choice": kinds}, **spec}
    return spec


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


def load_space(
    path: str | None = None, *, recipes: Mapping[str, ProbeConfig] | None = None
) -> dict[str, Any]:
    """A Tune search space from YAML (``{param: {sampler: args}}``, samplers
    ``choice``/``uniform``/``loguniform``/``randint``/``grid``, or a plain constant); the
    :func:`default_space_spec` of ``recipes`` (default: the paper's linear recipe) when
    ``path`` is None.

    Raises:
        ConfigError: unreadable file, unknown parameter or sampler, bad arguments.
    """
    if path is not None:
        spec: Mapping[str, Any] = read_yaml_mapping(path, "search space")
    else:
        spec = default_space_spec(recipes or _paper_recipes())
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
    """The most epochs a trial of ``space`` can run; 30 (the linear probe's paper recipe)
    when the space does not vary ``epochs``."""
    epochs = space.get("epochs", 30)
    if hasattr(epochs, "categories"):
        return max(epochs.categories)
    if isinstance(epochs, dict) and "grid_search" in epochs:
        return max(epochs["grid_search"])
    if hasattr(epochs, "upper"):
        return int(epochs.upper)
    return int(epochs)


def _nearest(domain: Any, value: Any) -> Any:
    """The value of a sampled Tune domain nearest to ``value``: ``value`` itself when the
    domain holds it; else the closest category (numbers) or the first one; else ``value``
    clipped into ``[lower, upper]`` (``upper - 1`` for integer domains, whose upper bound is
    exclusive)."""
    if hasattr(domain, "categories"):
        cats = list(domain.categories)
        if value in cats:
            return value
        numeric = [c for c in cats if isinstance(c, int | float) and not isinstance(c, bool)]
        if isinstance(value, int | float) and numeric:
            return min(numeric, key=lambda c: abs(c - value))
        return cats[0]
    integer = isinstance(domain.lower, int)
    upper = domain.upper - 1 if integer else domain.upper
    return min(max(value, domain.lower), upper)


def recipe_point(space: Mapping[str, Any], recipe: ProbeConfig) -> dict[str, Any]:
    """The recipe as a trial of ``space`` (for ``points_to_evaluate``): for every sampled
    parameter, the recipe's value (``probe``: its kind; ``gamma``: 1.0, a constant lr, when
    the recipe has none), or the nearest value the parameter's domain holds when a space
    file leaves the recipe's value out. Constants and grids are not part of the point."""
    values = {"probe": recipe.kind, **{k: getattr(recipe, k) for k in _RECIPE_KNOBS}}
    if values["gamma"] is None:
        values["gamma"] = 1.0
    return {
        k: _nearest(d, values[k]) for k, d in space.items() if k in values and isinstance(d, Domain)
    }


def probe_config(
    params: Mapping[str, Any], recipes: Mapping[str, ProbeConfig] | None = None
) -> ProbeConfig:
    """The probe recipe of one trial's sampled ``params``: kind ``params["probe"]`` (else the
    first kind of ``recipes``, else linear), its recipe from ``recipes`` (else the paper's)
    with the sampled fields on top.

    Raises:
        pydantic.ValidationError (a ``ValueError``): a sampled value out of range.
    """
    recipes = recipes or {}
    kind = params.get("probe", next(iter(recipes), "linear"))
    base = recipes.get(kind) or ProbeConfig.paper(kind)
    picked = {k: params[k] for k in _RECIPE_KNOBS if k in params}
    return ProbeConfig(**{**base.model_dump(exclude={"kind"}), **picked, "kind": kind})
