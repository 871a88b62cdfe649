"""FashionIQ loader (METHOD.md 8.2).

Layout (``root`` = the FashionIQ folder)::

    root/captions/cap.{dress,shirt,toptee}.{train,val,test}.json
    root/image_splits/split.{dress,shirt,toptee}.{train,val,test}.json
    root/images/<ASIN>.jpg            (all categories in one folder)

``cap.*.json`` is a list of ``{candidate, target, captions[2]}`` (``target`` absent in test); ``split.*.json``
is the list of gallery ASINs. The reference is NOT removed from the ranking.
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

__all__ = ["load_fashioniq", "FIQ_CATEGORIES", "FIQ_STRIP_CHARS", "join_fiq_captions"]

FIQ_CATEGORIES = ("dress", "shirt", "toptee")
FIQ_SPLITS = ("train", "val", "test")
# Characters stripped from both ends of each relative caption before joining (METHOD.md 8.2).
FIQ_STRIP_CHARS = ".?, "


def join_fiq_captions(c1: str, c2: str) -> str:
    """``"{c1} and {c2}"`` with ``.?,`` and spaces stripped from both ends of each caption."""
    return f"{c1.strip(FIQ_STRIP_CHARS)} and {c2.strip(FIQ_STRIP_CHARS)}"


def load_fashioniq(
    root: str | Path,
    category: str,
    split: str = "val",
    image_ext: str = ".jpg",
    check_images: bool = False,
) -> CIRBenchmark:
    """Read one FashionIQ category split from the official layout.

    Args:
        root: the FashionIQ root (holds ``captions/``, ``image_splits/``, ``images/``).
        category: ``dress``, ``shirt`` or ``toptee``.
        split: ``train``, ``val`` or ``test`` (test has no targets).
        image_ext: image file extension under ``images/``.
        check_images: also check that every gallery and reference image file exists.

    Returns:
        A :class:`CIRBenchmark` named ``fiq_<category>``; query ids are row indices, texts the two relative
        captions (verbatim), reference = ``candidate``.

    Raises:
        BenchmarkFormatError: a file is missing, a row lacks a key, or a target is outside the gallery.
    """
    if category not in FIQ_CATEGORIES:
        raise ValueError(f"unknown FashionIQ category {category!r}; available: {', '.join(FIQ_CATEGORIES)}")
    if split not in FIQ_SPLITS:
        raise ValueError(f"unknown FashionIQ split {split!r}; available: {', '.join(FIQ_SPLITS)}")
    root = Path(root)
    cap_path = root / "captions" / f"cap.{category}.{split}.json"
    split_path = root / "image_splits" / f"split.{category}.{split}.json"
    image_dir = root / "images"

    asins = read_json(split_path)
    if not isinstance(asins, list) or not all(isinstance(a, str) for a in asins):
        raise BenchmarkFormatError(f"{split_path}: expected a list of ASIN strings")
    gallery = Gallery(ids=list(asins), paths=[image_dir / f"{a}{image_ext}" for a in asins])

    rows = read_json(cap_path)
    if not isinstance(rows, list):
        raise BenchmarkFormatError(f"{cap_path}: expected a list of query objects, got {type(rows).__name__}")
    has_target = split != "test"
    refs, texts, targets = [], [], []
    for i, row in enumerate(rows):
        cand = require(row, "candidate", cap_path, i, str)
        caps = require(row, "captions", cap_path, i, list)
        if len(caps) != 2 or not all(isinstance(c, str) for c in caps):
            raise BenchmarkFormatError(f"{cap_path}: row {i} key 'captions' must be a list of 2 strings")
        if has_target:
            tgt = require(row, "target", cap_path, i, str)
            if tgt not in gallery._index:
                raise BenchmarkFormatError(f"{cap_path}: row {i} target {tgt!r} is not in {split_path}")
            targets.append(tgt)
        refs.append(cand)
        texts.append(list(caps))
    ref_paths = [image_dir / f"{a}{image_ext}" for a in refs]
    if check_images:
        missing = [str(p) for p in [*gallery.paths, *ref_paths] if not p.is_file()]  # type: ignore[misc]
        if missing:
            raise BenchmarkFormatError(f"{image_dir}: {len(missing)} image files are missing, e.g. {missing[:3]}")

    queries = CIRQueries(
        ids=[str(i) for i in range(len(refs))],
        reference_ids=refs,
        texts=texts,
        target_ids=targets if has_target else None,
        reference_paths=ref_paths,
    )
    logger.info("FashionIQ %s %s: %d queries, %d gallery images", category, split, len(queries), len(gallery))
    return CIRBenchmark(name=f"fiq_{category}", split=split, queries=queries, gallery=gallery)
