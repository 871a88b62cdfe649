"""Image benchmarks end to end with the real ComposedQueryEncoder (tiny open_clip with its image tower):
official layouts -> image features -> phi -> composed queries -> metrics / submission files, via `rtd eval`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rtd.cli import main as rtd_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fixtures_mod():
    spec = importlib.util.spec_from_file_location("rtd_bench_fixtures",
                                                  REPO / "tests" / "fixtures" / "benchmarks" / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("bench,maker,split,keys", [
    ("cirr", "make_cirr", "val", ["cirr_recall@1", "cirr_recall@50", "cirr_recall_subset@1"]),
    ("fashioniq", "make_fashioniq", "val", ["fiq_avg_recall@10"]),
    ("circo", "make_circo", "val", ["circo_map@5"]),
    ("genecis", "make_genecis", "all", []),
])
def test_rtd_eval_on_official_layouts(tmp_path, fixtures_mod, bench, maker, split, keys):
    root = tmp_path / "data"
    getattr(fixtures_mod, maker)(root)
    out = tmp_path / "out"
    assert rtd_main(["eval", "--config", "train/tiny", "--benchmark", bench, "--root", str(root),
                     "--split", split, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    for k in keys:
        assert k in metrics and 0.0 <= metrics[k] <= 100.0, (k, metrics)
    if bench == "genecis":
        r1 = [k for k in metrics if k.startswith("genecis_") and k.endswith("recall@1")]
        assert len(r1) >= 4 and all(0.0 <= metrics[k] <= 100.0 for k in r1), metrics
    assert (out / "metrics.md").is_file()


def test_cirr_test_split_writes_valid_submissions(tmp_path, fixtures_mod):
    from rtd.eval.submission import validate_cirr_submission

    root = tmp_path / "data"
    fixtures_mod.make_cirr(root)
    out = tmp_path / "out"
    assert rtd_main(["eval", "--config", "train/tiny", "--benchmark", "cirr", "--root", str(root),
                     "--split", "test1", "--out", str(out)]) == 0
    rec, sub = out / "cirr_test1_recall.json", out / "cirr_test1_recall_subset.json"
    validate_cirr_submission(rec, "recall")
    validate_cirr_submission(sub, "recall_subset")
    data = json.loads(rec.read_text())
    assert data["version"] == "rc2" and data["metric"] == "recall" and len(data) == 2 + 3  # 3 fixture queries
