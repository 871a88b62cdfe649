"""The text proxy of CIR: images replaced by their BLIP-2 captions (docs: PROXY_BASELINES.md).

Reads the vendored files under ``data/text_proxy`` (built by ``scripts/build_text_proxy.py``; sources and
licenses in ``data/ATTRIBUTION.md``) into the same :class:`CIRBenchmark` shape as the image loaders. Gallery
items are captions; ``gallery.group_ids`` gives identical captions the same id, which the tie rule of
:mod:`rtd.eval.metrics` needs (different images often share a BLIP-2 caption, especially in FashionIQ).

Splits: ``cirr_val`` (reference removed from its own ranking), ``fiq_val_dress``, ``fiq_val_shirt``,
``fiq_val_toptee`` (reference kept). Training files: see :data:`TRAINING_FILES`.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from rtd.data.benchmarks import (
    BenchmarkFormatError,
    CIRBenchmark,
    CIRQueries,
    Gallery,
    group_ids_from_keys,
)

logger = logging.getLogger(__name__)

__all__ = [
    "TEXT_PROXY_SPLITS",
    "TRAINING_FILES",
    "DEFAULT_TEXT_PROXY_DIR",
    "resolve_text_proxy_dir",
    "text_proxy_file",
    "read_jsonl_gz",
    "write_jsonl_gz",
    "load_text_proxy",
]

TEXT_PROXY_SPLITS = ("cirr_val", "fiq_val_dress", "fiq_val_shirt", "fiq_val_toptee", "cirr_trainsel")
# name -> file; each row holds the fields named in the file name's kind (triplets / captions).
TRAINING_FILES = {
    "cirr_train": "cirr_train.triplets.jsonl.gz",
    "cirr_train_captions": "cirr_train.captions.jsonl.gz",
    "ip2p": "ip2p.triplets.jsonl.gz",
    "coco_val2017_captions": "coco_val2017.captions.jsonl.gz",
}
DEFAULT_TEXT_PROXY_DIR = "data/text_proxy"
_ENV_VAR = "RTD_TEXT_PROXY_DIR"

_QUERY_KEYS = {
    "cirr": ("pairid", "reference", "target", "caption", "members", "reference_caption"),
    "fiq": ("candidate", "target", "captions", "reference_caption"),
}
_GALLERY_KEYS = ("id", "caption")


def resolve_text_proxy_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the text-proxy folder.

    Order: ``data_dir`` if it exists; else ``$RTD_TEXT_PROXY_DIR``; else ``data/text_proxy`` in the current
    directory; else ``data/text_proxy`` next to the ``rtd`` package (the repository checkout). A relative
    ``data_dir`` that does not exist from the current directory is also tried against the checkout.

    Raises:
        FileNotFoundError: none of these exists; the message lists what was tried.
    """
    repo_root = Path(__file__).resolve().parents[3]
    tried: list[Path] = []
    if data_dir is not None:
        p = Path(data_dir)
        tried.append(p)
        if not p.is_absolute():
            tried.append(repo_root / p)
    else:
        if os.environ.get(_ENV_VAR):
            tried.append(Path(os.environ[_ENV_VAR]))
        tried += [Path(DEFAULT_TEXT_PROXY_DIR), repo_root / DEFAULT_TEXT_PROXY_DIR]
    for p in tried:
        if p.is_dir():
            return p
    raise FileNotFoundError(
        "text-proxy data not found; tried " + ", ".join(str(p) for p in tried)
        + ". Build it with: python scripts/build_text_proxy.py --shared <shared/data> --out data/text_proxy"
    )


def text_proxy_file(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of a vendored training file (``cirr_train``, ``ip2p``, ...; see :data:`TRAINING_FILES`)."""
    try:
        fname = TRAINING_FILES[name]
    except KeyError:
        raise KeyError(f"unknown text-proxy training file {name!r}; available: {sorted(TRAINING_FILES)}") from None
    return resolve_text_proxy_dir(data_dir) / fname


def read_jsonl_gz(path: str | os.PathLike[str], required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Read a (gzipped if the name ends in ``.gz``) JSON Lines file.

    Args:
        path: the file.
        required: keys every row must have.

    Raises:
        BenchmarkFormatError: missing file, a line that is not a JSON object, or a missing key; the message
            names the file, the line number and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFormatError(f"missing text-proxy file: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[dict[str, Any]] = []
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchmarkFormatError(f"{path}: line {lineno} is not valid JSON ({e})") from e
            if not isinstance(row, dict):
                raise BenchmarkFormatError(f"{path}: line {lineno} is a {type(row).__name__}, expected an object")
            for key in required:
                if key not in row:
                    raise BenchmarkFormatError(f"{path}: line {lineno} has no key {key!r} (keys: {sorted(row)})")
            rows.append(row)
    return rows


def write_jsonl_gz(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> int:
    """Write rows as deterministic gzipped JSON Lines (mtime 0); returns the number of rows."""
    buf = io.BytesIO()
    n = 0
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
            n += 1
    Path(path).write_bytes(buf.getvalue())
    return n


def _split_parts(split: str) -> tuple[str, str]:
    if split not in TEXT_PROXY_SPLITS:
        raise ValueError(f"unknown text-proxy split {split!r}; available: {', '.join(TEXT_PROXY_SPLITS)}")
    if split == "cirr_val":
        return "cirr", "cirr"
    if split == "cirr_trainsel":  # model-selection split from held-out CIRR train triplets
        return "cirr", "cirr_trainsel"
    return "fiq", "fiq_" + split[len("fiq_val_"):]


def load_text_proxy(split: str, data_dir: str | os.PathLike[str] | None = None) -> CIRBenchmark:
    """Load a text-proxy split (cached per resolved folder and split).

    Args:
        split: one of :data:`TEXT_PROXY_SPLITS`.
        data_dir: the folder with the vendored files (see :func:`resolve_text_proxy_dir`).

    Returns:
        A :class:`CIRBenchmark` (``name`` = ``cirr`` or ``fiq_<cat>``, ``split`` = ``val``) whose gallery has
        ``captions`` and ``group_ids`` and whose queries have ``reference_captions``; no paths.

    Raises:
        BenchmarkFormatError: a file is missing or malformed, or a query names an id outside the gallery.
    """
    folder = resolve_text_proxy_dir(data_dir).resolve()
    return _load_cached(split, str(folder))


@functools.lru_cache(maxsize=16)
def _load_cached(split: str, folder: str) -> CIRBenchmark:
    kind, name = _split_parts(split)
    q_path = Path(folder) / f"{split}.queries.jsonl.gz"
    g_path = Path(folder) / f"{split}.gallery.jsonl.gz"
    g_rows = read_jsonl_gz(g_path, _GALLERY_KEYS)
    captions = [str(r["caption"]) for r in g_rows]
    gallery = Gallery(
        ids=[str(r["id"]) for r in g_rows],
        captions=captions,
        group_ids=group_ids_from_keys(captions),
    )
    q_rows = read_jsonl_gz(q_path, _QUERY_KEYS[kind])
    if kind == "cirr":
        ids = [str(r["pairid"]) for r in q_rows]
        refs = [str(r["reference"]) for r in q_rows]
        texts = [[str(r["caption"])] for r in q_rows]
        members: list[list[str]] | None = [[str(m) for m in r["members"]] for r in q_rows]
    else:
        ids = [str(i) for i in range(len(q_rows))]
        refs = [str(r["candidate"]) for r in q_rows]
        texts = []
        for lineno, r in enumerate(q_rows, start=1):
            if not isinstance(r["captions"], list) or len(r["captions"]) != 2:
                raise BenchmarkFormatError(f"{q_path}: line {lineno} key 'captions' must be a list of 2 strings")
            texts.append([str(c) for c in r["captions"]])
        members = None
    targets = [str(r["target"]) for r in q_rows]
    for lineno, (t, r) in enumerate(zip(targets, q_rows), start=1):
        if t not in gallery._index:
            raise BenchmarkFormatError(f"{q_path}: line {lineno} key 'target' {t!r} is not in {g_path}")
        if members is not None:
            for m in (refs[lineno - 1], *members[lineno - 1]):
                if m not in gallery._index:
                    raise BenchmarkFormatError(f"{q_path}: line {lineno} names image {m!r}, not in {g_path}")
    queries = CIRQueries(
        ids=ids,
        reference_ids=refs,
        texts=texts,
        target_ids=targets,
        members=members,
        reference_captions=[str(r["reference_caption"]) for r in q_rows],
    )
    logger.info("text proxy %s: %d queries, %d gallery captions", split, len(queries), len(gallery))
    return CIRBenchmark(name=name, split="val", queries=queries, gallery=gallery, remove_reference=(kind == "cirr"))
