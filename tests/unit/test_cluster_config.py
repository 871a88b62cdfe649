"""cluster.yaml validates against the cluster-config JSON schema shipped inside the ray package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_cluster_yaml_validates_against_ray_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import importlib.util

    spec = importlib.util.find_spec("ray")
    if spec is None:
        pytest.skip("ray not installed")
    schema = json.loads((Path(spec.origin).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    jsonschema.validate(cfg, schema)
    gpu = cfg["available_node_types"]["gpu_a100x4"]
    assert gpu["resources"]["GPU"] >= 4
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])
    assert any("[gpu]" in c for c in cfg["setup_commands"])
    req = (REPO / "requirements.txt").read_text()
    assert "ray[default,data,train,tune,serve]==2.60.0" in req


def test_runtime_env_excludes_heavy_dirs():
    env = yaml.safe_load((REPO / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert {".venv", ".git", "runs"} <= set(env["excludes"])
