"""Serve end to end over HTTP on loopback: tiny CLIP + a generated 2-shard gallery.

One ``serve.run`` for the whole API (each costs ~10-15 s here), a second one that only changes the encoder's
``user_config`` to prove a text-checkpoint swap is applied live without touching the index.
"""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytestmark = pytest.mark.ray

PORT = 8123
URL = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from serve.demo import make_demo_index

    root = tmp_path_factory.mktemp("serve_demo")
    return make_demo_index(root, n=48, num_shards=2)


@pytest.fixture(scope="module")
def swapped_checkpoint(tmp_path_factory):
    """A 'trained' text tower for the tiny model: the frozen tower with perturbed weights, saved like training."""
    import torch

    from rtd.config import TrainConfig
    from rtd.model.checkpoint import save_checkpoint
    from rtd.ray_adapters.embed import build_frozen_encoder
    from serve.demo import tiny_model_config

    enc = build_frozen_encoder(model=tiny_model_config(), init_seed=0)
    tower = enc.bundle.trainable_copy()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("ckpt") / "checkpoint_000001"
    save_checkpoint(out, tower, TrainConfig(model=tiny_model_config()))
    return out


def _png(color=(200, 30, 30), size=(48, 40)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _wait_healthy(requests, timeout=90.0):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = requests.get(f"{URL}/healthz", timeout=5)
            if last.status_code == 200:
                return last.json()
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"server not healthy after {timeout}s: {getattr(last, 'text', None)}")


def test_serve_http_end_to_end_and_live_checkpoint_swap(ray_cluster, demo, swapped_checkpoint):
    import requests
    from ray import serve

    from serve.app import build_app
    from serve.demo import tiny_model_config

    args = {"serve": {"index_dir": str(demo), "model": tiny_model_config().model_dump(mode="json"),
                      "auth_token": "s3cret", "limits": {"max_k": 20, "max_image_pixels": 200_000}}}
    auth = {"Authorization": "Bearer s3cret"}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT}, logging_config={"enable_access_log": False})
        serve.run(build_app(args), name="rtd_test", route_prefix="/", blocking=False)
        health = _wait_healthy(requests)
        assert health["ntotal"] == 48 and len(health["shards"]) == 2

        info = requests.get(f"{URL}/v1/info", headers=auth, timeout=10).json()
        assert info["checkpoint"] is None and info["embed_dim"] == 64 and info["index"]["num_shards"] == 2
        assert info["fingerprint"] == info["index"]["fingerprint"] and info["auth"] is True

        # auth
        r = requests.post(f"{URL}/v1/search", json={"text": "a red circle"}, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["field"] == "authorization"

        # composed query, base64 reference
        b64 = base64.b64encode(_png()).decode()
        r = requests.post(f"{URL}/v1/search", headers=auth, timeout=30,
                          json={"reference": {"image_base64": b64}, "text": "make it blue", "k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["mode"] == "composed" and len(body["results"]) == 5
        assert {"decode", "encode", "search", "merge", "total"} <= set(body["timings_ms"])
        scores = [h["score"] for h in body["results"]]
        assert scores == sorted(scores, reverse=True) and {h["shard"] for h in body["results"]} <= {0, 1}
        assert all("path" in h["metadata"] for h in body["results"])
        composed_before = [h["id"] for h in body["results"]]

        # the same query, multipart upload
        r = requests.post(f"{URL}/v1/search/upload", headers=auth, timeout=30,
                          files={"image": ("ref.png", _png(), "image/png")}, data={"text": "make it blue", "k": "5"})
        assert r.status_code == 200, r.text
        assert [h["id"] for h in r.json()["results"]] == composed_before

        # gallery id reference: image-only is exact self-retrieval, the reference itself is excluded
        items = requests.get(f"{URL}/v1/items?limit=3", headers=auth, timeout=10).json()["items"]
        gid = items[0]["id"]
        r = requests.post(f"{URL}/v1/search", headers=auth, timeout=30,
                          json={"reference": {"gallery_id": gid}, "k": 3, "exclude_reference": False})
        assert r.json()["mode"] == "image" and r.json()["results"][0]["id"] == gid
        r = requests.post(f"{URL}/v1/search", headers=auth, timeout=30,
                          json={"reference": {"gallery_id": str(gid)}, "text": "bigger", "k": 3})
        assert r.status_code == 200 and gid not in [h["id"] for h in r.json()["results"]]
        item = requests.get(f"{URL}/v1/items/{gid}", headers=auth, timeout=10).json()
        assert item["id_str"] == str(gid) and item["metadata"]["path"].endswith(".png")

        # text-only and embedding modes
        r = requests.post(f"{URL}/v1/search", headers=auth, json={"text": "a green square", "k": 2}, timeout=30)
        assert r.json()["mode"] == "text" and len(r.json()["results"]) == 2
        emb = np.random.default_rng(0).standard_normal(64).tolist()
        r = requests.post(f"{URL}/v1/search", headers=auth, json={"reference": {"embedding": emb}, "text": "x"},
                          timeout=30)
        assert r.status_code == 200 and r.json()["mode"] == "composed"

        # every bad input is a 4xx JSON error naming the field
        bad = [
            ({"text": "x", "k": 21}, 422, "k"),
            ({"text": "x" * 600}, 422, "text"),
            ({"k": 3}, 422, "text"),
            ({"reference": {"embedding": [1.0, 2.0]}}, 422, "reference.embedding"),
            ({"reference": {"gallery_id": 1}}, 404, "reference.gallery_id"),
            ({"reference": {"image_base64": "%%%"}}, 422, "reference.image_base64"),
            ({"reference": {"image_base64": base64.b64encode(_png(size=(1000, 1000))).decode()}}, 413,
             "reference.image_base64"),
            ({"reference": {"image_base64": b64, "gallery_id": 1}}, 422, "reference"),
            ({"text": "x", "unknown": 1}, 422, "unknown"),
        ]
        for payload, status, field in bad:
            r = requests.post(f"{URL}/v1/search", headers=auth, json=payload, timeout=30)
            assert (r.status_code, r.json()["error"]["field"]) == (status, field), (payload, r.text)
        r = requests.post(f"{URL}/v1/search", headers={**auth, "Content-Type": "application/json"},
                          data=b"{" + b" " * (9 * 2**20) + b"}", timeout=30)
        assert r.status_code == 413 and r.json()["error"]["field"] == "body"
        assert requests.get(f"{URL}/v1/items/7", headers=auth, timeout=10).status_code == 404

        # concurrent queries are grouped by the ingress batcher and answer exactly what they answer alone
        def one(i):
            return requests.post(f"{URL}/v1/search", headers=auth, json={"text": f"query {i}", "k": 3}, timeout=60)

        def top(r):
            return [h["id"] for h in r.json()["results"]]

        alone = {i: top(one(i)) for i in range(16)}
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(one, list(range(16)) * 3))
        assert all(r.status_code == 200 for r in together)
        assert [top(r) for r in together] == [alone[i] for i in list(range(16)) * 3]
        assert max(r.json()["batch_size"] for r in together) > 1

        # the web page
        page = requests.get(f"{URL}/", timeout=10)
        assert page.status_code == 200 and "/v1/search" in page.text

        # live text-checkpoint swap: only the encoder's user_config changes
        serve.run(build_app({**args, "encoder_user_config": {"checkpoint": str(swapped_checkpoint)}}),
                  name="rtd_test", route_prefix="/", blocking=False)
        deadline = time.time() + 90
        while time.time() < deadline:
            info2 = requests.get(f"{URL}/v1/info", headers=auth, timeout=10).json()
            if info2["checkpoint"]:
                break
            time.sleep(0.5)
        assert info2["checkpoint"] == str(swapped_checkpoint)
        assert info2["index"]["index_version"] == info["index"]["index_version"]  # no re-indexing
        r = requests.post(f"{URL}/v1/search", headers=auth, timeout=30,
                          json={"reference": {"image_base64": b64}, "text": "make it blue", "k": 5})
        assert r.json()["checkpoint"] == str(swapped_checkpoint)
        after = r.json()["results"]
        assert [h["score"] for h in after] != scores  # a different text tower answers
        assert _wait_healthy(requests)["ntotal"] == 48
    finally:
        serve.shutdown()
