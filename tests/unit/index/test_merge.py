"""merge_topk and assign_shards: optimized paths checked against brute force (property tests)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtd.index import assign_shards, build_shard_index, merge_topk

faiss.omp_set_num_threads(1)


def _assert_same_topk(Dm, Im, Df, If, tol=1e-5):
    """Equal scores everywhere; equal ids wherever the score is not tied within ``tol``."""
    np.testing.assert_allclose(Dm, Df, rtol=0, atol=tol)
    for row in range(len(Dm)):
        d = Df[row]
        gap_prev = np.r_[np.inf, np.abs(np.diff(d))]
        gap_next = np.r_[np.abs(np.diff(d)), np.inf]
        clear = (gap_prev > tol) & (gap_next > tol)
        assert (Im[row][clear] == If[row][clear]).all(), (Im[row], If[row])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 300),
    d=st.integers(1, 24),
    nq=st.integers(1, 6),
    k=st.integers(1, 40),
    num_shards=st.integers(1, 7),
    metric=st.sampled_from(["ip", "l2"]),
    strategy=st.sampled_from(["hash", "contiguous"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_merged_topk_over_shards_equals_one_flat_index(n, d, nq, k, num_shards, metric, strategy, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    q = rng.standard_normal((nq, d)).astype(np.float32)

    full = build_shard_index(x, ids, "Flat", metric)
    Df, If = full.search(q, k)

    shard_of = assign_shards(ids, num_shards, strategy)
    per_shard = []
    for s in range(num_shards):
        rows = shard_of == s
        if not rows.any():  # an empty shard answers with only -1 slots
            per_shard.append((np.zeros((nq, k), np.float32), np.full((nq, k), -1, np.int64)))
            continue
        per_shard.append(build_shard_index(x[rows], ids[rows], "Flat", metric).search(q, k))
    Dm, Im = merge_topk(per_shard, k, metric)

    assert Dm.shape == Im.shape == (nq, k)
    valid = If >= 0
    assert ((Im >= 0) == valid).all()
    _assert_same_topk(np.where(valid, Dm, 0), np.where(valid, Im, -1), np.where(valid, Df, 0), If)


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=200, unique=True),
       num_shards=st.integers(1, 16))
def test_assign_shards_is_a_function_of_the_id(ids, num_shards):
    arr = np.array(ids, dtype=np.int64)
    shards = assign_shards(arr, num_shards, "hash")
    assert ((shards >= 0) & (shards < num_shards)).all()
    # same id -> same shard, independent of the other ids and their order
    perm = np.random.default_rng(0).permutation(len(arr))
    np.testing.assert_array_equal(assign_shards(arr[perm], num_shards, "hash"), shards[perm])
    np.testing.assert_array_equal(assign_shards(arr[:1], num_shards, "hash"), shards[:1])


def test_assign_shards_hash_is_balanced_on_sequential_ids():
    counts = np.bincount(assign_shards(np.arange(40_000), 8, "hash"), minlength=8)
    assert counts.min() > 0.9 * 5000 and counts.max() < 1.1 * 5000


def test_assign_shards_contiguous_sizes_differ_by_at_most_one():
    counts = np.bincount(assign_shards(np.arange(103), 4, "contiguous"), minlength=4)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 103


def test_merge_keeps_max_for_ip_and_min_for_l2():
    D1, I1 = np.array([[0.9, 0.1]], np.float32), np.array([[1, 2]])
    D2, I2 = np.array([[0.5, 0.4]], np.float32), np.array([[3, 4]])
    D, I = merge_topk([(D1, I1), (D2, I2)], 3, "ip")
    assert I.tolist() == [[1, 3, 4]]
    D, I = merge_topk([(D1, I1), (D2, I2)], 3, "l2")
    assert I.tolist() == [[2, 4, 3]]


def test_merge_ignores_empty_slots_and_pads():
    D1, I1 = np.array([[0.9, -1e30]], np.float32), np.array([[7, -1]])
    D, I = merge_topk([(D1, I1)], 3, "ip")
    assert I.tolist() == [[7, -1, -1]]
    assert D[0, 0] == pytest.approx(0.9) and np.isneginf(D[0, 1:]).all()


@pytest.mark.parametrize("bad", [{"k": 0}, {"metric": "cos"}])
def test_merge_rejects_bad_arguments(bad):
    args = {"k": 2, "metric": "ip", **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        merge_topk([(np.zeros((1, 1), np.float32), np.zeros((1, 1), np.int64))], **args)


def test_merge_rejects_mismatched_query_counts():
    with pytest.raises(ValueError, match="queries"):
        merge_topk([(np.zeros((2, 1), np.float32), np.zeros((2, 1), np.int64)),
                    (np.zeros((3, 1), np.float32), np.zeros((3, 1), np.int64))], 1)
