"""Metrics on hand-built rankings; every expected value is worked out in the comments."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rtd.eval import metrics as M


def approx(x: float) -> object:
    return pytest.approx(x, abs=1e-9)


# --------------------------------------------------------------------------------------------------- ties


def test_rank_stats_without_ties():
    # gallery scores for one query; target = item 2 (0.7). Higher: 0.9 (item 0), 0.8 (item 3) -> g = 2.
    s = np.array([[0.9, 0.1, 0.7, 0.8, 0.2]])
    st_ = M.target_rank_stats(s, [2])
    assert st_.higher.tolist() == [2] and st_.tied.tolist() == [0]
    # R@1 = R@2 = 0 (rank 3), R@3 = 1.
    for k, want in ((1, 0.0), (2, 0.0), (3, 1.0)):
        for mode in ("expected", "optimistic", "pessimistic"):
            assert M.recall_from_stats(st_, k, mode)[0] == approx(want)


def test_expected_tie_rule_by_hand():
    # target = item 1 (0.5); item 0 (0.9) is higher -> g = 1; items 2, 3 have the SAME score 0.5 -> e = 2.
    # The target is uniformly at rank 2, 3 or 4. R@1 = 0; R@2 = (2-1)/3 = 1/3; R@3 = 2/3; R@4 = 1.
    s = np.array([[0.9, 0.5, 0.5, 0.5, 0.1]])
    st_ = M.target_rank_stats(s, [1])
    assert (st_.higher[0], st_.tied[0]) == (1, 2)
    got = [M.recall_from_stats(st_, k)[0] for k in (1, 2, 3, 4)]
    assert got == [approx(0), approx(1 / 3), approx(2 / 3), approx(1)]
    # optimistic: target first among ties -> rank 2; pessimistic: last -> rank 4.
    assert [M.recall_from_stats(st_, k, "optimistic")[0] for k in (1, 2, 3, 4)] == [0, 1, 1, 1]
    assert [M.recall_from_stats(st_, k, "pessimistic")[0] for k in (1, 2, 3, 4)] == [0, 0, 0, 1]


def test_group_ids_force_ties_even_when_float_scores_differ():
    # Items 1 and 3 share a caption (group 7) but item 3's score is a hair above the target's (float noise).
    # With groups it is a tie, not "higher": g = 1 (item 0), e = 1 (item 3). Without groups: g = 2, e = 0.
    s = np.array([[0.9, 0.5, 0.2, 0.5 + 1e-7]])
    groups = np.array([0, 7, 2, 7])
    with_g = M.target_rank_stats(s, [1], group_ids=groups)
    without = M.target_rank_stats(s, [1])
    assert (with_g.higher[0], with_g.tied[0]) == (1, 1)
    assert (without.higher[0], without.tied[0]) == (2, 0)
    # R@2 expected with groups: (2 - 1) / 2 = 0.5.
    assert M.recall_from_stats(with_g, 2)[0] == approx(0.5)


def test_group_ids_from_keys_first_seen_order():
    assert M.group_ids_from_keys(["b", "a", "b", "c", "a"]).tolist() == [0, 1, 0, 2, 1]


def test_exclusion_removes_items_and_rejects_excluded_target():
    s = np.array([[0.9, 0.5, 0.5, 0.1]])
    ex = np.array([[True, False, True, False]])  # drop the 0.9 item and one tie
    st_ = M.target_rank_stats(s, [1], ex)
    assert (st_.higher[0], st_.tied[0]) == (0, 0)
    with pytest.raises(ValueError, match="target is excluded"):
        M.target_rank_stats(s, [0], ex)


def test_recall_at_k_keys_and_torch_input():
    s = torch.tensor([[0.9, 0.5], [0.1, 0.8]])
    st_ = M.target_rank_stats(s, torch.tensor([0, 0]))
    # query 0: rank 1; query 1: rank 2 -> R@1 = 50, R@2 = 100.
    out = M.recall_at_k(st_, (1, 2), "x_recall", ("expected", "optimistic", "pessimistic"))
    assert out == {
        "x_recall@1": approx(50.0), "x_recall@2": approx(100.0),
        "x_recall@1_opt": approx(50.0), "x_recall@2_opt": approx(100.0),
        "x_recall@1_pess": approx(50.0), "x_recall@2_pess": approx(100.0),
    }
    with pytest.raises(ValueError, match="unknown tie mode"):
        M.recall_at_k(st_, (1,), "x", ("median",))


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.integers(0, 3), min_size=2, max_size=7),
    k=st.integers(1, 7),
    data=st.data(),
)
def test_expected_recall_equals_average_over_tie_orders(scores, k, data):
    # Brute force: enumerate every order of the items tied with the target and average the hit indicator.
    t = data.draw(st.integers(0, len(scores) - 1))
    s = np.array([scores], dtype=np.float64)
    st_ = M.target_rank_stats(s, [t])
    tied = [j for j, v in enumerate(scores) if v == scores[t]]
    higher = sum(v > scores[t] for v in scores)
    hits = [higher + perm.index(t) + 1 <= k for perm in itertools.permutations(tied)]
    assert M.recall_from_stats(st_, k)[0] == pytest.approx(np.mean(hits))
    assert M.recall_from_stats(st_, k, "optimistic")[0] == max(hits)
    assert M.recall_from_stats(st_, k, "pessimistic")[0] == min(hits)


# --------------------------------------------------------------------------------------------------- CIRR


def test_cirr_reference_removal_and_subset():
    # Gallery of 7 items; one query with reference = item 0 (scored highest, must be removed), target = item 3.
    #   scores: item0 .99 (ref), item1 .90, item2 .10, item3 .80 (target), item4 .85, item5 .20, item6 .95
    # Full ranking without the reference: 6 (.95), 1 (.90), 4 (.85), 3 (.80) -> rank 4 -> R@1 = R@... : R@5 = 1.
    # Members = {0, 1, 2, 3, 5}; minus the reference -> {1, 2, 3, 5}: 1 (.90) beats 3 (.80) -> subset rank 2.
    s = np.array([[0.99, 0.90, 0.10, 0.80, 0.85, 0.20, 0.95]])
    out = M.cirr_metrics(s, [3], [0], [[0, 1, 2, 3, 5]])
    assert out["cirr_recall@1"] == approx(0.0)
    assert out["cirr_recall@5"] == approx(100.0)
    assert out["cirr_recall@10"] == approx(100.0)
    assert out["cirr_recall_subset@1"] == approx(0.0)
    assert out["cirr_recall_subset@2"] == approx(100.0)
    assert set(out) == {f"cirr_recall@{k}" for k in (1, 5, 10, 50)} | {f"cirr_recall_subset@{k}" for k in (1, 2, 3)}


def test_cirr_reference_removal_matters_for_r1():
    # Target 1 is second only to the reference 0: with removal R@1 = 100, without it would be 0.
    s = np.array([[0.9, 0.8, 0.1]])
    assert M.cirr_metrics(s, [1], [0])["cirr_recall@1"] == approx(100.0)
    assert M.recall_at_k(M.target_rank_stats(s, [1]), (1,), "r")["r@1"] == approx(0.0)


def test_cirr_subset_with_ties_two_queries():
    # Query 0: members {0..5}, ref 0, target 2; items 2, 4 share a caption (group 9) -> tied; item 1 higher.
    #   subset stats: g = 1, e = 1 -> Rs@1 = 0, Rs@2 = 1/2, Rs@3 = 1.
    # Query 1: ref 5, target 0 scores top among members -> Rs@1 = 1.
    s = np.array(
        [
            [0.9, 0.8, 0.5, 0.3, 0.5, 0.0],
            [0.9, 0.1, 0.2, 0.3, 0.4, 0.95],
        ]
    )
    groups = np.array([0, 1, 9, 3, 9, 5])
    members = [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]
    out = M.cirr_metrics(s, [2, 0], [0, 5], members, groups)
    assert out["cirr_recall_subset@1"] == approx(50.0)  # (0 + 1) / 2
    assert out["cirr_recall_subset@2"] == approx(75.0)  # (0.5 + 1) / 2
    assert out["cirr_recall_subset@3"] == approx(100.0)


# --------------------------------------------------------------------------------------------------- FashionIQ


def test_fashioniq_reference_not_removed_and_average():
    # 12 gallery items; target = item 5 (.5). The reference, item 0 (.9), is NOT removed, and items 1..4 (.6)
    # also score higher -> g = 5. Items 5..11 share one caption (group 1) -> e = 6.
    # R@10 = (10 - 5) / (6 + 1) = 5/7; optimistic 1 (g < 10); pessimistic 0 (g + e = 11 >= 10); R@50 = 1.
    s = np.array([[0.9, 0.6, 0.6, 0.6, 0.6] + [0.5] * 7])
    groups = np.array([0, 2, 3, 4, 6] + [1] * 7)
    out = M.fashioniq_metrics(s, [5], "dress", groups, ("expected", "optimistic", "pessimistic"))
    assert out["fiq_dress_recall@10"] == approx(100 * 5 / 7)
    assert out["fiq_dress_recall@10_opt"] == approx(100.0)
    assert out["fiq_dress_recall@10_pess"] == approx(0.0)  # g + e = 11 >= 10
    assert out["fiq_dress_recall@50"] == approx(100.0)
    per_cat = {**out, "fiq_shirt_recall@10": 20.0, "fiq_toptee_recall@10": 30.0, "fiq_shirt_recall@50": 50.0,
               "fiq_toptee_recall@50": 50.0}
    avg = M.fashioniq_average(per_cat)
    assert avg["fiq_avg_recall@10"] == approx((100 * 5 / 7 + 20 + 30) / 3)
    assert avg["fiq_avg_recall@50"] == approx((100 + 50 + 50) / 3)
    assert "fiq_avg_recall@10_opt" not in avg  # shirt/toptee lack the _opt keys


# --------------------------------------------------------------------------------------------------- CIRCO


def test_circo_map_normalisation_by_hand():
    # Query A: GT = {g1, g2}; ranking = g1, x, g2, x, ... (relevant at ranks 1 and 3).
    #   AP@5 = (P@1 + P@3) / min(2, 5) = (1 + 2/3) / 2 = 5/6.
    # Query B: GT = 10 ids, only one retrieved, at rank 2: AP@5 = (1/2) / min(10, 5) = 0.1;
    #   AP@10 = 0.5 / 10 = 0.05, AP@25 = 0.5 / 10, AP@50 = 0.5 / 10.
    filler = [f"x{i}" for i in range(60)]
    ranked_a = ["g1", "x0", "g2"] + filler[1:48]
    ranked_b = ["y0", "h0"] + filler[2:50]
    gt_b = [f"h{i}" for i in range(10)]
    out = M.circo_metrics([ranked_a, ranked_b], [["g1", "g2"], gt_b], target=["g2", "h0"])
    assert out["circo_map@5"] == approx(100 * (5 / 6 + 0.1) / 2)
    assert out["circo_map@10"] == approx(100 * (5 / 6 + 0.05) / 2)
    assert out["circo_map@50"] == approx(100 * (5 / 6 + 0.05) / 2)
    # Recall w.r.t. the single target: A's target g2 at rank 3, B's target h0 at rank 2 -> R@5 = 100.
    assert out["circo_recall@5"] == approx(100.0)


def test_average_precision_matches_formula():
    rel = np.zeros((1, 50), bool)
    rel[0, [0, 4, 9]] = True  # relevant at ranks 1, 5, 10; |GT| = 4
    ap = M.average_precision_at_k(rel, [4])
    assert ap[5][0] == approx((1 + 2 / 5) / 4)
    assert ap[10][0] == approx((1 + 2 / 5 + 3 / 10) / 4)
    with pytest.raises(ValueError, match="at least one ground truth"):
        M.average_precision_at_k(rel, [0])


# --------------------------------------------------------------------------------------------------- GeneCIS and top-k


def test_genecis_target_at_index_zero_and_padding():
    # Query 0: target .9 beats all -> R@1 = 1. Query 1: two candidates above the target -> rank 3 -> R@3 = 1,
    # R@2 = 0. Query 2: a padded column (invalid) with a huge score must be ignored -> rank 1.
    s = np.array([[0.9, 0.1, 0.2, 0.0], [0.5, 0.7, 0.6, 0.1], [0.5, 0.1, 0.2, 9.9]])
    valid = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]], bool)
    out = M.genecis_metrics(s, "focus_object", valid)
    assert out["genecis_focus_object_recall@1"] == approx(200 / 3)
    assert out["genecis_focus_object_recall@2"] == approx(200 / 3)
    assert out["genecis_focus_object_recall@3"] == approx(100.0)
    avg = M.genecis_average({**out, "genecis_change_object_recall@1": 0.0})
    assert avg["genecis_avg_recall@1"] == approx(100 / 3)


def test_topk_indices_order_and_exclusion():
    s = np.array([[0.1, 0.9, 0.5, 0.9, 0.7]])
    assert M.topk_indices(s, 3).tolist() == [[1, 3, 4]]  # tie 0.9 broken by index
    ex = np.array([[False, True, False, False, False]])
    assert M.topk_indices(s, 5 - 1, ex).tolist() == [[3, 4, 2, 0]]
    with pytest.raises(ValueError, match="exceeds"):
        M.topk_indices(s, 5, ex)


def test_stats_concat_equals_full():
    rng = np.random.default_rng(0)
    s = rng.random((10, 20))
    t = rng.integers(0, 20, 10)
    full = M.target_rank_stats(s, t)
    parts = M.TargetRankStats.concat([M.target_rank_stats(s[:4], t[:4]), M.target_rank_stats(s[4:], t[4:])])
    assert np.array_equal(full.higher, parts.higher) and np.array_equal(full.tied, parts.tied)
    assert math.isclose(M.recall_from_stats(full, 5).mean(), M.recall_from_stats(parts, 5).mean())
