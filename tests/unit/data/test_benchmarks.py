"""Benchmark loaders on tiny generated datasets in the official layouts, and the vendored text proxy."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from rtd.data.benchmarks import BenchmarkFormatError, load_benchmark, load_image
from rtd.data.benchmarks.circo import load_circo
from rtd.data.benchmarks.cirr import load_cirr
from rtd.data.benchmarks.fashioniq import join_fiq_captions, load_fashioniq
from rtd.data.benchmarks.genecis import genecis_crop_box, load_genecis, pad_to_square
from rtd.data.benchmarks.text_proxy import TRAINING_FILES, load_text_proxy, read_jsonl_gz, text_proxy_file

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures" / "benchmarks" / "make_fixtures.py"
VENDORED = REPO / "data" / "text_proxy"


def _fixtures():
    spec = importlib.util.spec_from_file_location("rtd_benchmark_fixtures", FIXTURES)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


fx = _fixtures()


# --------------------------------------------------------------------------------------------------- CIRR


def test_cirr_val_and_test1(tmp_path):
    info = fx.make_cirr(tmp_path / "CIRR")
    val = load_cirr(tmp_path / "CIRR", "val", check_images=True)
    assert val.remove_reference and val.name == "cirr"
    assert len(val.queries) == info["val_queries"] and len(val.gallery) == 8
    assert val.queries.ids[0] == "100" and val.queries.texts[0] == ["target 1"]
    assert val.queries.target_ids == info["val_targets"]
    assert len(val.queries.members[0]) == 6 and val.queries.reference_ids[0] in val.queries.members[0]
    assert val.gallery.paths[0] == tmp_path / "CIRR" / "./dev/dev-0-0-img0.png"
    assert fx.decode_code(load_image(val.queries.reference_paths[2])) == 4

    test = load_benchmark("cirr", tmp_path / "CIRR", split="test1")
    assert test.queries.target_ids is None and not test.has_ground_truth
    assert test.queries.ids == info["test_pairids"] and len(test.gallery) == len(info["test_names"])


def test_cirr_errors_name_file_row_and_key(tmp_path):
    fx.make_cirr(tmp_path / "CIRR")
    cap = tmp_path / "CIRR" / "cirr" / "captions" / "cap.rc2.val.json"
    rows = json.loads(cap.read_text())
    del rows[2]["target_hard"]
    cap.write_text(json.dumps(rows))
    with pytest.raises(BenchmarkFormatError, match=r"cap\.rc2\.val\.json: row 2 has no key 'target_hard'"):
        load_cirr(tmp_path / "CIRR", "val")
    rows[2]["target_hard"] = "dev-999-0-img0"
    cap.write_text(json.dumps(rows))
    with pytest.raises(BenchmarkFormatError, match=r"row 2 \(pairid 102\) names image 'dev-999-0-img0'"):
        load_cirr(tmp_path / "CIRR", "val")
    with pytest.raises(BenchmarkFormatError, match="missing benchmark file"):
        load_cirr(tmp_path / "nowhere", "val")
    with pytest.raises(ValueError, match="unknown CIRR split"):
        load_cirr(tmp_path / "CIRR", "dev")


# --------------------------------------------------------------------------------------------------- FashionIQ


def test_fashioniq(tmp_path):
    info = fx.make_fashioniq(tmp_path / "FIQ")
    for cat in ("dress", "shirt", "toptee"):
        b = load_fashioniq(tmp_path / "FIQ", cat, check_images=True)
        assert b.name == f"fiq_{cat}" and not b.remove_reference
        assert b.gallery.ids == info[cat]["asins"] and len(b.queries) == 3
        assert len(b.queries.texts[0]) == 2
    b = load_benchmark("fashioniq_shirt", tmp_path / "FIQ")
    assert fx.decode_code(load_image(b.gallery.paths[4])) == 10  # shirt codes are 6..11 (JPEG round trip)
    assert join_fiq_captions("is shiny.", " fit and flare? ") == "is shiny and fit and flare"


def test_fashioniq_bad_captions(tmp_path):
    fx.make_fashioniq(tmp_path / "FIQ")
    cap = tmp_path / "FIQ" / "captions" / "cap.dress.val.json"
    rows = json.loads(cap.read_text())
    rows[1]["captions"] = ["only one"]
    cap.write_text(json.dumps(rows))
    with pytest.raises(BenchmarkFormatError, match=r"cap\.dress\.val\.json: row 1 key 'captions'"):
        load_fashioniq(tmp_path / "FIQ", "dress")


# --------------------------------------------------------------------------------------------------- CIRCO


def test_circo(tmp_path):
    info = fx.make_circo(tmp_path / "CIRCO")
    val = load_circo(tmp_path / "CIRCO", "val", check_images=True)
    assert len(val.gallery) == len(info["ids"]) and val.gallery.ids[:2] == ["1000", "1001"]
    assert val.queries.gt_ids[1] == ["1004", "1005", "1006"] and val.queries.target_ids[0] == "1001"
    assert not val.remove_reference
    test = load_circo(tmp_path / "CIRCO", "test")
    assert test.queries.gt_ids is None and test.queries.ids == info["test_query_ids"]
    ann = tmp_path / "CIRCO" / "annotations" / "val.json"
    rows = json.loads(ann.read_text())
    del rows[0]["gt_img_ids"]
    ann.write_text(json.dumps(rows))
    with pytest.raises(BenchmarkFormatError, match=r"val\.json: row 0 has no key 'gt_img_ids'"):
        load_circo(tmp_path / "CIRCO", "val")


# --------------------------------------------------------------------------------------------------- GeneCIS


def test_genecis_subsets(tmp_path):
    info = fx.make_genecis(tmp_path / "G")
    for subset in ("focus_attribute", "change_attribute", "focus_object", "change_object"):
        b = load_benchmark(f"genecis_{subset}", tmp_path / "G")
        assert len(b) == info[subset]["kept"], subset  # the short object template is dropped
        assert all(len(c) == 4 for c in b.candidates)
        assert b.candidates[0][0].id in ("701", "5001")  # target first
    attr = load_genecis(tmp_path / "G", "focus_attribute")
    img = attr.references[0].open()
    assert img.width == img.height  # cropped then padded to a square
    assert fx.decode_code(img) == 0
    obj = load_genecis(tmp_path / "G", "change_object")
    assert obj.references[0].path.name == "000000005000.jpg" and obj.references[0].bbox is None


def test_genecis_crop_rule_and_padding():
    # x=10, y=8, w=12, h=10 in a 40x30 image: left = 10 - 8.4 = 1.6, top = 8 - 7 = 1,
    # right = min(40, 1.6 + 20.4) = 22, bottom = min(30, 1 + 17) = 18.
    assert genecis_crop_box([10, 8, 12, 10], 40, 30) == pytest.approx((1.6, 1.0, 22.0, 18.0))
    # Clamped: a box at the far right: right = min(W, left + 1.7w).
    assert genecis_crop_box([30, 0, 10, 10], 40, 30) == pytest.approx((23.0, 0.0, 40.0, 17.0))
    from PIL import Image

    padded = pad_to_square(Image.new("RGB", (6, 2), (255, 255, 255)))
    assert padded.size == (6, 6)
    assert padded.getpixel((0, 0)) == (0, 0, 0) and padded.getpixel((3, 3)) == (255, 255, 255)


def test_unknown_benchmark_name(tmp_path):
    with pytest.raises(ValueError, match="available: cirr"):
        load_benchmark("coco", tmp_path)


# --------------------------------------------------------------------------------------------------- text proxy


def test_text_proxy_fixture_groups(tmp_path):
    fx.make_text_proxy(tmp_path / "tp")
    b = load_text_proxy("cirr_val", tmp_path / "tp")
    assert b.remove_reference and b.gallery.paths is None
    assert b.gallery.group_ids.tolist() == [0, 1, 1, 2, 3, 4]  # "blue car" twice
    assert b.queries.reference_captions[0] == "red car"
    d = load_text_proxy("fiq_val_dress", tmp_path / "tp")
    assert not d.remove_reference and set(d.gallery.group_ids.tolist()) == {0}


def test_text_proxy_malformed_line(tmp_path):
    fx.make_text_proxy(tmp_path / "tp")
    path = tmp_path / "tp" / "fiq_val_shirt.queries.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"candidate": "S0", "target": "S1", "captions": ["a", "b"]}) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"line 1 has no key 'reference_caption'"):
        read_jsonl_gz(path, ("candidate", "reference_caption"))
    with pytest.raises(ValueError, match="unknown text-proxy split"):
        load_text_proxy("circo_val", tmp_path / "tp")


@pytest.mark.skipif(not VENDORED.is_dir(), reason="vendored data/text_proxy not present")
def test_vendored_text_proxy_counts():
    # Counts from PROXY_BASELINES.md / METHOD.md 8: queries, gallery, unique captions, targets sharing a caption.
    expected = {
        "cirr_val": (4181, 2297, 2220, 246),
        "fiq_val_dress": (2017, 3817, 1862, 1232),
        "fiq_val_shirt": (2038, 6346, 5501, 398),
        "fiq_val_toptee": (1961, 5373, 4368, 526),
    }
    for split, (nq, ng, nu, shared) in expected.items():
        b = load_text_proxy(split, VENDORED)
        gids = b.gallery.group_ids
        counts = np.bincount(gids)
        t = b.gallery.indices_of(b.queries.target_ids)
        assert (len(b.queries), len(b.gallery), len(counts), int((counts[gids[t]] > 1).sum())) == (nq, ng, nu, shared)
    cirr = load_text_proxy("cirr_val", VENDORED)
    assert all(len(m) == 6 and r in m for m, r in zip(cirr.queries.members, cirr.queries.reference_ids))
    rows = {
        "cirr_train": (28225, ("reference_caption", "conditioning_caption", "target_caption", "reference", "target")),
        "cirr_train_captions": (14740, ("caption",)),
        "ip2p": (700, ("reference_caption", "conditioning_caption", "target_caption")),
        "coco_val2017_captions": (25014, ("caption",)),
    }
    for name, (n, keys) in rows.items():
        assert len(read_jsonl_gz(text_proxy_file(name, VENDORED), keys)) == n, name
    assert set(rows) == set(TRAINING_FILES)
    manifest = json.loads((VENDORED / "MANIFEST.json").read_text())
    assert sum(f["bytes"] for f in manifest["files"].values()) < 10 * 1024 * 1024
