"""Local (Ray-free) batch sources: deterministic, shardable by rank, resumable at any step.

Step k of a run always sees the same rows: epoch e = k // steps_per_epoch uses the permutation drawn from
``seed + e``; each step takes ``B * world_size`` rows and rank r keeps its slice. Resuming at step k therefore
continues at the right data position without storing iterator state.
"""

from __future__ import annotations

import random
from typing import Iterator, Protocol, Sequence

import torch

from rtd.config import PhiMaskingConfig, PromptConfig, RTDMethodConfig
from rtd.data.batching import collate_rtd
from rtd.data.masking import mask_caption
from rtd.data.triplets import RowStats, Triplet, clean_caption
from rtd.train.cache import FrozenEmbeddingCache


class BatchSource(Protocol):
    stats: RowStats

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]: ...


def _order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).tolist()


class _Indexed:
    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int, shuffle: bool):
        self.n, self.B, self.seed, self.rank, self.W, self.shuffle = n, batch_size, seed, rank, world_size, shuffle
        self.per_epoch = n // (batch_size * world_size)
        if self.per_epoch == 0:
            raise ValueError(f"{n} rows are fewer than one global batch ({batch_size} x {world_size} workers)")

    def indices(self, start_step: int) -> Iterator[list[int]]:
        step = start_step
        while True:
            epoch, off = divmod(step, self.per_epoch)
            order = _order(self.n, self.seed, epoch, self.shuffle)
            g0 = off * self.B * self.W + self.rank * self.B
            yield order[g0 : g0 + self.B]
            step += 1


class TripletSource:
    """RTD batches from in-memory triplets; frozen embeddings from ``cache`` when given."""

    def __init__(self, triplets: Sequence[Triplet], tokenizer, prompts: PromptConfig, rtd: RTDMethodConfig,
                 batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 cache: FrozenEmbeddingCache | None = None, stats: RowStats | None = None,
                 order: Sequence[int] | None = None):
        self.triplets = list(triplets)
        self.tokenizer, self.prompts, self.rtd, self.cache = tokenizer, prompts, rtd, cache
        self.stats = stats or RowStats(read=len(self.triplets), kept=len(self.triplets))
        self._idx = _Indexed(len(self.triplets), batch_size, seed, rank, world_size, shuffle and order is None)
        # A fixed order (e.g. hard-negative groups) replaces the per-epoch shuffle.
        self._fixed = list(order) if order is not None else None

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        for idx in self._idx.indices(start_step):
            if self._fixed is not None:
                idx = [self._fixed[i] for i in idx]
            rows = [self.triplets[i] for i in idx]
            batch = collate_rtd(rows, self.tokenizer, self.prompts, self.rtd, with_frozen_ids=self.cache is None)
            if self.cache is not None:
                batch["target_emb"] = self.cache.get([clean_caption(t.target) for t in rows])
                batch["reference_emb"] = self.cache.get([clean_caption(t.reference) for t in rows])
            yield batch


class CaptionSource:
    """LinCIR phi batches: original caption ids + masked caption ids (masking drawn per step, reproducibly)."""

    def __init__(self, captions: Sequence[str], tokenizer, prompts: PromptConfig, masking: PhiMaskingConfig,
                 batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 stats: RowStats | None = None):
        self.captions = [clean_caption(c) for c in captions]
        self.tokenizer, self.prompts, self.masking, self.seed, self.rank = tokenizer, prompts, masking, seed, rank
        self.stats = stats or RowStats(read=len(self.captions), kept=len(self.captions))
        self._idx = _Indexed(len(self.captions), batch_size, seed, rank, world_size, shuffle)

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        step = start_step
        for idx in self._idx.indices(start_step):
            rng = random.Random(f"{self.seed}-{self.rank}-{step}")
            caps = [self.captions[i] for i in idx]
            masked = [mask_caption(c, rng, self.masking.mode, self.prompts.placeholder, self.masking.max_span,
                                   self.masking.full_mask_prob, self.prompts.plain) for c in caps]
            c, m = self.tokenizer(caps), self.tokenizer(masked)
            # Truncation can cut the placeholder off: such rows fall back to the plain prompt (LinCIR 4.2 step 4).
            lost = ~(m.ids == self.tokenizer.placeholder_id).any(1)
            if lost.any():
                masked = [self.prompts.plain if lost[i] else s for i, s in enumerate(masked)]
                m = self.tokenizer(masked)
            yield {"caption_ids": c.ids, "caption_mask": c.mask, "masked_ids": m.ids, "masked_mask": m.mask}
            step += 1
