"""A 2-trial sweep of 2 steps each on the tiny model: trials run, share the cache, and outputs are written."""

from __future__ import annotations

import json

import pytest

from rtd.config import TuneConfig, load_config

pytestmark = pytest.mark.ray


def test_two_trial_sweep(ray_cluster, tmp_path, fixtures_dir):
    from rtd.ray_adapters.tune import run_sweep

    cfg = load_config("tune/tiny", [f"storage_path={tmp_path}/tune",
                                    f"overrides=[run.steps=2, run.log_every=1, run.checkpoint_every=2, "
                                    f"scaling.num_workers=1, 'data.paths=[{fixtures_dir / 'triplets.jsonl'}]', "
                                    f"run.storage_path={tmp_path}/runs]"], cls=TuneConfig)
    out = run_sweep(cfg)
    sweep = tmp_path / "tune" / "tiny_sweep"
    best = json.loads((sweep / "best.json").read_text())
    assert best["best"] is not None and best["config"]["loss"]["tau"] in (0.05, 0.1)
    import csv

    rows = list(csv.DictReader((sweep / "results.csv").read_text().splitlines()))
    assert len(rows) == 2 and all(int(r["last_step"]) == 2 for r in rows)
    assert sorted(float(r["loss.tau"]) for r in rows) == [0.05, 0.1]
    md = (sweep / "results.md").read_text()
    # searched values print in full, not rounded to the metric's 2 decimals
    assert "| 0.05 |" in md and "| 0.1 |" in md
    assert (sweep / "metric_by_step.png").is_file()
    # both trials read the cache filled once by the driver: a single cache folder for the single fingerprint
    cache_dirs = list((tmp_path / "runs" / "frozen_cache").iterdir())
    assert len(cache_dirs) == 1
    assert out["checkpoint_path"]
