"""Loaders for the CIR evaluation benchmarks and the vendored text proxy (METHOD.md section 8).

Every loader returns a :class:`CIRBenchmark`: a set of queries (reference id, modification text(s), ground
truth) and one shared gallery (ids plus image paths, or captions for the text proxy). GeneCIS has a separate
gallery per query and returns a :class:`~rtd.data.benchmarks.genecis.GeneCISBenchmark` instead.

Loaders read the official on-disk layouts, check them, and raise :class:`BenchmarkFormatError` naming the
file, row and key when something is off. They do not open images (see :func:`load_image`).

Example:
    >>> bench = load_benchmark("cirr", "/datasets/CIRR", split="val")
    >>> bench.queries.texts[0], bench.gallery.ids[:2]
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rtd.eval.metrics import group_ids_from_keys

logger = logging.getLogger(__name__)

__all__ = [
    "BenchmarkFormatError",
    "CIRQueries",
    "Gallery",
    "CIRBenchmark",
    "group_ids_from_keys",
    "load_image",
    "load_benchmark",
    "BENCHMARK_NAMES",
]


class BenchmarkFormatError(ValueError):
    """A benchmark file is missing or malformed; the message names the file, the row and the key."""


@dataclass(frozen=True)
class Gallery:
    """The candidate set every query of a split is ranked against.

    Attributes:
        ids: ``[G]`` image ids (CIRR image names, FashionIQ ASINs, CIRCO COCO ids as strings).
        paths: ``[G]`` image files, or None for the text proxy.
        captions: ``[G]`` caption per item for the text proxy, else None.
        group_ids: ``[G]`` int64; items with the identical caption share an id (text-proxy ties). None for images.
    """

    ids: list[str]
    paths: list[Path] | None = None
    captions: list[str] | None = None
    group_ids: np.ndarray | None = None
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("paths", "captions", "group_ids"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"Gallery.{name} has {len(value)} entries, ids has {n}")
        self._index.update({k: i for i, k in enumerate(self.ids)})
        if len(self._index) != n:
            raise ValueError(f"Gallery ids are not unique ({n - len(self._index)} duplicates)")

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, item_id: str) -> int:
        """Position of ``item_id`` in the gallery; KeyError names the id if absent."""
        try:
            return self._index[item_id]
        except KeyError:
            raise KeyError(f"id {item_id!r} is not in the gallery ({len(self.ids)} items)") from None

    def indices_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """``[N]`` int64 gallery positions of ``item_ids``."""
        return np.fromiter((self.index_of(i) for i in item_ids), dtype=np.int64, count=len(item_ids))


@dataclass(frozen=True)
class CIRQueries:
    """Composed queries of one split.

    Attributes:
        ids: ``[Q]`` query ids (CIRR ``pairid``, CIRCO ``id``, FashionIQ row index), as strings.
        reference_ids: ``[Q]`` reference image id.
        texts: ``[Q]`` list of modification texts: one for CIRR/CIRCO, two relative captions for FashionIQ.
        target_ids: ``[Q]`` the single ground-truth target, or None on test splits.
        gt_ids: ``[Q]`` every ground truth (CIRCO ``gt_img_ids``); None where only ``target_ids`` exist.
        members: ``[Q]`` CIRR ``img_set.members`` (6 ids incl. the reference), else None.
        reference_paths: ``[Q]`` reference image files, or None for the text proxy.
        reference_captions: ``[Q]`` caption of the reference (text proxy), else None.
    """

    ids: list[str]
    reference_ids: list[str]
    texts: list[list[str]]
    target_ids: list[str] | None = None
    gt_ids: list[list[str]] | None = None
    members: list[list[str]] | None = None
    reference_paths: list[Path] | None = None
    reference_captions: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("reference_ids", "texts", "target_ids", "gt_ids", "members", "reference_paths",
                     "reference_captions"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"CIRQueries.{name} has {len(value)} entries, ids has {n}")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, n: int | None) -> "CIRQueries":
        """The first ``n`` queries (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return self.select(range(n))

    def select(self, rows: Sequence[int]) -> "CIRQueries":
        """The queries at positions ``rows``, in that order."""
        rows = list(rows)

        def pick(v: list | None) -> list | None:
            return None if v is None else [v[i] for i in rows]

        return CIRQueries(
            ids=pick(self.ids),  # type: ignore[arg-type]
            reference_ids=pick(self.reference_ids),  # type: ignore[arg-type]
            texts=pick(self.texts),  # type: ignore[arg-type]
            target_ids=pick(self.target_ids),
            gt_ids=pick(self.gt_ids),
            members=pick(self.members),
            reference_paths=pick(self.reference_paths),
            reference_captions=pick(self.reference_captions),
        )


@dataclass(frozen=True)
class CIRBenchmark:
    """One benchmark split: queries plus the shared gallery.

    Attributes:
        name: ``cirr``, ``fiq_dress`` / ``fiq_shirt`` / ``fiq_toptee``, ``circo``; text proxy: the split name.
        split: ``val``, ``test1``, ``test``, ...
        queries: the composed queries.
        gallery: the candidates.
        remove_reference: whether the reference is deleted from its own ranking (CIRR only).
    """

    name: str
    split: str
    queries: CIRQueries
    gallery: Gallery
    remove_reference: bool = False

    @property
    def has_ground_truth(self) -> bool:
        return self.queries.target_ids is not None or self.queries.gt_ids is not None


def read_json(path: Path) -> Any:
    """Parse a JSON file, raising :class:`BenchmarkFormatError` that names it when missing or invalid."""
    if not path.is_file():
        raise BenchmarkFormatError(f"missing benchmark file: {path}")
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(f"{path}: not valid JSON ({e})") from e


def require(row: Any, key: str, path: Path, index: int | str, types: type | tuple[type, ...] | None = None) -> Any:
    """``row[key]`` with an error naming the file, row and key when the row or the key is wrong."""
    if not isinstance(row, dict):
        raise BenchmarkFormatError(f"{path}: row {index} is a {type(row).__name__}, expected an object")
    if key not in row:
        raise BenchmarkFormatError(f"{path}: row {index} has no key {key!r} (keys: {sorted(row)})")
    value = row[key]
    if types is not None and not isinstance(value, types):
        want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise BenchmarkFormatError(
            f"{path}: row {index} key {key!r} is a {type(value).__name__}, expected {want}"
        )
    return value


def load_image(path: str | Path, bbox: Sequence[float] | None = None, square_pad: bool = False):
    """Open an image as RGB, optionally crop a GeneCIS box and pad it to a black square.

    Args:
        path: image file.
        bbox: ``[x, y, w, h]`` instance box; the GeneCIS attribute crop rule is applied
            (:func:`rtd.data.benchmarks.genecis.genecis_crop_box`).
        square_pad: pad the (cropped) image to a square with black, centred.

    Returns:
        A ``PIL.Image.Image`` in RGB mode.
    """
    from PIL import Image

    with Image.open(path) as im:
        img = im.convert("RGB")
    if bbox is not None:
        from rtd.data.benchmarks.genecis import genecis_crop_box

        img = img.crop(genecis_crop_box(bbox, img.width, img.height))
    if square_pad:
        from rtd.data.benchmarks.genecis import pad_to_square

        img = pad_to_square(img)
    return img


BENCHMARK_NAMES = (
    "cirr",
    "fiq_dress",
    "fiq_shirt",
    "fiq_toptee",
    "circo",
    "genecis_focus_attribute",
    "genecis_change_attribute",
    "genecis_focus_object",
    "genecis_change_object",
)


def load_benchmark(name: str, root: str | Path, split: str | None = None, **kwargs: Any):
    """Load a benchmark by name from its official layout.

    Args:
        name: one of :data:`BENCHMARK_NAMES` (``fashioniq_<cat>`` is accepted for ``fiq_<cat>``).
        root: the dataset root (``CIRR/``, ``FashionIQ/``, ``CIRCO/`` or the GeneCIS root).
        split: the split; default ``val`` (``test`` for GeneCIS, which has one split).
        **kwargs: passed to the specific loader.

    Returns:
        A :class:`CIRBenchmark`, or a ``GeneCISBenchmark`` for GeneCIS subsets.
    """
    from rtd.data.benchmarks import circo, cirr, fashioniq, genecis

    key = name.replace("fashioniq_", "fiq_")
    if key == "cirr":
        return cirr.load_cirr(root, split or "val", **kwargs)
    if key.startswith("fiq_"):
        return fashioniq.load_fashioniq(root, key[len("fiq_"):], split or "val", **kwargs)
    if key == "circo":
        return circo.load_circo(root, split or "val", **kwargs)
    if key.startswith("genecis_"):
        return genecis.load_genecis(root, key[len("genecis_"):], **kwargs)
    raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARK_NAMES)}")
