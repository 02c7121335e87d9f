"""Every shipped preset in configs/ loads and validates."""

from pathlib import Path

import pytest

from lvmae.config import ExtractConfig, PretrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("name", "model"), [("extract.yaml", ExtractConfig), ("pretrain.yaml", PretrainConfig)]
)
def test_shipped_configs_validate(name, model):
    config = load_config(model, CONFIGS / name)
    assert isinstance(config, model)


def test_paper_recipe_learning_rate_follows_the_scaling_rule():
    config = load_config(PretrainConfig, CONFIGS / "pretrain.yaml")
    assert config.effective_lr() == pytest.approx(1.5e-4 * 16 / 256)
    assert (config.mask_ratio, config.masking, config.max_tokens) == (0.5, "semantic", 256)
