"""Data-wait share of step time: Ray Data ingest (read + validate + tokenize in ``map_batches``, prefetched) vs
in-process tokenization in the training loop (the local ``TripletSource``).

The consumer simulates an accelerator step by sleeping ``--step-ms`` per batch (the CPU is then free for the
data tasks, as it is while a GPU computes), and measures how long it waits for each batch.

    source scripts/env.sh
    python bench/data_wait.py --model tiny --batch-size 64 --steps 60 --step-ms 50

Prints ingest rows/s, first-batch latency and the data-wait share for both, and their ratio.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time

import torch

MODELS = {
    "tiny": {"backend": "open_clip", "name": "rtd-tiny-clip", "pretrained": None},
    "minilm": {"backend": "hf_text", "name": "minilm", "context_length": 64},
}
DATA = "data/text_proxy/cirr_train.triplets.jsonl.gz"


def consume(batches, steps: int, step_s: float) -> dict:
    t_start = time.perf_counter()
    wait = 0.0
    first = None
    it = iter(batches)
    for i in range(steps):
        t0 = time.perf_counter()
        b = next(it)
        dt = time.perf_counter() - t0
        if i == 0:
            first = dt
        else:
            wait += dt
        time.sleep(step_s)  # the accelerator step
        assert b["query_ids"].shape[0] > 0
    total = time.perf_counter() - t_start - first
    close = getattr(it, "close", None)
    if close is not None:
        close()  # stop any read-ahead before Ray shuts down
    rows = (steps - 1) * b["query_ids"].shape[0] // 2
    return {"first_batch_s": first, "wait_frac": wait / total, "rows_per_s": rows / total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--step-ms", type=float, default=50.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    import ray
    from ray.data import DataContext

    from rtd.config import DataConfig, ModelConfig, PromptConfig, RTDMethodConfig
    from rtd.data.triplets import load_triplets
    from rtd.ray_adapters.data import (
        IngestStats,
        RayBatchSource,
        build_tokenizer,
        read_rows,
        tokenize_rtd,
        triplet_fields,
    )
    from rtd.train.sources import TripletSource

    model = ModelConfig(**MODELS[args.model])
    B, step_s = args.batch_size, args.step_ms / 1000

    trips, stats = load_triplets([DATA])
    tok = build_tokenizer(model)
    local = TripletSource(trips, tok, PromptConfig(), RTDMethodConfig(), B, cache=None, stats=stats)
    loc = consume(local.batches(0), args.steps, step_s)

    ray.init(num_cpus=2, object_store_memory=512 * 2**20, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    data = DataConfig(paths=[DATA])
    ds = tokenize_rtd(read_rows(data, triplet_fields(data.fields)), model, PromptConfig(), RTDMethodConfig(),
                      frozen_ids=True)
    src = RayBatchSource(ds, "rtd", B, max(1, len(trips) // B), IngestStats(), cache=None, refined=True,
                         prefetch_batches=4, read_ahead=data.read_ahead_batches)  # as a Train worker does
    rd = consume(src.batches(0), args.steps, step_s)
    # Ray Data cannot join its prefetch threads when an iterator is closed mid-epoch; let them see the interrupt
    # before ray.shutdown() (one touching the core worker after shutdown kills the process).
    deadline = time.time() + 10
    while time.time() < deadline and any(t.name.startswith(("map_tp_", "iter_threaded"))
                                         for t in threading.enumerate()):
        time.sleep(0.05)
    ray.shutdown()

    print(f"model={args.model} batch={B} steps={args.steps} simulated step={args.step_ms:.0f} ms data={DATA}")
    for name, r in (("in-process tokenize", loc), ("Ray Data ingest    ", rd)):
        print(f"{name}: data-wait {r['wait_frac']:6.1%} | {r['rows_per_s']:7.0f} rows/s consumed | "
              f"first batch {r['first_batch_s']:.2f}s")
    print(f"data-wait ratio local/Ray x{loc['wait_frac'] / max(rd['wait_frac'], 1e-6):.1f}")


if __name__ == "__main__":
    main()
