"""Build a sharded FAISS gallery index from embeddings.

Layout written by :func:`build_sharded_index` into ``index_dir``::

    manifest.json                      rtd.index.manifest.Manifest
    shard-00000.faiss                  faiss.write_index of the shard (loadable with IO_FLAG_MMAP)
    shard-00000.items.parquet          id (int64), norm (float32), metadata (JSON string), sorted by id
    shard-00000.vectors.npy            the indexed vectors [n, D] float32 in items order (np.load mmap_mode="r")
    ...

All shards share one trained template (coarse quantizer / PQ codebooks trained once on a sample), so searching
every shard with the same ``nprobe`` and merging the per-shard top-k gives exactly the single-index answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import faiss
import numpy as np

from rtd.index.manifest import Manifest, ShardInfo, sha256_file, write_manifest

__all__ = [
    "GalleryTable",
    "stable_id",
    "assign_shards",
    "faiss_metric",
    "train_index",
    "build_shard_index",
    "build_sharded_index",
    "read_gallery_parquet",
    "write_gallery_parquet",
    "shard_file_names",
    "build_index",
]

logger = logging.getLogger(__name__)

Metric = Literal["ip", "l2"]
ShardStrategy = Literal["hash", "contiguous"]

_MASK63 = (1 << 63) - 1


def stable_id(key: str) -> int:
    """A stable non-negative int64 id for a string key (a relative path or URI): 63 bits of BLAKE2b.

    Ids stay the same when the gallery is re-embedded or extended, unlike row numbers.
    """
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little") & _MASK63


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def assign_shards(ids: np.ndarray | Sequence[int], num_shards: int, strategy: ShardStrategy = "hash") -> np.ndarray:
    """Map each id to a shard number in ``[0, num_shards)``.

    Args:
        ids: int64 ids, shape ``[N]``.
        num_shards: N shards, ``>= 1``.
        strategy: ``hash``: ``splitmix64(id) % num_shards``, a function of the id alone (the server can find the
            shard holding an id without a lookup table, and shards stay balanced for any id pattern);
            ``contiguous``: equal-size runs in input order (``shard = row * num_shards // N``).

    Returns:
        int64 array ``[N]`` of shard numbers.

    Raises:
        ValueError: ``num_shards < 1`` or an unknown ``strategy``.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    ids = np.asarray(ids, dtype=np.int64)
    if strategy == "hash":
        return (_splitmix64(ids.view(np.uint64)) % np.uint64(num_shards)).astype(np.int64)
    if strategy == "contiguous":
        n = len(ids)
        return (np.arange(n, dtype=np.int64) * num_shards // max(n, 1)).astype(np.int64)
    raise ValueError(f"shard_strategy must be 'hash' or 'contiguous', got {strategy!r}")


def faiss_metric(metric: str) -> int:
    """``ip`` -> ``faiss.METRIC_INNER_PRODUCT``, ``l2`` -> ``faiss.METRIC_L2``.

    Raises:
        ValueError: any other value (names the field ``metric``).
    """
    if metric == "ip":
        return faiss.METRIC_INNER_PRODUCT
    if metric == "l2":
        return faiss.METRIC_L2
    raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")


def _is_ivf(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def _empty_index(dim: int, factory: str, metric: str) -> faiss.Index:
    try:
        index = faiss.index_factory(dim, factory, faiss_metric(metric))
    except RuntimeError as e:
        raise ValueError(f"factory {factory!r} is not a valid FAISS index-factory string: {e}") from e
    # IVF indexes store ids themselves; everything else (Flat, HNSW, PQ, ...) needs an id map for stable ids.
    return index if _is_ivf(index) else faiss.IndexIDMap2(index)


def train_index(sample: np.ndarray, factory: str, metric: str = "ip", seed: int = 0) -> faiss.Index:
    """An empty, trained index for ``factory``, to be cloned once per shard.

    Args:
        sample: float32 ``[S, D]`` training vectors (a random sample of the gallery).
        factory: FAISS index-factory string.
        metric: ``ip`` or ``l2``.
        seed: k-means seed, so rebuilding the same gallery gives the same index.

    Raises:
        ValueError: bad ``factory``/``metric``, or ``sample`` too small for the quantizer (names ``train_sample``).
    """
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if sample.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [N, D], got shape {sample.shape}")
    index = _empty_index(sample.shape[1], factory, metric)
    if not index.is_trained:
        try:
            ivf = faiss.extract_index_ivf(index)
            if len(sample) < ivf.nlist:
                raise ValueError(
                    f"train_sample: {len(sample)} training vectors for {ivf.nlist} IVF lists; need at least nlist "
                    f"(FAISS recommends 39 * nlist); raise train_sample or lower nlist in factory {factory!r}"
                )
            ivf.cp.seed = seed
        except RuntimeError:
            pass
        index.train(sample)
    return index


def build_shard_index(
    embeddings: np.ndarray,
    ids: np.ndarray,
    factory: str = "Flat",
    metric: str = "ip",
    train_sample: int = 100_000,
    *,
    trained: faiss.Index | None = None,
    seed: int = 0,
) -> faiss.Index:
    """Build one FAISS index holding ``embeddings`` under the stable ``ids``.

    Args:
        embeddings: float32 ``[N, D]``.
        ids: int64 ``[N]``, unique.
        factory: FAISS index-factory string (``Flat``, ``IVF256,PQ16``, ``HNSW32``, ...).
        metric: ``ip`` or ``l2``.
        train_sample: when ``trained`` is None, train the quantizer on at most this many random rows.
        trained: a trained empty template (from :func:`train_index`) to clone; shards built from the same
            template share their quantizer, which makes the sharded search equal the single-index search.
        seed: sampling and k-means seed.

    Returns:
        The populated index (``search`` returns the stable ids).

    Raises:
        ValueError: shape/dtype mismatches, duplicate ids, bad factory or metric.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [N, D], got shape {x.shape}")
    if ids.shape != (len(x),):
        raise ValueError(f"ids must have shape [{len(x)}] to match embeddings, got {ids.shape}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be unique")
    if trained is None:
        rng = np.random.default_rng(seed)
        take = rng.choice(len(x), size=min(train_sample, len(x)), replace=False) if len(x) else np.arange(0)
        trained = train_index(x[np.sort(take)], factory, metric, seed=seed)
    elif trained.d != x.shape[1]:
        raise ValueError(f"embeddings have dim {x.shape[1]} but the trained template has dim {trained.d}")
    index = faiss.clone_index(trained)
    if len(x):
        index.add_with_ids(x, ids)
    return index


def shard_file_names(shard: int) -> tuple[str, str, str]:
    """(index, items, vectors) file names of one shard."""
    stem = f"shard-{shard:05d}"
    return f"{stem}.faiss", f"{stem}.items.parquet", f"{stem}.vectors.npy"


@dataclass
class GalleryTable:
    """Gallery embeddings in memory: the rows of the embedding Parquet.

    Attributes:
        ids: int64 ``[N]``.
        embeddings: float32 ``[N, D]``; unit-norm when produced by ``jobs/embed_gallery.py``.
        norms: float32 ``[N]``, the L2 norm of the raw (un-normalised) frozen embedding; ``raw = emb * norm``.
        metadata: ``N`` JSON strings (path, caption, ...).
    """

    ids: np.ndarray
    embeddings: np.ndarray
    norms: np.ndarray
    metadata: list[str]
    fingerprints: frozenset[str] = frozenset()


def write_gallery_parquet(path: str | os.PathLike[str], table: GalleryTable) -> None:
    """Write a :class:`GalleryTable` as Parquet (id, embedding list<float32>, norm, metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = table.embeddings.shape[1]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(table.embeddings.astype(np.float32).ravel()), d)
    t = pa.table({
        "id": pa.array(table.ids, pa.int64()),
        "embedding": emb,
        "norm": pa.array(table.norms.astype(np.float32)),
        "metadata": pa.array(table.metadata, pa.string()),
    })
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, str(path))


def read_gallery_parquet(path: str | os.PathLike[str]) -> GalleryTable:
    """Read gallery embeddings from a Parquet file or a folder of Parquet files (Ray Data output).

    Required columns: ``id`` (int64) and ``embedding`` (list of floats); optional ``norm`` (defaults to 1) and
    ``metadata`` (JSON string, defaults to ``{}``).

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no Parquet files.
        ValueError: a required column is missing or embeddings have unequal lengths (names the column).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    p = Path(path)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"embeddings: no .parquet files under {str(p)!r}")
    elif p.is_file():
        files = [str(p)]
    else:
        raise FileNotFoundError(f"embeddings: {str(p)!r} does not exist")
    import pyarrow as pa

    t = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    for col in ("id", "embedding"):
        if col not in t.column_names:
            raise ValueError(f"embeddings parquet: required column {col!r} missing (has {t.column_names})")
    t = t.combine_chunks()
    emb_col = t.column("embedding").combine_chunks()
    lengths = pc.list_value_length(emb_col).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        raise ValueError("embeddings parquet: column 'embedding' has rows of different lengths")
    d = int(lengths[0]) if len(lengths) else 0
    flat = pc.list_flatten(emb_col).to_numpy(zero_copy_only=False).astype(np.float32)
    emb = flat.reshape(len(t), d)
    ids = t.column("id").to_numpy().astype(np.int64)
    norms = (
        t.column("norm").to_numpy(zero_copy_only=False).astype(np.float32)
        if "norm" in t.column_names else np.ones(len(t), np.float32)
    )
    meta = t.column("metadata").to_pylist() if "metadata" in t.column_names else ["{}"] * len(t)
    meta = [m if isinstance(m, str) else json.dumps(m) for m in meta]
    fps = frozenset(pc.unique(t.column("fingerprint")).to_pylist()) if "fingerprint" in t.column_names else frozenset()
    return GalleryTable(ids=ids, embeddings=emb, norms=norms, metadata=meta, fingerprints=fps)


def _write_items(path: Path, ids: np.ndarray, norms: np.ndarray, metadata: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"id": pa.array(ids, pa.int64()), "norm": pa.array(norms, pa.float32()),
                  "metadata": pa.array(metadata, pa.string())}),
        str(path),
    )


def build_sharded_index(
    table: GalleryTable,
    index_dir: str | os.PathLike[str],
    *,
    fingerprint: str,
    factory: str = "Flat",
    metric: Metric = "ip",
    num_shards: int = 1,
    train_sample: int = 100_000,
    shard_strategy: ShardStrategy = "hash",
    normalize: bool = True,
    store_vectors: bool = True,
    gallery_kind: str = "unknown",
    search_defaults: dict[str, int] | None = None,
    seed: int = 0,
    source: dict[str, object] | None = None,
) -> Manifest:
    """Train one template, fill ``num_shards`` shards, write them and ``manifest.json`` into ``index_dir``.

    Args:
        table: gallery ids, embeddings, norms and metadata.
        index_dir: output folder (created; existing shard files are overwritten, the manifest is written last
            and atomically, so a reader never sees a manifest that points at missing files).
        fingerprint: frozen-encoder fingerprint recorded in the manifest.
        factory: FAISS index-factory string.
        metric: ``ip`` or ``l2``.
        num_shards: number of shards.
        train_sample: quantizer training sample size.
        shard_strategy: see :func:`assign_shards`.
        normalize: L2-normalise embeddings before indexing (``norms`` are multiplied accordingly).
        store_vectors: also write ``shard-*.vectors.npy`` (needed for "reference = gallery id" queries).
        gallery_kind: ``image`` / ``caption`` / ``unknown``.
        search_defaults: default search parameters recorded for the server, e.g. ``{"nprobe": 16}``.
        seed: sampling and k-means seed.
        source: provenance recorded in the manifest.

    Returns:
        The written :class:`Manifest`.

    Raises:
        ValueError: empty gallery, duplicate ids, bad factory/metric, too small ``train_sample``.
    """
    t0 = time.perf_counter()
    out = Path(index_dir)
    out.mkdir(parents=True, exist_ok=True)
    x = np.ascontiguousarray(table.embeddings, dtype=np.float32)
    ids = np.asarray(table.ids, dtype=np.int64)
    norms = np.asarray(table.norms, dtype=np.float32)
    if len(x) == 0:
        raise ValueError("embeddings: the gallery is empty")
    if len(np.unique(ids)) != len(ids):
        _, counts = np.unique(ids, return_counts=True)
        raise ValueError(f"id: {int((counts > 1).sum())} duplicate ids in the gallery")
    if normalize:
        n = np.linalg.norm(x, axis=1).astype(np.float32)
        n[n == 0] = 1.0
        x = x / n[:, None]
        norms = norms * n
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(x), size=min(train_sample, len(x)), replace=False))
    template = train_index(x[take], factory, metric, seed=seed)
    logger.info("trained %s on %d vectors (dim %d) in %.1fs", factory, len(take), x.shape[1], time.perf_counter() - t0)

    shard_of = assign_shards(ids, num_shards, shard_strategy)
    infos: list[ShardInfo] = []
    for s in range(num_shards):
        rows = np.flatnonzero(shard_of == s)
        rows = rows[np.argsort(ids[rows], kind="stable")]  # items sorted by id -> binary-search lookups
        index = build_shard_index(x[rows], ids[rows], factory, metric, trained=template)
        f_index, f_items, f_vec = shard_file_names(s)
        faiss.write_index(index, str(out / f_index))
        _write_items(out / f_items, ids[rows], norms[rows], [table.metadata[i] for i in rows])
        files = [f_index, f_items]
        if store_vectors:
            np.save(out / f_vec, x[rows])
            files.append(f_vec)
        infos.append(ShardInfo(
            shard=s, count=int(len(rows)), index_file=f_index, items_file=f_items,
            vectors_file=f_vec if store_vectors else None,
            sha256={f: sha256_file(out / f) for f in files},
        ))
        logger.info("shard %d/%d: %d vectors", s + 1, num_shards, len(rows))
    digest = hashlib.sha256(
        json.dumps([i.sha256 for i in infos], sort_keys=True).encode() + fingerprint.encode()
    ).hexdigest()
    manifest = Manifest(
        index_version=f"v{digest[:12]}",
        fingerprint=fingerprint,
        dim=int(x.shape[1]),
        metric=metric,
        factory=factory,
        num_shards=num_shards,
        shard_strategy=shard_strategy,
        ntotal=int(len(x)),
        normalized=normalize,
        gallery_kind=gallery_kind if gallery_kind in ("image", "caption") else "unknown",
        train_sample=int(len(take)),
        search_defaults=dict(search_defaults or {}),
        faiss_version=faiss.__version__,
        created_unix=time.time(),
        shards=infos,
        source=dict(source or {}),
    )
    write_manifest(out, manifest)
    logger.info("wrote %s (%d vectors, %d shards) in %.1fs", out, len(x), num_shards, time.perf_counter() - t0)
    return manifest


def build_index(cfg) -> Manifest:
    """Build the sharded index described by an :class:`~rtd.config.IndexConfig` (what ``jobs/build_index.py`` runs).

    The frozen-encoder fingerprint comes from ``cfg.fingerprint`` or, by default, from the embedding rows
    (``fingerprint`` column) / ``_gallery.json`` written by the embedding job.

    Raises:
        ValueError: no fingerprint, or rows embedded by different encoders (names ``fingerprint``).
    """
    table = read_gallery_parquet(cfg.embeddings)
    sidecar = Path(cfg.embeddings) / "_gallery.json"
    side = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    if len(table.fingerprints) > 1:
        raise ValueError(f"fingerprint: embeddings mix {len(table.fingerprints)} encoders {sorted(table.fingerprints)}")
    found = next(iter(table.fingerprints), None) or side.get("fingerprint")
    fingerprint = cfg.fingerprint or found
    if not fingerprint:
        raise ValueError("fingerprint: embeddings carry no encoder fingerprint; set index fingerprint=<value>")
    if cfg.fingerprint and found and cfg.fingerprint != found:
        raise ValueError(f"fingerprint: config says {cfg.fingerprint!r} but the embeddings were made by {found!r}")
    params = {k: v for k, v in (("nprobe", cfg.nprobe), ("efSearch", cfg.ef_search)) if v is not None}
    return build_sharded_index(
        table, cfg.output, fingerprint=fingerprint, factory=cfg.factory, metric=cfg.metric,
        num_shards=cfg.num_shards, train_sample=cfg.train_sample, shard_strategy=cfg.shard_strategy,
        normalize=cfg.normalize, store_vectors=cfg.store_vectors, gallery_kind=side.get("kind", "unknown"),
        search_defaults=params, seed=cfg.seed,
        source={"embeddings": str(cfg.embeddings), "model": side.get("config", {}).get("model"),
                "checkpoint": side.get("config", {}).get("checkpoint")},
    )
