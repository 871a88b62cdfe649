"""Serve benchmarks on loopback: HTTP overhead vs in-process work, and ``@serve.batch`` on vs off.

    python bench/serve_load.py                       # both benches, tiny CLIP, 100k x 64 gallery, 2 shards
    python bench/serve_load.py --model minilm        # the real MiniLM text encoder over a caption gallery
    python bench/serve_load.py --url http://127.0.0.1:8000 --requests 2000 --concurrency 16   # existing server

Self-hosted mode builds a synthetic gallery (``--gallery`` random unit vectors tagged with the encoder's
fingerprint), serves it with ``--shards`` GallerySearcher deployments and measures, side by side in one run:

* serve_overhead: the same requests one at a time (concurrency 1) over HTTP vs in-process (decode + encode +
  search + merge through :class:`serve.core.LocalBackend`, the same encoder and index): p50 and p99 against
  the goal ``<= 1.3x + 5 ms``;
* serve_batching: throughput at ``--concurrency`` (32) with ``ServeConfig.batching.enabled`` on vs off (the
  application is redeployed with the setting), against the goal ``>= 3x``.

Requests (tiny CLIP): half text-only, a quarter composed with an embedding reference, a quarter composed with a
small base64 PNG. MiniLM has no image tower (caption gallery): half text-only, half composed with an embedding.
Only 127.0.0.1 is contacted. Prints one JSON object per measurement, then the ratios and verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
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
               "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def _payloads(dim: int, n: int, seed: int = 0, images: bool = True) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(buf, "PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    out = []
    for i in range(n):
        kind = i % 4
        if not images and kind == 3:
            kind = 2
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
    batch_sizes: list[int] = []
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
                    body = r.json()
                    batch_sizes.append(int(body.get("batch_size", 1)))
                    for k, v in body["timings_ms"].items():
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
            "server_stage_p50_ms": {k: round(statistics.median(v), 2) for k, v in stages.items()},
            "mean_batch_size": round(float(np.mean(batch_sizes)), 2) if batch_sizes else None}


def get_latencies(url: str, n: int = 200) -> dict:
    """p50/p99 of ``GET url`` one at a time (the floor of a Serve route that does no or one internal call)."""
    import requests

    s = requests.Session()
    for _ in range(10):
        s.get(url, timeout=30)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        r = s.get(url, timeout=30)
        lat.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    q = np.percentile(lat, [50, 99])
    return {"requests": n, "p50_ms": round(float(q[0]), 2), "p99_ms": round(float(q[1]), 2)}


def _model(name: str):
    from rtd.config import ModelConfig
    from serve.demo import tiny_model_config

    if name == "tiny":
        return tiny_model_config()
    return ModelConfig(backend="hf_text", name="minilm", pretrained=None, load_image_tower=False)


def _synthetic_index(out: Path, n: int, shards: int, model) -> tuple[Path, str]:
    from rtd.index import GalleryTable, build_sharded_index
    from rtd.ray_adapters.embed import build_frozen_encoder

    enc = build_frozen_encoder(model=model, init_seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, enc.embed_dim)).astype(np.float32)
    kind = "image" if model.load_image_tower else "caption"
    table = GalleryTable(ids=np.arange(n, dtype=np.int64) * 7 + 1, embeddings=x, norms=np.ones(n, np.float32),
                         metadata=[json.dumps({"path": f"synthetic/{i}.jpg"}) for i in range(n)])
    build_sharded_index(table, out, fingerprint=enc.fingerprint, factory="Flat", num_shards=shards,
                        gallery_kind=kind)
    return out, kind


def inprocess_latencies(cfg, payloads: list[dict]) -> dict:
    """The server-side work of each request without HTTP or Serve: decode, encode, search every shard, merge."""
    from rtd.index import merge_topk
    from serve.core import EncodeItem, LocalBackend, decode_base64, decode_image

    backend = LocalBackend(cfg)
    lim = cfg.limits

    async def one(p: dict) -> None:
        ref = p.get("reference") or {}
        item = EncodeItem(text=p.get("text"))
        if "image_base64" in ref:
            raw = decode_base64(ref["image_base64"], "image", lim.max_image_bytes)
            item.image = decode_image(raw, "image", lim.max_image_pixels, lim.max_image_bytes)
        if "embedding" in ref:
            item.ref = np.asarray(ref["embedding"], np.float32)
        found = await backend.encode_and_search(item, p["k"])
        merge_topk([(d, i) for d, i, _ in found.per_shard], p["k"], backend.manifest.metric)

    lat = []
    for p in payloads[:16]:
        asyncio.run(one(p))  # warm-up
    for p in payloads:
        t = time.perf_counter()
        asyncio.run(one(p))
        lat.append((time.perf_counter() - t) * 1000)
    q = np.percentile(lat, [50, 99])
    return {"requests": len(lat), "p50_ms": round(float(q[0]), 2), "p99_ms": round(float(q[1]), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="an already running server (default: start one here)")
    ap.add_argument("--model", choices=["tiny", "minilm"], default="tiny")
    ap.add_argument("--requests", type=int, default=1000, help="requests per throughput run")
    ap.add_argument("--overhead-requests", type=int, default=300, help="requests per latency run (concurrency 1)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--gallery", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--port", type=int, default=8131)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-in-flight", type=int, default=1, help="ingress batches processed concurrently")
    ap.add_argument("--batch-wait-ms", type=float, default=None, help="default: the ServeConfig default")
    ap.add_argument("--benches", default="overhead,batching")
    ap.add_argument("--token", default=None)
    args = ap.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    benches = set(args.benches.split(","))

    if args.url:
        print(json.dumps({"mode": "external", **run_load(args.url.rstrip("/"), _payloads(64, args.requests),
                                                         args.concurrency, headers)}))
        return 0

    import ray
    import requests
    from ray import serve

    from serve.app import build_app, load_serve_config

    model = _model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="rtd_bench_"))
    t = time.perf_counter()
    index_dir, kind = _synthetic_index(tmp / "index", args.gallery, args.shards, model)
    dim = json.loads((index_dir / "manifest.json").read_text())["dim"]
    print(json.dumps({"built_index_s": round(time.perf_counter() - t, 1), "gallery": args.gallery, "dim": dim,
                      "shards": args.shards, "model": args.model}), flush=True)
    payloads = _payloads(dim, max(args.requests, args.overhead_requests), images=kind == "image")
    batching = {"max_batch_size": args.max_batch_size, "max_in_flight": args.max_in_flight}
    if args.batch_wait_ms is not None:
        batching["batch_wait_timeout_s"] = args.batch_wait_ms / 1000
    base = {"index_dir": str(index_dir), "model": model.model_dump(mode="json"), "auth_token_env": None,
            "verify_checksums": False, "batching": batching}
    results: dict[str, dict] = {}
    if "overhead" in benches:
        cfg = load_serve_config({"serve": base})
        results["inprocess"] = inprocess_latencies(cfg, payloads[:args.overhead_requests])
        print(json.dumps({"mode": "in-process", **results["inprocess"]}), flush=True)

    ray.init(num_cpus=4, object_store_memory=512 * 2**20, include_dashboard=False, log_to_driver=False)
    url = f"http://127.0.0.1:{args.port}"
    runs = [("overhead", True, 1, args.overhead_requests)] if "overhead" in benches else []
    if "batching" in benches:
        runs += [("batched", True, args.concurrency, args.requests), ("unbatched", False, args.concurrency,
                                                                      args.requests)]
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port},
                    logging_config={"enable_access_log": False})
        deployed = None
        for name, enabled, conc, n in runs:
            if deployed != enabled:
                t = time.perf_counter()
                serve.run(build_app({"serve": {**base, "batching": {**batching, "enabled": enabled}}}),
                          name="bench", route_prefix="/", blocking=False)
                while requests.get(f"{url}/healthz", timeout=10).status_code != 200:
                    time.sleep(0.2)
                print(json.dumps({"deployed_batching": enabled, "deploy_s": round(time.perf_counter() - t, 1)}),
                      flush=True)
                deployed = enabled
                run_load(url, payloads[:64], conc)  # warm-up
            res = run_load(url, payloads[:n], conc)
            results[name] = res
            print(json.dumps({"mode": name, "batching": enabled, **res}), flush=True)
            if name == "overhead":  # what Serve itself costs here: HTTP -> proxy -> ingress (+ one handle call)
                results["floor"] = get_latencies(f"{url}/")
                results["one_hop"] = get_latencies(f"{url}/v1/info")
                print(json.dumps({"mode": "floor: GET / (proxy + ingress, no internal call)", **results["floor"]}))
                print(json.dumps({"mode": "GET /v1/info (+ one encoder handle call)", **results["one_hop"]}))
    finally:
        serve.shutdown()
        ray.shutdown()

    print()
    if "overhead" in results:
        ip, h = results["inprocess"], results["overhead"]
        for q in ("p50", "p99"):
            limit = 1.3 * ip[f"{q}_ms"] + 5
            ok = h[f"{q}_ms"] <= limit
            print(f"serve_overhead {q}: HTTP {h[f'{q}_ms']:.1f} ms vs in-process {ip[f'{q}_ms']:.1f} ms = "
                  f"{h[f'{q}_ms'] / ip[f'{q}_ms']:.2f}x; goal <= 1.3x + 5 ms = {limit:.1f} ms -> "
                  f"{'MET' if ok else 'NOT MET'}")
        f, o = results["floor"], results["one_hop"]
        print(f"  Serve floor on this machine: GET / p50 {f['p50_ms']:.1f} ms (HTTP + proxy + ingress), GET /v1/info "
              f"p50 {o['p50_ms']:.1f} ms (+ one handle call); a search makes 1 + {args.shards} handle calls "
              f"(encoder, then the shards concurrently)")
    if "batched" in results:
        on, off = results["batched"]["rps"], results["unbatched"]["rps"]
        print(f"serve_batching: {on:.1f} vs {off:.1f} requests/s at concurrency {args.concurrency} = "
              f"{on / off:.2f}x; goal >= 3x -> {'MET' if on >= 3 * off else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
