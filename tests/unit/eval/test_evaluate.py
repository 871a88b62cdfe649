"""evaluate_text_proxy / baselines / evaluate_benchmark with fake deterministic encoders on tiny datasets."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rtd.eval.evaluate import (
    QueryEncoderProtocol,
    evaluate_benchmark,
    evaluate_text_proxy,
    evaluate_text_proxy_text_queries,
    evaluate_text_proxy_tfidf,
    run_proxy_baselines,
)
from rtd.eval.submission import validate_circo_submission, validate_cirr_submission

REPO = Path(__file__).resolve().parents[3]


def _fixtures():
    spec = importlib.util.spec_from_file_location(
        "rtd_benchmark_fixtures", REPO / "tests" / "fixtures" / "benchmarks" / "make_fixtures.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


fx = _fixtures()


class BagOfWords:
    """Deterministic text encoder: word counts over a growing vocabulary (no hashing collisions)."""

    def __init__(self, dim: int = 64):
        self.dim = dim
        self.vocab: dict[str, int] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z0-9]+", t.lower()):
                out[i, self.vocab.setdefault(w, len(self.vocab))] += 1.0
        return out


class FakeTextEncoder:
    """Composed query = normalize(ref_weight * ref_emb + BoW(text)); records every call."""

    def __init__(self, ref_weight: float = 0.0):
        self.bow = BagOfWords()
        self.ref_weight = ref_weight
        self.calls: dict[str, list] = {"ref": [], "query": [], "gallery": []}

    def encode_reference_texts(self, texts):
        self.calls["ref"].append(list(texts))
        return self.bow(texts)

    def encode_reference_images(self, images):  # pragma: no cover - text-only fake
        raise NotImplementedError

    def encode_queries(self, ref_emb, texts, template=None):
        self.calls["query"].append((list(texts), template))
        q = self.bow(texts) + (0.0 if ref_emb is None else self.ref_weight * ref_emb)
        return F.normalize(q, dim=-1)

    def encode_gallery_texts(self, texts):
        self.calls["gallery"].append(list(texts))
        return F.normalize(self.bow(texts), dim=-1)

    def encode_gallery_images(self, images):  # pragma: no cover
        raise NotImplementedError


class FakeImageEncoder:
    """Images -> one-hot of their colour code; query -> one-hot of the code named by "target <n>" in the text,
    plus 0.1 x the reference (so the reference never beats a correctly named target)."""

    dim = fx.N_CODES

    def encode_reference_images(self, images):
        return F.one_hot(torch.tensor([fx.decode_code(im) for im in images]), self.dim).float()

    def encode_gallery_images(self, images):
        return self.encode_reference_images(images)

    def encode_reference_texts(self, texts):  # pragma: no cover
        raise NotImplementedError

    def encode_gallery_texts(self, texts):  # pragma: no cover
        raise NotImplementedError

    def encode_queries(self, ref_emb, texts, template=None):
        codes = [int(re.search(r"target (\d+)", t).group(1)) for t in texts]
        return F.normalize(F.one_hot(torch.tensor(codes), self.dim).float() + 0.1 * ref_emb, dim=-1)


def test_fakes_satisfy_protocol():
    assert isinstance(FakeTextEncoder(), QueryEncoderProtocol)
    assert isinstance(FakeImageEncoder(), QueryEncoderProtocol)


# --------------------------------------------------------------------------------------------------- text proxy


@pytest.fixture()
def proxy_dir(tmp_path):
    fx.make_text_proxy(tmp_path / "tp")
    return tmp_path / "tp"


def test_text_proxy_cirr_by_hand(proxy_dir):
    # Gallery: a "red car", b "blue car", c "blue car", d "green tree", e "red tree", f "yellow house".
    # ref_weight 0 -> query = BoW(modification).
    # q1 (ref a, target b, "blue car"): b and c score 1 (same caption) -> g=0, e=1: R@1 = 1/2, Rs@2 = 1.
    # q2 (ref d, target e, "red tree"): e = 1, everything else <= .5 -> R@1 = 1.
    # q3 (ref e, target f, "green tree"): d = 1 > f = 0; a, b, c also 0 (ties), e is the removed reference
    #     -> g=1, e=3: R@1 = 0, R@5 = (5-1)/4 = 1, Rs@2 = (2-1)/4 = 1/4, Rs@3 = 2/4.
    enc = FakeTextEncoder()
    out = evaluate_text_proxy(enc, "cirr_val", data_dir=proxy_dir, tie_modes=("expected", "pessimistic"))
    assert out["cirr_recall@1"] == pytest.approx(100 * 1.5 / 3)
    assert out["cirr_recall@5"] == pytest.approx(100.0)
    assert out["cirr_recall_subset@1"] == pytest.approx(100 * 1.5 / 3)
    assert out["cirr_recall_subset@2"] == pytest.approx(100 * 2.25 / 3)
    assert out["cirr_recall_subset@3"] == pytest.approx(100 * 2.5 / 3)
    assert out["cirr_recall@1_pess"] == pytest.approx(100 / 3)  # only q2
    # Reference embeddings once per unique reference caption; gallery once per unique caption.
    assert enc.calls["ref"] == [["red car", "green tree", "red tree"]]
    assert enc.calls["gallery"] == [["red car", "blue car", "green tree", "red tree", "yellow house"]]
    # The same numbers as the text-only "modification only" baseline with the same BoW.
    base = evaluate_text_proxy_text_queries(BagOfWords(), "cirr_val", "mod_only", data_dir=proxy_dir)
    assert base == pytest.approx({k: v for k, v in out.items() if not k.endswith("_pess")})


def test_frozen_features_cached_by_fingerprint(proxy_dir):
    enc = FakeTextEncoder()
    enc.fingerprint = "fake-frozen-v1"
    first = evaluate_text_proxy(enc, "cirr_val", data_dir=proxy_dir)
    second = evaluate_text_proxy(enc, "cirr_val", data_dir=proxy_dir)
    assert first == second
    assert len(enc.calls["gallery"]) == 1 and len(enc.calls["ref"]) == 1  # frozen sides encoded once
    assert len(enc.calls["query"]) == 2  # queries every time (the trained tower changes)
    evaluate_text_proxy(enc, "cirr_val", data_dir=proxy_dir, cache_frozen=False)
    assert len(enc.calls["gallery"]) == 2


def test_text_proxy_template_and_max_queries(proxy_dir):
    enc = FakeTextEncoder(ref_weight=1.0)
    out = evaluate_text_proxy(enc, "cirr_val", data_dir=proxy_dir, max_queries=2, template="X $ {}", batch_size=1)
    assert [c[1] for c in enc.calls["query"]] == ["X $ {}", "X $ {}"]  # batch_size 1, 2 queries
    assert enc.calls["ref"] == [["red car"], ["green tree"]]
    assert all(0.0 <= v <= 100.0 for v in out.values())


def test_text_proxy_fiq_ties_and_orders(proxy_dir):
    # dress: 12 identical "black dress" captions -> g = 0, e = 11: R@10 = 10/12, R@50 = 1.
    # shirt: "is green and same" vs {"red shirt", "green shirt", "blue shirt"}: target "green shirt" is alone at
    #   the top -> 100. toptee likewise ("striped").
    enc = FakeTextEncoder()
    out = evaluate_text_proxy(enc, "fiq_val", data_dir=proxy_dir, tie_modes=("expected", "optimistic", "pessimistic"))
    assert out["fiq_dress_recall@10"] == pytest.approx(100 * 10 / 12)
    assert out["fiq_dress_recall@10_opt"] == pytest.approx(100.0)
    assert out["fiq_dress_recall@10_pess"] == pytest.approx(0.0)
    assert out["fiq_shirt_recall@10"] == pytest.approx(100.0)
    assert out["fiq_avg_recall@10"] == pytest.approx((100 * 10 / 12 + 200) / 3)
    assert out["fiq_avg_recall@50"] == pytest.approx(100.0)
    # Proxy default: one order only, captions stripped of " .?,".
    assert enc.calls["query"][0][0] == ["is black and has dress"]
    enc2 = FakeTextEncoder()
    evaluate_text_proxy(enc2, "fiq_val_dress", data_dir=proxy_dir, fiq_two_orders=True)
    assert [c[0] for c in enc2.calls["query"]] == [["is black and has dress"], ["has dress and is black"]]


def test_all_split_and_baselines(proxy_dir):
    out = evaluate_text_proxy(FakeTextEncoder(), "all", data_dir=proxy_dir)
    assert {"cirr_recall@1", "fiq_avg_recall@10", "fiq_toptee_recall@50"} <= set(out)
    res = run_proxy_baselines(BagOfWords(), split="cirr_val", data_dir=proxy_dir)
    assert {"1 mod_only", "2 ref_only", "3a concat", "5'' literal_placeholder", "tfidf_concat"} <= set(res)
    # Row 2 (reference caption only), reference removed from its own ranking:
    # q1 "red car", target b: b, c ("blue car") and e ("red tree") all score exactly .5 -> g=0, e=2: R@1 = 1/3.
    # q2 "green tree", target e (.5); a, b, c, f score 0 -> R@1 = 1.
    # q3 "red tree", target f (0); a and d score .5 -> g = 2: R@1 = 0.
    assert res["2 ref_only"]["cirr_recall@1"] == pytest.approx(100 * (1 / 3 + 1) / 3)
    with pytest.raises(ValueError, match="unknown query builder"):
        evaluate_text_proxy_text_queries(BagOfWords(), "cirr_val", "nope", data_dir=proxy_dir)
    with pytest.raises(ValueError, match="unknown text-proxy split"):
        evaluate_text_proxy(FakeTextEncoder(), "circo_val", data_dir=proxy_dir)


def test_tfidf_on_fixture(proxy_dir):
    pytest.importorskip("sklearn")
    out = evaluate_text_proxy_tfidf("cirr_val", "mod_only", data_dir=proxy_dir)
    assert out["cirr_recall@5"] == pytest.approx(100.0)


# --------------------------------------------------------------------------------------------------- images


def test_cirr_val_and_test_submission(tmp_path):
    info = fx.make_cirr(tmp_path / "CIRR")
    out = evaluate_benchmark(FakeImageEncoder(), "cirr", tmp_path / "CIRR", batch_size=3)
    # Queries 0-2 name their target -> rank 1. Query 3 names image 2 (a member) instead of target 7: the target
    # then ties at 0 with every other non-reference image (0.1 * ref only on the removed reference):
    # 7 candidates, image 2 higher -> g = 1, e = 5 -> R@1 = 0, R@5 = 4/6.  Subset (members 2..7 minus ref 6 = 5):
    # image 2 higher, targets ties with 3, 4, 5 -> g = 1, e = 3: Rs@1 = 0, Rs@2 = 1/4, Rs@3 = 2/4.
    assert out["cirr_recall@1"] == pytest.approx(75.0)
    assert out["cirr_recall@5"] == pytest.approx(100 * (3 + 4 / 6) / 4)
    assert out["cirr_recall_subset@2"] == pytest.approx(100 * (3 + 1 / 4) / 4)
    assert out["cirr_recall_subset@3"] == pytest.approx(100 * (3 + 2 / 4) / 4)

    sub = tmp_path / "sub"
    assert evaluate_benchmark(FakeImageEncoder(), "cirr", tmp_path / "CIRR", split="test1", submission_dir=sub) == {}
    recall = validate_cirr_submission(sub / "cirr_test1_recall.json", "recall", expected_pairids=info["test_pairids"],
                                      gallery_ids=info["test_names"])
    assert recall["200"][0] == "test1-10-0-img0"  # "target 10"
    assert "test1-0-0-img0" not in recall["200"]  # reference removed
    subset = validate_cirr_submission(sub / "cirr_test1_recall_subset.json", "recall_subset")
    assert len(subset["201"]) == 3 and "test1-1-0-img0" not in subset["201"]


def test_fashioniq_images(tmp_path):
    fx.make_fashioniq(tmp_path / "FIQ")
    out = evaluate_benchmark(FakeImageEncoder(), "fiq", tmp_path / "FIQ", num_workers=2)
    assert out["fiq_dress_recall@10"] == pytest.approx(100.0)
    assert out["fiq_avg_recall@50"] == pytest.approx(100.0)


def test_circo_val_and_test(tmp_path):
    info = fx.make_circo(tmp_path / "CIRCO")
    out = evaluate_benchmark(FakeImageEncoder(), "circo", tmp_path / "CIRCO")
    # q0: GT {1, 2}, query names 1 -> rank 1 relevant; GT 2 ties with 47 other zeros -> ranked by index:
    #   order = 1001 (1.0), 1000 (ref, .1/..), then 1002, 1003, ... -> 1002 at rank 3: AP@5 = (1 + 2/3) / 2.
    # q1: GT {4, 5, 6}, names 4 -> ranks: 1004, 1003 (ref), 1000, 1001, 1002, 1005, 1006 ->
    #   relevant at 1, 6, 7: AP@5 = 1/3; AP@10 = (1 + 2/6 + 3/7) / 3.
    # q2: GT {8}, names 9 (wrong): 1009, 1007 (ref), 1000, ..., 1006, 1008 at rank 10 -> AP@5 = 0, AP@10 = 1/10.
    assert out["circo_map@5"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1 / 3 + 0) / 3)
    assert out["circo_map@10"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + (1 + 2 / 6 + 3 / 7) / 3 + 0.1) / 3)
    assert out["circo_recall@5"] == pytest.approx(200 / 3)
    sub = tmp_path / "sub"
    evaluate_benchmark(FakeImageEncoder(), "circo", tmp_path / "CIRCO", split="test", submission_dir=sub)
    data = validate_circo_submission(sub / "circo_test_submission.json", info["test_query_ids"], info["ids"])
    assert data["0"][0] == "1020"


def test_genecis_images(tmp_path):
    fx.make_genecis(tmp_path / "G")
    out = evaluate_benchmark(FakeImageEncoder(), "genecis", tmp_path / "G")
    # Per subset: templates 0 and 2 name their target (rank 1); template 1 names gallery item 7 -> the target
    # ties with the two other candidates at 0 behind item 7 -> g = 1, e = 2: R@1 = 0, R@2 = 1/3, R@3 = 2/3.
    for subset in ("focus_attribute", "change_attribute", "focus_object", "change_object"):
        assert out[f"genecis_{subset}_recall@1"] == pytest.approx(200 / 3)
        assert out[f"genecis_{subset}_recall@2"] == pytest.approx(100 * (2 + 1 / 3) / 3)
        assert out[f"genecis_{subset}_recall@3"] == pytest.approx(100 * (2 + 2 / 3) / 3)
    assert out["genecis_avg_recall@1"] == pytest.approx(200 / 3)
