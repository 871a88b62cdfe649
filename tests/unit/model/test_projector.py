"""Projectors load from checkpoints written here in the official layouts (METHOD.md 3.5)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from rtd.config import ProjectorConfig
from rtd.model.projector import Phi, Pic2WordMLP, ProjectorLoadError, build_projector


def test_phi_layout_matches_searle_lincir_keys():
    phi = Phi(16, 64, 24)
    assert sorted(phi.state_dict()) == sorted(
        f"layers.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias"))


def test_load_lincir_searle_checkpoint(tmp_path):
    src = Phi(16, 64, 24).eval()
    path = tmp_path / "lincir_tiny.pt"
    torch.save({"epoch": 3, "Phi": src.state_dict()}, path)
    phi = build_projector(ProjectorConfig(kind="phi", checkpoint=str(path)), 16, 24).eval()
    x = torch.randn(3, 16)
    assert_close(phi(x), src(x))


def test_load_pic2word_checkpoint_with_module_prefix(tmp_path):
    src = Pic2WordMLP(16, 24).eval()
    assert "layers.0.0.weight" in src.state_dict() and "fc_out.weight" in src.state_dict()
    path = tmp_path / "pic2word.pt"
    torch.save({"state_dict_img2text": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    phi = build_projector(ProjectorConfig(kind="pic2word", checkpoint=str(path)), 16, 24).eval()
    x = torch.randn(2, 16)
    assert_close(phi(x), src(x))


def test_wrong_width_names_both_shapes(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save({"Phi": Phi(32, 128, 24).state_dict()}, path)
    with pytest.raises(ProjectorLoadError, match=r"\(128, 32\).*\(64, 16\)"):
        build_projector(ProjectorConfig(kind="phi", checkpoint=str(path)), 16, 24)


def test_wrong_layout_and_missing_file(tmp_path):
    path = tmp_path / "p2w.pt"
    torch.save({"state_dict_img2text": Pic2WordMLP(16, 24).state_dict()}, path)
    with pytest.raises(ProjectorLoadError, match="does not match the phi layout"):
        build_projector(ProjectorConfig(kind="phi", checkpoint=str(path)), 16, 24)
    with pytest.raises(ProjectorLoadError, match="does not exist"):
        build_projector(ProjectorConfig(kind="phi", checkpoint=str(tmp_path / "nope.pt")), 16, 24)


def test_checkpoint_loads_with_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"Phi": Evil()}, path)
    with pytest.raises(Exception):
        build_projector(ProjectorConfig(kind="phi", checkpoint=str(path)), 16, 24)
