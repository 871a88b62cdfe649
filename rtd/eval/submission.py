"""Test-server submission files for CIRR (test1) and CIRCO (test), and validators for them (METHOD.md 8.1, 8.3).

CIRR: two JSON files.
    recall:        {"version": "rc2", "metric": "recall", "<pairid>": [50 image names, reference excluded], ...}
    recall_subset: {"version": "rc2", "metric": "recall_subset", "<pairid>": [3 member names], ...}
    pairid keys are strings; each file must stay under 5 MB.
CIRCO: one JSON file {"<query id>": [50 image ids], ...} covering every test query (ids as strings; the server
casts them to int).

Writers validate the structure they produce; the ``validate_*`` functions check any file (e.g. before upload)
and raise :class:`SubmissionFormatError` listing the first problems found.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "SubmissionFormatError",
    "CIRR_MAX_BYTES",
    "CIRR_RECALL_K",
    "CIRR_SUBSET_K",
    "CIRCO_K",
    "write_cirr_submission",
    "validate_cirr_submission",
    "write_circo_submission",
    "validate_circo_submission",
]

CIRR_MAX_BYTES = 5 * 1024 * 1024
CIRR_RECALL_K = 50
CIRR_SUBSET_K = 3
CIRCO_K = 50
_MAX_LISTED = 5


class SubmissionFormatError(ValueError):
    """A submission file does not follow the server format; the message names the file and the entries."""


def _dump(obj: Mapping[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")
    return path


def _raise_if(problems: list[str], path: Path) -> None:
    if problems:
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise SubmissionFormatError(f"{path}: " + "; ".join(problems[:_MAX_LISTED]) + more)


def write_cirr_submission(
    pairids: Sequence[str | int],
    top50: Sequence[Sequence[str]],
    top3_subset: Sequence[Sequence[str]],
    out_dir: str | os.PathLike[str],
    prefix: str = "cirr_test1",
) -> tuple[Path, Path]:
    """Write the two CIRR test-server files.

    Args:
        pairids: ``[Q]`` query pairids.
        top50: ``[Q][>=50]`` ranked image names with the reference already removed; the first 50 are kept.
        top3_subset: ``[Q][>=3]`` ranked ``img_set.members`` (reference removed); the first 3 are kept.
        out_dir: output folder.
        prefix: file name prefix.

    Returns:
        ``(recall_path, recall_subset_path)`` = ``out_dir/{prefix}_recall.json`` and
        ``out_dir/{prefix}_recall_subset.json``.
    """
    if not (len(pairids) == len(top50) == len(top3_subset)):
        raise ValueError(
            f"pairids ({len(pairids)}), top50 ({len(top50)}) and top3_subset ({len(top3_subset)}) differ in length"
        )
    out = Path(out_dir)
    recall: dict[str, Any] = {"version": "rc2", "metric": "recall"}
    subset: dict[str, Any] = {"version": "rc2", "metric": "recall_subset"}
    for pid, names, sub in zip(pairids, top50, top3_subset):
        if len(names) < CIRR_RECALL_K or len(sub) < CIRR_SUBSET_K:
            raise ValueError(f"pairid {pid}: need {CIRR_RECALL_K} ranked names and {CIRR_SUBSET_K} subset names")
        recall[str(pid)] = [str(n) for n in names[:CIRR_RECALL_K]]
        subset[str(pid)] = [str(n) for n in sub[:CIRR_SUBSET_K]]
    recall_path = _dump(recall, out / f"{prefix}_recall.json")
    subset_path = _dump(subset, out / f"{prefix}_recall_subset.json")
    return recall_path, subset_path


def _read_submission(path: Path, max_bytes: int | None = None) -> dict[str, Any]:
    """The submission file as a JSON object (size-limited when ``max_bytes`` is given)."""
    if not path.is_file():
        raise SubmissionFormatError(f"{path}: file not found")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise SubmissionFormatError(f"{path}: {size} bytes exceeds the server limit of {max_bytes}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SubmissionFormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise SubmissionFormatError(f"{path}: top level must be an object, got {type(data).__name__}")
    return data


def validate_cirr_submission(
    path: str | os.PathLike[str],
    metric: str,
    expected_pairids: Sequence[str | int] | None = None,
    references: Mapping[str, str] | None = None,
    members: Mapping[str, Sequence[str]] | None = None,
    gallery_ids: Sequence[str] | None = None,
    max_bytes: int = CIRR_MAX_BYTES,
) -> dict[str, Any]:
    """Check a CIRR submission file against the server format.

    Args:
        path: the JSON file.
        metric: ``recall`` (50 names per query) or ``recall_subset`` (3 names per query).
        expected_pairids: every pairid that must be present (and no others).
        references: pairid -> reference name; the reference must not appear in its list.
        members: pairid -> ``img_set.members``; subset answers must be members other than the reference.
        gallery_ids: allowed image names (the test1 split).
        max_bytes: the server's size limit.

    Returns:
        The parsed file.

    Raises:
        SubmissionFormatError: the first problems, naming the offending pairids.
    """
    if metric not in ("recall", "recall_subset"):
        raise ValueError(f"metric must be 'recall' or 'recall_subset', got {metric!r}")
    path = Path(path)
    data = _read_submission(path, max_bytes)
    problems: list[str] = []
    if data.get("version") != "rc2":
        problems.append(f"'version' must be 'rc2', got {data.get('version')!r}")
    if data.get("metric") != metric:
        problems.append(f"'metric' must be {metric!r}, got {data.get('metric')!r}")
    k = CIRR_RECALL_K if metric == "recall" else CIRR_SUBSET_K
    allowed = set(gallery_ids) if gallery_ids is not None else None
    answers = {key: v for key, v in data.items() if key not in ("version", "metric")}
    for pid, names in answers.items():
        if not pid.lstrip("-").isdigit():
            problems.append(f"key {pid!r} is not a pairid")
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            problems.append(f"pairid {pid}: value must be a list of image names")
            continue
        if len(names) != k:
            problems.append(f"pairid {pid}: {len(names)} names, expected {k}")
        if len(set(names)) != len(names):
            problems.append(f"pairid {pid}: duplicate names")
        if references is not None and pid in references and references[pid] in names:
            problems.append(f"pairid {pid}: contains its reference {references[pid]!r}")
        if metric == "recall_subset" and members is not None and pid in members:
            ok = set(members[pid]) - ({references[pid]} if references and pid in references else set())
            extra = [n for n in names if n not in ok]
            if extra:
                problems.append(f"pairid {pid}: {extra} are not members of its img_set (minus the reference)")
        if allowed is not None:
            unknown = [n for n in names if n not in allowed]
            if unknown:
                problems.append(f"pairid {pid}: unknown image names {unknown[:3]}")
    if expected_pairids is not None:
        want = {str(p) for p in expected_pairids}
        missing = sorted(want - set(answers), key=lambda x: int(x) if x.lstrip("-").isdigit() else 0)
        extra = sorted(set(answers) - want)
        if missing:
            problems.append(f"{len(missing)} pairids missing, e.g. {missing[:3]}")
        if extra:
            problems.append(f"{len(extra)} unexpected pairids, e.g. {extra[:3]}")
    _raise_if(problems, path)
    return data


def write_circo_submission(
    query_ids: Sequence[str | int],
    ranked_ids: Sequence[Sequence[str | int]],
    path: str | os.PathLike[str],
) -> Path:
    """Write the CIRCO test-server file ``{"<query id>": [top-50 image ids as strings]}``.

    Args:
        query_ids: ``[Q]`` CIRCO query ids (all 800 test queries for a real submission).
        ranked_ids: ``[Q][>=50]`` ranked gallery image ids, best first; the first 50 are kept.
        path: output file.
    """
    if len(query_ids) != len(ranked_ids):
        raise ValueError(f"query_ids ({len(query_ids)}) and ranked_ids ({len(ranked_ids)}) differ in length")
    out: dict[str, list[str]] = {}
    for qid, ranked in zip(query_ids, ranked_ids):
        if len(ranked) < CIRCO_K:
            raise ValueError(f"query {qid}: need {CIRCO_K} ranked ids, got {len(ranked)}")
        out[str(qid)] = [str(r) for r in ranked[:CIRCO_K]]
    return _dump(out, Path(path))


def validate_circo_submission(
    path: str | os.PathLike[str],
    expected_query_ids: Sequence[str | int] | None = None,
    gallery_ids: Sequence[str | int] | None = None,
) -> dict[str, Any]:
    """Check a CIRCO submission: an object of query id -> 50 distinct integer-like image ids.

    Args:
        path: the JSON file.
        expected_query_ids: every query id that must be present (and no others).
        gallery_ids: allowed image ids (COCO unlabeled2017).

    Returns:
        The parsed file.

    Raises:
        SubmissionFormatError: the first problems, naming the offending query ids.
    """
    path = Path(path)
    data = _read_submission(path)
    allowed = {str(g) for g in gallery_ids} if gallery_ids is not None else None
    problems: list[str] = []
    for qid, ranked in data.items():
        if not str(qid).isdigit():
            problems.append(f"key {qid!r} is not a query id")
            continue
        if not isinstance(ranked, list):
            problems.append(f"query {qid}: value must be a list of image ids")
            continue
        if len(ranked) != CIRCO_K:
            problems.append(f"query {qid}: {len(ranked)} ids, expected {CIRCO_K}")
        as_str = [str(r) for r in ranked]
        if not all(s.isdigit() for s in as_str):
            problems.append(f"query {qid}: ids must be integers (or integer strings)")
        if len(set(as_str)) != len(as_str):
            problems.append(f"query {qid}: duplicate ids")
        if allowed is not None:
            unknown = [s for s in as_str if s not in allowed]
            if unknown:
                problems.append(f"query {qid}: unknown image ids {unknown[:3]}")
    if expected_query_ids is not None:
        want = {str(q) for q in expected_query_ids}
        missing = sorted(want - set(data))
        extra = sorted(set(data) - want)
        if missing:
            problems.append(f"{len(missing)} query ids missing, e.g. {missing[:3]}")
        if extra:
            problems.append(f"{len(extra)} unexpected query ids, e.g. {extra[:3]}")
    _raise_if(problems, path)
    return data
