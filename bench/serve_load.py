"""Bounded loopback load test of the Serve search endpoint: p50/p99 latency, throughput, errors.

    python bench/serve_load.py                       # starts Ray + Serve on a synthetic gallery, batching on/off
    python bench/serve_load.py --url http://127.0.0.1:8000 --requests 2000 --concurrency 16   # existing server

Self-hosted mode builds a synthetic gallery (``--gallery`` random unit vectors, dim 64, tagged with the tiny test
CLIP's fingerprint), serves it with ``--shards`` GallerySearcher deployments, and measures the same request mix
with ``@serve.batch`` on and then off (switched live through the encoder's ``user_config``). Requests: half
text-only, a quarter composed with an embedding reference, a quarter composed with a small base64 PNG. Only
127.0.0.1 is contacted. Prints one JSON object per run.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

for _k, _v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}.items():
    os.environ.setdefault(_k, _v)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def _payloads(dim: int, n: int, seed: int = 0) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(buf, "PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    out = []
    for i in range(n):
        kind = i % 4
        if kind in (0, 1):
            out.append({"text": f"a photo of a thing number {i % 97}", "k": 10})
        elif kind == 2:
            out.append({"reference": {"embedding": rng.standard_normal(dim).round(4).tolist()},
                        "text": "make it red", "k": 10})
        else:
            out.append({"reference": {"image_base64": png}, "text": "on a white background", "k": 10})
    return out


def run_load(url: str, payloads: list[dict], concurrency: int, headers: dict | None = None) -> dict:
    """Send every payload to ``url/v1/search`` with ``concurrency`` client threads; summarise latencies."""
    import requests

    local = threading.local()
    lat: list[float] = []
    stages: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def one(p):
        s = getattr(local, "s", None) or requests.Session()
        local.s = s
        t = time.perf_counter()
        try:
            r = s.post(f"{url}/v1/search", json=p, headers=headers, timeout=60)
            ms = (time.perf_counter() - t) * 1000
            with lock:
                if r.status_code == 200:
                    lat.append(ms)
                    for k, v in r.json()["timings_ms"].items():
                        stages.setdefault(k, []).append(v)
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
        except Exception as e:  # noqa: BLE001 - counted, not fatal
            with lock:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, payloads))
    wall = time.perf_counter() - t0
    q = np.percentile(lat, [50, 90, 99]) if lat else [float("nan")] * 3
    return {"requests": len(payloads), "ok": len(lat), "errors": errors, "concurrency": concurrency,
            "wall_s": round(wall, 2), "rps": round(len(lat) / wall, 1), "p50_ms": round(float(q[0]), 1),
            "p90_ms": round(float(q[1]), 1), "p99_ms": round(float(q[2]), 1),
            "server_stage_p50_ms": {k: round(statistics.median(v), 2) for k, v in stages.items()}}


def _synthetic_index(out: Path, n: int, shards: int) -> Path:
    from rtd.index import GalleryTable, build_sharded_index
    from rtd.ray_adapters.embed import build_frozen_encoder
    from serve.demo import tiny_model_config

    enc = build_frozen_encoder(model=tiny_model_config(), init_seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, enc.embed_dim)).astype(np.float32)
    table = GalleryTable(ids=np.arange(n, dtype=np.int64) * 7 + 1, embeddings=x, norms=np.ones(n, np.float32),
                         metadata=[json.dumps({"path": f"synthetic/{i}.jpg"}) for i in range(n)])
    build_sharded_index(table, out, fingerprint=enc.fingerprint, factory="Flat", num_shards=shards,
                        gallery_kind="image")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="an already running server (default: start one here)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--gallery", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--port", type=int, default=8131)
    ap.add_argument("--modes", default="batched,unbatched", help="self-hosted: which encoder modes to measure")
    ap.add_argument("--token", default=None)
    args = ap.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None

    if args.url:
        print(json.dumps({"mode": "external", **run_load(args.url.rstrip("/"), _payloads(64, args.requests),
                                                         args.concurrency, headers)}))
        return 0

    import ray
    from ray import serve

    from serve.app import build_app
    from serve.demo import tiny_model_config

    tmp = Path(tempfile.mkdtemp(prefix="rtd_bench_"))
    t = time.perf_counter()
    index_dir = _synthetic_index(tmp / "index", args.gallery, args.shards)
    print(json.dumps({"built_index_s": round(time.perf_counter() - t, 1), "gallery": args.gallery,
                      "shards": args.shards}), flush=True)
    ray.init(num_cpus=4, object_store_memory=512 * 2**20, include_dashboard=False, log_to_driver=False)
    url = f"http://127.0.0.1:{args.port}"
    base = {"serve": {"index_dir": str(index_dir), "model": tiny_model_config().model_dump(mode="json"),
                      "auth_token_env": None, "verify_checksums": False}}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port},
                    logging_config={"enable_access_log": False})
        for mode in args.modes.split(","):
            enabled = mode == "batched"
            t = time.perf_counter()
            serve.run(build_app({**base, "encoder_user_config": {"batching_enabled": enabled}}), name="bench",
                      route_prefix="/", blocking=False)
            import requests

            while requests.get(f"{url}/healthz", timeout=10).status_code != 200:
                time.sleep(0.2)
            deploy_s = time.perf_counter() - t
            payloads = _payloads(64, args.requests)
            run_load(url, payloads[:64], args.concurrency)  # warm-up
            res = run_load(url, payloads, args.concurrency)
            print(json.dumps({"mode": mode, "deploy_s": round(deploy_s, 1), **res}), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
