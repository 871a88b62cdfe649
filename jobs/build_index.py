"""Build sharded FAISS gallery shards + manifest.json from the Parquet written by jobs/embed_gallery.py.

Submit to a running cluster (from the repository root):

    ray job submit --address http://127.0.0.1:8265 --runtime-env runtime_env.yaml -- \
        python jobs/build_index.py --config index/ivfpq embeddings=/data/gallery/embeddings \
        output=/data/gallery/index num_shards=4

It needs no Ray itself (one process trains the shared quantizer and writes every shard), so it also runs as plain
``python jobs/build_index.py --config index/flat embeddings=... output=...``. ``key=value`` arguments override
the config (``factory="IVF4096,PQ32" nprobe=32 train_sample=200000``). Serve then points at ``output``.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="index/flat", help="preset (index/<name>) or YAML path")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from rtd.config import IndexConfig, load_config
    from rtd.index import build_index

    cfg = load_config(args.config, args.overrides, cls=IndexConfig)
    logging.getLogger("jobs.build_index").info("config: %s", cfg.model_dump_json())
    manifest = build_index(cfg)
    print(manifest.model_dump_json(include={"index_version", "fingerprint", "ntotal", "num_shards", "factory"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
