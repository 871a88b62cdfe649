"""``manifest.json``: what a sharded gallery index holds and how it was built.

The manifest is the contract between ``jobs/build_index.py`` (writer) and the Serve searchers (readers): the
frozen-encoder fingerprint the gallery was embedded with, the vector width and metric, the FAISS factory string,
how ids were assigned to shards, and a SHA-256 checksum of every file so a half-copied shard is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_VERSION",
    "IndexError_",
    "ManifestError",
    "ChecksumError",
    "ShardInfo",
    "Manifest",
    "sha256_file",
    "read_manifest",
    "write_manifest",
    "verify_checksums",
]

MANIFEST_NAME = "manifest.json"
# Bumped when the on-disk layout changes in a way old readers cannot follow.
FORMAT_VERSION = 1


class IndexError_(RuntimeError):
    """Base class for gallery-index errors (named with a trailing underscore to not shadow ``IndexError``)."""


class ManifestError(IndexError_):
    """``manifest.json`` is missing, unreadable, or inconsistent with the files beside it."""


class ChecksumError(IndexError_):
    """A shard file's SHA-256 does not match the manifest (truncated or replaced file)."""


class ShardInfo(BaseModel):
    """One shard: its FAISS index file and the side files that hold item metadata and vectors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shard: int = Field(ge=0)
    count: int = Field(ge=0)
    index_file: str
    items_file: str
    vectors_file: str | None = None
    # file name -> sha256 hex digest, for every file of this shard.
    sha256: dict[str, str]


class Manifest(BaseModel):
    """The description of a sharded gallery index (``<index_dir>/manifest.json``).

    Attributes:
        format_version: on-disk layout version (:data:`FORMAT_VERSION`).
        index_version: content address of the index (hash of every shard checksum); changes whenever any
            shard changes, so clients and caches can key on it.
        fingerprint: the frozen encoder's fingerprint (``ComposedQueryEncoder.fingerprint``); Serve refuses to
            answer queries from an encoder with another fingerprint.
        dim: vector width D.
        metric: ``ip`` (inner product on unit vectors = cosine) or ``l2``.
        factory: the FAISS index-factory string (``Flat``, ``IVF1024,PQ32``, ``HNSW32``).
        num_shards: N; ``shard_strategy`` says how an id maps to a shard (see ``rtd.index.build.assign_shards``).
        ntotal: number of vectors over all shards.
        normalized: whether the indexed vectors are unit-norm (the raw embedding is ``vector * norm``).
        gallery_kind: ``image`` (frozen image tower) or ``caption`` (frozen text tower, the text proxy).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = FORMAT_VERSION
    index_version: str
    fingerprint: str
    dim: int = Field(gt=0)
    metric: Literal["ip", "l2"]
    factory: str
    num_shards: int = Field(ge=1)
    shard_strategy: Literal["hash", "contiguous"]
    ntotal: int = Field(ge=0)
    normalized: bool = True
    gallery_kind: Literal["image", "caption", "unknown"] = "unknown"
    train_sample: int = Field(0, ge=0)
    search_defaults: dict[str, int] = Field(default_factory=dict)
    faiss_version: str = ""
    created_unix: float = 0.0
    shards: list[ShardInfo]
    # Free-form provenance (source parquet, model section of the embedding job ...).
    source: dict[str, object] = Field(default_factory=dict)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(index_dir: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``<index_dir>/manifest.json``.

    Raises:
        ManifestError: the file is missing, not JSON, has an unknown format version or fails validation.
    """
    path = Path(index_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"index_dir {str(index_dir)!r} has no {MANIFEST_NAME}; build it with jobs/build_index.py")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from e
    fv = data.get("format_version")
    if fv != FORMAT_VERSION:
        raise ManifestError(f"{path}: format_version {fv!r} is not supported (this reader: {FORMAT_VERSION})")
    try:
        man = Manifest.model_validate(data)
    except Exception as e:  # pydantic.ValidationError; message lists every bad field
        raise ManifestError(f"{path}: invalid manifest: {e}") from e
    if len(man.shards) != man.num_shards or sorted(s.shard for s in man.shards) != list(range(man.num_shards)):
        raise ManifestError(f"{path}: shards list does not cover 0..{man.num_shards - 1}")
    if sum(s.count for s in man.shards) != man.ntotal:
        raise ManifestError(f"{path}: per-shard counts do not add up to ntotal={man.ntotal}")
    return man


def write_manifest(index_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write the manifest atomically (temp file + rename) so readers never see a partial file."""
    from rtd.config import atomic_write_text

    path = Path(index_dir) / MANIFEST_NAME
    atomic_write_text(path, manifest.model_dump_json(indent=2))
    return path


def verify_checksums(index_dir: str | os.PathLike[str], manifest: Manifest, shards: list[int] | None = None) -> None:
    """Recompute the SHA-256 of the listed shards' files (all shards by default) and compare with the manifest.

    Raises:
        ChecksumError: a file is missing or its digest differs; the message names the file.
    """
    root = Path(index_dir)
    wanted = set(range(manifest.num_shards) if shards is None else shards)
    for info in manifest.shards:
        if info.shard not in wanted:
            continue
        for name, digest in info.sha256.items():
            p = root / name
            if not p.is_file():
                raise ChecksumError(f"shard {info.shard}: file {name!r} listed in the manifest is missing")
            got = sha256_file(p)
            if got != digest:
                raise ChecksumError(f"shard {info.shard}: {name!r} sha256 {got[:12]}… != manifest {digest[:12]}…")
