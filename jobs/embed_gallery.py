"""Embed a gallery (images with the frozen image tower, or captions with the frozen text tower) with Ray Data.

Submit to a running cluster (from the repository root):

    ray job submit --address http://127.0.0.1:8265 --runtime-env runtime_env.yaml -- \
        python jobs/embed_gallery.py --config gallery/tiny_images source=/data/gallery/images \
        output=/data/gallery/embeddings

Locally, without a cluster (small galleries, tests): add ``--local``. ``key=value`` arguments override the config
(``num_actors=4 gpus_per_actor=1 batch_size=256`` on a GPU node). Output: Parquet of
(id, embedding, norm, metadata, fingerprint) plus ``_gallery.json``; next step: ``jobs/build_index.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="gallery/tiny_images", help="preset (gallery/<name>) or YAML path")
    parser.add_argument("--local", action="store_true", help="embed in this process, without Ray")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from rtd.config import GalleryEmbedConfig, load_config
    from rtd.ray_adapters.embed import embed_gallery, embed_gallery_local

    cfg = load_config(args.config, args.overrides, cls=GalleryEmbedConfig)
    logging.getLogger("jobs.embed_gallery").info("config: %s", cfg.model_dump_json())
    info = (embed_gallery_local if args.local else embed_gallery)(cfg)
    print(json.dumps({k: v for k, v in info.items() if k != "config"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
