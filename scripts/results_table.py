"""Print the text-proxy results table (markdown) from ``metrics.json`` files written by ``rtd eval --out``.

    python scripts/results_table.py "phi baseline=runs/eval/base_phi_coco" "RTD IP2P=runs/eval/rtd_ip2p_best"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KEYS = ["cirr_recall@1", "cirr_recall@5", "cirr_recall@10", "cirr_recall@50", "cirr_recall_subset@1",
        "cirr_recall_subset@2", "cirr_recall_subset@3", "fiq_dress_recall@10", "fiq_dress_recall@50",
        "fiq_shirt_recall@10", "fiq_shirt_recall@50", "fiq_toptee_recall@10", "fiq_toptee_recall@50",
        "fiq_avg_recall@10", "fiq_avg_recall@50"]
HEAD = ["R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "dress R@10", "dress R@50", "shirt R@10",
        "shirt R@50", "toptee R@10", "toptee R@50", "FIQ avg R@10", "FIQ avg R@50"]


def main(args: list[str]) -> None:
    print("| run | " + " | ".join(HEAD) + " |")
    print("|---|" + "---|" * len(HEAD))
    for a in args:
        name, path = a.split("=", 1)
        m = json.loads((Path(path) / "metrics.json").read_text())["metrics"]
        print(f"| {name} | " + " | ".join(f"{m[k]:.2f}" if k in m else "–" for k in KEYS) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
