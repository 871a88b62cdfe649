"""Sharded index build: manifest, checksums, memory-mapped load, stable ids, sharded == single index."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from rtd.index import (
    ChecksumError,
    GalleryTable,
    ManifestError,
    ShardedIndex,
    ShardSearcher,
    build_shard_index,
    build_sharded_index,
    read_gallery_parquet,
    read_manifest,
    stable_id,
    train_index,
    verify_checksums,
    write_gallery_parquet,
)

faiss.omp_set_num_threads(1)


def _table(n=600, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    ids = np.array([stable_id(f"img/{i:05d}.jpg") for i in range(n)], np.int64)
    return GalleryTable(ids=ids, embeddings=x, norms=np.ones(n, np.float32),
                        metadata=[json.dumps({"path": f"img/{i:05d}.jpg"}) for i in range(n)])


def test_stable_id_is_deterministic_nonnegative_int63():
    a, b = stable_id("x/1.jpg"), stable_id("x/2.jpg")
    assert a == stable_id("x/1.jpg") and a != b and 0 <= a < 2**63


def test_flat_shards_manifest_checksums_and_exact_search(tmp_path):
    t = _table()
    man = build_sharded_index(t, tmp_path, fingerprint="fp-test", factory="Flat", num_shards=3,
                              gallery_kind="image")
    assert read_manifest(tmp_path) == man
    assert man.ntotal == 600 and man.num_shards == 3 and man.dim == 16 and man.metric == "ip"
    assert sum(s.count for s in man.shards) == 600 and all(s.count > 0 for s in man.shards)
    assert man.index_version.startswith("v") and man.fingerprint == "fp-test"
    verify_checksums(tmp_path, man)

    idx = ShardedIndex(tmp_path, mmap=True, verify=True)
    xn = t.embeddings / np.linalg.norm(t.embeddings, axis=1, keepdims=True)
    q = xn[:5] + 0.01
    D, I = idx.search(q, 10)
    ref = build_shard_index(xn, t.ids, "Flat", "ip")
    Dr, Ir = ref.search(np.ascontiguousarray(q, np.float32), 10)
    np.testing.assert_allclose(D, Dr, atol=1e-5)
    np.testing.assert_array_equal(I, Ir)
    assert (I[:, 0] == t.ids[:5]).all()  # stable ids come back, not row numbers


def test_items_and_raw_vectors_are_looked_up_by_id(tmp_path):
    t = _table(n=50)
    t.norms[:] = 3.0
    build_sharded_index(t, tmp_path, fingerprint="fp", num_shards=2)
    idx = ShardedIndex(tmp_path)
    target = int(t.ids[7])
    hits = [s.get_items([target])[0] for s in idx.shards]
    assert [h for h in hits if h] == [{"path": "img/00007.jpg"}]
    vecs = [v for s in idx.shards for v in s.get_vectors([target]) if v is not None]
    # raw = unit vector * (stored norm * original norm)
    np.testing.assert_allclose(vecs[0], t.embeddings[7] * 3.0, rtol=1e-5)
    assert all(s.get_items([12345])[0] is None for s in idx.shards)


def test_ivf_shards_with_shared_quantizer_equal_the_single_ivf_index(tmp_path):
    t = _table(n=2000, d=16, seed=1)
    build_sharded_index(t, tmp_path, fingerprint="fp", factory="IVF16,Flat", num_shards=4,
                        train_sample=2000, search_defaults={"nprobe": 3})
    idx = ShardedIndex(tmp_path)
    assert all(s.search_params == {"nprobe": 3} for s in idx.shards)
    xn = t.embeddings / np.linalg.norm(t.embeddings, axis=1, keepdims=True)
    template = train_index(xn, "IVF16,Flat", "ip")
    single = build_shard_index(xn, t.ids, "IVF16,Flat", "ip", trained=template)
    faiss.extract_index_ivf(single).nprobe = 3
    q = np.ascontiguousarray(xn[:20] + 0.05, np.float32)
    D, I = idx.search(q, 8)
    Ds, Is = single.search(q, 8)
    np.testing.assert_allclose(D, Ds, atol=1e-5)
    np.testing.assert_array_equal(I, Is)


@pytest.mark.parametrize("factory", ["HNSW8", "IVF8,PQ4x4", "PQ4x4"])
def test_other_factories_build_and_mmap_load(tmp_path, factory):
    t = _table(n=400)
    man = build_sharded_index(t, tmp_path, fingerprint="fp", factory=factory, num_shards=2,
                              search_defaults={"nprobe": 8, "efSearch": 32})
    assert man.factory == factory
    idx = ShardedIndex(tmp_path, mmap=True)
    D, I = idx.search(np.ascontiguousarray(t.embeddings[:3]), 5)
    assert (I >= 0).all() and np.isin(I, t.ids).all()
    for s in idx.shards:
        s.health()


def test_tampered_shard_fails_checksum(tmp_path):
    man = build_sharded_index(_table(n=40), tmp_path, fingerprint="fp", num_shards=2)
    (tmp_path / man.shards[1].items_file).write_bytes(b"garbage")
    verify_checksums(tmp_path, man, [0])
    with pytest.raises(ChecksumError, match="shard 1"):
        verify_checksums(tmp_path, man)
    with pytest.raises(ChecksumError):
        ShardSearcher(tmp_path, 1, verify=True)


def test_missing_manifest_and_unknown_shard(tmp_path):
    with pytest.raises(ManifestError, match="manifest.json"):
        read_manifest(tmp_path)
    build_sharded_index(_table(n=10), tmp_path, fingerprint="fp", num_shards=1)
    with pytest.raises(ManifestError, match="shard 3"):
        ShardSearcher(tmp_path, 3)


def test_build_errors_name_the_field(tmp_path):
    t = _table(n=100)
    with pytest.raises(ValueError, match="factory"):
        build_sharded_index(t, tmp_path, fingerprint="fp", factory="NotAnIndex")
    with pytest.raises(ValueError, match="train_sample"):
        build_sharded_index(t, tmp_path, fingerprint="fp", factory="IVF64,Flat", train_sample=10)
    with pytest.raises(ValueError, match="metric"):
        build_sharded_index(t, tmp_path, fingerprint="fp", metric="cos")  # type: ignore[arg-type]
    t.ids[1] = t.ids[0]
    with pytest.raises(ValueError, match="duplicate"):
        build_sharded_index(t, tmp_path, fingerprint="fp")


def test_gallery_parquet_roundtrip(tmp_path):
    t = _table(n=30, d=8)
    write_gallery_parquet(tmp_path / "part-0.parquet", t)
    back = read_gallery_parquet(tmp_path)
    np.testing.assert_array_equal(back.ids, t.ids)
    np.testing.assert_allclose(back.embeddings, t.embeddings)
    assert back.metadata == t.metadata
    with pytest.raises(FileNotFoundError, match="embeddings"):
        read_gallery_parquet(tmp_path / "nope")
