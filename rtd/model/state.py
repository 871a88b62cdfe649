"""Shape-checked state-dict loading shared by text-tower and projector checkpoints."""

from __future__ import annotations

import torch
from torch import nn


def load_checked_state(module: nn.Module, state: dict[str, torch.Tensor], source: str, error: type[Exception],
                       mismatch: str) -> None:
    """Load ``state`` into ``module`` after checking keys and shapes.

    Raises:
        error: ``"{source} {mismatch}: missing [...], unexpected [...]"`` for a key mismatch, or a message naming the
            parameter and both shapes for a width mismatch.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise error(f"{source} {mismatch}: missing keys {missing[:6]}, unexpected keys {unexpected[:6]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise error(f"{source}: {k} has shape {tuple(v.shape)} in the checkpoint but {tuple(own[k].shape)} in "
                        "the model (a checkpoint for another architecture or width?)")
    module.load_state_dict(state)
