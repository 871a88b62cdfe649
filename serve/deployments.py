"""Ray Serve deployments: ``QueryEncoder`` (batched), one ``GallerySearcher`` per shard, ``SearchIngress``.

Heavy objects (the encoder, FAISS shards) are built in ``__init__`` on the replica, never pickled from the
driver. The ingress fans a query out to every shard with ``asyncio.gather`` and merges exactly
(``rtd.index.merge_topk``, FAISS's result heap). Stage latencies go to the response and to Serve metrics.

Batching (``ServeConfig.batching``) happens first at the ingress: concurrent requests are grouped by an
:class:`serve.core.AdaptiveBatcher` (no timer: what queued while the previous batch ran) and each group costs one encoder call (one forward per query mode) and one FAISS search per
shard, instead of ``1 + num_shards`` handle calls per request. On small CPU nodes those calls, not the model,
dominate the per-request cost (bench/serve_load.py, BENCHMARKS.md). The encoder and the searchers batch too,
which groups requests coming from several ingress replicas.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve import metrics

from rtd.config import ServeConfig
from rtd.index import ShardSearcher, read_manifest
from serve.core import (
    AdaptiveBatcher,
    EncodedSearch,
    EncodeItem,
    check_fingerprint,
    encode_items,
    encode_then_search,
    encoder_info,
    item_record,
    now_ms,
    search_one_shard,
    shard_for,
    split_shard_batch,
)

logger = logging.getLogger(__name__)

__all__ = ["QueryEncoder", "GallerySearcher", "SearchIngress", "RayBackend"]

_UNSET = object()


def _single_thread() -> None:
    # One OpenMP thread per replica: on small machines 2+ threads are slower and erratic (ENV.md).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import faiss
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    faiss.omp_set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class QueryEncoder:
    """Composed-query encoder replica: image -> frozen image tower -> phi -> ``$``; text -> trained text tower.

    Args:
        cfg: the :class:`~rtd.config.ServeConfig` as a dict.
        expected_fingerprint: the index's frozen-encoder fingerprint; a mismatch fails the replica unless
            ``allow_fingerprint_mismatch``.

    ``user_config`` (live, no restart): ``checkpoint`` (a text-tower checkpoint folder, or null for the frozen
    tower), ``batching_enabled``, ``max_batch_size``, ``batch_wait_timeout_s``.
    """

    def __init__(self, cfg: dict[str, Any], expected_fingerprint: str | None = None) -> None:
        from rtd.ray_adapters.embed import build_frozen_encoder

        _single_thread()
        self.cfg = ServeConfig.model_validate(cfg)
        self.encoder = build_frozen_encoder(model=self.cfg.model, projector=self.cfg.projector,
                                            prompts=self.cfg.prompts, checkpoint=self.cfg.checkpoint,
                                            init_seed=self.cfg.init_seed)
        if expected_fingerprint is not None:
            if self.encoder.fingerprint != expected_fingerprint:
                manifest = type("M", (), {"fingerprint": expected_fingerprint})
                check_fingerprint(manifest, self.encoder.fingerprint, self.cfg.allow_fingerprint_mismatch)
        self.model_section = self._model_section(self.cfg.checkpoint)
        b = self.cfg.batching
        self.batching = {"enabled": b.enabled, "max_batch_size": b.max_batch_size,
                         "batch_wait_timeout_s": b.batch_wait_timeout_s}
        self._apply_batching()
        self.batch_hist = metrics.Histogram("rtd_encoder_batch_size", description="QueryEncoder batch sizes",
                                            boundaries=[1, 2, 4, 8, 16, 32, 64, 128])
        self._warm_up()

    def _warm_up(self) -> None:
        # The first forward pass of a fresh process is ~100x slower (allocator, kernels); pay it before traffic.
        from PIL import Image

        dim = int(self.encoder.embed_dim)
        items = [EncodeItem(text="warm up"), EncodeItem(text="warm up", ref=np.ones(dim, np.float32))]
        if self.encoder.bundle.image is not None:  # text-only backends (caption galleries) have no image tower
            items.append(EncodeItem(image=Image.new("RGB", (32, 32))))
        encode_items(self.encoder, items)

    def _model_section(self, checkpoint: str | None) -> dict[str, Any]:
        if checkpoint:
            import yaml

            raw = yaml.safe_load((Path(checkpoint) / "config.yaml").read_text()) or {}
            return dict(raw.get("model") or {})
        return self.cfg.model.model_dump(mode="json")

    def _apply_batching(self) -> None:
        self._encode_batch.set_max_batch_size(int(self.batching["max_batch_size"]))
        self._encode_batch.set_batch_wait_timeout_s(float(self.batching["batch_wait_timeout_s"]))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new ``user_config``: swap the text checkpoint and/or the batching settings.

        Raises:
            ValueError: the checkpoint was trained on another frozen encoder (names ``checkpoint``).
            rtd.model.checkpoint.CheckpointError: missing or mismatched weights.
        """
        user_config = dict(user_config or {})
        ckpt = user_config.get("checkpoint", _UNSET)
        if ckpt is not _UNSET and ckpt != self.encoder.checkpoint:
            if ckpt:
                new = self._model_section(str(ckpt))
                cur = self.model_section
                keys = ("backend", "name", "pretrained")
                if any(new.get(k) != cur.get(k) for k in keys):
                    raise ValueError(f"checkpoint: {ckpt} was trained on {[new.get(k) for k in keys]}, but this "
                                     f"server's frozen encoder is {[cur.get(k) for k in keys]}")
            self.encoder.load_text_checkpoint(ckpt or None)
            logger.info("text checkpoint now %s", ckpt)
        for key, name in (("batching_enabled", "enabled"), ("max_batch_size", "max_batch_size"),
                          ("batch_wait_timeout_s", "batch_wait_timeout_s")):
            if key in user_config:
                self.batching[name] = user_config[key]
        self._apply_batching()

    async def encode(self, item: EncodeItem) -> tuple[np.ndarray, str | None]:
        """One query -> (unit vector ``[D]``, current checkpoint); batched with concurrent calls when enabled."""
        if self.batching["enabled"]:
            return await self._encode_batch(item)
        self.batch_hist.observe(1)
        return encode_items(self.encoder, [item])[0], self.encoder.checkpoint

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _encode_batch(self, items: list[EncodeItem]) -> list[tuple[np.ndarray, str | None]]:
        self.batch_hist.observe(len(items))
        ckpt = self.encoder.checkpoint
        return [(v, ckpt) for v in encode_items(self.encoder, items)]

    async def encode_many(self, items: list[EncodeItem]) -> tuple[np.ndarray, str | None]:
        """A batch already grouped by the ingress -> (unit vectors ``[B, D]``, current checkpoint)."""
        self.batch_hist.observe(len(items))
        return np.stack(encode_items(self.encoder, items)), self.encoder.checkpoint

    def info(self) -> dict[str, Any]:
        return {**encoder_info(self.encoder, self.model_section), "batching": dict(self.batching)}

    def check_health(self) -> None:
        """Serve's periodic health check: the encoder must still produce a finite query vector."""
        v = encode_items(self.encoder, [EncodeItem(text="health")])[0]
        if not np.isfinite(v).all():
            raise RuntimeError("QueryEncoder produced a non-finite vector")


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class GallerySearcher:
    """One gallery shard: the FAISS file memory-mapped in ``__init__`` (checksums verified first), plus its items.

    Args:
        index_dir: the index folder (``manifest.json``).
        shard: which shard this deployment serves.
        search_params: ``{"nprobe": 32}`` etc. (defaults from the manifest).
        mmap: memory-map the FAISS file.
        verify: verify SHA-256 checksums before loading.
        batching: group concurrent single-query calls into one FAISS search.
    """

    def __init__(self, index_dir: str, shard: int, search_params: dict[str, int] | None = None,
                 mmap: bool = True, verify: bool = True, batching: bool = True) -> None:
        _single_thread()
        self.searcher = ShardSearcher(index_dir, shard, mmap=mmap, verify=verify, search_params=search_params)
        self.searcher.health()  # warm the mapping and prove it answers before taking traffic
        self.batching = batching

    async def search(self, q: np.ndarray, k: int):
        """Top-``k`` of this shard for ``q`` ``[1, D]``: ``(D, I, {id: metadata})``. Concurrent calls are
        batched into one FAISS search (one BLAS call over the batch instead of one scan per query)."""
        if q.shape[0] != 1 or not self.batching:
            return search_one_shard(self.searcher, q, k)
        return await self._search_batch((q, k))

    async def search_many(self, qs: np.ndarray, ks: list[int]):
        """A batch grouped by the ingress: ``qs`` ``[B, D]``, ``ks[b]`` hits for row ``b`` -> per-row
        ``(D, I, {id: metadata})``, from one FAISS search."""
        return self._search_rows(qs, ks)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _search_batch(self, requests: list[tuple[np.ndarray, int]]):
        return self._search_rows(np.concatenate([q for q, _ in requests]), [k for _, k in requests])

    def _search_rows(self, qs: np.ndarray, ks: list[int]):
        D, I = self.searcher.search(np.ascontiguousarray(qs, np.float32), max(ks))
        return split_shard_batch(self.searcher, D, I, ks)

    def get_item(self, item_id: int):
        return item_record(self.searcher, item_id)

    def get_vector(self, item_id: int):
        return self.searcher.get_vectors([item_id])[0]

    def list_items(self, offset: int, limit: int):
        return [item_record(self.searcher, i) for i in self.searcher.list_ids(offset, limit)]

    def health(self) -> dict[str, Any]:
        return self.searcher.health()

    def check_health(self) -> None:
        """Serve's periodic health check: raises when the shard stops answering."""
        self.searcher.health()


class RayBackend:
    """:class:`serve.core.SearchBackend` over deployment handles.

    Args:
        encoder: ``QueryEncoder`` handle.
        searchers: ``GallerySearcher`` handles in shard order.
        manifest: the index manifest.
        batching: ``ServeConfig.batching`` as a dict (``enabled``, ``max_batch_size``, ``max_in_flight``): when
            enabled, concurrent requests share one encoder call and one search call per shard.
    """

    def __init__(self, encoder, searchers: list, manifest, batching: dict[str, Any] | None = None) -> None:
        self.encoder = encoder
        self.searchers = list(searchers)
        self.manifest = manifest
        b = {"enabled": False, "max_batch_size": 16, "max_in_flight": 1, **(batching or {})}
        self.batcher = (AdaptiveBatcher(self._encode_and_search_batch, int(b["max_batch_size"]),
                                        int(b["max_in_flight"])) if b["enabled"] else None)
        self.stage_hist = metrics.Histogram(
            "rtd_search_stage_ms", description="Per-stage latency of /v1/search (ms)",
            boundaries=[0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000], tag_keys=("stage",),
        )
        self.batch_hist = metrics.Histogram("rtd_ingress_batch_size", description="SearchIngress request batches",
                                            boundaries=[1, 2, 4, 8, 16, 32, 64, 128])

    async def encode(self, item: EncodeItem):
        return await self.encoder.encode.remote(item)

    async def search_shards(self, q: np.ndarray, k: int):
        return list(await asyncio.gather(*[h.search.remote(q, k) for h in self.searchers]))

    async def encode_and_search(self, item: EncodeItem, k: int) -> EncodedSearch:
        if self.batcher is None:
            return await encode_then_search(self, item, k)
        return await self.batcher((item, k, now_ms()))

    async def _encode_and_search_batch(self, requests: list[tuple[EncodeItem, int, float]]) -> list[EncodedSearch]:
        t = now_ms()
        self.batch_hist.observe(len(requests))
        items, ks = [r[0] for r in requests], [r[1] for r in requests]
        qs, checkpoint = await self.encoder.encode_many.remote(items)
        t2 = now_ms()
        per_shard = await asyncio.gather(*[h.search_many.remote(qs, ks) for h in self.searchers])
        t3 = now_ms()
        return [EncodedSearch(checkpoint, [rows[b] for rows in per_shard], t2 - t, t3 - t2, len(requests),
                              queue_ms=t - requests[b][2]) for b in range(len(requests))]

    async def _ask(self, method: str, item_id: int):
        s = shard_for(self.manifest, item_id)
        handles = [self.searchers[s]] if s is not None else self.searchers
        for h in handles:
            out = await getattr(h, method).remote(item_id)
            if out is not None:
                return out
        return None

    async def get_item(self, item_id: int):
        return await self._ask("get_item", item_id)

    async def get_vector(self, item_id: int):
        return await self._ask("get_vector", item_id)

    async def list_items(self, offset: int, limit: int):
        return await self.searchers[0].list_items.remote(offset, limit)

    async def health(self):
        return list(await asyncio.gather(*[h.health.remote() for h in self.searchers]))

    async def encoder_info(self):
        return await self.encoder.info.remote()

    def observe(self, stage: str, ms: float) -> None:
        self.stage_hist.observe(ms, tags={"stage": stage})


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress()
class SearchIngress:
    """HTTP ingress: the FastAPI app of ``serve/api.py`` over :class:`RayBackend`.

    Args:
        encoder: handle of the :class:`QueryEncoder` deployment.
        searchers: handles of the :class:`GallerySearcher` deployments, in shard order.
        cfg: the :class:`~rtd.config.ServeConfig` as a dict.
    """

    def __init__(self, encoder, searchers: list, cfg: dict[str, Any]) -> None:
        self.cfg = ServeConfig.model_validate(cfg)
        manifest = read_manifest(self.cfg.index_dir)
        if len(searchers) != manifest.num_shards:
            raise ValueError(f"searchers: {len(searchers)} handles for {manifest.num_shards} shards")
        self.backend = RayBackend(encoder, searchers, manifest, self.cfg.batching.model_dump())

    def __serve_build_asgi_app__(self):
        from serve.api import create_api

        return create_api(self.backend, self.cfg)
