"""Pseudo-token encoding must equal the stock encoders when the placeholder gets a real token's embedding."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from rtd.config import ModelConfig
from rtd.model.backends import build_encoders, trim_batch

MODS = ["that is red and on a table", "with two of them", "but smaller"]


def _swap_check(bundle, word_id: int, stock_fn):
    tok = bundle.tokenizer
    with_ph = tok([f"a photo of $ {m}" for m in MODS])
    plain = stock_fn([f"a photo of dog {m}" for m in MODS])
    table = bundle.text.token_embedding_table()
    pseudo = table.weight[word_id].detach().expand(len(MODS), -1).clone()
    out = bundle.text(with_ph.ids, with_ph.mask, pseudo)
    assert_close(out, plain, atol=1e-5, rtol=1e-5)
    # and a different token really changes the output (the swap is not a no-op)
    other = bundle.text(with_ph.ids, with_ph.mask, torch.randn_like(pseudo))
    assert (other - plain).abs().max() > 1e-3


def test_open_clip_swap_equals_encode_text():
    import open_clip

    from rtd.model.backends import register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("rtd-tiny-clip", pretrained=None).eval()
    torch.manual_seed(0)
    bundle = build_encoders(ModelConfig(backend="open_clip", name="rtd-tiny-clip", pretrained=None))
    bundle.text.load_state_dict({k: v for k, v in model.state_dict().items() if k in bundle.text.state_dict()},
                                strict=False)
    oc_tok = open_clip.get_tokenizer("rtd-tiny-clip")
    dog_id = int(oc_tok(["dog"])[0][1])

    def stock(texts):
        with torch.no_grad():
            return model.encode_text(oc_tok(texts))  # 77-token padding, stock forward

    with torch.no_grad():
        _swap_check(bundle, dog_id, stock)


def test_open_clip_pooled_position_is_eot(tiny_clip_bundle):
    tb = tiny_clip_bundle.tokenizer(["a photo of $ that is red"])
    ph = tiny_clip_bundle.tokenizer.placeholder_id
    assert ph == 259  # the CLIP BPE id of the single-character word "$"
    eot = int(tb.ids[0].argmax())
    assert int(tb.ids[0, eot]) == 49407 and ph < 49407
    assert int((tb.ids[0] == ph).nonzero()[0]) < eot


def test_hf_clip_swap_equals_stock(tiny_hf_clip_dir):
    from transformers import CLIPTextModelWithProjection

    bundle = build_encoders(ModelConfig(backend="hf_clip", name=str(tiny_hf_clip_dir), pretrained=None))
    stock_model = CLIPTextModelWithProjection.from_pretrained(tiny_hf_clip_dir).eval()
    tok = bundle.tokenizer
    dog_id = int(tok(["dog"]).ids[0][1])

    def stock(texts):
        with torch.no_grad():
            return stock_model(input_ids=tok(texts, trim=False).ids).text_embeds

    with torch.no_grad():
        _swap_check(bundle, dog_id, stock)
    assert bundle.embed_dim == 48 and bundle.token_dim == 64


def test_minilm_swap_equals_stock(minilm_bundle):
    tok = minilm_bundle.tokenizer
    dog_id = tok._tok.convert_tokens_to_ids("dog")
    model = minilm_bundle.text.model

    def stock(texts):
        enc = tok._tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)

    with torch.no_grad():
        _swap_check(minilm_bundle, dog_id, stock)


@pytest.mark.parametrize("backend", ["open_clip", "hf_clip", "hf_text"])
def test_trimmed_padding_equals_full_padding(backend, tiny_clip_bundle, tiny_hf_clip_dir, minilm_bundle):
    bundle = {"open_clip": tiny_clip_bundle, "hf_text": minilm_bundle}.get(backend) or build_encoders(
        ModelConfig(backend="hf_clip", name=str(tiny_hf_clip_dir)))
    texts = ["a photo of $ that is red", "a photo of $", "a photo of $ that has a much longer modification text here"]
    full = bundle.tokenizer(texts, trim=False)
    trimmed = bundle.tokenizer(texts)
    assert trimmed.ids.shape[1] < full.ids.shape[1]
    pseudo = torch.randn(3, bundle.token_dim)
    with torch.no_grad():
        a = bundle.text(full.ids, full.mask, pseudo)
        b = bundle.text(trimmed.ids, trimmed.mask, pseudo)
        c = bundle.text(*trim_batch(full.ids, full.mask), pseudo)
    assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert_close(b, c)


def test_trainable_copy_has_its_own_hook(minilm_bundle):
    student = minilm_bundle.trainable_copy()
    tb = minilm_bundle.tokenizer(["a photo of $ that is red"])
    p = torch.randn(1, minilm_bundle.token_dim)
    with torch.no_grad():
        assert_close(student.eval()(tb.ids, tb.mask, p), minilm_bundle.text(tb.ids, tb.mask, p))
    assert student.token_embedding_table() is not minilm_bundle.text.token_embedding_table()
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in minilm_bundle.text.parameters())


def test_pseudo_shape_is_checked(tiny_clip_bundle):
    tb = tiny_clip_bundle.tokenizer(["a photo of $"])
    with pytest.raises(ValueError, match="pseudo tokens must be"):
        tiny_clip_bundle.text(tb.ids, tb.mask, torch.zeros(1, 3))
