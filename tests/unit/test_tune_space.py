"""Search-space validation happens before any trial starts (no Ray needed)."""

from __future__ import annotations

import pytest

from rtd.config import ConfigError, TuneConfig, load_config
from rtd.ray_adapters.tune import concurrency, trial_config, validate_search_space


def test_shipped_sweeps_validate():
    for name in ("tune/tiny", "tune/minilm_tau_concat"):
        base = validate_search_space(load_config(name, cls=TuneConfig))
        assert base.run.steps >= 1


def test_misspelled_key_fails_before_any_trial():
    cfg = TuneConfig(base="train/tiny_ray", search={"optim.lrr": {"choice": [1e-4]}}, metric="train/loss")
    with pytest.raises(ConfigError, match=r"(?s)optim.lrr.*unknown key"):
        validate_search_space(cfg)


def test_bad_value_and_forbidden_key():
    with pytest.raises(ConfigError, match="loss.tau.*-1"):
        validate_search_space(TuneConfig(base="train/tiny_ray", search={"loss.tau": {"grid": [0.1, -1]}},
                                         metric="train/loss"))
    with pytest.raises(ConfigError, match="cannot be swept"):
        validate_search_space(TuneConfig(base="train/tiny_ray", search={"model.name": {"choice": ["x"]}},
                                         metric="train/loss"))
    with pytest.raises(ConfigError, match="needs validation"):
        validate_search_space(TuneConfig(base="train/tiny_ray", search={"loss.tau": {"grid": [0.1]}}))


def test_trial_config_and_concurrency():
    tcfg = load_config("tune/tiny", cls=TuneConfig)
    base = validate_search_space(tcfg)
    cfg = trial_config(base.model_dump(mode="json"), {"loss.tau": 0.1}, "t1", "/tmp/s", "/tmp/c")
    assert cfg.loss.tau == 0.1 and cfg.run.name == "t1" and cfg.data.cache_dir == "/tmp/c"
    assert concurrency(tcfg, base, cluster_cpus=4) == 1  # max_concurrent_trials set in the preset
    free = tcfg.model_copy(update={"max_concurrent_trials": None})
    assert concurrency(free, base, cluster_cpus=4) == int(3 // (0.1 + 1 * 0.5))
