"""Every shipped config in configs/ loads, validates and round-trips."""

from pathlib import Path

import pytest
import yaml

from lvmae.config import (
    ExtractConfig,
    PretrainConfig,
    RunConfig,
    load_config,
    load_run_config,
    read_yaml_mapping,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SECTION_FILES = {"extract.yaml": ExtractConfig, "pretrain.yaml": PretrainConfig}


def test_every_shipped_config_is_covered():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert names, "no configs found"
    assert set(SECTION_FILES) <= names


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_loads_and_round_trips(path, tmp_path):
    if path.name in SECTION_FILES:
        model = SECTION_FILES[path.name]
        config = load_config(model, path)
        again = tmp_path / path.name
        again.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        assert load_config(model, again) == config
        return
    config = load_run_config(path)
    assert isinstance(config, RunConfig)
    dumped = config.model_dump(mode="json")
    again = tmp_path / path.name
    again.write_text(yaml.safe_dump(dumped))
    assert load_run_config(again) == config
    # every section the file names is kept (nothing silently dropped)
    assert set(read_yaml_mapping(path, "config")) <= set(dumped)


def test_paper_recipe_learning_rate_follows_the_scaling_rule():
    config = load_config(PretrainConfig, CONFIGS / "pretrain.yaml")
    # the authors' setup: 16 per GPU on 8 GPUs, lr = blr * 128 / 256
    assert (config.batch_size, config.num_workers, config.global_batch_size()) == (16, 8, 128)
    assert config.effective_lr() == pytest.approx(1.5e-4 * 128 / 256)
    assert (config.mask_ratio, config.masking, config.max_tokens) == (0.5, "semantic", 256)
