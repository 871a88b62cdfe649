"""Fill the frozen-embedding cache with Ray Data batch inference.

The texts whose frozen embeddings are missing (keyed by the frozen encoder's fingerprint and the text hash,
``rtd.train.cache``) are embedded by a ``map_batches`` actor pool: each actor builds the frozen encoder once and
writes its results as immutable ``part-*.npz`` files into the same :class:`~rtd.train.cache.FrozenEmbeddingCache`
folder the trainer reads, so later runs and Tune trials with the same encoder reuse them; a miss recomputes.

The encoder is built under a fixed torch seed (``init_seed``), so random-init test models have the same weights,
hence the same fingerprint, in the driver, the embedding actors and every Train worker.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rtd.config import ModelConfig

__all__ = ["build_bundle", "frozen_fingerprint", "EmbedFrozenTexts", "fill_cache_ray"]

logger = logging.getLogger(__name__)


def build_bundle(model: ModelConfig, placeholder: str, init_seed: int, device: str | torch.device = "cpu"):
    """``build_encoders`` with random-init weights drawn from ``init_seed`` (the caller's RNG is untouched)."""
    from rtd.model.backends import build_encoders

    return build_encoders(model, placeholder, device=device, init_seed=init_seed)


def frozen_fingerprint(model: ModelConfig, placeholder: str, init_seed: int) -> str:
    """The frozen text tower's fingerprint (the cache namespace)."""
    return build_bundle(model, placeholder, init_seed).fingerprint


class EmbedFrozenTexts:
    """``map_batches`` callable (actor): ``{"text": [...]}`` -> writes a cache part, returns ``{"n": [count]}``."""

    def __init__(self, model_json: str, placeholder: str, init_seed: int, cache_root: str, fingerprint: str,
                 device: str = "cpu"):
        from rtd.train.cache import FrozenEmbeddingCache

        torch.set_num_threads(1)
        self.bundle = build_bundle(ModelConfig.model_validate_json(model_json), placeholder, init_seed, device)
        if self.bundle.fingerprint != fingerprint:
            raise RuntimeError(f"frozen encoder fingerprint {self.bundle.fingerprint} in the embedding actor differs "
                               f"from the driver's {fingerprint}: the model is not deterministic across processes")
        self.cache = FrozenEmbeddingCache(cache_root, fingerprint)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"].tolist()]
        emb = self.bundle.encode_frozen_text(texts)
        self.cache.put(texts, emb)
        return {"n": np.array([len(texts)], dtype=np.int64)}


def fill_cache_ray(texts: Sequence[str], model: ModelConfig, placeholder: str, init_seed: int,
                   cache_root: str | Path, fingerprint: str, batch_size: int = 256, num_actors: int = 1,
                   cpus_per_actor: float = 0.5, gpus_per_actor: float = 0.0) -> dict[str, float]:
    """Embed the texts missing from ``<cache_root>/<fingerprint>`` with a Ray Data actor pool.

    Returns:
        ``{"cache/texts": all, "cache/computed": misses, "cache/seconds": wall}``.
    """
    import ray.data

    from rtd.train.cache import FrozenEmbeddingCache

    t0 = time.perf_counter()
    cache = FrozenEmbeddingCache(cache_root, fingerprint)
    todo = cache.missing(list(texts))
    if todo:
        ds = ray.data.from_items([{"text": t} for t in todo])
        done = ds.map_batches(
            EmbedFrozenTexts, batch_size=batch_size, batch_format="numpy",
            fn_constructor_kwargs={"model_json": model.model_dump_json(), "placeholder": placeholder,
                                   "init_seed": init_seed, "cache_root": str(cache_root), "fingerprint": fingerprint,
                                   "device": "cuda" if gpus_per_actor else "cpu"},
            compute=ray.data.ActorPoolStrategy(size=num_actors), num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor or None,
        ).sum("n")
        if int(done or 0) != len(todo):
            raise RuntimeError(f"frozen-cache fill embedded {done} of {len(todo)} texts")
        cache.refresh()
        still = cache.missing(todo)
        if still:
            raise RuntimeError(f"{len(still)} texts still missing from the frozen cache after the fill, e.g. {still[0]!r}")
    dt = time.perf_counter() - t0
    logger.info("frozen-embedding cache %s: %d texts, %d computed with Ray Data in %.1fs", cache.dir, len(texts),
                len(todo), dt)
    return {"cache/texts": float(len(texts)), "cache/computed": float(len(todo)), "cache/seconds": dt}
