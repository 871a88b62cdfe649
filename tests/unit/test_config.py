from __future__ import annotations

import pytest
import yaml

from rtd.config import ConfigError, TrainConfig, dump_config, list_presets, load_config


def test_every_shipped_preset_loads():
    presets = list_presets()
    assert presets, "no presets shipped"
    for p in presets:
        cfg = load_config(p)
        assert cfg.model_config["frozen"]


def test_overrides_are_parsed_and_validated():
    cfg = load_config("train/minilm_ip2p", ["optim.lr=3e-5", "rtd.refined_batch_sampling=false", "data.paths=[a, b]"])
    assert cfg.optim.lr == 3e-5 and cfg.rtd.refined_batch_sampling is False and cfg.data.paths == ["a", "b"]


def test_typo_names_key_and_accepted_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr'.*accepted keys here: .*lr"):
        load_config("train/minilm_ip2p", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="loss.tau"):
        load_config("train/minilm_ip2p", ["loss.tau=-1"])
    with pytest.raises(ConfigError, match="shipped presets"):
        load_config("train/nope")


def test_configs_are_frozen():
    cfg = TrainConfig()
    with pytest.raises(Exception):
        cfg.optim.lr = 1.0  # type: ignore[misc]


def test_dump_roundtrip(tmp_path):
    cfg = load_config("train/minilm_ip2p", ["loss.tau=0.05"])
    path = dump_config(cfg, tmp_path)
    assert yaml.safe_load(path.read_text())["config_kind"] == "train"
    again = load_config(str(path))
    assert again == cfg
    assert (tmp_path / "run_info.json").is_file()
