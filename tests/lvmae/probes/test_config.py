"""Probe recipes: the paper's values (LV-MAE §8; docs/design.md "Reference facts") and
clear errors for bad recipes."""

from __future__ import annotations

import pytest

from lvmae.config import CLS_SOURCES, ConfigError, ProbeConfig


def test_paper_configs():
    linear, attentive, pooler = (ProbeConfig.paper(k) for k in ("linear", "attentive", "pooler"))
    assert (linear.lr, linear.epochs, linear.batch_size, linear.gamma) == (1e-4, 30, 16, None)
    assert (attentive.lr, attentive.epochs, attentive.batch_size) == (1e-3, 20, 16)
    assert attentive.gamma == 0.9 and pooler.gamma == 0.9
    assert (linear.weight_decay, linear.dropout, linear.seed) == (0.0, 0.0, 0)
    assert ProbeConfig("attentive", lr=3e-4).gamma == 0.9
    assert ProbeConfig.from_dict(attentive.to_dict()) == attentive
    assert CLS_SOURCES == ("learned", "encoder")
    with pytest.raises(ValueError, match="kind"):
        ProbeConfig("mlp")
    with pytest.raises(ConfigError, match="momentum: Extra inputs are not permitted"):
        ProbeConfig.from_dict({"kind": "linear", "momentum": 0.9})
    with pytest.raises(ValueError, match="gamma"):
        ProbeConfig("attentive", gamma=1.5)


def test_a_misspelt_recipe_field_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"lrr\n.*Extra inputs are not permitted"):
        ProbeConfig("linear", lrr=1)
