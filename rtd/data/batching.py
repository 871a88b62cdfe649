"""Refined batch assembly (METHOD.md 6.2-6.5): tokenised queries and the texts whose frozen embeddings are the
targets.

With refined batch sampling, B triplets give N = 2B pairs:
    queries  = [ "a photo of $ that T_c"_1..B ; "a photo of $"_1..B ]
    targets  = [ T_t_1..B ; T_r_1..B ]
and row i and row B+i share the same pseudo token phi(emb(T_r_i) + noise). Without it, N = B (composed only).
With ``concatenation="text"`` the placeholder is replaced by the reference caption itself (no pseudo token).
"""

from __future__ import annotations

from typing import Sequence

import torch

from rtd.config import PromptConfig, RTDMethodConfig
from rtd.data.triplets import Triplet, clean_caption
from rtd.model.composed import clean_modification


def query_texts(triplets: Sequence[Triplet], prompts: PromptConfig, rtd: RTDMethodConfig) -> list[str]:
    """The 2B (or B) query strings in batch order."""
    ph = prompts.placeholder
    composed, plain = [], []
    for t in triplets:
        mod = clean_modification(t.conditioning, ph)
        if rtd.concatenation == "text":
            ref = clean_caption(t.reference)
            composed.append(prompts.composed.replace(ph, ref).format(mod))
            plain.append(prompts.plain.replace(ph, ref))
        else:
            composed.append(prompts.composed.format(mod))
            plain.append(prompts.plain)
    return composed + plain if rtd.refined_batch_sampling else composed


def collate_rtd(triplets: Sequence[Triplet], tokenizer, prompts: PromptConfig, rtd: RTDMethodConfig,
                with_frozen_ids: bool = True) -> dict[str, torch.Tensor]:
    """Tokenise one batch; returns ``query_ids/mask`` [N, Lq] and, unless frozen embeddings come from the cache,
    ``target_ids/mask`` and ``reference_ids/mask`` [B, L] (cleaned T_t / T_r, no prompt, METHOD.md 6.2)."""
    q = tokenizer(query_texts(triplets, prompts, rtd))
    out = {"query_ids": q.ids, "query_mask": q.mask}
    if with_frozen_ids:
        t = tokenizer([clean_caption(x.target) for x in triplets])
        r = tokenizer([clean_caption(x.reference) for x in triplets])
        out.update(target_ids=t.ids, target_mask=t.mask, reference_ids=r.ids, reference_mask=r.mask)
    return out
