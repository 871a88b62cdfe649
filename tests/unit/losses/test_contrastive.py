"""The RTD loss against an independent formulation (explicit METHOD.md 6.4 sum), values and gradients."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.testing import assert_close

from rtd.losses.contrastive import infonce, nt_xent


def explicit_nt_xent(q: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    """L = -(1/2N) sum_a log(exp(z_a.z_p(a)/tau) / sum_{b != a} exp(z_a.z_b/tau)), loops, float64."""
    q, t = F.normalize(q.double(), dim=-1), F.normalize(t.double(), dim=-1)
    z = torch.cat([t, q])
    n = q.shape[0]
    total = 0.0
    for a in range(2 * n):
        p = a + n if a < n else a - n
        num = torch.exp(z[a] @ z[p] / tau)
        den = sum(torch.exp(z[a] @ z[b] / tau) for b in range(2 * n) if b != a)
        total = total + torch.log(num / den)
    return -total / (2 * n)


@pytest.mark.parametrize("n,d,tau", [(4, 8, 0.07), (6, 16, 0.5)])
def test_nt_xent_matches_explicit_formula_values_and_grads(n, d, tau):
    torch.manual_seed(n)
    q = torch.randn(n, d, requires_grad=True)
    t = torch.randn(n, d)
    q2 = q.detach().double().clone().requires_grad_(True)
    ours = nt_xent(q, t, tau)
    ref = explicit_nt_xent(q2, t, tau)
    assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)
    ours.backward()
    ref.backward()
    assert_close(q.grad.double(), q2.grad, atol=1e-5, rtol=1e-4)


def test_nt_xent_aligned_below_shuffled_and_targets_carry_no_grad():
    torch.manual_seed(0)
    t = torch.randn(8, 16, requires_grad=True)
    aligned = nt_xent(t.detach() + 0.01 * torch.randn(8, 16), t, 0.07)
    shuffled = nt_xent(t.detach()[torch.randperm(8)], t.detach(), 0.07)
    assert aligned < shuffled
    # t-t terms: with the query fixed, no gradient must reach theta; here targets are frozen tensors by contract
    q = torch.randn(8, 16, requires_grad=True)
    nt_xent(q, t.detach(), 0.07).backward()
    assert q.grad is not None and t.grad is None


def test_infonce_one_direction():
    torch.manual_seed(1)
    q, t = torch.randn(5, 8), torch.randn(5, 8)
    qn, tn = F.normalize(q, dim=-1), F.normalize(t, dim=-1)
    logits = qn @ tn.T / 0.1
    expected = -torch.log_softmax(logits, dim=1).diag().mean()
    assert_close(infonce(q, t, 0.1), expected)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int, q_all, t_all, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = q_all.shape[0] // world
        q = q_all[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        t = t_all[rank * n : (rank + 1) * n]
        loss = nt_xent(q, t, 0.1, rank=rank, world_size=world, gather=True)
        loss.backward()
        out[rank] = (float(loss), q.grad.clone())
    finally:
        dist.destroy_process_group()


def test_cross_worker_gather_two_gloo_processes():
    """Each rank's loss over its anchors against all gathered rows: the ranks' mean equals one NT-Xent over the
    global batch, and so do the (DDP-averaged) gradients."""
    torch.manual_seed(2)
    world, n, d = 2, 3, 8
    q_all, t_all = torch.randn(world * n, d), torch.randn(world * n, d)
    manager = mp.Manager()
    out = manager.dict()
    mp.start_processes(_gather_worker, args=(world, _free_port(), q_all, t_all, out), nprocs=world,
                       start_method="spawn", join=True)
    # single-process reference: anchors = all rows, candidates = all rows -> full NT-Xent on the union
    q_ref = q_all.clone().requires_grad_(True)
    full = nt_xent(q_ref, t_all, 0.1)
    full.backward()
    # the full loss averages 2*W*n anchors; rank r's loss averages its 2n anchors -> mean over ranks = full
    mean_rank = sum(out[r][0] for r in range(world)) / world
    assert math.isclose(mean_rank, float(full.detach()), rel_tol=1e-5)
    # the gather is differentiable: rank r's row gradient = sum over ranks of d L_r'/d q_r = W * d L_full/d q_r,
    # so DDP's averaging over ranks yields exactly the global-batch gradient
    for r in range(world):
        assert_close(out[r][1] / world, q_ref.grad[r * n : (r + 1) * n], atol=1e-6, rtol=1e-4)
