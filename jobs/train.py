"""RTD training on Ray Train: ``python jobs/train.py --config <preset|yaml> key=value ...``.

Locally it starts (or joins) a Ray instance on this machine; under ``ray job submit`` it joins that cluster
(``RAY_ADDRESS`` is set by the job supervisor). Re-running with the same ``run.name`` and ``run.storage_path``
resumes from the latest checkpoint. Examples (from the repository root, after ``source scripts/env.sh``):

    python jobs/train.py --config train/tiny_ray run.name=tiny1 run.storage_path=/tmp/rtd_runs

    ray start --head --num-cpus 4 --dashboard-host 127.0.0.1 --disable-usage-stats
    RAY_AUTH_MODE=disabled ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env-json '{"env_vars": {"RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}}' -- \
        python jobs/train.py --config train/tiny_ray run.storage_path=/tmp/rtd_runs
    ray stop

``run.storage_path`` must be absolute (or a cloud URI) under ``ray job submit``: a relative path would land in
the job's temporary working directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="train/tiny_ray", help="preset (train/<name>) or YAML path")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of an auto-started local Ray (default: all)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-5")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from rtd.config import TrainConfig, load_config
    from rtd.ray_adapters.train import run_training

    cfg = load_config(args.config, args.overrides, cls=TrainConfig)
    logging.getLogger("jobs.train").info("config: %s", cfg.model_dump_json())
    summary = run_training(cfg, num_cpus=args.num_cpus)
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
