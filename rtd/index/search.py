"""Search gallery shards and merge their answers exactly.

:class:`ShardSearcher` wraps one shard (FAISS index memory-mapped from disk + its items and vectors);
:func:`merge_topk` merges per-shard top-k lists with FAISS's result heap; :class:`ShardedIndex` does both in one
process (tests, benchmarks, offline evaluation). Serve runs one :class:`ShardSearcher` per deployment instead.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from rtd.index.manifest import Manifest, ManifestError, read_manifest, verify_checksums

__all__ = ["merge_topk", "load_faiss_index", "apply_search_params", "ShardSearcher", "ShardedIndex", "worst_score"]

logger = logging.getLogger(__name__)


def worst_score(metric: str) -> float:
    """The score of an empty result slot: ``-inf`` for inner product (higher is better), ``+inf`` for L2."""
    return -np.inf if metric == "ip" else np.inf


def merge_topk(
    results: Sequence[tuple[np.ndarray, np.ndarray]], k: int, metric: str = "ip"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the union of per-shard results.

    Args:
        results: one ``(D, I)`` pair per shard, each ``[nq, k_s]`` (``k_s`` may differ between shards). Slots with
            id ``-1`` (a shard with fewer than ``k_s`` vectors) are ignored.
        k: results to keep per query, ``>= 1``.
        metric: ``ip`` keeps the largest scores, ``l2`` the smallest distances.

    Returns:
        ``(D, I)``, ``[nq, k]`` each, best first; empty slots hold id ``-1`` and :func:`worst_score`.

    Raises:
        ValueError: no results, ``k < 1``, unknown metric, or shards disagree on the number of queries.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
    if not results:
        raise ValueError("results: need at least one (D, I) pair")
    nq = results[0][0].shape[0]
    worst = worst_score(metric)
    heap = faiss.ResultHeap(nq, k, keep_max=(metric == "ip"))
    for s, (D, I) in enumerate(results):
        D = np.array(D, dtype=np.float32, copy=True)
        I = np.asarray(I, dtype=np.int64)
        if D.ndim != 2 or D.shape[0] != nq or I.shape != D.shape:
            raise ValueError(f"results[{s}]: D {D.shape} / I {I.shape} do not hold {nq} queries of equal width")
        if D.shape[1] == 0:
            continue
        D[I < 0] = worst  # an empty slot never displaces a real hit
        heap.add_result(D, I)
    heap.finalize()
    D, I = heap.D, heap.I
    D[I < 0] = worst
    return D, I


def load_faiss_index(path: str | os.PathLike[str], mmap: bool = True) -> faiss.Index:
    """Read a FAISS index, memory-mapped when ``mmap`` (IVF inverted lists and flat codes stay on disk and are
    paged in on demand; index types that cannot be mapped are read into RAM by FAISS).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"index file {str(path)!r} does not exist")
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    return faiss.read_index(str(path), flags)


def apply_search_params(index: faiss.Index, params: dict[str, int]) -> dict[str, int]:
    """Set search-time parameters (``nprobe``, ``efSearch``, ...) that apply to this index type.

    Returns:
        The parameters that were applied (others are silently skipped: ``nprobe`` means nothing to HNSW).
    """
    ps = faiss.ParameterSpace()
    applied = {}
    for name, value in params.items():
        if value is None:
            continue
        try:
            ps.set_index_parameter(index, name, float(value))
            applied[name] = int(value)
        except RuntimeError:
            pass
    return applied


class ShardSearcher:
    """One shard of a gallery index: search, item lookup and a health probe.

    Args:
        index_dir: folder with ``manifest.json``.
        shard: shard number.
        manifest: an already-read manifest (read from ``index_dir`` when None).
        mmap: memory-map the FAISS file.
        verify: check the shard's SHA-256 checksums before loading.
        search_params: ``{"nprobe": 16, "efSearch": 64}``; defaults come from the manifest.

    Raises:
        ManifestError: ``shard`` is not in the manifest, or the files disagree with it.
        ChecksumError: ``verify`` and a file's digest differs.
    """

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        shard: int,
        *,
        manifest: Manifest | None = None,
        mmap: bool = True,
        verify: bool = False,
        search_params: dict[str, int] | None = None,
    ) -> None:
        import pyarrow.parquet as pq

        self.index_dir = Path(index_dir)
        self.manifest = manifest or read_manifest(index_dir)
        infos = [s for s in self.manifest.shards if s.shard == shard]
        if not infos:
            raise ManifestError(f"shard {shard} is not in {self.index_dir}/manifest.json (num_shards={self.manifest.num_shards})")
        self.info = infos[0]
        self.shard = shard
        if verify:
            verify_checksums(self.index_dir, self.manifest, [shard])
        self.index = load_faiss_index(self.index_dir / self.info.index_file, mmap=mmap)
        if self.index.ntotal != self.info.count or self.index.d != self.manifest.dim:
            raise ManifestError(
                f"shard {shard}: index has ntotal={self.index.ntotal}, d={self.index.d}; manifest says "
                f"count={self.info.count}, dim={self.manifest.dim}"
            )
        self.search_params = apply_search_params(self.index, {**self.manifest.search_defaults, **(search_params or {})})
        items = pq.read_table(self.index_dir / self.info.items_file)
        self.ids = items.column("id").to_numpy().astype(np.int64)  # sorted at build time
        self.norms = items.column("norm").to_numpy().astype(np.float32)
        self._metadata = items.column("metadata")
        self.vectors = (
            np.load(self.index_dir / self.info.vectors_file, mmap_mode="r") if self.info.vectors_file else None
        )

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of this shard for each query.

        Args:
            queries: float32 ``[nq, D]``.
            k: results per query (a shard with fewer vectors pads with id ``-1``).

        Returns:
            ``(D, I)``, ``[nq, k]`` each; ``I`` holds stable gallery ids.

        Raises:
            ValueError: wrong query width or ``k < 1``.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.manifest.dim:
            raise ValueError(f"queries must be [nq, {self.manifest.dim}], got {q.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.ntotal == 0:
            return (np.full((len(q), k), worst_score(self.manifest.metric), np.float32),
                    np.full((len(q), k), -1, np.int64))
        D, I = self.index.search(q, k)
        D[I < 0] = worst_score(self.manifest.metric)
        return D, I

    def _rows(self, ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        found = (len(self.ids) > 0) & (self.ids[pos] == ids) if len(self.ids) else np.zeros(len(ids), bool)
        return np.where(found, pos, -1)

    def get_items(self, ids: Sequence[int]) -> list[dict | None]:
        """Metadata dicts for ``ids`` (None for ids this shard does not hold)."""
        out: list[dict | None] = []
        for r in self._rows(ids):
            out.append(None if r < 0 else json.loads(self._metadata[int(r)].as_py() or "{}"))
        return out

    def get_vectors(self, ids: Sequence[int], raw: bool = True) -> list[np.ndarray | None]:
        """Stored vectors for ``ids``; ``raw`` multiplies back the norm of the un-normalised frozen embedding
        (what the projector phi expects). None for ids this shard does not hold or when no vectors were stored."""
        out: list[np.ndarray | None] = []
        for r in self._rows(ids):
            if r < 0 or self.vectors is None:
                out.append(None)
            else:
                v = np.array(self.vectors[int(r)], dtype=np.float32)
                out.append(v * self.norms[int(r)] if raw else v)
        return out

    def list_ids(self, offset: int = 0, limit: int = 20) -> list[int]:
        """A page of this shard's ids (sorted)."""
        return [int(i) for i in self.ids[offset: offset + limit]]

    def health(self) -> dict[str, object]:
        """Prove the index is loaded and answers: search the first stored vector and expect its own id back.

        Raises:
            RuntimeError: the probe search does not return the stored id.
        """
        probe_ok = True
        if self.ntotal:
            q = (np.asarray(self.vectors[:1], np.float32) if self.vectors is not None
                 else np.ones((1, self.manifest.dim), np.float32))
            _, I = self.search(q, 1)
            probe_ok = int(I[0, 0]) >= 0
        if not probe_ok:
            raise RuntimeError(f"shard {self.shard}: probe search did not return a stored id")
        return {"shard": self.shard, "ntotal": self.ntotal, "index_version": self.manifest.index_version,
                "search_params": self.search_params}


class ShardedIndex:
    """All shards of an index in one process; ``search`` = per-shard search + :func:`merge_topk`.

    Args:
        index_dir: folder with ``manifest.json``.
        **kwargs: passed to every :class:`ShardSearcher`.
    """

    def __init__(self, index_dir: str | os.PathLike[str], **kwargs) -> None:
        self.manifest = read_manifest(index_dir)
        self.shards = [ShardSearcher(index_dir, s, manifest=self.manifest, **kwargs)
                       for s in range(self.manifest.num_shards)]

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact merge of every shard's top-``k``; see :func:`merge_topk`."""
        return merge_topk([s.search(queries, k) for s in self.shards], k, self.manifest.metric)
