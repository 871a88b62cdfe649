"""The pieces of the search service that do not depend on Ray Serve.

* :func:`decode_image` validates an uploaded image before anything is decoded in full (decompression bombs).
* :func:`encode_items` turns a batch of mixed queries into unit query vectors with one encoder call per mode;
  the Serve ``QueryEncoder`` calls it on each ``@serve.batch`` and :class:`LocalBackend` calls it directly.
* :class:`LocalBackend` runs encoder + all shards in this process behind the same async interface as the Ray
  backend, so the FastAPI app (``serve/api.py``) is tested and fuzzed without starting Serve.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["RequestError", "EncodeItem", "EncodedSearch", "decode_image", "decode_base64", "encode_items",
           "encode_then_search", "split_shard_batch", "AdaptiveBatcher", "SearchBackend", "LocalBackend", "encoder_info"]


class RequestError(Exception):
    """A client error: becomes a JSON ``{"error": {"code", "message", "field"}}`` with ``status``."""

    def __init__(self, status: int, field: str | None, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status, self.field, self.message, self.code = status, field, message, code


@dataclass
class EncodeItem:
    """One query for the encoder: ``ref`` (raw frozen embedding) or ``image`` (decoded RGB) and/or ``text``."""

    text: str | None = None
    image: Any | None = None
    ref: np.ndarray | None = None

    @property
    def mode(self) -> str:
        has_ref = self.ref is not None or self.image is not None
        has_text = bool(self.text and self.text.strip())
        return "composed" if has_ref and has_text else ("image" if has_ref else "text")


def decode_base64(data: str, field: str, max_bytes: int) -> bytes:
    """Decode base64 (optionally a ``data:...;base64,`` URL) with a size cap.

    Raises:
        RequestError: 413 when the decoded size would exceed ``max_bytes``, 422 when it is not base64.
    """
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    if len(data) * 3 // 4 > max_bytes + 3:
        raise RequestError(413, field, f"image is larger than max_image_bytes={max_bytes}", "too_large")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(422, field, f"not valid base64: {e}") from e
    if not raw:
        raise RequestError(422, field, "empty image")
    return raw


def decode_image(raw: bytes, field: str, max_pixels: int, max_bytes: int, max_side: int = 1024):
    """Open an image safely: check the header's size before decoding pixels, then decode to RGB.

    Large images are reduced (``Image.draft`` + ``thumbnail``) to at most ``max_side`` pixels per side; the CLIP
    preprocessing resizes to its input size (224 px) anyway.

    Raises:
        RequestError: 413 for too many pixels or bytes (decompression bombs included), 422 for undecodable data.
    """
    from PIL import Image, UnidentifiedImageError

    if len(raw) > max_bytes:
        raise RequestError(413, field, f"image has {len(raw)} bytes; max_image_bytes={max_bytes}", "too_large")
    try:
        im = Image.open(io.BytesIO(raw))
        w, h = im.size
        if w < 1 or h < 1:
            raise RequestError(422, field, f"image has an invalid size {w}x{h}")
        if w * h > max_pixels:
            raise RequestError(413, field, f"image is {w}x{h} = {w * h} pixels; max_image_pixels={max_pixels}",
                               "too_large")
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            im.seek(0)  # animated images: the first frame is the reference
        im.draft("RGB", (max_side, max_side))
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        return im
    except RequestError:
        raise
    except Image.DecompressionBombError as e:
        raise RequestError(413, field, f"image rejected as a decompression bomb: {e}", "too_large") from e
    except UnidentifiedImageError as e:
        raise RequestError(422, field, "cannot decode image: not a supported image format") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise RequestError(422, field, f"cannot decode image: {type(e).__name__}: {e}") from e


def encode_items(encoder, items: Sequence[EncodeItem]) -> list[np.ndarray]:
    """Unit query vectors for a batch of mixed queries, one encoder call per mode.

    * composed: ``encoder.encode_queries(ref, texts)`` (phi(ref) fills the placeholder; trained text tower);
    * text: ``encoder.encode_queries(None, texts)``;
    * image: the reference's own unit vector (image-to-image search; no text tower involved).

    Returns:
        One float32 ``[D]`` vector per item, L2-normalised.
    """
    import torch

    refs: list[np.ndarray | None] = [it.ref for it in items]
    with_image = [i for i, it in enumerate(items) if it.image is not None]
    if with_image:
        emb = encoder.encode_reference_images([items[i].image for i in with_image]).float().cpu().numpy()
        for j, i in enumerate(with_image):
            refs[i] = emb[j]
    out: list[np.ndarray | None] = [None] * len(items)
    modes = [it.mode for it in items]
    composed = [i for i, m in enumerate(modes) if m == "composed"]
    if composed:
        ref = torch.from_numpy(np.stack([np.asarray(refs[i], np.float32) for i in composed]))
        q = encoder.encode_queries(ref, [items[i].text for i in composed]).float().cpu().numpy()
        for j, i in enumerate(composed):
            out[i] = q[j]
    text_only = [i for i, m in enumerate(modes) if m == "text"]
    if text_only:
        q = encoder.encode_queries(None, [items[i].text for i in text_only]).float().cpu().numpy()
        for j, i in enumerate(text_only):
            out[i] = q[j]
    for i, m in enumerate(modes):
        if m == "image":
            v = np.asarray(refs[i], np.float32)
            out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
    return [np.asarray(v, np.float32) for v in out]  # type: ignore[arg-type]


def encoder_info(encoder, model_section: dict[str, Any]) -> dict[str, Any]:
    return {"model": model_section, "checkpoint": encoder.checkpoint, "fingerprint": encoder.fingerprint,
            "embed_dim": int(encoder.embed_dim)}


class SearchBackend(Protocol):
    """What the HTTP layer needs; implemented in-process (:class:`LocalBackend`) and over Serve handles."""

    manifest: Any  # rtd.index.Manifest

    async def encode(self, item: EncodeItem) -> tuple[np.ndarray, str | None]: ...
    async def search_shards(self, q: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray, dict[int, Any]]]: ...
    async def encode_and_search(self, item: EncodeItem, k: int) -> "EncodedSearch": ...
    async def get_item(self, item_id: int) -> dict[str, Any] | None: ...
    async def get_vector(self, item_id: int) -> np.ndarray | None: ...
    async def list_items(self, offset: int, limit: int) -> list[dict[str, Any]]: ...
    async def health(self) -> list[dict[str, Any]]: ...
    async def encoder_info(self) -> dict[str, Any]: ...
    def observe(self, stage: str, ms: float) -> None: ...


@dataclass
class EncodedSearch:
    """One query's encoded vector and per-shard top-k, plus the wall time of the two stages (ms)."""

    checkpoint: str | None
    per_shard: list[tuple[np.ndarray, np.ndarray, dict[int, Any]]]
    encode_ms: float
    search_ms: float
    batch_size: int = 1
    queue_ms: float = 0.0  # time in the ingress batch queue before the batch started


async def encode_then_search(backend, item: EncodeItem, k: int) -> EncodedSearch:
    """The unbatched path: one encoder call, then every shard, for this query alone."""
    t = now_ms()
    vec, checkpoint = await backend.encode(item)
    q = np.asarray(vec, np.float32).reshape(1, -1)
    t2 = now_ms()
    per_shard = await backend.search_shards(q, k)
    return EncodedSearch(checkpoint, per_shard, t2 - t, now_ms() - t2)


def split_shard_batch(searcher, D: np.ndarray, I: np.ndarray, ks: Sequence[int], with_metadata: bool = True):
    """Rows of one batched shard search -> per-query ``(D[1, k], I[1, k], {id: metadata})`` (metadata of every
    hit fetched in one call)."""
    metas: dict[int, Any] = {}
    if with_metadata:
        hit_ids = sorted({int(i) for i in I.ravel() if i >= 0})
        metas = dict(zip(hit_ids, searcher.get_items(hit_ids)))
    out = []
    for row, k in enumerate(ks):
        d, i = D[row: row + 1, :k], I[row: row + 1, :k]
        out.append((d, i, {int(x): metas.get(int(x)) for x in i.ravel() if x >= 0}))
    return out


class AdaptiveBatcher:
    """Group concurrent async calls into batches without a timer: while ``max_in_flight`` batches run, new calls
    queue; when one finishes, everything queued (up to ``max_batch_size``) becomes the next batch.

    A lone request is dispatched at once (no added latency at low load), and under load batches grow to the
    arrival rate times the batch time. ``@serve.batch`` instead closes a batch ``batch_wait_timeout_s`` after its
    first item even while earlier batches still wait for the processing slot, so under load it produces many
    small batches (measured 2.8 requests per batch with 30 waiting, bench/serve_load.py).

    Args:
        fn: ``async fn(items) -> results`` (same length and order).
        max_batch_size: most items per batch.
        max_in_flight: batches processed concurrently (2 overlaps one batch's search with the next's encode).
    """

    def __init__(self, fn, max_batch_size: int = 32, max_in_flight: int = 1) -> None:
        if max_batch_size < 1 or max_in_flight < 1:
            raise ValueError(f"max_batch_size={max_batch_size} and max_in_flight={max_in_flight} must be >= 1")
        self.fn, self.max_batch_size, self.max_in_flight = fn, max_batch_size, max_in_flight
        self._pending: list[tuple[Any, Any]] = []
        self._in_flight = 0
        self.batches = 0
        self.items = 0

    async def __call__(self, item):
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        self._dispatch()
        return await fut

    def _dispatch(self) -> None:
        while self._pending and self._in_flight < self.max_in_flight:
            batch, self._pending = self._pending[:self.max_batch_size], self._pending[self.max_batch_size:]
            self._in_flight += 1
            asyncio.ensure_future(self._run(batch))

    async def _run(self, batch: list[tuple[Any, Any]]) -> None:
        try:
            self.batches += 1
            self.items += len(batch)
            results = await self.fn([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            for (_, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)
        except BaseException as e:  # every caller of this batch gets the error
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
        finally:
            self._in_flight -= 1
            self._dispatch()


def shard_for(manifest, item_id: int) -> int | None:
    """The shard holding ``item_id`` under hash sharding; None when it has to be asked of every shard."""
    if manifest.shard_strategy != "hash":
        return None
    from rtd.index import assign_shards

    return int(assign_shards(np.array([item_id], np.int64), manifest.num_shards, "hash")[0])


def search_one_shard(searcher, q: np.ndarray, k: int, with_metadata: bool = True):
    """Search one shard and attach metadata of its hits: ``(D, I, {id: metadata})``."""
    D, I = searcher.search(q, k)
    meta: dict[int, Any] = {}
    if with_metadata:
        hit_ids = [int(i) for i in I.ravel() if i >= 0]
        meta = dict(zip(hit_ids, searcher.get_items(hit_ids)))
    return D, I, meta


def item_record(searcher, item_id: int, image_root: str | None = None) -> dict[str, Any] | None:
    meta = searcher.get_items([item_id])[0]
    if meta is None:
        return None
    return {"id": item_id, "shard": searcher.shard, "metadata": meta,
            "has_vector": searcher.vectors is not None}


@dataclass
class LocalBackend:
    """Encoder and every shard in this process (tests, fuzzing, ``bench``).

    Args:
        cfg: a :class:`~rtd.config.ServeConfig`.
    """

    cfg: Any
    encoder: Any = None
    index: Any = None
    stage_ms: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from rtd.index import ShardedIndex
        from rtd.ray_adapters.embed import build_frozen_encoder

        self.index = self.index or ShardedIndex(self.cfg.index_dir, mmap=self.cfg.mmap,
                                                verify=self.cfg.verify_checksums,
                                                search_params=self.cfg.search_params)
        self.manifest = self.index.manifest
        self.encoder = self.encoder or build_frozen_encoder(
            model=self.cfg.model, projector=self.cfg.projector, prompts=self.cfg.prompts,
            checkpoint=self.cfg.checkpoint, init_seed=self.cfg.init_seed,
        )
        check_fingerprint(self.manifest, self.encoder.fingerprint, self.cfg.allow_fingerprint_mismatch)

    async def encode(self, item: EncodeItem) -> tuple[np.ndarray, str | None]:
        return encode_items(self.encoder, [item])[0], self.encoder.checkpoint

    async def search_shards(self, q: np.ndarray, k: int):
        return [search_one_shard(s, q, k) for s in self.index.shards]

    async def encode_and_search(self, item: EncodeItem, k: int) -> EncodedSearch:
        return await encode_then_search(self, item, k)

    async def get_item(self, item_id: int):
        for s in self.index.shards:
            rec = item_record(s, item_id)
            if rec:
                return rec
        return None

    async def get_vector(self, item_id: int):
        for s in self.index.shards:
            v = s.get_vectors([item_id])[0]
            if v is not None:
                return v
        return None

    async def list_items(self, offset: int, limit: int):
        s = self.index.shards[0]
        return [item_record(s, i) for i in s.list_ids(offset, limit)]

    async def health(self):
        return [s.health() for s in self.index.shards]

    async def encoder_info(self):
        model = self.cfg.model.model_dump(mode="json")
        return encoder_info(self.encoder, model)

    def observe(self, stage: str, ms: float) -> None:
        self.stage_ms.setdefault(stage, []).append(ms)


def check_fingerprint(manifest, fingerprint: str, allow_mismatch: bool) -> None:
    """Refuse to serve an index embedded by another frozen encoder.

    Raises:
        RuntimeError: the fingerprints differ and ``allow_mismatch`` is off.
    """
    if manifest.fingerprint != fingerprint:
        msg = (f"index fingerprint {manifest.fingerprint!r} != encoder fingerprint {fingerprint!r}: the gallery was "
               "embedded by another frozen encoder; rebuild the index or set allow_fingerprint_mismatch=true")
        if not allow_mismatch:
            raise RuntimeError(msg)
        logger.warning(msg)


def now_ms() -> float:
    return time.perf_counter() * 1000.0


def resolve_auth_token(cfg) -> str | None:
    if cfg.auth_token:
        return cfg.auth_token
    if cfg.auth_token_env:
        return os.environ.get(cfg.auth_token_env) or None
    return None
