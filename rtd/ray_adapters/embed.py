"""Gallery embedding with Ray Data batch inference (frozen image tower, or frozen text tower for captions).

``embed_gallery(cfg)`` lists the gallery on the driver (ids are assigned there, so they do not depend on how
Ray splits the work), then ``map_batches(EmbedGalleryBatch, compute=ActorPoolStrategy(size=n))``: each actor
builds the encoder once in ``__init__`` and turns batches of (id, key, metadata) into
(id, embedding, norm, metadata, fingerprint) rows, written as Parquet.

:class:`EmbedGalleryBatch` and :func:`embed_gallery_local` need no Ray (``ray`` is imported inside
:func:`embed_gallery` only), so the same callable is unit-tested in-process and reused by the Serve demo.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtd.config import GalleryEmbedConfig, ModelConfig, ProjectorConfig, PromptConfig, atomic_write_text
from rtd.index.build import stable_id

__all__ = [
    "IMAGE_SUFFIXES",
    "build_frozen_encoder",
    "list_gallery_source",
    "EmbedGalleryBatch",
    "embed_gallery",
    "embed_gallery_local",
    "GALLERY_SIDECAR",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
GALLERY_SIDECAR = "_gallery.json"


def build_frozen_encoder(
    *,
    model: ModelConfig,
    projector: ProjectorConfig | None = None,
    prompts: PromptConfig | None = None,
    checkpoint: str | None = None,
    init_seed: int | None = 0,
    device: str = "cpu",
    load_image_tower: bool = True,
):
    """Build the :class:`~rtd.model.composed.ComposedQueryEncoder` used for galleries and serving.

    With ``checkpoint`` the training run's ``config.yaml`` decides the encoder and its text tower is loaded;
    otherwise ``model``/``projector``/``prompts`` are used with the frozen text tower. Building happens under a
    fixed torch seed (``init_seed``; None = no seeding) so random-init test models come out identical in every
    process, which keeps the frozen-encoder fingerprint stable across the embedding job, the index and Serve.

    Raises:
        FileNotFoundError: ``checkpoint`` is not a checkpoint folder.
    """
    import torch

    from rtd.model.backends import MODEL_INIT_SEED
    from rtd.model.composed import build_query_encoder, has_image_tower, load_query_encoder_from_checkpoint

    with torch.random.fork_rng(devices=[]):
        if init_seed is not None:
            torch.manual_seed(init_seed)
        seed = MODEL_INIT_SEED if init_seed is None else init_seed
        if checkpoint:
            return load_query_encoder_from_checkpoint(checkpoint, device=device, load_image_tower=load_image_tower,
                                                      init_seed=seed)
        want = load_image_tower and has_image_tower(model)
        m = model.model_copy(update={"load_image_tower": want}) if want else model
        return build_query_encoder(m, projector or ProjectorConfig(), prompts or PromptConfig(), device=device,
                                   init_seed=seed)


def _read_table(path: Path):
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    if path.suffix == ".parquet" or path.is_dir():
        return pq.read_table(str(path))
    if path.suffix in (".jsonl", ".json"):
        return pj.read_json(str(path))
    if path.suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        return pa.table({"__key": lines})
    raise ValueError(f"source: unsupported file type {path.suffix!r} (folder, .txt, .parquet, .jsonl)")


def list_gallery_source(cfg: GalleryEmbedConfig) -> dict[str, list]:
    """The gallery rows to embed: ``{"id": [...], "key": [...], "metadata": [...]}``.

    ``key`` is an image path (absolute or under ``image_root``) or a caption. Ids come from ``id_column`` when the
    source has it, else ``stable_id(key)`` (the path relative to the folder/``image_root``, or the caption).

    Raises:
        FileNotFoundError: ``source`` does not exist or a folder holds no images.
        ValueError: a needed column is missing, or ids collide (names the column).
    """
    src = Path(cfg.source)
    if not cfg.source or not src.exists():
        raise FileNotFoundError(f"source: {cfg.source!r} does not exist")
    root = Path(cfg.image_root) if cfg.image_root else None
    extra: list[dict[str, Any]]
    if src.is_dir() and not any(src.glob("*.parquet")):
        if cfg.kind != "image":
            raise ValueError("source: a folder source is only for kind=image (captions need a table)")
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"source: no images ({', '.join(IMAGE_SUFFIXES)}) under {str(src)!r}")
        rel = [str(p.relative_to(src)) for p in files]
        keys, names, ids = [str(p) for p in files], rel, None
        extra = [{} for _ in files]
    else:
        table = _read_table(src)
        col = "__key" if "__key" in table.column_names else (
            cfg.path_column if cfg.kind == "image" else cfg.caption_column)
        if col not in table.column_names:
            raise ValueError(f"{'path_column' if cfg.kind == 'image' else 'caption_column'}: column {col!r} not in "
                             f"{str(src)!r} (columns: {table.column_names})")
        names = [str(v) for v in table.column(col).to_pylist()]
        base = root or (src.parent if src.is_file() else src)
        keys = [n if cfg.kind == "caption" or os.path.isabs(n) else str(base / n) for n in names]
        ids = (table.column(cfg.id_column).to_pylist()
               if cfg.id_column and cfg.id_column in table.column_names else None)
        others = [c for c in table.column_names if c not in (col, "__key", cfg.id_column)]
        extra = table.select(others).to_pylist() if others else [{} for _ in names]
    if ids is None:
        ids = [stable_id(n) for n in names]
    ids = [int(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError(f"id_column: {len(ids) - len(set(ids))} duplicate ids in {str(src)!r}")
    field = "path" if cfg.kind == "image" else "caption"
    meta = [json.dumps({field: n, **e}, default=str) for n, e in zip(names, extra)]
    if cfg.limit:
        ids, keys, meta = ids[: cfg.limit], keys[: cfg.limit], meta[: cfg.limit]
    return {"id": ids, "key": keys, "metadata": meta}


class EmbedGalleryBatch:
    """Ray Data callable: builds the frozen encoder once, then embeds batches.

    Args:
        cfg: a :class:`~rtd.config.GalleryEmbedConfig` as a plain dict (what crosses the process boundary).

    Input batch columns: ``id`` (int64), ``key`` (path or caption), ``metadata`` (JSON string).
    Output: a ``pyarrow.Table`` with ``id``, ``embedding`` (fixed-size list<float32>, unit-norm), ``norm``
    (L2 norm of the raw frozen embedding, so ``raw = embedding * norm`` is what phi expects), ``metadata`` and
    ``fingerprint``. Unreadable images are dropped and counted in the log, not fatal.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.cfg = GalleryEmbedConfig.model_validate(cfg)
        self.encoder = build_frozen_encoder(
            model=self.cfg.model, projector=self.cfg.projector, checkpoint=self.cfg.checkpoint,
            init_seed=self.cfg.init_seed, load_image_tower=self.cfg.kind == "image",
            device="cuda" if self.cfg.gpus_per_actor > 0 else "cpu",
        )
        self.fingerprint = self.encoder.fingerprint
        self.dropped = 0

    def _load_images(self, keys: list[str]) -> tuple[list[Any], np.ndarray]:
        from PIL import Image

        images, ok = [], np.zeros(len(keys), bool)
        for i, k in enumerate(keys):
            try:
                with Image.open(k) as im:
                    if im.width * im.height > self.cfg.max_image_pixels:
                        raise ValueError(f"{im.width}x{im.height} exceeds max_image_pixels")
                    images.append(im.convert("RGB"))
                ok[i] = True
            except Exception as e:  # noqa: BLE001 - a bad file must not kill the whole job
                logger.warning("skipping unreadable image %s: %s", k, e)
        return images, ok

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        keys = [str(k) for k in batch["key"]]
        if self.cfg.kind == "image":
            images, ok = self._load_images(keys)
            raw = self.encoder.encode_reference_images(images) if images else None
        else:
            ok = np.ones(len(keys), bool)
            raw = self.encoder.encode_reference_texts(keys)
        self.dropped += int((~ok).sum())
        d = self.encoder.embed_dim
        emb = raw.float().cpu().numpy() if raw is not None else np.zeros((0, d), np.float32)
        norm = np.linalg.norm(emb, axis=1).astype(np.float32)
        unit = emb / np.maximum(norm, 1e-12)[:, None]
        n = int(ok.sum())
        return pa.table({
            "id": pa.array(np.asarray(batch["id"], np.int64)[ok], pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(unit.astype(np.float32).ravel()), d),
            "norm": pa.array(norm),
            "metadata": pa.array([str(m) for m in np.asarray(batch["metadata"])[ok]], pa.string()),
            "fingerprint": pa.array([self.fingerprint] * n, pa.string()),
        })


def _prepare_output(out: Path) -> None:
    if out.exists():
        stale = [p for p in out.iterdir() if p.suffix == ".parquet" or p.name == GALLERY_SIDECAR]
        for p in stale:
            p.unlink()
        if any(out.iterdir()):
            raise FileExistsError(f"output: {str(out)!r} holds files other than a previous gallery; refusing to mix")
    out.mkdir(parents=True, exist_ok=True)


def _write_sidecar(cfg: GalleryEmbedConfig, out: Path, seconds: float) -> dict[str, Any]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted(out.glob("*.parquet"))
    if not files:
        raise RuntimeError(f"no rows were embedded into {out} (all inputs unreadable?)")
    fps: set[str] = set()
    rows = 0
    for f in files:
        t = pq.read_table(f, columns=["fingerprint"])
        rows += len(t)
        fps |= set(pc.unique(t.column("fingerprint")).to_pylist())
    if len(fps) != 1:
        raise RuntimeError(f"gallery rows carry {len(fps)} encoder fingerprints {sorted(fps)}; expected one")
    info = {"fingerprint": fps.pop(), "kind": cfg.kind, "rows": rows, "seconds": round(seconds, 2),
            "config": cfg.model_dump(mode="json")}
    atomic_write_text(out / GALLERY_SIDECAR, json.dumps(info, indent=2))
    return info


def embed_gallery_local(cfg: GalleryEmbedConfig) -> dict[str, Any]:
    """Embed the gallery in this process (no Ray): tests, demos and small galleries.

    Returns:
        The ``_gallery.json`` summary (fingerprint, kind, rows, seconds).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    rows = list_gallery_source(cfg)
    out = Path(cfg.output)
    _prepare_output(out)
    fn = EmbedGalleryBatch(cfg.model_dump(mode="json"))
    parts = []
    for i in range(0, len(rows["id"]), cfg.batch_size):
        parts.append(fn({k: np.asarray(v[i: i + cfg.batch_size], dtype=object if k != "id" else np.int64)
                         for k, v in rows.items()}))
    pq.write_table(pa.concat_tables(parts), str(out / "part-00000.parquet"))
    return _write_sidecar(cfg, out, time.perf_counter() - t0)


def embed_gallery(cfg: GalleryEmbedConfig) -> dict[str, Any]:
    """Embed the gallery with Ray Data batch inference and write Parquet + ``_gallery.json`` to ``cfg.output``.

    Uses ``map_batches(EmbedGalleryBatch, compute=ActorPoolStrategy(size=cfg.num_actors))`` with fractional
    ``cfg.cpus_per_actor`` (keep ``num_actors=1`` on a 2-CPU machine: two whole-CPU actors plus the read tasks
    can deadlock there). Connects to the running cluster (``ray.init()`` picks up ``RAY_ADDRESS`` under
    ``ray job submit``).

    Returns:
        The ``_gallery.json`` summary (fingerprint, kind, rows, seconds).
    """
    import ray

    t0 = time.perf_counter()
    rows = list_gallery_source(cfg)
    out = Path(cfg.output)
    _prepare_output(out)
    if not ray.is_initialized():
        ray.init()
    ray.data.DataContext.get_current().enable_progress_bars = False
    n = len(rows["id"])
    blocks = max(1, min(cfg.num_actors * 4, (n + cfg.batch_size - 1) // cfg.batch_size))
    ds = ray.data.from_items(
        [{"id": i, "key": k, "metadata": m} for i, k, m in zip(rows["id"], rows["key"], rows["metadata"])],
        override_num_blocks=blocks,
    )
    ds = ds.map_batches(
        EmbedGalleryBatch,
        fn_constructor_kwargs={"cfg": cfg.model_dump(mode="json")},
        batch_size=cfg.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor or None,
    )
    ds.write_parquet(str(out))
    info = _write_sidecar(cfg, out, time.perf_counter() - t0)
    logger.info("embedded %d/%d gallery rows into %s in %.1fs", info["rows"], n, out, info["seconds"])
    return info
