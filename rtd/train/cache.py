"""Frozen-embedding cache (DESIGN.md 4): frozen-encoder embeddings of T_t and T_r, computed once and reused in
every step, run and sweep trial. Keyed by (frozen-encoder fingerprint, text hash); a miss recomputes.

Layout: ``<root>/<fingerprint>/part-*.npz`` files, each holding ``keys`` (uint64 text hashes) and ``emb``
([n, D] float32). Parts are immutable and written atomically, so concurrent trials may add parts safely.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch


def text_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class FrozenEmbeddingCache:
    def __init__(self, root: str | os.PathLike[str], fingerprint: str):
        self.dir = Path(root) / fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[int, int] = {}
        self._rows: list[np.ndarray] = []
        self._loaded: set[str] = set()
        self.hits = 0
        self.misses = 0
        self.refresh()

    def refresh(self) -> None:
        """Pick up parts written by other processes."""
        for p in sorted(self.dir.glob("part-*.npz")):
            if p.name in self._loaded:
                continue
            with np.load(p) as z:
                keys, emb = z["keys"], z["emb"]
            base = sum(len(r) for r in self._rows)
            self._rows.append(emb.astype(np.float32))
            for i, k in enumerate(keys.tolist()):
                self._index.setdefault(int(k), base + i)
            self._loaded.add(p.name)
        self._matrix = np.concatenate(self._rows) if self._rows else None

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, texts: Sequence[str]) -> list[str]:
        seen, out = set(), []
        for t in texts:
            k = text_key(t)
            if k not in self._index and k not in seen:
                seen.add(k)
                out.append(t)
        return out

    def put(self, texts: Sequence[str], emb: np.ndarray | torch.Tensor) -> None:
        if isinstance(emb, torch.Tensor):
            emb = emb.detach().float().cpu().numpy()
        if len(texts) == 0:
            return
        keys = np.array([text_key(t) for t in texts], dtype=np.uint64)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".npz")
        os.close(fd)
        np.savez(tmp, keys=keys, emb=np.asarray(emb, dtype=np.float32))
        os.replace(tmp, self.dir / f"part-{uuid.uuid4().hex}.npz")
        self.refresh()

    def ensure(self, texts: Sequence[str], encode: Callable[[list[str]], torch.Tensor], batch_size: int = 256) -> int:
        """Compute and store embeddings of the texts not cached yet; returns how many were computed."""
        todo = self.missing(texts)
        for i in range(0, len(todo), batch_size * 16):
            chunk = todo[i : i + batch_size * 16]
            self.put(chunk, encode(chunk))
        self.misses += len(todo)
        return len(todo)

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, D] embeddings; raises KeyError naming the first text that is not cached."""
        idx = []
        for t in texts:
            k = text_key(t)
            if k not in self._index:
                raise KeyError(f"text not in the frozen-embedding cache: {t[:80]!r}")
            idx.append(self._index[k])
        self.hits += len(idx)
        return torch.from_numpy(self._matrix[np.asarray(idx, dtype=np.int64)])
