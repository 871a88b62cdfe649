"""How long a Ray Train dataset shard takes to start each epoch, against the waits inside an epoch.

    source scripts/env.sh
    python bench/epoch_gap.py [--rows 700 --batch-size 16 --step-ms 24 --epochs 8 --read-ahead 0]

One Train worker iterates a materialized dataset epoch after epoch (``iter_torch_batches``, as
:class:`rtd.ray_adapters.data.RayBatchSource` does) with a simulated step, and prints the wait before each epoch's
first batch and the median wait inside epochs. ``--read-ahead N`` iterates through the read-ahead thread instead
(the default of ``data.read_ahead_batches`` is 16): the epoch-start wait then falls to an in-epoch one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=700)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--step-ms", type=float, default=24.0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--read-ahead", type=int, default=0)
    args = p.parse_args()

    import numpy as np
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=2, object_store_memory=512 * 2**20, log_to_driver=False)
    ds = ray.data.from_items([{"ids": np.arange(64, dtype=np.int64), "row": i} for i in range(args.rows)]).materialize()
    per_epoch = args.rows // args.batch_size

    def loop(cfg: dict) -> None:
        from rtd.ray_adapters.data import read_ahead

        shard = ray.train.get_dataset_shard("train")

        def epochs():
            for _ in range(cfg["epochs"]):
                for b in shard.iter_torch_batches(batch_size=cfg["batch"], drop_last=True, prefetch_batches=2):
                    yield b

        it = read_ahead(epochs, cfg["read_ahead"]) if cfg["read_ahead"] else epochs()
        starts, within = [], []
        for i in range(cfg["epochs"] * cfg["per_epoch"]):
            t0 = time.perf_counter()
            next(it)
            (starts if i % cfg["per_epoch"] == 0 else within).append(time.perf_counter() - t0)
            time.sleep(cfg["step_s"])  # the step
        Path(cfg["out"]).write_text(json.dumps({"starts": starts, "within": within}))  # one node: a local file

    cfg = {"epochs": args.epochs, "batch": args.batch_size, "per_epoch": per_epoch, "step_s": args.step_ms / 1000,
           "read_ahead": args.read_ahead, "out": str(Path(tempfile.mkdtemp(prefix="rtd-epoch-gap-")) / "waits.json")}
    TorchTrainer(loop, train_loop_config=cfg, datasets={"train": ds},
                       scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
                       dataset_config=ray.train.DataConfig(datasets_to_split=["train"])).fit()
    ray.shutdown()
    m = json.loads(Path(cfg["out"]).read_text())
    starts, within = m["starts"], m["within"]
    print(f"rows={args.rows} batch={args.batch_size} ({per_epoch} steps/epoch) step={args.step_ms:.0f} ms "
          f"read-ahead={args.read_ahead}")
    print("wait before each epoch's first batch (s):", " ".join(f"{x:.3f}" for x in starts),
          "(the first includes the shard's start-up)")
    later = statistics.median(starts[1:]) if len(starts) > 1 else float("nan")
    med = statistics.median(within)
    epoch_s = per_epoch * args.step_ms / 1000
    print(f"median epoch-start wait after the first: {later * 1000:.1f} ms | median in-epoch wait: {med * 1000:.2f} ms"
          f" | epoch-start share of an epoch: {later / (epoch_s + later):.1%}")


if __name__ == "__main__":
    main()
