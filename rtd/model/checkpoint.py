"""Checkpoint directories: ``model.safetensors`` (the trainable text tower), ``phi.safetensors`` (the frozen phi the
tower was trained with), ``trainer_state.pt`` (optimizer, scheduler, step, RNG), ``config.yaml`` and
``run_info.json``. Written into a temporary sibling folder and renamed into place, so a reader never sees half a
checkpoint."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file
from torch import nn

from rtd.config import dump_config
from rtd.model.state import load_checked_state

MODEL_FILE = "model.safetensors"
PHI_FILE = "phi.safetensors"
STATE_FILE = "trainer_state.pt"
PHI_PT_FILE = "phi.pt"


class CheckpointError(ValueError):
    pass


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _contiguous_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in unwrap(module).state_dict().items()}


def save_checkpoint(
    out_dir: str | os.PathLike[str],
    tower: nn.Module | None,
    cfg: BaseModel,
    *,
    phi: nn.Module | None = None,
    trainer_state: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (temp dir + rename); returns its path."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        if tower is not None:
            state = _contiguous_state(tower)
            # Tied/shared tensors (e.g. HF tied embeddings) would make safetensors refuse; clone them apart.
            save_file({k: v.clone() for k, v in state.items()}, str(tmp / MODEL_FILE))
        if phi is not None and len(list(phi.parameters())):
            save_file(_contiguous_state(phi), str(tmp / PHI_FILE))
            # Also the LinCIR/SEARLE layout, so other tools can load our phi as they load theirs.
            torch.save({"epoch": int((trainer_state or {}).get("step", 0)), "Phi": _contiguous_state(phi)},
                       tmp / PHI_PT_FILE)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE_FILE)
        dump_config(cfg, tmp, extra_info=info)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_text_tower(tower: nn.Module, ckpt: str | os.PathLike[str]) -> None:
    """Load ``model.safetensors`` from a checkpoint dir (or a file; an official RTD ``text_encoder_*.pt`` too)
    into ``tower``.

    Raises:
        CheckpointError: missing file, or an architecture/width mismatch naming both shapes.
    """
    path = Path(ckpt)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"no text-tower weights at {path}")
    own = unwrap(tower).state_dict()
    state = load_file(str(path)) if path.suffix == ".safetensors" else _official_rtd_state(path, own)
    load_checked_state(unwrap(tower), state, str(path), CheckpointError, "is for a different architecture")


def _official_rtd_state(path: Path, own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official RTD file ``{"epoch": n, "CLIPTextModelWithProjection": state_dict}`` (HF CLIP key names),
    loaded with ``weights_only=True`` and mapped onto rtd's HF CLIP tower (which keeps the model under ``model.``)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "CLIPTextModelWithProjection" in obj:
        obj = obj["CLIPTextModelWithProjection"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict or the official RTD layout")
    if not any(k.startswith("model.") for k in obj) and any(k.startswith("model.") for k in own):
        obj = {f"model.{k}": v for k, v in obj.items()}
    # position_ids buffers of older transformers versions are not parameters any more
    return {k: v for k, v in obj.items() if not k.endswith("position_ids") or k in own}


def load_trainer_state(ckpt: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(ckpt) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"no trainer state at {path}: not a resumable checkpoint")
    return torch.load(path, map_location="cpu", weights_only=True)


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The newest complete ``checkpoint_*`` directory under ``root`` (by step), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    done = [p for p in root.glob("checkpoint_*") if (p / STATE_FILE).is_file() and (p / "config.yaml").is_file()]
    if not done:
        return None
    return max(done, key=lambda p: int(p.name.split("_")[-1]))
