"""CIRR and CIRCO submission writers and validators."""

from __future__ import annotations

import json

import pytest

from rtd.eval.submission import (
    SubmissionFormatError,
    validate_circo_submission,
    validate_cirr_submission,
    write_circo_submission,
    write_cirr_submission,
)

NAMES = [f"test1-{i}-0-img0" for i in range(60)]


def _cirr_inputs():
    pairids = [7, 8]
    refs = {"7": NAMES[0], "8": NAMES[1]}
    members = {"7": NAMES[0:6], "8": NAMES[1:7]}
    top50 = [NAMES[1:51], [NAMES[0]] + NAMES[2:51]]
    top3 = [NAMES[1:4], NAMES[2:5]]
    return pairids, refs, members, top50, top3


def test_cirr_write_and_validate(tmp_path):
    pairids, refs, members, top50, top3 = _cirr_inputs()
    rp, sp = write_cirr_submission(pairids, top50, top3, tmp_path, prefix="run1")
    assert rp.name == "run1_recall.json" and sp.name == "run1_recall_subset.json"
    recall = validate_cirr_submission(rp, "recall", ["7", "8"], refs, gallery_ids=NAMES)
    assert recall["version"] == "rc2" and recall["metric"] == "recall"
    assert len(recall["7"]) == 50 and isinstance(next(iter(k for k in recall if k.isdigit())), str)
    subset = validate_cirr_submission(sp, "recall_subset", [7, 8], refs, members)
    assert subset["metric"] == "recall_subset" and subset["8"] == NAMES[2:5]


def test_cirr_validator_catches_errors(tmp_path):
    pairids, refs, members, top50, top3 = _cirr_inputs()
    rp, sp = write_cirr_submission(pairids, top50, top3, tmp_path)
    data = json.loads(rp.read_text())
    data["7"] = [NAMES[0]] + data["7"][1:]  # the reference sneaks in
    data["8"] = data["8"][:49]  # too short
    data["metric"] = "recall_subset"
    rp.write_text(json.dumps(data))
    with pytest.raises(SubmissionFormatError) as e:
        validate_cirr_submission(rp, "recall", ["7", "8", "9"], refs)
    msg = str(e.value)
    assert "'metric' must be 'recall'" in msg and "pairid 7: contains its reference" in msg
    assert "pairid 8: 49 names, expected 50" in msg and "1 pairids missing" in msg

    sub = json.loads(sp.read_text())
    sub["7"] = [NAMES[0], NAMES[1], NAMES[40]]  # reference and a non-member
    sp.write_text(json.dumps(sub))
    with pytest.raises(SubmissionFormatError, match="not members of its img_set"):
        validate_cirr_submission(sp, "recall_subset", members=members, references=refs)

    with pytest.raises(SubmissionFormatError, match="exceeds the server limit"):
        validate_cirr_submission(sp, "recall_subset", max_bytes=10)
    with pytest.raises(ValueError, match="need 50 ranked names"):
        write_cirr_submission([1], [NAMES[:10]], [NAMES[:3]], tmp_path)


def test_circo_write_and_validate(tmp_path):
    gallery = [str(1000 + i) for i in range(60)]
    path = write_circo_submission([0, 1], [gallery[:50], gallery[10:60]], tmp_path / "circo.json")
    data = validate_circo_submission(path, ["0", "1"], gallery)
    assert list(data) == ["0", "1"] and data["1"][0] == "1010" and len(data["0"]) == 50

    data["1"] = data["1"][:10] + data["1"][:40]  # duplicates
    data["x"] = gallery[:50]
    path.write_text(json.dumps(data))
    with pytest.raises(SubmissionFormatError) as e:
        validate_circo_submission(path, ["0", "1", "2"])
    msg = str(e.value)
    assert "query 1: duplicate ids" in msg and "key 'x' is not a query id" in msg and "1 query ids missing" in msg
