"""GeneCIS loader (METHOD.md 8.4).

Four subsets: ``focus_attribute`` and ``change_attribute`` (Visual Genome crops), ``focus_object`` and
``change_object`` (COCO val2017 images). Each template is ``{reference, target, gallery, condition}``; each
image entry is a dict: attribute subsets give ``image_id`` + ``instance_bbox`` ``[x, y, w, h]``, object
subsets give ``val_image_id``. Candidates of a query are ``[target] + gallery`` (target at index 0).

Default layout (``root`` = the GeneCIS folder; every piece can be overridden)::

    root/genecis/{subset}.json          (or root/{subset}.json; templates, JSON not pickle)
    root/VG_100K_all/{image_id}.jpg      (attribute subsets)
    root/val2017/{val_image_id:012d}.jpg (object subsets)

Attribute crops follow the official rule (:func:`genecis_crop_box`) and are padded to a black square
(:func:`pad_to_square`) before the encoder's own preprocessing. Like the official object loader, object
templates whose gallery length differs from the most common length are dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rtd.data.benchmarks import BenchmarkFormatError, read_json, require

logger = logging.getLogger(__name__)

__all__ = [
    "GENECIS_SUBSETS",
    "GeneCISImage",
    "GeneCISBenchmark",
    "genecis_crop_box",
    "pad_to_square",
    "load_genecis",
]

GENECIS_SUBSETS = ("focus_attribute", "change_attribute", "focus_object", "change_object")


@dataclass(frozen=True)
class GeneCISImage:
    """One image (or crop) of a GeneCIS template.

    Attributes:
        id: VG ``image_id`` or COCO ``val_image_id``, as a string.
        path: the image file.
        bbox: ``(x, y, w, h)`` instance box for attribute subsets, else None.
    """

    id: str
    path: Path
    bbox: tuple[float, float, float, float] | None = None

    @property
    def key(self) -> tuple[str, tuple[float, ...] | None]:
        """Identity of the pixels this entry yields (image id plus crop)."""
        return (self.id, self.bbox)

    def open(self):
        """The RGB ``PIL.Image``: cropped and padded to a black square for attribute entries."""
        from rtd.data.benchmarks import load_image

        if self.bbox is None:
            return load_image(self.path)
        return load_image(self.path, bbox=self.bbox, square_pad=True)


@dataclass(frozen=True)
class GeneCISBenchmark:
    """One GeneCIS subset: per-query candidate lists instead of a shared gallery.

    Attributes:
        subset: one of :data:`GENECIS_SUBSETS`.
        conditions: ``[Q]`` condition texts.
        references: ``[Q]`` reference images.
        candidates: ``[Q][1 + n]`` candidate images, the target first.
    """

    subset: str
    conditions: list[str]
    references: list[GeneCISImage]
    candidates: list[list[GeneCISImage]]

    @property
    def name(self) -> str:
        return f"genecis_{self.subset}"

    def __len__(self) -> int:
        return len(self.conditions)

    def unique_images(self) -> list[GeneCISImage]:
        """Every distinct (image, crop) over references and candidates, in first-seen order."""
        seen: dict[Any, GeneCISImage] = {}
        for ref, cands in zip(self.references, self.candidates):
            for im in (ref, *cands):
                seen.setdefault(im.key, im)
        return list(seen.values())

    def take(self, n: int | None) -> "GeneCISBenchmark":
        """The first ``n`` queries (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return GeneCISBenchmark(self.subset, self.conditions[:n], self.references[:n], self.candidates[:n])


def genecis_crop_box(bbox: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """The official GeneCIS attribute crop of an ``[x, y, w, h]`` box in a ``width x height`` image.

    left = max(0, x - 0.7w), top = max(0, y - 0.7h), right = min(W, left + 1.7w),
    bottom = min(H, top + 1.7h). The dilation is therefore one-sided (towards the top-left) unless clamped.

    Returns:
        ``(left, top, right, bottom)`` for ``PIL.Image.crop``.
    """
    if len(bbox) != 4:
        raise ValueError(f"instance_bbox must be [x, y, w, h], got {list(bbox)!r}")
    x, y, w, h = (float(v) for v in bbox)
    left = max(0.0, x - 0.7 * w)
    top = max(0.0, y - 0.7 * h)
    right = min(float(width), left + 1.7 * w)
    bottom = min(float(height), top + 1.7 * h)
    return (left, top, right, bottom)


def pad_to_square(img):
    """Pad a PIL image with black to a centred square of side ``max(W, H)``."""
    from PIL import Image

    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new("RGB", (side, side), (0, 0, 0))
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def _entry(entry: Any, path: Path, where: str, is_attribute: bool, vg_dir: Path, coco_dir: Path) -> GeneCISImage:
    if is_attribute:
        image_id = require(entry, "image_id", path, where, (int, str))
        bbox = require(entry, "instance_bbox", path, where, (list, tuple))
        if len(bbox) != 4:
            raise BenchmarkFormatError(f"{path}: {where} key 'instance_bbox' must have 4 numbers [x, y, w, h]")
        box = (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3]))
        return GeneCISImage(str(image_id), vg_dir / f"{image_id}.jpg", box)
    image_id = require(entry, "val_image_id", path, where, (int, str))
    return GeneCISImage(str(image_id), coco_dir / f"{int(image_id):012d}.jpg")


def load_genecis(
    root: str | Path,
    subset: str,
    annotations_path: str | Path | None = None,
    vg_dir: str | Path | None = None,
    coco_dir: str | Path | None = None,
    keep_most_common_gallery_len: bool | None = None,
) -> GeneCISBenchmark:
    """Read one GeneCIS subset.

    Args:
        root: the GeneCIS root (see the module docstring for the default layout).
        subset: one of :data:`GENECIS_SUBSETS`.
        annotations_path: the template JSON; default ``root/genecis/{subset}.json`` or ``root/{subset}.json``.
        vg_dir: Visual Genome image folder; default ``root/VG_100K_all``.
        coco_dir: COCO val2017 image folder; default ``root/val2017``.
        keep_most_common_gallery_len: drop templates whose gallery length differs from the most common one.
            Default: True for object subsets (official loader), False for attribute subsets.

    Returns:
        A :class:`GeneCISBenchmark`.

    Raises:
        BenchmarkFormatError: the template file is missing or a template lacks a key.
    """
    if subset not in GENECIS_SUBSETS:
        raise ValueError(f"unknown GeneCIS subset {subset!r}; available: {', '.join(GENECIS_SUBSETS)}")
    root = Path(root)
    if annotations_path is None:
        candidates = [root / "genecis" / f"{subset}.json", root / f"{subset}.json"]
        annotations_path = next((p for p in candidates if p.is_file()), candidates[0])
    path = Path(annotations_path)
    vg = Path(vg_dir) if vg_dir is not None else root / "VG_100K_all"
    coco = Path(coco_dir) if coco_dir is not None else root / "val2017"
    is_attribute = subset.endswith("_attribute")
    if keep_most_common_gallery_len is None:
        keep_most_common_gallery_len = not is_attribute

    rows = read_json(path)
    if not isinstance(rows, list):
        raise BenchmarkFormatError(f"{path}: expected a list of templates, got {type(rows).__name__}")
    lengths = [len(require(r, "gallery", path, i, list)) for i, r in enumerate(rows)]
    keep_len = Counter(lengths).most_common(1)[0][0] if (rows and keep_most_common_gallery_len) else None

    conditions, references, candidates_all = [], [], []
    dropped = 0
    for i, row in enumerate(rows):
        if keep_len is not None and lengths[i] != keep_len:
            dropped += 1
            continue
        cond = require(row, "condition", path, i, str)
        ref = _entry(require(row, "reference", path, i), path, f"{i} (reference)", is_attribute, vg, coco)
        tgt = _entry(require(row, "target", path, i), path, f"{i} (target)", is_attribute, vg, coco)
        gal = [
            _entry(e, path, f"{i} (gallery[{j}])", is_attribute, vg, coco) for j, e in enumerate(row["gallery"])
        ]
        conditions.append(cond)
        references.append(ref)
        candidates_all.append([tgt, *gal])
    if dropped:
        logger.info("GeneCIS %s: dropped %d templates whose gallery length is not %s", subset, dropped, keep_len)
    logger.info("GeneCIS %s: %d queries", subset, len(conditions))
    return GeneCISBenchmark(subset=subset, conditions=conditions, references=references, candidates=candidates_all)
