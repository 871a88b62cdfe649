"""CIRCO loader (METHOD.md 8.3).

Layout (``root`` = the CIRCO folder)::

    root/annotations/{val,test}.json
    root/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json
    root/COCO2017_unlabeled/unlabeled2017/<12-digit id>.jpg

The gallery is every image of ``image_info_unlabeled2017.json`` (``images``: ``{id, file_name}``). Annotation
rows: ``{id, reference_img_id, target_img_id, relative_caption, shared_concept, gt_img_ids}`` (the last two
ground-truth keys only in val). The reference is not removed; ``shared_concept`` is not used.
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

__all__ = ["load_circo", "CIRCO_SPLITS"]

CIRCO_SPLITS = ("val", "test")


def load_circo(root: str | Path, split: str = "val", check_images: bool = False) -> CIRBenchmark:
    """Read a CIRCO split and its COCO-unlabeled gallery.

    Args:
        root: the CIRCO root folder.
        split: ``val`` (with ground truth) or ``test``.
        check_images: also check that every gallery image file exists (123K files; slow).

    Returns:
        A :class:`CIRBenchmark` named ``circo``. Ids are COCO image ids as strings; ``target_ids`` is
        ``target_img_id`` and ``gt_ids`` is ``gt_img_ids`` (val), both None on test.

    Raises:
        BenchmarkFormatError: a file is missing, a row lacks a key, or an id is not in the gallery.
    """
    if split not in CIRCO_SPLITS:
        raise ValueError(f"unknown CIRCO split {split!r}; available: {', '.join(CIRCO_SPLITS)}")
    root = Path(root)
    ann_path = root / "annotations" / f"{split}.json"
    info_path = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    image_dir = root / "COCO2017_unlabeled" / "unlabeled2017"

    info = read_json(info_path)
    images = require(info, "images", info_path, "<root>", list)
    ids, paths = [], []
    for i, im in enumerate(images):
        ids.append(str(require(im, "id", info_path, f"images[{i}]", (int, str))))
        paths.append(image_dir / require(im, "file_name", info_path, f"images[{i}]", str))
    gallery = Gallery(ids=ids, paths=paths)
    if check_images:
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise BenchmarkFormatError(f"{image_dir}: {len(missing)} image files are missing, e.g. {missing[:3]}")

    rows = read_json(ann_path)
    if not isinstance(rows, list):
        raise BenchmarkFormatError(f"{ann_path}: expected a list of query objects, got {type(rows).__name__}")
    has_gt = split == "val"
    q_ids, refs, texts, targets, gts, ref_paths = [], [], [], [], [], []
    for i, row in enumerate(rows):
        qid = require(row, "id", ann_path, i, (int, str))
        ref = str(require(row, "reference_img_id", ann_path, i, (int, str)))
        text = require(row, "relative_caption", ann_path, i, str)
        check = [ref]
        if has_gt:
            tgt = str(require(row, "target_img_id", ann_path, i, (int, str)))
            gt = [str(g) for g in require(row, "gt_img_ids", ann_path, i, list)]
            if not gt:
                raise BenchmarkFormatError(f"{ann_path}: row {i} key 'gt_img_ids' is empty")
            targets.append(tgt)
            gts.append(gt)
            check += [tgt, *gt]
        for name in check:
            if name not in gallery._index:
                raise BenchmarkFormatError(
                    f"{ann_path}: row {i} (id {qid}) names image {name}, which is not in {info_path}"
                )
        q_ids.append(str(qid))
        refs.append(ref)
        texts.append([text])
        ref_paths.append(paths[gallery.index_of(ref)])

    queries = CIRQueries(
        ids=q_ids,
        reference_ids=refs,
        texts=texts,
        target_ids=targets if has_gt else None,
        gt_ids=gts if has_gt else None,
        reference_paths=ref_paths,
    )
    logger.info("CIRCO %s: %d queries, %d gallery images", split, len(queries), len(gallery))
    return CIRBenchmark(name="circo", split=split, queries=queries, gallery=gallery)
