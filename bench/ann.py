"""ANN recall vs latency of sharded FAISS indexes against exact (Flat) search, on synthetic or real embeddings.

    python bench/ann.py                                   # the goal: 1M synthetic clustered vectors, dim 512
    python bench/ann.py --n 100000 --dim 64               # quick
    python bench/ann.py --embeddings runs/gallery/embeddings --queries 1000

For each factory string and search parameter, builds a ``--shards``-way index with ``rtd.index`` (shared trained
template), searches every shard and merges (what Serve does), and reports recall@1/@10 against exact search plus
the per-query latency (single-threaded, one query at a time and in batches) and the speed-up over exact sharded
Flat search measured in the same run. Prints one JSON object per setting, then a table and the goal verdict
(recall@10 >= 0.95 at >= 20x). The first factory must be ``Flat`` (the ground truth and the baseline).
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
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--single", type=int, default=100, help="queries timed one at a time (Serve's unbatched case)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--factories", default="Flat;IVF4096,Flat")
    ap.add_argument("--nprobe", default="8,16,32,64,128", help="IVF nprobe values to sweep")
    ap.add_argument("--ef", default="32,64,128,256", help="HNSW efSearch values to sweep")
    ap.add_argument("--train-sample", type=int, default=100_000)
    ap.add_argument("--goal-recall", type=float, default=0.95)
    ap.add_argument("--goal-speedup", type=float, default=20.0)
    args = ap.parse_args(argv)
    if args.factories.split(";")[0] != "Flat":
        ap.error("--factories: the first factory must be Flat (exact ground truth and the speed baseline)")
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
    base: dict[str, float] = {}
    rows: list[dict] = []
    for factory in args.factories.split(";"):
        out = root / factory.replace(",", "_")
        t = time.perf_counter()
        build_sharded_index(table, out, fingerprint="bench", factory=factory, num_shards=args.shards,
                            train_sample=min(args.train_sample, len(table.ids)), store_vectors=False)
        build_s = time.perf_counter() - t
        idx = ShardedIndex(out)
        sweeps = ([{"nprobe": int(p)} for p in args.nprobe.split(",")] if "IVF" in factory else
                  [{"efSearch": int(e)} for e in args.ef.split(",")] if "HNSW" in factory else [{}])
        for params in sweeps:
            for s in idx.shards:
                apply_search_params(s.index, params)
            n_single = min(args.single, len(xq))
            t = time.perf_counter()
            for i in range(n_single):
                idx.search(xq[i: i + 1], 10)
            single_ms = (time.perf_counter() - t) * 1000 / n_single
            t = time.perf_counter()
            D, I = idx.search(xq, 10)
            batch_ms = (time.perf_counter() - t) * 1000 / len(xq)
            if gt is None:
                gt = I  # the first factory is Flat: exact ground truth and the speed baseline
                base = {"single": single_ms, "batched": batch_ms}
            row = {"factory": factory, **params, "shards": args.shards, "n": int(len(table.ids)),
                   "dim": int(table.embeddings.shape[1]), "build_s": round(build_s, 1),
                   "recall@1": round(recall_at(I, gt, 1), 4), "recall@10": round(recall_at(I, gt, 10), 4),
                   "ms_per_query_single": round(single_ms, 3), "ms_per_query_batched": round(batch_ms, 4),
                   "speedup_single": round(base["single"] / single_ms, 1),
                   "speedup_batched": round(base["batched"] / batch_ms, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del idx
    print(f"\n| factory | params | recall@10 | ms/query single | speed-up single | ms/query batched | speed-up batched |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        params = ",".join(f"{k}={r[k]}" for k in ("nprobe", "efSearch") if k in r) or "-"
        print(f"| {r['factory']} | {params} | {r['recall@10']:.3f} | {r['ms_per_query_single']:.2f} | "
              f"{r['speedup_single']:.1f}x | {r['ms_per_query_batched']:.3f} | {r['speedup_batched']:.1f}x |")
    ok = [r for r in rows[1:] if r["recall@10"] >= args.goal_recall]
    if ok:
        best = max(ok, key=lambda r: r["speedup_single"])
        met = best["speedup_single"] >= args.goal_speedup
        print(f"\ngoal recall@10 >= {args.goal_recall} at >= {args.goal_speedup:g}x (single queries): best "
              f"{best['factory']} {({k: best[k] for k in ('nprobe', 'efSearch') if k in best})} recall@10 "
              f"{best['recall@10']:.3f} at {best['speedup_single']:.1f}x -> {'MET' if met else 'NOT MET'}")
    else:
        print(f"\ngoal: no approximate setting reached recall@10 >= {args.goal_recall} -> NOT MET")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
