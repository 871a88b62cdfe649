"""Ray Train + Ray Data vs the plain-PyTorch loop: same model, batch, steps and data.

    source scripts/env.sh
    python bench/ray_overhead.py --model tiny --steps 40 --batch-size 16
    python bench/ray_overhead.py --model minilm --steps 30 --batch-size 16
    python bench/ray_overhead.py --model tiny --steps 1500 --read-ahead 0 16   # read-ahead off vs on, one run

Prints, for each, the steady-state throughput measured on the training loop's wall clock between the first
report and the last (``train/elapsed_s``: everything inside the loop counts, data waits and ``ray.train.report``
included; start-up, the frozen-embedding cache and the first window's warm-up do not), the in-window step
throughput, the end-to-end wall time, and the ratio Ray / plain against the goal (>= 0.90). The Ray run uses
1 worker (the same compute per step as the plain loop); ``--workers 2`` adds a DDP run (on a 2-core box it cannot
be faster, ENV.md 0).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

MODELS = {
    "tiny": {"backend": "open_clip", "name": "rtd-tiny-clip", "pretrained": None},
    "minilm": {"backend": "hf_text", "name": "minilm", "context_length": 64},
}
DATA = "data/text_proxy/ip2p.triplets.jsonl.gz"


def _cfg(model: str, steps: int, batch: int, workers: int, storage: Path, name: str, read_ahead: int | None = None):
    from rtd.config import TrainConfig, validate_config

    data = {"paths": [str(Path(DATA).resolve())], "batch_size": batch, "cache_dir": str(storage / name / "cache")}
    if read_ahead is not None:
        data["read_ahead_batches"] = read_ahead
    return validate_config(TrainConfig, {
        "model": MODELS[model], "projector": {"kind": "phi"}, "data": data,
        "run": {"name": name, "storage_path": str(storage), "steps": steps, "log_every": 5,
                "checkpoint_every": steps},
        "scaling": {"num_workers": workers, "cpus_per_worker": 0.5},
    })


def _steady(rows: list[dict], key: str = "train/samples_per_s") -> float:
    vals = [r[key] for r in rows[1:] if key in r] or [r[key] for r in rows if key in r]
    return statistics.median(vals)


def _loop_throughput(rows: list[dict], batch: int, workers: int) -> float:
    """Samples/s on the loop's wall clock from the first report to the last (all ranks together)."""
    a, b = rows[0], rows[-1]
    return (b["step"] - a["step"]) * batch * workers / (b["train/elapsed_s"] - a["train/elapsed_s"])


def plain(model: str, steps: int, batch: int, storage: Path) -> dict:
    from rtd.model.backends import MODEL_INIT_SEED
    from rtd.ray_adapters.cache import build_bundle
    from rtd.train.loop import RunContext, fit

    cfg = _cfg(model, steps, batch, 1, storage, "plain")
    t0 = time.perf_counter()
    bundle = build_bundle(cfg.model, cfg.prompts.placeholder, MODEL_INIT_SEED)
    fit(cfg, RunContext(bundle=bundle, run_dir=storage / "plain"))
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (storage / "plain" / "metrics.jsonl").read_text().splitlines()]
    return {"samples_per_s": _loop_throughput(rows, batch, 1), "window_samples_per_s": _steady(rows),
            "wall_s": wall, "reports": len(rows)}


def on_ray(model: str, steps: int, batch: int, workers: int, storage: Path, read_ahead: int | None) -> dict:
    from rtd.ray_adapters.train import run_training

    name = f"ray{workers}" + ("" if read_ahead is None else f"_ra{read_ahead}")
    cfg = _cfg(model, steps, batch, workers, storage, name, read_ahead)
    t0 = time.perf_counter()
    run_training(cfg)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (storage / name / "metrics.jsonl").read_text().splitlines()]
    return {"samples_per_s": _loop_throughput(rows, batch, workers),
            "window_samples_per_s": _steady(rows, "train/samples_per_s_total"), "wall_s": wall, "reports": len(rows),
            "data_wait_frac": statistics.median(r["train/data_wait_frac"] for r in rows[1:] or rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="*", default=[1])
    p.add_argument("--read-ahead", type=int, nargs="*", default=[None],
                   help="data.read_ahead_batches for the Ray runs (several values: one Ray run each; 0 = off)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray
    import torch

    torch.set_num_threads(1)
    storage = Path(tempfile.mkdtemp(prefix="rtd-bench-ray-"))
    base = plain(args.model, args.steps, args.batch_size, storage)
    ray.init(num_cpus=2, object_store_memory=512 * 2**20, log_to_driver=False)
    print(f"model={args.model} steps={args.steps} batch={args.batch_size} data={DATA}")
    print(f"plain fit      : {base['samples_per_s']:8.1f} samples/s steady (loop wall clock) | "
          f"{base['window_samples_per_s']:8.1f} in-window | wall {base['wall_s']:6.1f}s | {base['reports']} reports")
    for w, ra in [(w, ra) for w in args.workers for ra in args.read_ahead]:
        r = on_ray(args.model, args.steps, args.batch_size, w, storage, ra)
        tag = "" if ra is None else f", read-ahead {ra}"
        print(f"Ray {w} worker(s){tag}: {r['samples_per_s']:8.1f} samples/s steady (loop wall clock) | "
              f"{r['window_samples_per_s']:8.1f} in-window | wall {r['wall_s']:6.1f}s | {r['reports']} reports | "
              f"data-wait {r['data_wait_frac']:.1%}")
        ratio = r["samples_per_s"] / base["samples_per_s"]
        print(f"  ratio Ray/plain: steady throughput x{ratio:.2f} (goal >= 0.90 -> {'MET' if ratio >= 0.9 else 'NOT MET'})"
              f", wall x{r['wall_s'] / base['wall_s']:.2f} (fixed start-up {r['wall_s'] - base['wall_s']:.1f}s)")
    ray.shutdown()


if __name__ == "__main__":
    main()
