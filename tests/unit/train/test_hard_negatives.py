"""Mined hard negatives: permutation, whole groups inside one batch, no identical targets grouped, off = identity."""

from __future__ import annotations

import numpy as np
import pytest

from rtd.config import TrainConfig, validate_config
from rtd.data.triplets import Triplet
from rtd.train.cache import FrozenEmbeddingCache
from rtd.train.hard_negatives import (
    group_nearest_targets,
    hard_negative_order,
    pack_groups,
    same_batch_fraction,
)

COLORS = ["red", "blue", "green", "black", "white", "pink", "grey", "brown"]
THINGS = ["car", "dog", "lamp", "chair"]


def _clustered(n_clusters: int = 8, per: int = 4, dim: int = 32, seed: int = 0):
    """Targets in tight clusters (same thing, different colour) with near-duplicate embeddings."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim))
    trips, emb, cluster = [], [], []
    for c in range(n_clusters):
        for j in range(per):
            target = f"a {COLORS[j]} {THINGS[c % 4]} number {c}"
            trips.append(Triplet(f"a photo {c}-{j}", f"make it {COLORS[j]}", target))
            emb.append(centers[c] + 0.01 * rng.normal(size=dim))
            cluster.append(c)
    perm = rng.permutation(len(trips))  # clusters not contiguous in the input
    return [trips[i] for i in perm], np.asarray(emb, np.float32)[perm], np.asarray(cluster)[perm]


def _cfg(mode: str, batch_size: int = 8, group_size: int = 4) -> TrainConfig:
    return validate_config(TrainConfig, {"data": {"batch_size": batch_size,
                                                  "hard_negatives": {"mode": mode, "group_size": group_size}}})


def test_nearest_targets_groups_land_in_one_batch(tmp_path):
    trips, emb, cluster = _clustered()
    cache = FrozenEmbeddingCache(tmp_path, "fp")
    cache.put([t.target for t in trips], emb)
    order = hard_negative_order(trips, _cfg("nearest_targets"), cache=cache)
    assert sorted(order) == list(range(len(trips)))
    for b in range(0, len(order), 8):
        ids = cluster[order[b : b + 8]]
        assert all((ids == c).sum() == 4 for c in set(ids.tolist())), "a cluster was split across batches"
    # random batches would keep only ~3/31 of the pairs together
    groups = [list(np.flatnonzero(cluster == c)) for c in range(8)]
    assert same_batch_fraction(order, groups, 8) == 1.0


def test_identical_targets_never_share_a_group():
    emb = np.tile(np.eye(4, dtype=np.float32)[:1], (6, 1)) + np.eye(6, 4, dtype=np.float32) * 1e-3
    targets = ["same"] * 3 + ["a", "b", "c"]
    groups = group_nearest_targets(emb, targets, group_size=3)
    for g in groups:
        assert len({targets[i] for i in g}) == len(g)


def test_shared_reference_and_off():
    trips = [Triplet(f"ref {i // 4}", "m", f"target {i}") for i in range(16)]
    order = hard_negative_order(trips, _cfg("shared_reference", batch_size=4))
    for b in range(0, 16, 4):
        assert len({trips[i].reference for i in order[b : b + 4]}) == 1
    assert hard_negative_order(trips, _cfg("off")) == list(range(16))
    with pytest.raises(ValueError, match="needs the frozen-embedding cache"):
        hard_negative_order(trips, _cfg("nearest_targets"))


def test_pack_groups_splits_oversized_and_keeps_all_rows():
    order = pack_groups([[0, 1, 2, 3, 4, 5], [6, 7], [8]], batch_size=4)
    assert sorted(order) == list(range(9))
