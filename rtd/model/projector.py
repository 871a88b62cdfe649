"""Projectors phi: image (or, during text-only training, text) embedding -> one pseudo word token.

Layouts of the official checkpoints (METHOD.md 3.5):
- SEARLE / LinCIR ``Phi``: ``{"Phi": state_dict}`` with keys ``layers.{0,3,6}.{weight,bias}``.
- Pic2Word ``IM2TEXT``: ``{"state_dict_img2text": state_dict}`` with a ``module.`` prefix and keys
  ``layers.{0,1}.0.{weight,bias}``, ``fc_out.{weight,bias}``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from rtd.config import ProjectorConfig
from rtd.model.state import load_checked_state

logger = logging.getLogger(__name__)


class Phi(nn.Module):
    """SEARLE/LinCIR MLP: Linear(d, 4d) -> GELU -> Dropout -> Linear(4d, 4d) -> GELU -> Dropout -> Linear(4d, d_tok)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, dropout: float = 0.5):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # [B, d_tok]


class Pic2WordMLP(nn.Module):
    """Pic2Word IM2TEXT: 2 x (Linear -> Dropout(0.1) -> ReLU), widths d -> 512 -> 512, then Linear(512, d_tok)."""

    def __init__(self, input_dim: int, output_dim: int, middle_dim: int = 512, n_layer: int = 2, dropout: float = 0.1):
        super().__init__()
        blocks, dim = [], input_dim
        for _ in range(n_layer):
            blocks.append(nn.Sequential(nn.Linear(dim, middle_dim), nn.Dropout(dropout), nn.ReLU()))
            dim = middle_dim
        self.layers = nn.Sequential(*blocks)
        self.fc_out = nn.Linear(middle_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.layers(x))  # [B, d_tok]


class IdentityProjector(nn.Module):
    """The frozen embedding itself is the pseudo token (only when d_proj == d_tok); a phi-free ablation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ProjectorLoadError(ValueError):
    pass


def build_projector(cfg: ProjectorConfig, input_dim: int, output_dim: int) -> nn.Module:
    """Build phi for an encoder with embedding width ``input_dim`` and token width ``output_dim``; load its
    checkpoint when ``cfg.checkpoint`` is set (random init otherwise, logged)."""
    if cfg.kind == "identity":
        if input_dim != output_dim:
            raise ProjectorLoadError(f"projector.kind=identity needs d_proj == d_tok, got {input_dim} != {output_dim}")
        return IdentityProjector()
    if cfg.kind == "pic2word":
        phi: nn.Module = Pic2WordMLP(input_dim, output_dim)
    else:
        phi = Phi(input_dim, cfg.hidden_mult * input_dim, output_dim, cfg.dropout)
    if cfg.checkpoint:
        load_projector_state(phi, cfg.checkpoint, cfg.kind)
    else:
        logger.warning("projector %s has no checkpoint: random init (train one with `rtd train-phi`)", cfg.kind)
    return phi


def _extract_state(obj: object, kind: str, path: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise ProjectorLoadError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    for key in ("Phi", "state_dict_img2text", "state_dict", "phi"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ProjectorLoadError(f"{path}: no projector state dict found (keys: {sorted(obj)[:8]})")
    return state


def load_projector_state(phi: nn.Module, path: str | os.PathLike[str], kind: str = "phi") -> None:
    """Load a projector checkpoint (official layouts, or ``.safetensors``) with ``weights_only=True``.

    Raises:
        ProjectorLoadError: missing file, wrong layout, or a shape mismatch (naming both shapes).
    """
    path = str(path)
    if not Path(path).is_file():
        raise ProjectorLoadError(f"projector checkpoint {path} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = _extract_state(torch.load(path, map_location="cpu", weights_only=True), kind, path)
    load_checked_state(phi, state, path, ProjectorLoadError, f"does not match the {kind} layout")


def save_projector(phi: nn.Module, path: str | os.PathLike[str], step: int | None = None) -> None:
    """Save phi in the LinCIR layout ``{"epoch": step, "Phi": state_dict}`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"epoch": step or 0, "Phi": {k: v.detach().cpu() for k, v in phi.state_dict().items()}}, tmp)
    os.replace(tmp, path)
