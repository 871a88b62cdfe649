"""AdamW and learning-rate schedules from ``OptimConfig``."""

from __future__ import annotations

import math

import torch
from torch import nn

from rtd.config import OptimConfig


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    # Weight decay on all parameters, as the RTD code does (METHOD.md 10.18).
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warm = cfg.warmup_steps

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
