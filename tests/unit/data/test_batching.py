from __future__ import annotations

import random

import pytest
import torch

from rtd.config import PromptConfig, RTDMethodConfig
from rtd.data.batching import collate_rtd, query_texts
from rtd.data.masking import mask_caption
from rtd.data.triplets import BadRowError, Triplet, clean_caption, load_triplets

TRIPS = [Triplet("A dog on a sofa", "make it a cat", "a cat on a sofa"),
         Triplet("<PERSON> holding $5", "remove the $ sign", "a person holding a bill")]


def test_refined_batch_sampling_layout(tiny_clip_bundle):
    texts = query_texts(TRIPS, PromptConfig(), RTDMethodConfig())
    assert texts == ["a photo of $ that make it a cat", "a photo of $ that remove the sign",
                     "a photo of $", "a photo of $"]
    b = collate_rtd(TRIPS, tiny_clip_bundle.tokenizer, PromptConfig(), RTDMethodConfig())
    assert b["query_ids"].shape[0] == 4 and b["target_ids"].shape[0] == 2 and b["reference_ids"].shape[0] == 2
    ph = tiny_clip_bundle.tokenizer.placeholder_id
    assert ((b["query_ids"] == ph).sum(1) == 1).all()  # exactly one $ per query, none from the modification
    assert not (b["target_ids"] == ph).any() and not (b["reference_ids"] == ph).any()


def test_switches_change_layout():
    assert len(query_texts(TRIPS, PromptConfig(), RTDMethodConfig(refined_batch_sampling=False))) == 2
    naive = query_texts(TRIPS, PromptConfig(), RTDMethodConfig(concatenation="text"))
    assert naive[0] == "a photo of a dog on a sofa that make it a cat" and "$" not in "".join(naive)
    custom = query_texts(TRIPS[:1], PromptConfig(composed="$ , {}"), RTDMethodConfig(refined_batch_sampling=False))
    assert custom == ["$ , make it a cat"]


def test_prompt_validation():
    with pytest.raises(ValueError, match="placeholder"):
        PromptConfig(composed="a photo that {}")


def test_clean_caption_lincir_rule():
    assert clean_caption("<PERSON> Holding $5 ") == "person holding 5"
    assert clean_caption(None) == ""


def test_masking_always_leaves_a_placeholder():
    rng = random.Random(0)
    for cap in ["a red car parked on a street", "the", "", "two dogs and a cat playing in the snow"]:
        for mode in ("span", "word", "spacy"):
            out = mask_caption(cap, rng, mode=mode)
            assert "$" in out
    assert mask_caption("a red car", rng, full_mask_prob=1.0) == "a photo of $"


def test_bad_rows_counted_or_fail(tmp_path):
    f = tmp_path / "t.jsonl"
    long = "x" * 50
    f.write_text("\n".join([
        '{"reference_caption": "a", "conditioning_caption": "b", "target_caption": "c"}',
        '{"reference_caption": "a", "conditioning_caption": "b"}',
        '{"reference_caption": "", "conditioning_caption": "b", "target_caption": "c"}',
        '{"reference_caption": 3, "conditioning_caption": "b", "target_caption": "c"}',
        f'{{"reference_caption": "{long}", "conditioning_caption": "b", "target_caption": "c"}}',
        '{not json',
    ]))
    trips, stats = load_triplets([str(f)], max_chars=20)
    assert len(trips) == 1 and stats.read == 6
    assert dict(stats.bad) == {"missing": 1, "malformed": 1, "empty": 1, "non_string": 1, "too_long": 1}
    with pytest.raises(BadRowError, match=r"t.jsonl row 1: field 'target_caption' is missing"):
        load_triplets([str(f)], on_bad_rows="fail")
