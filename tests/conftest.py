"""Shared fixtures: tiny random-init models (no network), the offline MiniLM, fixture paths."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_clip_cfg():
    from rtd.config import ModelConfig

    return ModelConfig(backend="open_clip", name="rtd-tiny-clip", pretrained=None)


@pytest.fixture(scope="session")
def tiny_clip_bundle(tiny_clip_cfg):
    from rtd.model.backends import build_encoders

    torch.manual_seed(0)
    return build_encoders(tiny_clip_cfg)


@pytest.fixture(scope="session")
def tiny_hf_clip_dir(tmp_path_factory) -> Path:
    """A random-init HF CLIP (text + vision with projection) saved like a hub checkpoint."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=48),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=48),
        projection_dim=48,
    )
    d = tmp_path_factory.mktemp("tiny_hf_clip")
    CLIPModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def minilm_bundle():
    from rtd.config import ModelConfig
    from rtd.model.backends import build_encoders

    return build_encoders(ModelConfig(backend="hf_text", name="minilm"))
