"""Mined hard negatives: a batch order that puts look-alike triplets into the same batch.

In a contrastive batch every other row is a negative. Random batches (the paper) mostly contain easy negatives; this
stage groups each triplet with the triplets whose *target captions* are nearest to its own (FAISS inner-product kNN
on the cached frozen target embeddings, ``mode="nearest_targets"``) or that share its *reference caption*
(``mode="shared_reference"``), then packs whole groups into batches. Off by default (``data.hard_negatives.mode``).

Rows with the *same* cleaned target caption are never put into one group: an identical target would be a false
negative with a contradictory label, not a hard one.

The result is a permutation of row indices; consecutive chunks of ``data.batch_size`` rows are batches (what
:class:`rtd.train.sources.TripletSource` consumes as ``order``).
"""

from __future__ import annotations

import logging
import random
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rtd.config import TrainConfig
from rtd.data.triplets import Triplet, clean_caption

__all__ = ["hard_negative_order", "group_nearest_targets", "group_shared_reference", "pack_groups",
           "same_batch_fraction"]

logger = logging.getLogger(__name__)


def group_nearest_targets(emb: np.ndarray, targets: Sequence[str], group_size: int, seed: int = 0,
                          search_k: int | None = None) -> list[list[int]]:
    """Greedy kNN groups: visit rows in a seeded random order; an unassigned row takes its nearest unassigned
    neighbours (by cosine of ``emb``) with a different target text until the group has ``group_size`` rows.

    Args:
        emb: [N, D] frozen target embeddings (normalised here).
        targets: the N cleaned target captions (identical texts never share a group).
        group_size: rows per group (>= 2).
        seed: visiting order.
        search_k: neighbours searched per row (default ``4 * group_size``).
    """
    import faiss

    n = len(targets)
    x = F.normalize(torch.as_tensor(np.asarray(emb, dtype=np.float32)), dim=-1).numpy()  # [N, D]
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    k = min(n, (search_k or 4 * group_size) + 1)
    _, nbrs = index.search(x, k)  # [N, k], self usually first
    assigned = np.zeros(n, dtype=bool)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    groups: list[list[int]] = []
    for i in order:
        if assigned[i]:
            continue
        group, texts = [i], {targets[i]}
        assigned[i] = True
        for j in nbrs[i].tolist():
            if len(group) >= group_size:
                break
            if j < 0 or assigned[j] or targets[j] in texts:
                continue
            group.append(j)
            texts.add(targets[j])
            assigned[j] = True
        groups.append(group)
    return groups


def group_shared_reference(references: Sequence[str], targets: Sequence[str], group_size: int,
                           seed: int = 0) -> list[list[int]]:
    """Rows with the same cleaned reference caption, in chunks of at most ``group_size`` (distinct targets)."""
    by_ref: dict[str, list[int]] = {}
    for i, r in enumerate(references):
        by_ref.setdefault(r, []).append(i)
    rng = random.Random(seed)
    groups: list[list[int]] = []
    for members in by_ref.values():
        rng.shuffle(members)
        pending = list(members)
        while pending:
            group, texts, rest = [], set(), []
            for j in pending:
                if len(group) < group_size and targets[j] not in texts:
                    group.append(j)
                    texts.add(targets[j])
                else:
                    rest.append(j)
            groups.append(group)
            pending = rest
    return groups


def pack_groups(groups: list[list[int]], batch_size: int, seed: int = 0) -> list[int]:
    """Pack whole groups into batches of ``batch_size`` (first-fit decreasing; a group larger than a batch is
    split), shuffle the batch order, and flatten to one permutation."""
    rng = random.Random(seed)
    parts: list[list[int]] = []
    for g in groups:
        parts.extend(g[i : i + batch_size] for i in range(0, len(g), batch_size))
    rng.shuffle(parts)  # ties in the sort below keep a random order
    parts.sort(key=len, reverse=True)
    bins: list[list[int]] = []
    room: list[int] = []
    for p in parts:
        for b, free in enumerate(room):
            if free >= len(p):
                bins[b].extend(p)
                room[b] -= len(p)
                break
        else:
            bins.append(list(p))
            room.append(batch_size - len(p))
    full = [b for b in bins if len(b) == batch_size]
    partial = [i for b in bins if len(b) != batch_size for i in b]
    rng.shuffle(full)
    return [i for b in full for i in b] + partial


def same_batch_fraction(order: Sequence[int], groups: list[list[int]], batch_size: int) -> float:
    """Share of (row, group-mate) pairs that land in the same batch under ``order`` (1.0 = every group intact)."""
    batch_of = {row: pos // batch_size for pos, row in enumerate(order)}
    pairs = hits = 0
    for g in groups:
        for a in g:
            for b in g:
                if a != b:
                    pairs += 1
                    hits += batch_of[a] == batch_of[b]
    return hits / pairs if pairs else 1.0


def hard_negative_order(triplets: Sequence[Triplet], cfg: TrainConfig, bundle=None, cache=None) -> list[int]:
    """Row order whose consecutive ``data.batch_size`` chunks hold mined hard-negative groups.

    Args:
        triplets: the training rows.
        cfg: reads ``data.hard_negatives`` (mode, group_size), ``data.batch_size`` and ``run.seed``.
        bundle: the encoder bundle; used to embed targets when no cache is given.
        cache: a :class:`~rtd.train.cache.FrozenEmbeddingCache` holding the targets' frozen embeddings.

    Returns:
        A permutation of ``range(len(triplets))``.

    Raises:
        ValueError: ``mode="nearest_targets"`` without a cache or a bundle to embed the targets.
    """
    hn = cfg.data.hard_negatives
    n = len(triplets)
    if hn.mode == "off" or n == 0:
        return list(range(n))
    seed, B = cfg.run.seed, cfg.data.batch_size
    targets = [clean_caption(t.target) for t in triplets]
    if hn.mode == "shared_reference":
        groups = group_shared_reference([clean_caption(t.reference) for t in triplets], targets, hn.group_size, seed)
    else:
        if cache is not None:
            emb = cache.get(targets).numpy()
        elif bundle is not None:
            emb = bundle.encode_frozen_text(targets).cpu().numpy()
        else:
            raise ValueError("data.hard_negatives.mode=nearest_targets needs the frozen-embedding cache "
                             "(data.use_cache=true) or the encoder bundle to embed the target captions")
        groups = group_nearest_targets(emb, targets, hn.group_size, seed)
    order = pack_groups(groups, B, seed)
    assert sorted(order) == list(range(n)), "hard-negative order must be a permutation"
    multi = [g for g in groups if len(g) > 1]
    logger.info("hard negatives (%s): %d groups of >1 rows (mean size %.2f), %.0f%% of group pairs share a batch",
                hn.mode, len(multi), float(np.mean([len(g) for g in multi])) if multi else 0.0,
                100 * same_batch_fraction(order, groups, B))
    return order
