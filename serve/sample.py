"""One composed query against a freshly started Serve app (used by ``rtd quickstart --serve``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def serve_sample_query(index_dir: Path, ckpt: Path, ref_id: int, ref_caption: str, text: str) -> dict[str, Any]:
    """Start the app on 127.0.0.1:8000 over ``index_dir`` with text checkpoint ``ckpt``, run one composed query
    (reference = a gallery item, plus a modification text) over HTTP, print the top 5, shut Serve down."""
    import urllib.request

    from ray import serve

    from serve.app import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": 8000}, logging_config={"enable_access_log": False})
    try:
        serve.run(build_app({"serve": {"index_dir": str(index_dir), "checkpoint": str(ckpt)}}), name="rtd",
                  route_prefix="/", blocking=False)
        body = json.dumps({"reference": {"gallery_id": ref_id}, "text": text, "k": 5}).encode()
        deadline = time.time() + 120
        while True:
            try:
                req = urllib.request.Request("http://127.0.0.1:8000/v1/search", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as r:
                    res = json.loads(r.read())
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(2)
        print(f"  reference caption: {ref_caption!r}\n  modification:      {text!r}")
        for hit in res["results"]:
            print(f"  #{hit['rank']} {hit['score']:.3f} {hit['metadata'].get('caption')!r}")
        print(f"  timings (ms): {res['timings_ms']}")
        return {"reference": ref_caption, "text": text, "results": res["results"], "timings_ms": res["timings_ms"]}
    finally:
        serve.shutdown()
