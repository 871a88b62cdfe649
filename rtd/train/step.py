"""One RTD step and one LinCIR phi step, as pure functions over tensors and modules (METHOD.md 6.3, 4.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rtd.config import RTDMethodConfig
from rtd.model.backends import TextTower, trim_batch

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def add_noise(e: torch.Tensor, scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x = e + scale * u * eps, u ~ U(0,1) one scalar per row, eps ~ N(0, I) (METHOD.md 6.3 step 4)."""
    if scale == 0:
        return e
    u = torch.rand(e.shape[0], 1, generator=generator, device="cpu").to(e.device, e.dtype)  # [B, 1]
    eps = torch.randn(e.shape, generator=generator, device="cpu").to(e.device, e.dtype)  # [B, D]
    return e + scale * u * eps


@torch.no_grad()
def frozen_embed(frozen: TextTower, ids: torch.Tensor, mask: torch.Tensor, normalize: bool) -> torch.Tensor:
    ids, mask = trim_batch(ids, mask)
    e = frozen(ids, mask).float()  # [B, D]
    return F.normalize(e, dim=-1) if normalize else e


@dataclass
class RTDModels:
    student: nn.Module  # psi_T^theta (possibly DDP-wrapped)
    frozen: TextTower  # psi_T^0
    phi: nn.Module  # frozen projector (eval)
    normalize: bool  # normalise frozen embeddings (sentence encoders)


def rtd_step(models: RTDModels, batch: dict[str, torch.Tensor], rtd: RTDMethodConfig, noise_scale: float,
             loss_fn: LossFn, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one RTD batch. ``batch`` holds ``query_ids/mask`` [N, L] and either cached ``target_emb`` /
    ``reference_emb`` [B, D] or ``target_ids/mask`` and ``reference_ids/mask`` for the frozen tower."""
    with torch.no_grad():
        if "target_emb" in batch:
            e_t, e_r = batch["target_emb"].float(), batch["reference_emb"].float()  # [B, D]
        else:
            e_t = frozen_embed(models.frozen, batch["target_ids"], batch["target_mask"], models.normalize)
            e_r = frozen_embed(models.frozen, batch["reference_ids"], batch["reference_mask"], models.normalize)
        B = e_t.shape[0]
        if rtd.concatenation == "text":
            pseudo = None
        else:
            x = add_noise(e_r, noise_scale if rtd.concatenation == "refined" else 0.0, generator)  # [B, D]
            s = models.phi(x)  # [B, d_tok]
            pseudo = torch.cat([s, s]) if rtd.refined_batch_sampling else s  # [N, d_tok]
        targets = torch.cat([e_t, e_r]) if rtd.refined_batch_sampling else e_t  # [N, D]
    q_ids, q_mask = trim_batch(batch["query_ids"], batch["query_mask"])
    if q_ids.shape[0] != targets.shape[0]:
        raise ValueError(f"batch layout mismatch: {q_ids.shape[0]} queries for {targets.shape[0]} targets (B={B})")
    q = models.student(q_ids, q_mask, pseudo)  # [N, D]
    loss = loss_fn(q, targets)
    with torch.no_grad():
        qn, tn = F.normalize(q.float(), dim=-1), F.normalize(targets, dim=-1)
        pos = (qn * tn).sum(-1)
        acc = ((qn @ tn.T).argmax(-1) == torch.arange(len(qn), device=qn.device)).float().mean()
    return loss, {"train/pos_cos": float(pos.mean()), "train/batch_acc": float(acc),
                  "train/tokens": float(q_mask.sum())}


def phi_step(phi: nn.Module, frozen: TextTower, batch: dict[str, torch.Tensor], noise_scale: float, normalize_inputs: bool,
             normalize_loss: bool, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """LinCIR: MSE between psi_T^0(masked caption with $ := phi(emb + noise)) and emb (only phi trains)."""
    e = frozen_embed(frozen, batch["caption_ids"], batch["caption_mask"], normalize_inputs)  # [B, D]
    x = add_noise(e, noise_scale, generator)
    s = phi(x)  # [B, d_tok]
    m_ids, m_mask = trim_batch(batch["masked_ids"], batch["masked_mask"])
    e_hat = frozen(m_ids, m_mask, s).float()  # [B, D]; gradients flow through the frozen tower into s
    if normalize_loss:
        e_hat, e = F.normalize(e_hat, dim=-1), F.normalize(e, dim=-1)
    loss = F.mse_loss(e_hat, e)
    with torch.no_grad():
        cos = F.cosine_similarity(e_hat, e, dim=-1).mean()
    return loss, {"train/pred_cos": float(cos), "train/tokens": float(m_mask.sum())}
