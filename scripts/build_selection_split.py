"""Build ``cirr_trainsel``: a model-selection split of the text proxy made from CIRR *train* triplets.

Checkpoint and hyper-parameter selection must not use the reported splits (CIRR val, FashionIQ val). For models
trained on other data (InstructPix2Pix, COCO captions) the CIRR train triplets are unseen, so a held-out set of them
is a clean selection split. Do not use it to select models trained on CIRR train.

Reads only the vendored ``data/text_proxy/cirr_train.triplets.jsonl.gz`` (derived from CIRR, MIT, and DQU-CIR
BLIP-2 captions, Apache-2.0; see data/ATTRIBUTION.md) and writes ``cirr_trainsel.{queries,gallery}.jsonl.gz``:
2,000 queries; gallery = every image of those queries plus random other train images up to 3,000 captions; the
reference is removed from its ranking (CIRR protocol); ``members`` = the images of the query's CIRR set id
(``train-<set>-...``) present in the gallery.

    python scripts/build_selection_split.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="data/text_proxy")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--gallery", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    d = Path(a.dir)
    with gzip.open(d / "cirr_train.triplets.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    captions = {}
    for r in rows:
        captions[r["reference"]] = r["reference_caption"]
        captions[r["target"]] = r["target_caption"]
    rng = random.Random(a.seed)
    picked = rng.sample(rows, a.queries)
    gallery = {r["reference"] for r in picked} | {r["target"] for r in picked}
    others = sorted(set(captions) - gallery)
    rng.shuffle(others)
    gallery |= set(others[: max(0, a.gallery - len(gallery))])
    by_set = defaultdict(list)
    for name in sorted(gallery):
        by_set[name.split("-")[1]].append(name)
    with gzip.open(d / "cirr_trainsel.gallery.jsonl.gz", "wt") as f:
        for name in sorted(gallery):
            f.write(json.dumps({"id": name, "caption": captions[name]}) + "\n")
    with gzip.open(d / "cirr_trainsel.queries.jsonl.gz", "wt") as f:
        for i, r in enumerate(picked):
            members = sorted(set(by_set[r["reference"].split("-")[1]]) | {r["reference"], r["target"]})
            f.write(json.dumps({"pairid": i, "reference": r["reference"], "target": r["target"],
                                "caption": r["conditioning_caption"], "members": members,
                                "reference_caption": r["reference_caption"]}) + "\n")
    print(f"cirr_trainsel: {len(picked)} queries, {len(gallery)} gallery captions")


if __name__ == "__main__":
    main()
