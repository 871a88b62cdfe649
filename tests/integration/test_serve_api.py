"""The HTTP contract without Ray: the FastAPI app over the in-process backend (fast; runs in every CI job).

Limits (body, pixels incl. decompression bombs, text, k), auth, JSON errors naming the field, path safety of the
image route, fingerprint refusal, and equality of the served ranking with a direct exact search.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    from serve.demo import make_demo_index

    root = tmp_path_factory.mktemp("api_gallery")
    return root, make_demo_index(root, n=24, num_shards=3)


@pytest.fixture(scope="module")
def backend(gallery):
    import faiss

    from rtd.config import ServeConfig
    from serve.core import LocalBackend
    from serve.demo import tiny_model_config

    faiss.omp_set_num_threads(1)
    root, index_dir = gallery
    cfg = ServeConfig(index_dir=str(index_dir), model=tiny_model_config(), image_root=str(root / "images"))
    return LocalBackend(cfg)


def _client(backend, **limits_and_auth):
    from fastapi.testclient import TestClient

    from serve.api import create_api

    limits = {k: v for k, v in limits_and_auth.items() if k != "auth_token"}
    cfg = backend.cfg.model_copy(update={"limits": backend.cfg.limits.model_copy(update=limits),
                                         "auth_token": limits_and_auth.get("auth_token"), "auth_token_env": None})
    return TestClient(create_api(backend, cfg))


def _png_header_only(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression-bomb shape)."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_served_ranking_equals_direct_exact_search(backend):
    from serve.core import EncodeItem, encode_items

    c = _client(backend)
    r = c.post("/v1/search", json={"text": "a purple bar", "k": 24})
    assert r.status_code == 200
    q = encode_items(backend.encoder, [EncodeItem(text="a purple bar")])[0][None]
    D, I = backend.index.search(q, 24)
    assert [h["id"] for h in r.json()["results"]] == I[0].tolist()
    np.testing.assert_allclose([h["score"] for h in r.json()["results"]], D[0], atol=1e-5)


def test_decompression_bomb_and_pixel_limit_are_413(backend):
    c = _client(backend, max_image_pixels=100 * 100)
    bomb = base64.b64encode(_png_header_only(50_000, 50_000)).decode()
    r = c.post("/v1/search", json={"reference": {"image_base64": bomb}, "text": "x"})
    assert r.status_code == 413 and r.json()["error"]["field"] == "reference.image_base64"
    r = c.post("/v1/search/upload", files={"image": ("b.png", _png_header_only(50_000, 50_000), "image/png")})
    assert r.status_code == 413 and r.json()["error"]["field"] == "image"


def test_body_limit_applies_to_chunked_uploads_too(backend):
    c = _client(backend, max_body_bytes=4096)

    def chunks():
        for _ in range(10):
            yield b" " * 1024

    r = c.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == {
        "code": "too_large", "message": "request body exceeds max_body_bytes=4096", "field": "body"}


def test_bearer_token(backend):
    c = _client(backend, auth_token="t0k")
    assert c.get("/v1/info").status_code == 401
    assert c.get("/v1/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/v1/info", headers={"Authorization": "Bearer t0k"}).status_code == 200
    assert c.get("/healthz").status_code == 200  # probes need no token


def test_image_route_serves_only_gallery_files(backend, gallery):
    c = _client(backend)
    item = c.get("/v1/items?limit=1").json()["items"][0]
    assert item["has_image"] is True
    r = c.get(f"/v1/items/{item['id_str']}/image")
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    assert c.get("/v1/items/1/image").status_code == 404


def test_multipart_errors_name_the_field(backend):
    c = _client(backend)
    assert c.post("/v1/search/upload", data={"k": "3"}).json()["error"]["field"] == "text"
    r = c.post("/v1/search/upload", files={"image": ("x.png", b"", "image/png")}, data={"text": "a"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "image"
    r = c.post("/v1/search/upload", files={"image": ("x.png", b"garbage", "image/png")}, data={"text": "a"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "image"
    r = c.post("/v1/search/upload", data={"text": "a", "k": "many"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "k"


def test_nonfinite_or_zero_embeddings_are_rejected(backend):
    c = _client(backend)
    r = c.post("/v1/search", json={"reference": {"embedding": [0.0] * 64}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "reference.embedding"
    r = c.post("/v1/search", content=b'{"reference": {"embedding": [NaN]}}', headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_encoder_with_another_fingerprint_is_refused(gallery):
    from rtd.config import ServeConfig
    from serve.core import LocalBackend
    from serve.demo import tiny_model_config

    _, index_dir = gallery
    cfg = ServeConfig(index_dir=str(index_dir), model=tiny_model_config(), init_seed=123)
    with pytest.raises(RuntimeError, match="fingerprint"):
        LocalBackend(cfg)
