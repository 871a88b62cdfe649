"""Gallery indexing: sharded FAISS indexes with a manifest, per-shard search and an exact top-k merge.

Pure library code (FAISS + NumPy + PyArrow); no Ray. ``jobs/build_index.py`` and ``serve/`` call into it.
"""

from rtd.index.build import (
    GalleryTable,
    assign_shards,
    build_index,
    build_shard_index,
    build_sharded_index,
    faiss_metric,
    read_gallery_parquet,
    stable_id,
    train_index,
    write_gallery_parquet,
)
from rtd.index.manifest import (
    ChecksumError,
    Manifest,
    ManifestError,
    ShardInfo,
    read_manifest,
    verify_checksums,
    write_manifest,
)
from rtd.index.search import ShardedIndex, ShardSearcher, load_faiss_index, merge_topk

__all__ = [
    "GalleryTable",
    "assign_shards",
    "build_index",
    "build_shard_index",
    "build_sharded_index",
    "faiss_metric",
    "read_gallery_parquet",
    "stable_id",
    "train_index",
    "write_gallery_parquet",
    "ChecksumError",
    "Manifest",
    "ManifestError",
    "ShardInfo",
    "read_manifest",
    "verify_checksums",
    "write_manifest",
    "ShardedIndex",
    "ShardSearcher",
    "load_faiss_index",
    "merge_topk",
]
