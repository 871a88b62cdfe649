"""Retrieval metrics for CIRR, FashionIQ, CIRCO, GeneCIS and the text proxy (METHOD.md 8; PROXY_BASELINES.md).

Pure numpy functions on score matrices and rankings; no model code. Torch tensors are accepted wherever an
array is (they are moved to CPU numpy).

Tie rule. In the text proxy different gallery images can share an identical caption, hence an identical score,
so a target's rank is not a single number. For each query let ``g`` be the number of (non-excluded) gallery
items scored strictly higher than the target and ``e`` the number of *other* (non-excluded) items tied with it.
Assuming ties are broken uniformly at random, the target sits uniformly in ranks ``g+1 .. g+e+1``, so

    R@K (expected)    = clip((K - g) / (e + 1), 0, 1)
    R@K (optimistic)  = 1[g < K]          (target first among its ties)
    R@K (pessimistic) = 1[g + e < K]      (target last among its ties)

averaged over queries. "Tied" means: the same group id as the target (identical caption, whatever the floating
point score says) or exactly the same score. With distinct image features there are no ties and all three
equal the usual recall. Metric values are reported x100.

Metric keys: ``cirr_recall@K``, ``cirr_recall_subset@K``, ``fiq_<cat>_recall@K``, ``fiq_avg_recall@K``,
``circo_map@K``, ``circo_recall@K``, ``genecis_<subset>_recall@K``, ``genecis_avg_recall@K``; the optimistic and
pessimistic variants append ``_opt`` / ``_pess`` (e.g. ``cirr_recall@1_pess``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

__all__ = [
    "TieMode",
    "TIE_SUFFIX",
    "to_numpy",
    "group_ids_from_keys",
    "TargetRankStats",
    "target_rank_stats",
    "recall_from_stats",
    "recall_at_k",
    "reference_exclude_mask",
    "subset_exclude_mask",
    "cirr_rank_stats",
    "cirr_metrics_from_stats",
    "cirr_metrics",
    "fashioniq_metrics_from_stats",
    "fashioniq_metrics",
    "fashioniq_average",
    "topk_indices",
    "average_precision_at_k",
    "circo_metrics",
    "genecis_metrics",
    "genecis_average",
    "CIRR_KS",
    "CIRR_SUBSET_KS",
    "FIQ_KS",
    "CIRCO_KS",
    "GENECIS_KS",
]

TieMode = Literal["expected", "optimistic", "pessimistic"]
TIE_SUFFIX: dict[str, str] = {"expected": "", "optimistic": "_opt", "pessimistic": "_pess"}

CIRR_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
FIQ_KS = (10, 50)
CIRCO_KS = (5, 10, 25, 50)
GENECIS_KS = (1, 2, 3)


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of an array-like or a torch tensor (detached, on CPU; bf16/fp16 become fp32)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        t = x.detach().cpu()
        if str(t.dtype) in ("torch.bfloat16", "torch.float16"):
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def group_ids_from_keys(keys: Sequence[Any]) -> np.ndarray:
    """``[G]`` int64 ids, equal iff the keys (e.g. captions) are equal; numbered in first-seen order."""
    index: dict[Any, int] = {}
    return np.fromiter((index.setdefault(k, len(index)) for k in keys), dtype=np.int64, count=len(keys))


def _check_modes(tie_modes: Iterable[str]) -> list[str]:
    modes = list(tie_modes)
    for m in modes:
        if m not in TIE_SUFFIX:
            raise ValueError(f"unknown tie mode {m!r}; available: {', '.join(TIE_SUFFIX)}")
    return modes


@dataclass(frozen=True)
class TargetRankStats:
    """Where each query's target landed.

    Attributes:
        higher: ``[Q]`` int64, ``g``: non-excluded items scored strictly higher than the target (not tied).
        tied: ``[Q]`` int64, ``e``: other non-excluded items tied with the target.
    """

    higher: np.ndarray
    tied: np.ndarray

    def __len__(self) -> int:
        return int(self.higher.shape[0])

    @staticmethod
    def concat(parts: Sequence["TargetRankStats"]) -> "TargetRankStats":
        """Concatenate stats computed on consecutive query chunks."""
        if not parts:
            return TargetRankStats(np.zeros(0, np.int64), np.zeros(0, np.int64))
        return TargetRankStats(
            np.concatenate([p.higher for p in parts]), np.concatenate([p.tied for p in parts])
        )


def target_rank_stats(
    scores: Any,
    target_idx: Any,
    exclude_mask: Any | None = None,
    group_ids: Any | None = None,
) -> TargetRankStats:
    """Count, per query, the items above the target and the items tied with it.

    Args:
        scores: ``[Q, G]`` similarity scores (higher = better).
        target_idx: ``[Q]`` gallery index of each query's target.
        exclude_mask: ``[Q, G]`` bool, True = item removed from that query's ranking (e.g. the CIRR reference).
            The target itself must not be excluded.
        group_ids: ``[G]`` int ids; items sharing the target's id count as tied whatever their score
            (identical captions). None: only exactly equal scores tie.

    Returns:
        :class:`TargetRankStats` with ``higher`` (g) and ``tied`` (e), both ``[Q]``.

    Raises:
        ValueError: shapes disagree, an index is out of range, a target is excluded or its score is NaN.
    """
    s = to_numpy(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be [Q, G], got shape {s.shape}")
    q, g = s.shape
    t = to_numpy(target_idx).astype(np.int64).reshape(-1)
    if t.shape[0] != q:
        raise ValueError(f"target_idx has {t.shape[0]} entries for {q} queries")
    if q == 0:
        return TargetRankStats(np.zeros(0, np.int64), np.zeros(0, np.int64))
    if t.min() < 0 or t.max() >= g:
        raise ValueError(f"target_idx out of range [0, {g})")
    rows = np.arange(q)
    s_t = s[rows, t][:, None]  # [Q, 1]
    if np.isnan(s_t).any():
        raise ValueError(f"NaN target score for queries {np.flatnonzero(np.isnan(s_t[:, 0]))[:5].tolist()}")
    tied = s == s_t  # [Q, G]
    if group_ids is not None:
        gid = to_numpy(group_ids).reshape(-1)
        if gid.shape[0] != g:
            raise ValueError(f"group_ids has {gid.shape[0]} entries for a gallery of {g}")
        tied |= gid[None, :] == gid[t][:, None]
    higher = (s > s_t) & ~tied  # [Q, G]
    if exclude_mask is not None:
        ex = to_numpy(exclude_mask).astype(bool)
        if ex.shape != s.shape:
            raise ValueError(f"exclude_mask shape {ex.shape} != scores shape {s.shape}")
        bad = ex[rows, t]
        if bad.any():
            raise ValueError(f"the target is excluded for queries {np.flatnonzero(bad)[:5].tolist()}")
        keep = ~ex
        higher &= keep
        tied &= keep
    return TargetRankStats(
        higher=higher.sum(axis=1).astype(np.int64),
        tied=tied.sum(axis=1).astype(np.int64) - 1,  # the target is tied with itself
    )


def recall_from_stats(stats: TargetRankStats, k: int, mode: TieMode = "expected") -> np.ndarray:
    """Per-query recall@k in [0, 1] under a tie mode.

    Args:
        stats: from :func:`target_rank_stats`.
        k: cut-off (>= 1).
        mode: ``expected`` (uniform random tie-breaking), ``optimistic`` or ``pessimistic``.

    Returns:
        ``[Q]`` float64.
    """
    _check_modes([mode])
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    gh, e = stats.higher.astype(np.float64), stats.tied.astype(np.float64)
    if mode == "expected":
        return np.clip((k - gh) / (e + 1.0), 0.0, 1.0)
    if mode == "optimistic":
        return (gh < k).astype(np.float64)
    return (gh + e < k).astype(np.float64)


def recall_at_k(
    stats: TargetRankStats,
    ks: Sequence[int],
    prefix: str,
    tie_modes: Iterable[str] = ("expected",),
) -> dict[str, float]:
    """``{f"{prefix}@{k}{suffix}": 100 * mean recall}`` for every k and tie mode."""
    out: dict[str, float] = {}
    for mode in _check_modes(tie_modes):
        for k in ks:
            vals = recall_from_stats(stats, k, mode)  # type: ignore[arg-type]
            out[f"{prefix}@{k}{TIE_SUFFIX[mode]}"] = float(100.0 * vals.mean()) if len(vals) else float("nan")
    return out


# --------------------------------------------------------------------------------------------------- CIRR


def reference_exclude_mask(num_gallery: int, reference_idx: Any) -> np.ndarray:
    """``[Q, G]`` bool mask that is True only at each query's reference (CIRR removes it from its ranking)."""
    r = to_numpy(reference_idx).astype(np.int64).reshape(-1)
    mask = np.zeros((r.shape[0], num_gallery), dtype=bool)
    mask[np.arange(r.shape[0]), r] = True
    return mask


def subset_exclude_mask(num_gallery: int, member_idx: Sequence[Sequence[int]], reference_idx: Any) -> np.ndarray:
    """``[Q, G]`` bool mask excluding everything except each query's members, and the reference itself.

    Args:
        num_gallery: G.
        member_idx: ``[Q][M]`` gallery indices of ``img_set.members`` (may include the reference).
        reference_idx: ``[Q]`` gallery index of the reference.
    """
    r = to_numpy(reference_idx).astype(np.int64).reshape(-1)
    mask = np.ones((r.shape[0], num_gallery), dtype=bool)
    for i, mem in enumerate(member_idx):
        mask[i, np.asarray(mem, dtype=np.int64)] = False
    mask[np.arange(r.shape[0]), r] = True
    return mask


def cirr_rank_stats(
    scores: Any,
    target_idx: Any,
    reference_idx: Any,
    member_idx: Sequence[Sequence[int]] | None = None,
    group_ids: Any | None = None,
) -> tuple[TargetRankStats, TargetRankStats | None]:
    """CIRR rank statistics: whole gallery minus the reference, and members minus the reference.

    Args:
        scores: ``[Q, G]``.
        target_idx: ``[Q]`` gallery index of ``target_hard``.
        reference_idx: ``[Q]`` gallery index of the reference (removed from its own ranking).
        member_idx: ``[Q][6]`` gallery indices of ``img_set.members``; None skips the subset stats.
        group_ids: ``[G]`` identical-caption groups (text proxy) or None.

    Returns:
        ``(full, subset)`` stats; ``subset`` is None when ``member_idx`` is None.
    """
    s = to_numpy(scores)
    full = target_rank_stats(s, target_idx, reference_exclude_mask(s.shape[1], reference_idx), group_ids)
    subset = None
    if member_idx is not None:
        subset = target_rank_stats(
            s, target_idx, subset_exclude_mask(s.shape[1], member_idx, reference_idx), group_ids
        )
    return full, subset


def cirr_metrics_from_stats(
    full: TargetRankStats,
    subset: TargetRankStats | None,
    tie_modes: Iterable[str] = ("expected",),
    ks: Sequence[int] = CIRR_KS,
    subset_ks: Sequence[int] = CIRR_SUBSET_KS,
) -> dict[str, float]:
    """``cirr_recall@{1,5,10,50}`` and ``cirr_recall_subset@{1,2,3}`` (x100) from rank statistics."""
    modes = list(tie_modes)
    out = recall_at_k(full, ks, "cirr_recall", modes)
    if subset is not None:
        out.update(recall_at_k(subset, subset_ks, "cirr_recall_subset", modes))
    return out


def cirr_metrics(
    scores: Any,
    target_idx: Any,
    reference_idx: Any,
    member_idx: Sequence[Sequence[int]] | None = None,
    group_ids: Any | None = None,
    tie_modes: Iterable[str] = ("expected",),
) -> dict[str, float]:
    """CIRR val metrics (METHOD.md 8.1) from a ``[Q, G]`` score matrix; see :func:`cirr_rank_stats`."""
    full, subset = cirr_rank_stats(scores, target_idx, reference_idx, member_idx, group_ids)
    return cirr_metrics_from_stats(full, subset, tie_modes)


# --------------------------------------------------------------------------------------------------- FashionIQ


def fashioniq_metrics_from_stats(
    stats: TargetRankStats,
    category: str,
    tie_modes: Iterable[str] = ("expected",),
    ks: Sequence[int] = FIQ_KS,
) -> dict[str, float]:
    """``fiq_<category>_recall@{10,50}`` (x100) from rank statistics."""
    return recall_at_k(stats, ks, f"fiq_{category}_recall", tie_modes)


def fashioniq_metrics(
    scores: Any,
    target_idx: Any,
    category: str,
    group_ids: Any | None = None,
    tie_modes: Iterable[str] = ("expected",),
) -> dict[str, float]:
    """FashionIQ metrics for one category (METHOD.md 8.2); the reference is NOT removed."""
    return fashioniq_metrics_from_stats(target_rank_stats(scores, target_idx, None, group_ids), category, tie_modes)


def fashioniq_average(
    metrics: Mapping[str, float], categories: Sequence[str] = ("dress", "shirt", "toptee")
) -> dict[str, float]:
    """``fiq_avg_recall@K[suffix]``: the arithmetic mean over ``categories`` of every per-category recall key.

    Only keys present for all categories are averaged.
    """
    out: dict[str, float] = {}
    first = f"fiq_{categories[0]}_recall"
    for key in metrics:
        if not key.startswith(first):
            continue
        tail = key[len(first):]  # "@10", "@10_pess", ...
        keys = [f"fiq_{c}_recall{tail}" for c in categories]
        if all(k in metrics for k in keys):
            out[f"fiq_avg_recall{tail}"] = float(np.mean([metrics[k] for k in keys]))
    return out


# --------------------------------------------------------------------------------------------------- rankings


def topk_indices(scores: Any, k: int, exclude_mask: Any | None = None) -> np.ndarray:
    """The ``k`` best gallery indices per query, best first.

    Args:
        scores: ``[Q, G]``.
        k: how many to keep (must be <= the number of non-excluded items).
        exclude_mask: ``[Q, G]`` bool, True = never returned.

    Returns:
        ``[Q, k]`` int64. Equal scores are ordered by gallery index, except that which of several items tied
        exactly at the k-th score get in is unspecified.
    """
    s = to_numpy(scores).astype(np.float64, copy=True)
    if s.ndim != 2:
        raise ValueError(f"scores must be [Q, G], got shape {s.shape}")
    q, g = s.shape
    if exclude_mask is not None:
        ex = to_numpy(exclude_mask).astype(bool)
        if ex.shape != s.shape:
            raise ValueError(f"exclude_mask shape {ex.shape} != scores shape {s.shape}")
        s[ex] = -np.inf
        avail = (~ex).sum(axis=1).min() if q else g
    else:
        avail = g
    if k > avail:
        raise ValueError(f"k={k} exceeds the {avail} candidates available")
    if k < g:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]  # [Q, k], unordered
    else:
        part = np.tile(np.arange(g), (q, 1))
    part_scores = np.take_along_axis(s, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)  # primary: score desc; secondary: index asc
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


# --------------------------------------------------------------------------------------------------- CIRCO


def average_precision_at_k(relevant: Any, num_gt: Any, ks: Sequence[int] = CIRCO_KS) -> dict[int, np.ndarray]:
    """CIRCO's AP@K per query.

    AP@K = (1 / min(|GT|, K)) * sum_{k <= K} P@k * rel(k), with P@k = (#relevant in the top k) / k.

    Args:
        relevant: ``[Q, N]`` bool, rel(k) for the top-N ranked items (N >= max(ks)).
        num_gt: ``[Q]`` number of distinct ground truths per query (>= 1).
        ks: cut-offs.

    Returns:
        ``{K: [Q] float64}``.
    """
    rel = to_numpy(relevant).astype(np.float64)
    n_gt = to_numpy(num_gt).astype(np.float64).reshape(-1)
    if rel.ndim != 2 or rel.shape[0] != n_gt.shape[0]:
        raise ValueError(f"relevant must be [Q, N] with Q = len(num_gt); got {rel.shape} and {n_gt.shape}")
    if rel.shape[1] < max(ks):
        raise ValueError(f"need at least {max(ks)} ranked items, got {rel.shape[1]}")
    if (n_gt < 1).any():
        raise ValueError("every query needs at least one ground truth")
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    prec_rel = np.cumsum(rel, axis=1) / ranks * rel  # [Q, N] P@k * rel(k)
    return {k: prec_rel[:, :k].sum(axis=1) / np.minimum(n_gt, k) for k in ks}


def circo_metrics(
    ranked: Sequence[Sequence[Any]] | np.ndarray,
    gt: Sequence[Sequence[Any]],
    target: Sequence[Any] | None = None,
    ks: Sequence[int] = CIRCO_KS,
) -> dict[str, float]:
    """CIRCO mAP@K (and Recall@K w.r.t. the single target when ``target`` is given), x100.

    Args:
        ranked: ``[Q][N]`` ranked ids (or gallery indices), best first, N >= max(ks); the reference is not
            removed.
        gt: ``[Q]`` ground-truth ids (``gt_img_ids``) of the same kind as ``ranked``.
        target: ``[Q]`` ``target_img_id`` or None.
        ks: cut-offs.

    Returns:
        ``circo_map@K`` for every K, plus ``circo_recall@K`` when ``target`` is given.
    """
    if len(ranked) != len(gt):
        raise ValueError(f"ranked has {len(ranked)} queries, gt has {len(gt)}")
    n = max(ks)
    rel = np.zeros((len(ranked), n), dtype=bool)
    num_gt = np.zeros(len(ranked), dtype=np.int64)
    for i, (row, g) in enumerate(zip(ranked, gt)):
        gset = set(g)
        row = list(row)[:n]
        if len(row) < n:
            raise ValueError(f"query {i}: only {len(row)} ranked items, need {n}")
        rel[i] = [r in gset for r in row]
        num_gt[i] = len(gset)
    aps = average_precision_at_k(rel, num_gt, ks)
    out = {f"circo_map@{k}": float(100.0 * aps[k].mean()) for k in ks}
    if target is not None:
        for k in ks:
            hits = [t in list(row)[:k] for row, t in zip(ranked, target)]
            out[f"circo_recall@{k}"] = float(100.0 * np.mean(hits))
    return out


# --------------------------------------------------------------------------------------------------- GeneCIS


def genecis_metrics(
    scores: Any,
    subset: str,
    valid_mask: Any | None = None,
    tie_modes: Iterable[str] = ("expected",),
    ks: Sequence[int] = GENECIS_KS,
) -> dict[str, float]:
    """GeneCIS Recall@K for one subset: candidates are ``[target] + gallery``, the target at index 0.

    Args:
        scores: ``[Q, C]`` query-candidate scores, column 0 = target.
        subset: subset name used in the keys (``focus_object``, ...).
        valid_mask: ``[Q, C]`` bool, False = padding (galleries of different lengths); None = all valid.
        tie_modes: tie modes (exactly equal scores are ties, e.g. a duplicated candidate).
        ks: cut-offs.

    Returns:
        ``genecis_<subset>_recall@K`` (x100).
    """
    s = to_numpy(scores)
    exclude = None if valid_mask is None else ~to_numpy(valid_mask).astype(bool)
    stats = target_rank_stats(s, np.zeros(s.shape[0], dtype=np.int64), exclude, None)
    return recall_at_k(stats, ks, f"genecis_{subset}_recall", tie_modes)


def genecis_average(metrics: Mapping[str, float]) -> dict[str, float]:
    """``genecis_avg_recall@K[suffix]``: mean over the subsets present in ``metrics`` for each key tail."""
    from collections import defaultdict

    groups: dict[str, list[float]] = defaultdict(list)
    for key, value in metrics.items():
        if key.startswith("genecis_") and "_recall@" in key and not key.startswith("genecis_avg_"):
            groups[key[key.index("_recall@"):]].append(value)
    return {f"genecis_avg{tail}": float(np.mean(v)) for tail, v in groups.items()}
