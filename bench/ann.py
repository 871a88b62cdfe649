"""ANN recall vs latency of sharded FAISS indexes against exact (Flat) search, on synthetic or real embeddings.

    python bench/ann.py                                   # 100k synthetic clustered vectors, dim 64
    python bench/ann.py --embeddings runs/gallery/embeddings --queries 1000

For each factory string and search parameter, builds a ``--shards``-way index with ``rtd.index`` (shared trained
template), searches every shard and merges (what Serve does), and reports recall@1/@10 against exact search plus
the per-query latency (single-threaded, one query at a time and in batches). Prints one JSON object per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def synthetic(n: int, d: int, clusters: int = 256, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors (Gaussian blobs around random centres): closer to real embeddings than iid noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall_at(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Fraction of the exact top-k ids found in the approximate top-k (averaged over queries)."""
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(I, gt)]))


def main(argv: list[str] | None = None) -> int:
    import faiss

    from rtd.index import GalleryTable, ShardedIndex, build_sharded_index, read_gallery_parquet
    from rtd.index.search import apply_search_params

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embeddings", help="gallery Parquet (default: synthetic)")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--factories", default="Flat;IVF256,Flat;IVF256,PQ16;HNSW32")
    args = ap.parse_args(argv)
    faiss.omp_set_num_threads(1)

    if args.embeddings:
        table = read_gallery_parquet(args.embeddings)
    else:
        x = synthetic(args.n, args.dim)
        table = GalleryTable(ids=np.arange(len(x), dtype=np.int64), embeddings=x,
                             norms=np.ones(len(x), np.float32), metadata=["{}"] * len(x))
    rng = np.random.default_rng(1)
    qi = rng.choice(len(table.ids), args.queries, replace=False)
    xq = table.embeddings[qi] + 0.1 * rng.standard_normal((args.queries, table.embeddings.shape[1])).astype(np.float32)
    xq = (xq / np.linalg.norm(xq, axis=1, keepdims=True)).astype(np.float32)

    root = Path(tempfile.mkdtemp(prefix="rtd_ann_"))
    gt = None
    for factory in args.factories.split(";"):
        out = root / factory.replace(",", "_")
        t = time.perf_counter()
        build_sharded_index(table, out, fingerprint="bench", factory=factory, num_shards=args.shards,
                            train_sample=min(50_000, len(table.ids)), store_vectors=False)
        build_s = time.perf_counter() - t
        idx = ShardedIndex(out)
        sweeps = ([{"nprobe": p} for p in (1, 4, 16, 64)] if "IVF" in factory else
                  [{"efSearch": e} for e in (16, 64, 256)] if "HNSW" in factory else [{}])
        for params in sweeps:
            for s in idx.shards:
                apply_search_params(s.index, params)
            t = time.perf_counter()
            for i in range(min(200, len(xq))):
                idx.search(xq[i: i + 1], 10)
            single_ms = (time.perf_counter() - t) * 1000 / min(200, len(xq))
            t = time.perf_counter()
            D, I = idx.search(xq, 10)
            batch_ms = (time.perf_counter() - t) * 1000 / len(xq)
            if gt is None:
                gt = I  # the first factory is Flat: exact ground truth
            print(json.dumps({"factory": factory, **params, "shards": args.shards, "n": int(len(table.ids)),
                              "build_s": round(build_s, 1), "recall@1": round(recall_at(I, gt, 1), 4),
                              "recall@10": round(recall_at(I, gt, 10), 4), "ms_per_query_single": round(single_ms, 3),
                              "ms_per_query_batched": round(batch_ms, 4)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
