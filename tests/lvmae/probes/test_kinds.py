"""The registry of probe kinds (:mod:`lvmae.probes.kinds`): a kind is one head module plus
one entry; config takes its names and the paper's recipes from there; an unknown kind is an
error naming the known ones."""

from __future__ import annotations

import importlib
import subprocess
import sys
from typing import get_args

import pytest

from lvmae.config import PAPER_PROBE_RECIPES, PROBE_KINDS, ProbeConfig, ProbeKind
from lvmae.errors import UnknownNameError
from lvmae.probes.heads import ProbeHead, build_probe
from lvmae.probes.kinds import KINDS, kind_spec
from tests.lvmae.probes.tasks import W


def test_config_reads_the_registry():
    assert PROBE_KINDS == tuple(KINDS) == get_args(ProbeKind)
    assert {k: dict(s.recipe) for k, s in KINDS.items()} == PAPER_PROBE_RECIPES
    for kind, spec in KINDS.items():
        config = ProbeConfig.paper(kind)
        assert {f: getattr(config, f) for f in spec.recipe} == dict(spec.recipe)


@pytest.mark.parametrize("kind", PROBE_KINDS)
def test_every_kind_builds_its_registered_head(kind):
    spec = KINDS[kind]
    head = build_probe(ProbeConfig(kind, heads=4), W, 3)
    assert isinstance(head, ProbeHead) and type(head).__module__ == spec.module
    assert head.input_kind == spec.inputs and head.wants_cls == spec.reads_cls
    assert importlib.import_module(spec.module).build is not None


def test_an_unknown_kind_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="unknown probe kind 'mlp'") as info:
        kind_spec("mlp")
    assert all(k in str(info.value) for k in PROBE_KINDS)
    with pytest.raises(ValueError, match="unknown probe kind 'mlp'"):
        build_probe(ProbeConfig.model_construct(kind="mlp", heads=4), W, 3)
    with pytest.raises(ValueError, match="kind") as info:
        ProbeConfig("mlp")
    assert all(repr(k) in str(info.value) for k in PROBE_KINDS)


def test_the_registry_loads_no_torch():
    code = "import sys, lvmae.probes.kinds; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
