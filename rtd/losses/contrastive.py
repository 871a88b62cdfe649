"""RTD's frozen-target contrastive losses (METHOD.md 6.4).

``nt_xent``: the SimCLR NT-Xent of the RTD code. With t, q the L2-normalised target and query rows (N each) and
z = [t; q] (2N rows), every row a is an anchor whose positive is its partner p(a) (k <-> N+k) and whose
denominator runs over every other row (self excluded):

    L = -(1/2N) sum_a log( exp(z_a.z_p(a)/tau) / sum_{b != a} exp(z_a.z_b/tau) )

``infonce``: one direction (query -> target) cross-entropy over the targets.

With ``world_size > 1`` and gathering on, other workers' rows join every denominator as negatives; each rank averages
over its own anchors and the gather is differentiable, so after DDP's gradient averaging the update equals that of
one NT-Xent over the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_rows(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """All-gather ``x`` [n, D] from every rank -> [world_size * n, D], differentiably: the backward pass sums every
    rank's gradient for a row into the rank that owns it. With DDP's gradient averaging, the parameter gradient then
    equals that of the mean of the ranks' losses, i.e. of one loss over the global batch (tested)."""
    if world_size == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))


def nt_xent(query: torch.Tensor, target: torch.Tensor, tau: float, *, rank: int = 0, world_size: int = 1,
            gather: bool = False) -> torch.Tensor:
    """Symmetric NT-Xent between queries [N, D] and frozen targets [N, D] (row k of each is a positive pair)."""
    q = F.normalize(query.float(), dim=-1)  # [N, D]
    t = F.normalize(target.float(), dim=-1)  # [N, D]
    n = q.shape[0]
    anchors = torch.cat([t, q])  # [2N, D]
    if gather and world_size > 1:
        t_all, q_all = gather_rows(t, rank, world_size), gather_rows(q, rank, world_size)  # [W*N, D]
        total = t_all.shape[0]
        cands = torch.cat([t_all, q_all])  # [2WN, D]
        offset = rank * n
        self_idx = torch.cat([torch.arange(n) + offset, torch.arange(n) + total + offset]).to(q.device)
        partner = torch.cat([torch.arange(n) + total + offset, torch.arange(n) + offset]).to(q.device)
    else:
        cands = anchors
        self_idx = torch.arange(2 * n, device=q.device)
        partner = torch.cat([torch.arange(n) + n, torch.arange(n)]).to(q.device)
    logits = anchors @ cands.T / tau  # [2N, C]
    logits[torch.arange(2 * n, device=q.device), self_idx] = float("-inf")
    return F.cross_entropy(logits, partner)


def infonce(query: torch.Tensor, target: torch.Tensor, tau: float, *, rank: int = 0, world_size: int = 1,
            gather: bool = False) -> torch.Tensor:
    """One-directional InfoNCE: each query against all targets (others' targets too when gathering)."""
    q = F.normalize(query.float(), dim=-1)  # [N, D]
    t = F.normalize(target.float(), dim=-1)  # [N, D]
    labels = torch.arange(q.shape[0], device=q.device)
    if gather and world_size > 1:
        t = gather_rows(t, rank, world_size)
        labels = labels + rank * q.shape[0]
    return F.cross_entropy(q @ t.T / tau, labels)


def build_loss(kind: str, tau: float, *, rank: int = 0, world_size: int = 1, gather: bool = False):
    fn = {"nt_xent": nt_xent, "infonce": infonce}[kind]
    return lambda q, t: fn(q, t, tau, rank=rank, world_size=world_size, gather=gather)
