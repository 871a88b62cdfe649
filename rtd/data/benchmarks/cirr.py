"""CIRR loader (METHOD.md 8.1).

Layout (``root`` = the CIRR folder)::

    root/train/<0..99>/*.png   root/dev/*.png   root/test1/*.png
    root/cirr/captions/cap.rc2.{train,val,test1}.json
    root/cirr/image_splits/split.rc2.{train,val,test1}.json

``split.rc2.<s>.json`` maps image name -> relative path (``"./dev/dev-244-0-img0.png"``), resolved against
``root``. ``cap.rc2.<s>.json`` is a list of ``{pairid, reference, target_hard, target_soft, caption, img_set}``;
``target_hard`` / ``target_soft`` are absent in test1. The gallery is the whole split; at evaluation the
reference is removed from its own ranking.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rtd.data.benchmarks import (
    BenchmarkFormatError,
    CIRBenchmark,
    CIRQueries,
    Gallery,
    read_json,
    require,
)

logger = logging.getLogger(__name__)

__all__ = ["load_cirr", "CIRR_SPLITS"]

CIRR_SPLITS = ("train", "val", "test1")


def load_cirr(root: str | Path, split: str = "val", check_images: bool = False) -> CIRBenchmark:
    """Read a CIRR split from the official layout.

    Args:
        root: the CIRR root folder (holds ``cirr/`` and the image folders).
        split: ``train``, ``val`` or ``test1``. Test1 has no targets.
        check_images: also check that every gallery image file exists (slow on big splits).

    Returns:
        A :class:`CIRBenchmark` with ``remove_reference=True``. Queries hold ``pairid`` as ids, the caption
        as the single text, ``target_hard`` as the target (None on test1) and ``img_set.members``.

    Raises:
        BenchmarkFormatError: a file is missing, or a row lacks a key or names an image outside the split.
    """
    if split not in CIRR_SPLITS:
        raise ValueError(f"unknown CIRR split {split!r}; available: {', '.join(CIRR_SPLITS)}")
    root = Path(root)
    cap_path = root / "cirr" / "captions" / f"cap.rc2.{split}.json"
    split_path = root / "cirr" / "image_splits" / f"split.rc2.{split}.json"

    names = read_json(split_path)
    if not isinstance(names, dict):
        raise BenchmarkFormatError(
            f"{split_path}: expected an object mapping image name -> relative path, got {type(names).__name__}"
        )
    ids: list[str] = []
    paths: list[Path] = []
    for name, rel in names.items():
        if not isinstance(rel, str):
            raise BenchmarkFormatError(f"{split_path}: path of image {name!r} is not a string")
        ids.append(name)
        paths.append(root / rel)
    gallery = Gallery(ids=ids, paths=paths)
    if check_images:
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise BenchmarkFormatError(
                f"{split_path}: {len(missing)} image files are missing under {root}, e.g. {missing[:3]}"
            )

    rows = read_json(cap_path)
    if not isinstance(rows, list):
        raise BenchmarkFormatError(f"{cap_path}: expected a list of query objects, got {type(rows).__name__}")
    has_target = split != "test1"
    q_ids, refs, texts, targets, members, ref_paths = [], [], [], [], [], []
    for i, row in enumerate(rows):
        pairid = require(row, "pairid", cap_path, i, (int, str))
        ref = require(row, "reference", cap_path, i, str)
        caption = require(row, "caption", cap_path, i, str)
        img_set = require(row, "img_set", cap_path, i, dict)
        mem = require(img_set, "members", cap_path, f"{i} (img_set)", list)
        check = [ref, *mem]
        if has_target:
            tgt = require(row, "target_hard", cap_path, i, str)
            targets.append(tgt)
            check.append(tgt)
        for name in check:
            if name not in gallery._index:
                raise BenchmarkFormatError(
                    f"{cap_path}: row {i} (pairid {pairid}) names image {name!r}, which is not in {split_path}"
                )
        q_ids.append(str(pairid))
        refs.append(ref)
        texts.append([caption])
        members.append(list(mem))
        ref_paths.append(paths[gallery.index_of(ref)])

    queries = CIRQueries(
        ids=q_ids,
        reference_ids=refs,
        texts=texts,
        target_ids=targets if has_target else None,
        members=members,
        reference_paths=ref_paths,
    )
    logger.info("CIRR %s: %d queries, %d gallery images", split, len(queries), len(gallery))
    return CIRBenchmark(name="cirr", split=split, queries=queries, gallery=gallery, remove_reference=True)
