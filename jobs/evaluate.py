"""Evaluate a trained text tower (or the base method) on the text proxy or an image benchmark.

    python jobs/evaluate.py --checkpoint runs/rtd_minilm_ip2p/checkpoints/checkpoint_000000050 --split all --out runs/eval/x
    python jobs/evaluate.py --config train/minilm_ip2p --split cirr_val          # base method: frozen tower + phi
    python jobs/evaluate.py --checkpoint CKPT --benchmark cirr --root /data/CIRR --split val
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --runtime-env runtime_env.yaml -- \
        python jobs/evaluate.py --checkpoint /shared/ckpt --benchmark fashioniq --root /data/FashionIQ --split val

Writes ``metrics.json`` and ``metrics.md`` into ``--out``. Same arguments as ``rtd eval``.
"""

from __future__ import annotations

import sys

from rtd.cli import main as rtd_main

if __name__ == "__main__":
    sys.exit(rtd_main(["eval", *sys.argv[1:]]))
