"""Probe heads on frozen features: padding never changes their outputs, the mean pool
ignores pads, and :func:`build_probe` builds the head of each kind (LV-MAE §8)."""

from __future__ import annotations

import pytest
import torch

from lvmae.config import PROBE_KINDS, ProbeConfig
from lvmae.probes.heads import (
    AttentiveProbe,
    LinearProbe,
    PoolerProbe,
    TransformerBaseline,
    build_probe,
    mean_pool,
)
from tests.lvmae.probes.tasks import W


def _token_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "attentive": AttentiveProbe(W, 3, heads=4),  # the encoder's [CLS] (default)
        "attentive-learned": AttentiveProbe(W, 3, heads=4, cls_source="learned"),
        "pooler": PoolerProbe(W, 3, heads=4, num_queries=2),
        "baseline": TransformerBaseline(W, 3, width=32, depth=2, heads=4),
    }


@pytest.mark.parametrize("name", list(_token_models()))
def test_padding_does_not_change_token_probe_outputs(name):
    model = _token_models()[name].eval()
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([3, 5, 1])
    tight = torch.randn(3, 5, W, generator=g)
    loose = torch.randn(3, 11, W, generator=g) * 100.0  # garbage at the pads
    loose[:, :5] = tight
    real_tight = torch.arange(5)[None, :] < lengths[:, None]
    loose[:, :5][~real_tight] = 1e3
    real_loose = torch.arange(11)[None, :] < lengths[:, None]
    kwargs = {"cls": torch.randn(3, W, generator=g)} if model.wants_cls else {}
    with torch.no_grad():
        a = model(tight, real_tight, **kwargs)
        b = model(loose, real_loose, **kwargs)
        alone = model(tight[1:2, :5], real_tight[1:2], **{k: v[1:2] for k, v in kwargs.items()})
    assert a.shape == (3, 3)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[1:2], alone, atol=1e-5, rtol=1e-5)


def test_mean_pool_ignores_pads():
    tokens = torch.randn(2, 4, 3)
    real = torch.tensor([[True, True, False, False], [True, True, True, True]])
    pooled = mean_pool(tokens, real)
    torch.testing.assert_close(pooled[0], tokens[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], tokens[1].mean(0))
    with pytest.raises(ValueError, match="real token"):
        mean_pool(tokens, torch.zeros(2, 4, dtype=torch.bool))


def test_build_probe_follows_the_config():
    heads = {
        kind: build_probe(ProbeConfig(kind, heads=4, num_queries=2), W, 5) for kind in PROBE_KINDS
    }
    assert isinstance(heads["linear"], LinearProbe) and heads["linear"].input_kind == "pooled"
    assert isinstance(heads["attentive"], AttentiveProbe) and heads["attentive"].wants_cls
    assert isinstance(heads["pooler"], PoolerProbe) and heads["pooler"].queries.shape[1] == 2
    assert all(h.head.out_features == 5 for h in heads.values())
    learned = build_probe(ProbeConfig("attentive", heads=4, cls_source="learned"), W, 5)
    assert not learned.wants_cls and learned.cls_token is not None
    assert ProbeConfig("attentive").name == "attentive"
    assert ProbeConfig("attentive", cls_source="learned").name == "attentive-learned"
    assert ProbeConfig("pooler").name == "pooler" and ProbeConfig("linear").name == "linear"
    with pytest.raises(ValueError, match="multiple of heads"):
        build_probe(ProbeConfig("pooler", heads=5), W, 5)


def test_the_default_attentive_probe_reads_the_encoders_cls():
    """LV-MAE §8: the paper's attentive probe adapts the frozen encoder's [CLS]. With the
    default config, changing only the encoder's [CLS] (a new value of its learned token, so
    its [CLS] output changes; the tokens fed to the probe are kept) changes the probe's
    output; the learned-[CLS] variant takes no [CLS]."""
    from lvmae.mae.model import LVMAE, model_config

    torch.manual_seed(0)
    encoder = LVMAE(model_config("tiny", input_dim=16)).eval()
    x = torch.randn(2, 5, 16)
    real = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        cls, tokens = encoder.encode(x, real)
        encoder.cls_token.copy_(torch.randn_like(encoder.cls_token))
        cls_changed, _ = encoder.encode(x, real)
    probe = build_probe(ProbeConfig("attentive", heads=4), tokens.shape[-1], 3).eval()
    assert probe.wants_cls
    with torch.no_grad():
        a = probe(tokens, real, cls=cls)
        b = probe(tokens, real, cls=cls_changed)
    assert not torch.allclose(cls, cls_changed)
    assert not torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="encoder's cls"):
        probe(tokens, real)
    learned = build_probe(ProbeConfig("attentive", heads=4, cls_source="learned"), 64, 3)
    with pytest.raises(ValueError, match="learns its own"):
        learned(tokens, real, cls=cls)
