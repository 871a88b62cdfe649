"""``rtd quickstart``: the whole pipeline on the embedded default, offline, on a laptop CPU.

1. LinCIR phi, text-only, on COCO captions with all-MiniLM-L6-v2 (Ray Train, 1 worker).
2. The projection baseline (frozen encoder + phi) on the CIRR text proxy (val).
3. RTD on the 700 InstructPix2Pix human triplets (Ray Train, 2 CPU workers, DDP).
4. RTD evaluated on the same split.
5. A caption-gallery index of the CIRR val captions (Ray Data batch inference + 2 FAISS shards).
6. With ``--serve``: the Ray Serve app on 127.0.0.1, one composed query over HTTP, then shut down.

It prints a before/after table and where every artifact is. This module is the orchestration; each stage calls the
same functions as the corresponding job (``jobs/train_phi.py``, ``jobs/train.py``, ``jobs/embed_gallery.py``,
``jobs/build_index.py``, ``rtd eval``); the optional Serve stage uses ``serve/sample.py``.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

KEYS = ["cirr_recall@1", "cirr_recall@5", "cirr_recall@10", "cirr_recall@50", "cirr_recall_subset@1"]


class _Stage:
    def __init__(self, n: int, total: int, title: str):
        self.n, self.total, self.title = n, total, title

    def __enter__(self):
        self.t0 = time.perf_counter()
        print(f"\n[{self.n}/{self.total}] {self.title} ...", flush=True)
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            print(f"[{self.n}/{self.total}] done in {time.perf_counter() - self.t0:.0f}s", flush=True)


def _gallery_jsonl(out: Path) -> Path:
    """The CIRR val caption gallery as plain JSONL (id = a stable int per image name, caption, name)."""
    from rtd.data.benchmarks.text_proxy import resolve_text_proxy_dir
    from rtd.index.build import stable_id

    src = resolve_text_proxy_dir(None) / "cirr_val.gallery.jsonl.gz"
    dst = out / "cirr_val_gallery.jsonl"
    with gzip.open(src, "rt") as f, open(dst, "w") as g:
        for line in f:
            r = json.loads(line)
            g.write(json.dumps({"id": stable_id(r["id"]), "caption": r["caption"], "name": r["id"]}) + "\n")
    return dst


def _sample_query(gallery: Path) -> tuple[int, str, str]:
    from rtd.data.benchmarks.text_proxy import resolve_text_proxy_dir
    from rtd.index.build import stable_id

    with gzip.open(resolve_text_proxy_dir(None) / "cirr_val.queries.jsonl.gz", "rt") as f:
        q = json.loads(f.readline())
    return stable_id(q["reference"]), q["reference_caption"], q["caption"]


def run_quickstart(out: Path, serve: bool = False, fast: bool = False) -> dict[str, Any]:
    """Run the pipeline into ``out``; returns the before/after metrics and artifact paths."""
    import torch

    from rtd.config import GalleryEmbedConfig, IndexConfig, load_config
    from rtd.eval.evaluate import evaluate_text_proxy
    from rtd.model.composed import build_query_encoder, load_query_encoder_from_checkpoint
    from rtd.ray_adapters.train import ensure_ray, run_training

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t_start = time.perf_counter()
    out = Path(out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    split = "cirr_val"
    max_q = 400 if fast else None
    phi_steps, rtd_steps = (30, 10) if fast else (200, 100)
    total = 6 if serve else 5
    ensure_ray(num_cpus=4)  # logical oversubscription of a 2-core machine (ENV.md): every actor gets a fraction
    artifacts: dict[str, str] = {}

    with _Stage(1, total, f"LinCIR phi on COCO captions, all-MiniLM-L6-v2, {phi_steps} steps (Ray Train)"):
        phi_cfg = load_config("phi/minilm_coco", [f"run.steps={phi_steps}", "run.log_every=50",
                                                  f"run.checkpoint_every={phi_steps}", f"run.storage_path={out}",
                                                  "run.name=phi"])
        phi_sum = run_training(phi_cfg)
        phi_pt = Path(phi_sum["checkpoint"]) / "phi.pt"
        artifacts["phi checkpoint"] = str(phi_pt)

    rtd_overrides = [f"projector.checkpoint={phi_pt}", f"run.steps={rtd_steps}", "run.log_every=10",
                     f"run.checkpoint_every={rtd_steps}", f"run.storage_path={out}", "run.name=rtd",
                     "validation.benchmark=none", "scaling.num_workers=2", "scaling.cpus_per_worker=0.5",
                     "data.batch_size=32"]
    rtd_cfg = load_config("train/minilm_ip2p", rtd_overrides)
    with _Stage(2, total, f"projection baseline on the CIRR text proxy ({split})"):
        base = build_query_encoder(rtd_cfg.model, rtd_cfg.projector, rtd_cfg.prompts)
        before = evaluate_text_proxy(base, split, max_queries=max_q)

    with _Stage(3, total, f"RTD on IP2P-700, {rtd_steps} steps, 2 CPU workers (Ray Train, DDP)"):
        rtd_sum = run_training(rtd_cfg)
        ckpt = rtd_sum["checkpoint"]
        artifacts["RTD checkpoint"] = str(ckpt)
        artifacts["RTD metrics / loss curve"] = f"{rtd_sum['run_dir']}/metrics.jsonl, loss_curve.png"

    with _Stage(4, total, "RTD on the CIRR text proxy"):
        enc = load_query_encoder_from_checkpoint(ckpt)
        after = evaluate_text_proxy(enc, split, max_queries=max_q)

    with _Stage(5, total, "caption-gallery index: Ray Data embedding + 2 FAISS shards"):
        from rtd.index.build import build_index
        from rtd.ray_adapters.embed import embed_gallery

        src = _gallery_jsonl(out)
        emb_dir, idx_dir = out / "gallery" / "embeddings", out / "gallery" / "index"
        embed_gallery(GalleryEmbedConfig(kind="caption", source=str(src), output=str(emb_dir),
                                         model=rtd_cfg.model, projector=rtd_cfg.projector, checkpoint=str(ckpt),
                                         batch_size=256, num_actors=1, cpus_per_actor=0.5))
        manifest = build_index(IndexConfig(embeddings=str(emb_dir), output=str(idx_dir), factory="Flat",
                                           num_shards=2))
        artifacts["gallery index"] = f"{idx_dir} ({sum(s.count for s in manifest.shards)} items, 2 shards)"

    answer = None
    if serve:
        with _Stage(6, total, "Ray Serve app on 127.0.0.1:8000 and one composed query"):
            # The Serve application lives in the app layer (serve/); imported only for this optional stage.
            from serve.sample import serve_sample_query

            ref_id, ref_caption, text = _sample_query(src)
            answer = serve_sample_query(idx_dir, Path(ckpt), ref_id, ref_caption, text)

    rows = {"projection baseline (frozen MiniLM + phi)": before, "+ RTD (IP2P-700, Ray Train)": after}
    table = _table(rows)
    summary = {"split": split, "max_queries": max_q, "before": before, "after": after, "artifacts": artifacts,
               "sample_answer": answer, "wall_s": round(time.perf_counter() - t_start, 1)}
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "quickstart.md").write_text(table)
    print("\n" + "=" * 100)
    print(f"CIRR text proxy ({split}{', first %d queries' % max_q if max_q else ''}), x100:\n")
    print(table)
    print("artifacts:")
    for k, v in {**artifacts, "summary": str(out / "quickstart.json")}.items():
        print(f"  {k:28s} {v}")
    print(f"total wall time: {summary['wall_s']:.0f}s")
    return summary


def _table(rows: dict[str, dict[str, float]]) -> str:
    head = "| model | " + " | ".join(k.replace("cirr_", "") for k in KEYS) + " |\n|---|" + "---|" * len(KEYS) + "\n"
    return head + "".join(
        f"| {name} | " + " | ".join(f"{m.get(k, float('nan')):.2f}" for k in KEYS) + " |\n" for name, m in rows.items()
    )
