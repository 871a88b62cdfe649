"""Gallery pipeline on Ray: jobs/embed_gallery (Ray Data actor pool) -> jobs/build_index -> search.

The Ray Data path must produce the same ids and embeddings as the in-process path (same callable).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.ray


def test_embed_gallery_with_ray_data_then_build_index(ray_cluster, tmp_path):
    import faiss

    from jobs.build_index import main as build_main
    from jobs.embed_gallery import main as embed_main
    from rtd.index import ShardedIndex, read_gallery_parquet, read_manifest
    from serve.demo import tiny_model_config, write_images

    faiss.omp_set_num_threads(1)
    write_images(tmp_path / "images", 20)
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image")
    model = tiny_model_config()
    common = [f"source={tmp_path / 'images'}", f"model.model_config_dir={model.model_config_dir}",
              "batch_size=8", "num_actors=1", "cpus_per_actor=0.5"]
    assert embed_main(["--config", "gallery/tiny_images", f"output={tmp_path / 'emb_ray'}", *common]) == 0
    assert embed_main(["--config", "gallery/tiny_images", "--local", f"output={tmp_path / 'emb_local'}",
                       *common]) == 0

    ray_t, local_t = read_gallery_parquet(tmp_path / "emb_ray"), read_gallery_parquet(tmp_path / "emb_local")
    assert len(ray_t.ids) == 20  # the broken file is dropped, not fatal
    order = np.argsort(ray_t.ids)
    lorder = np.argsort(local_t.ids)
    np.testing.assert_array_equal(ray_t.ids[order], local_t.ids[lorder])
    np.testing.assert_allclose(ray_t.embeddings[order], local_t.embeddings[lorder], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ray_t.embeddings, axis=1), 1.0, atol=1e-5)
    side = json.loads((tmp_path / "emb_ray" / "_gallery.json").read_text())
    assert side["rows"] == 20 and side["fingerprint"] == next(iter(ray_t.fingerprints))

    assert build_main(["--config", "index/flat", f"embeddings={tmp_path / 'emb_ray'}",
                       f"output={tmp_path / 'index'}", "num_shards=3"]) == 0
    man = read_manifest(tmp_path / "index")
    assert man.ntotal == 20 and man.fingerprint == side["fingerprint"] and man.gallery_kind == "image"
    idx = ShardedIndex(tmp_path / "index", verify=True)
    D, I = idx.search(ray_t.embeddings[:4], 1)
    np.testing.assert_array_equal(I[:, 0], ray_t.ids[:4])


def test_caption_gallery_local(tmp_path):
    """Text-proxy gallery: captions embedded with the frozen text tower (no Ray needed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rtd.config import GalleryEmbedConfig
    from rtd.index import read_gallery_parquet
    from rtd.ray_adapters.embed import embed_gallery_local
    from serve.demo import tiny_model_config

    pq.write_table(pa.table({"id": [5, 9, 11], "caption": ["a red car", "a dog on grass", "two cats"],
                             "split": ["val"] * 3}), tmp_path / "captions.parquet")
    info = embed_gallery_local(GalleryEmbedConfig(kind="caption", source=str(tmp_path / "captions.parquet"),
                                                  output=str(tmp_path / "emb"), model=tiny_model_config()))
    t = read_gallery_parquet(tmp_path / "emb")
    assert info["kind"] == "caption" and t.ids.tolist() == [5, 9, 11]
    assert json.loads(t.metadata[1]) == {"caption": "a dog on grass", "split": "val"}
