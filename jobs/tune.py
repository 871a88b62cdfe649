"""Ray Tune sweep over RTD options (temperature, concatenation, noise, batch sampling, lr, gathering).

Local:    python jobs/tune.py --config tune/minilm_tau_concat [key=value ...]
Cluster:  RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --runtime-env runtime_env.yaml -- \
              python jobs/tune.py --config tune/minilm_tau_concat
Re-running the same command resumes an interrupted sweep.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="tune preset (tune/...) or YAML path")
    ap.add_argument("overrides", nargs="*", help="dotted overrides of the TuneConfig, e.g. num_samples=4")
    args = ap.parse_args(argv)
    from rtd.cli import setup_logging
    from rtd.config import TuneConfig, load_config
    from rtd.ray_adapters.tune import run_sweep

    setup_logging()
    cfg = load_config(args.config, args.overrides, cls=TuneConfig)
    logging.getLogger("rtd").info("sweep config: %s", json.dumps(cfg.model_dump(mode="json")))
    out = run_sweep(cfg)
    print(json.dumps({"best": out.get("best"), "checkpoint_path": out.get("checkpoint_path")}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
