"""Ray Data ingest for RTD triplets and LinCIR captions.

Pipeline (driver side, lazy): ``read_rows`` (one read task per file, JSONL / JSON array / Parquet / CSV / TXT,
files or folders, local paths or cloud URIs, optionally gzip) parses and validates every row *inside the read
task*, so heterogeneous or malformed input never reaches Arrow's type inference: each output row carries the
cleaned text fields, ``_path``, ``_row`` and ``_bad`` (the reason, ``""`` when the row is valid). Then

* :func:`count_rows` - one pass that sums the per-reason counts into a :class:`IngestStats` (they go into every
  metrics report and the run summary); with ``on_bad_rows="fail"`` the read task raises :class:`BadRowError`
  at the first bad row, naming the file and the row, and :func:`count_rows` re-raises it on the driver;
* :func:`tokenize_rtd` / :func:`tokenize_phi` - ``map_batches`` that drops bad rows and tokenizes on CPU, padded
  to the model's full context length so blocks concatenate (the training step trims every batch to its longest
  row, so the padding costs nothing in the model);
* :class:`RayBatchSource` - inside a Train worker, ``get_dataset_shard(...).iter_torch_batches`` wrapped as the
  ``batch_source`` that :func:`rtd.train.loop.fit` consumes (frozen embeddings looked up in the
  :class:`~rtd.train.cache.FrozenEmbeddingCache`, resume = skip to the step's position in its epoch).

Resource note (ENV.md 2a): read and tokenize run as plain tasks with fractional CPUs (``DATA_TASK_CPUS``); an
actor pool with whole CPUs deadlocks on a 2-CPU machine next to two Train workers.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import queue
import random
import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch

from rtd.config import DataConfig, FieldMap, ModelConfig, PhiMaskingConfig, PromptConfig, RTDMethodConfig
from rtd.data.batching import query_texts
from rtd.data.triplets import BAD_ROW_REASONS, BadRowError, RowStats, Triplet, check_fields, clean_caption

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow
    import ray.data

__all__ = [
    "DATA_TASK_CPUS",
    "MALFORMED",
    "IngestStats",
    "BadRowError",
    "build_tokenizer",
    "read_rows",
    "count_rows",
    "tokenize_rtd",
    "tokenize_phi",
    "unique_texts",
    "RayBatchSource",
]

logger = logging.getLogger(__name__)

# CPUs per Ray Data read / map task: small, so Data never starves next to fractional-CPU Train workers.
DATA_TASK_CPUS = 0.25
# Reason for a line that is not a JSON object (one of BAD_ROW_REASONS).
MALFORMED = "malformed"
ALL_REASONS = BAD_ROW_REASONS
_FILE_EXTENSIONS = ["jsonl", "json", "parquet", "csv", "txt", "gz"]
_ROWS_PER_BLOCK = 1024


@dataclass
class IngestStats(RowStats):
    """:class:`RowStats` that also reports ``malformed`` rows (invalid JSON / not an object)."""

    def as_metrics(self, prefix: str = "data/") -> dict[str, int]:
        out = {f"{prefix}rows_read": self.read, f"{prefix}rows_kept": self.kept}
        for reason in sorted(set(ALL_REASONS) | set(self.bad)):
            out[f"{prefix}bad_rows/{reason}"] = int(self.bad.get(reason, 0))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"read": self.read, "kept": self.kept, "bad": dict(self.bad)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IngestStats":
        return cls(read=int(d["read"]), kept=int(d["kept"]), bad=Counter({k: int(v) for k, v in d["bad"].items()}))


# --------------------------------------------------------------------------------------------------- tokenizer


@functools.lru_cache(maxsize=8)
def _tokenizer_cached(model_json: str, placeholder: str):
    """One tokenizer per (model, placeholder) per process: Data tasks reuse their worker process."""
    cfg = ModelConfig.model_validate_json(model_json)
    from rtd.model.backends import HFTokenizer, OpenClipTokenizer, builtin_model_config_dir, resolve_hf_path

    if cfg.backend == "open_clip":
        import open_clip

        for d in filter(None, [builtin_model_config_dir(), cfg.model_config_dir]):
            open_clip.add_model_config(d)
        mc = open_clip.get_model_config(cfg.name)
        if mc is None:
            raise ValueError(f"unknown open_clip model name {cfg.name!r}; accepted: {', '.join(open_clip.list_models())}")
        ctx = cfg.context_length or int(mc.get("text_cfg", {}).get("context_length", 77))
        return OpenClipTokenizer(cfg.name, context_length=ctx, placeholder=placeholder)
    if cfg.backend == "hf_clip":
        from transformers import AutoConfig

        path = resolve_hf_path(cfg.name)
        conf = AutoConfig.from_pretrained(path)
        text_conf = getattr(conf, "text_config", conf)
        ctx = cfg.context_length or int(text_conf.max_position_embeddings)
        return OpenClipTokenizer("ViT-B-32", context_length=ctx, placeholder=placeholder)
    return HFTokenizer(resolve_hf_path(cfg.name), context_length=cfg.context_length or 128, placeholder=placeholder)


def build_tokenizer(model: ModelConfig, placeholder: str = "$"):
    """The tokenizer of ``model`` without loading any weights (mirrors ``rtd.model.backends.build_encoders``)."""
    return _tokenizer_cached(model.model_dump_json(), placeholder)


# --------------------------------------------------------------------------------------------------- reading


def _fmt_of(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    parts = [p for p in os.path.basename(path).split(".")[1:] if p != "gz"]
    return {"jsonl": "jsonl", "json": "json", "parquet": "parquet", "csv": "csv", "txt": "txt"}.get(
        parts[-1] if parts else "", "jsonl")


def _raw_rows(f: "pyarrow.NativeFile", path: str, kind: str) -> Iterator[tuple[int, Any]]:
    """(row number, dict | error string) for one file; row numbers are 0-based lines / array indices / rows."""
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(pa.BufferReader(f.read()))
        i = 0
        for batch in pf.iter_batches(batch_size=_ROWS_PER_BLOCK):
            for row in batch.to_pylist():
                yield i, row
                i += 1
        return
    text = io.TextIOWrapper(io.BytesIO(f.read()), encoding="utf-8")
    if kind == "csv":
        for i, row in enumerate(csv.DictReader(text)):
            yield i, row
    elif kind == "json":
        try:
            data = json.load(text)
        except json.JSONDecodeError as e:
            raise BadRowError(f"{path}: invalid JSON array file: {e}") from e
        if not isinstance(data, list):
            raise BadRowError(f"{path}: a JSON triplet file must hold an array of objects, got {type(data).__name__}")
        for i, row in enumerate(data):
            yield i, row if isinstance(row, dict) else "not a JSON object"
    elif kind == "txt":
        for i, line in enumerate(text):
            yield i, {"caption": line.rstrip("\n")}
    else:
        for i, line in enumerate(text):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield i, f"invalid JSON: {e}"
                continue
            yield i, row if isinstance(row, dict) else "not a JSON object"


def _check(row: Any, names: Sequence[str], max_chars: int) -> tuple[list[str] | None, str, str]:
    """(values, "", "") for a valid row, else (None, reason, field): the core rule, plus malformed lines."""
    if isinstance(row, str):
        return None, MALFORMED, "<row>"
    vals, reason, name = check_fields(row, names, max_chars)
    return vals, reason or "", name or ""


def _datasource_class():
    from ray.data.datasource import FileBasedDatasource

    class ValidatedRowsDatasource(FileBasedDatasource):
        """Parses and validates rows in the read task; see the module docstring for the output columns."""

        _FILE_EXTENSIONS = _FILE_EXTENSIONS

        def __init__(self, paths, *, fmt: str, fields: dict[str, str], max_chars: int, on_bad_rows: str, **kw):
            super().__init__(paths, **kw)
            self._fmt, self._fields, self._max, self._fail = fmt, dict(fields), max_chars, on_bad_rows == "fail"

        def _read_stream(self, f, path: str):
            import pyarrow as pa

            out_names, src_names = list(self._fields), list(self._fields.values())
            cols: dict[str, list] = {k: [] for k in ["_path", "_row", "_bad", *out_names]}

            def flush():
                table = pa.table({"_path": pa.array(cols["_path"], pa.string()),
                                  "_row": pa.array(cols["_row"], pa.int64()),
                                  "_bad": pa.array(cols["_bad"], pa.string()),
                                  **{k: pa.array(cols[k], pa.string()) for k in out_names}})
                for v in cols.values():
                    v.clear()
                return table

            for i, row in _raw_rows(f, path, _fmt_of(path, self._fmt)):
                vals, reason, name = _check(row, src_names, self._max)
                if vals is None and self._fail:
                    detail = f" ({row})" if isinstance(row, str) else ""
                    raise BadRowError(f"{path} row {i}: field {name!r} is {reason}{detail}")
                cols["_path"].append(path)
                cols["_row"].append(i)
                cols["_bad"].append(reason)
                for k, v in zip(out_names, vals or [""] * len(out_names)):
                    cols[k].append(v)
                if len(cols["_row"]) >= _ROWS_PER_BLOCK:
                    yield flush()
            if cols["_row"]:
                yield flush()

    return ValidatedRowsDatasource


def read_rows(data: DataConfig, fields: dict[str, str], shuffle_files: bool = False) -> "ray.data.Dataset":
    """Lazy Dataset of validated rows.

    Args:
        data: the ``data`` config section (``paths``, ``format``, ``max_chars``, ``on_bad_rows``).
        fields: output column -> source field name, e.g. ``{"reference": "reference_caption", ...}``.
        shuffle_files: read the files in a random order (training).

    Raises:
        ValueError: no paths configured.
    """
    import ray.data

    if not data.paths:
        raise ValueError("data.paths is empty: give training files or folders (data.paths=[a.jsonl,b/])")
    src = _datasource_class()(list(data.paths), fmt=data.format, fields=fields, max_chars=data.max_chars,
                              on_bad_rows=data.on_bad_rows, shuffle="files" if shuffle_files else None)
    return ray.data.read_datasource(src, num_cpus=DATA_TASK_CPUS)


def triplet_fields(fm: FieldMap) -> dict[str, str]:
    return {"reference": fm.reference, "conditioning": fm.conditioning, "target": fm.target}


def _count_batch(batch: "pyarrow.Table") -> "pyarrow.Table":
    import pyarrow as pa

    c = Counter(batch.column("_bad").to_pylist())
    return pa.table({"reason": pa.array(list(c), pa.string()), "n": pa.array(list(c.values()), pa.int64())})


def _unwrap_bad_row(e: BaseException) -> BadRowError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, BadRowError):
            return e
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException) and id(cause) not in seen:
            if isinstance(cause, BadRowError):
                return cause
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return None


def count_rows(ds: "ray.data.Dataset") -> IngestStats:
    """One pass over ``read_rows`` output: rows read, kept, and bad rows per reason.

    Raises:
        BadRowError: with ``on_bad_rows="fail"``, the first bad row a read task met (file and row named).
    """
    try:
        parts = ds.map_batches(_count_batch, batch_format="pyarrow", batch_size=None, num_cpus=DATA_TASK_CPUS,
                               zero_copy_batch=True).take_all()
    except Exception as e:  # Ray wraps task errors (RayTaskError / UserCodeException); surface ours as-is.
        bad = _unwrap_bad_row(e)
        if bad is not None:
            raise BadRowError(str(bad)) from None
        if "BadRowError" in str(e):
            msg = next((ln.split("BadRowError:", 1)[1].strip() for ln in str(e).splitlines() if "BadRowError:" in ln),
                       str(e))
            raise BadRowError(msg) from None
        raise
    c: Counter = Counter()
    for p in parts:
        c[p["reason"]] += int(p["n"])
    kept = c.pop("", 0)
    return IngestStats(read=kept + sum(c.values()), kept=kept, bad=Counter({k: v for k, v in c.items() if v}))


def unique_texts(ds: "ray.data.Dataset", columns: Sequence[str]) -> list[str]:
    """Sorted unique cleaned texts of ``columns`` over the valid rows (the frozen-cache keys)."""

    def _clean(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["_bad"] == ""
        vals = sorted({clean_caption(t) for c in columns for t in batch[c][ok].tolist()})
        return {"text": np.array(vals, dtype=object)}

    rows = ds.map_batches(_clean, batch_format="numpy", batch_size=4096, num_cpus=DATA_TASK_CPUS).unique("text")
    return sorted(rows)


# --------------------------------------------------------------------------------------------------- tokenize


def _ids(tb) -> tuple[np.ndarray, np.ndarray]:
    return tb.ids.numpy().astype(np.int32), tb.mask.numpy().astype(np.int8)


class _RTDTokenize:
    """``map_batches`` fn: drop bad rows, build the query strings, tokenize padded to the full context."""

    def __init__(self, model: ModelConfig, prompts: PromptConfig, rtd: RTDMethodConfig, frozen_ids: bool):
        self.model, self.prompts, self.rtd, self.frozen_ids = model, prompts, rtd, frozen_ids

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tok = build_tokenizer(self.model, self.prompts.placeholder)
        ok = batch["_bad"] == ""
        trips = [Triplet(r, c, t) for r, c, t in zip(batch["reference"][ok].tolist(), batch["conditioning"][ok].tolist(),
                                                      batch["target"][ok].tolist())]
        n = len(trips)
        out: dict[str, np.ndarray] = {
            "target_text": np.array([clean_caption(t.target) for t in trips], dtype=object),
            "reference_text": np.array([clean_caption(t.reference) for t in trips], dtype=object),
        }
        if n == 0:
            L = tok.context_length
            empty_i, empty_m = np.zeros((0, L), np.int32), np.zeros((0, L), np.int8)
            for k in ("qc", "qp", "t", "r"):
                out[f"{k}_ids"], out[f"{k}_mask"] = empty_i, empty_m
            return self._select(out)
        q = query_texts(trips, self.prompts, self.rtd)  # composed (+ plain) in batch order
        out["qc_ids"], out["qc_mask"] = _ids(tok(q[:n], trim=False))
        if self.rtd.refined_batch_sampling:
            out["qp_ids"], out["qp_mask"] = _ids(tok(q[n:], trim=False))
        if self.frozen_ids:
            out["t_ids"], out["t_mask"] = _ids(tok(list(out["target_text"]), trim=False))
            out["r_ids"], out["r_mask"] = _ids(tok(list(out["reference_text"]), trim=False))
        return out

    def _select(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        drop = set()
        if not self.rtd.refined_batch_sampling:
            drop |= {"qp_ids", "qp_mask"}
        if not self.frozen_ids:
            drop |= {"t_ids", "t_mask", "r_ids", "r_mask"}
        return {k: v for k, v in out.items() if k not in drop}


def tokenize_rtd(ds: "ray.data.Dataset", model: ModelConfig, prompts: PromptConfig, rtd: RTDMethodConfig,
                 frozen_ids: bool, batch_size: int = 256) -> "ray.data.Dataset":
    """Valid rows -> fixed-length token columns (``qc_*`` composed query, ``qp_*`` plain query, ``t_*``/``r_*``
    frozen-tower inputs when the cache is off) plus ``target_text``/``reference_text`` (cache keys)."""
    return ds.map_batches(_RTDTokenize(model, prompts, rtd, frozen_ids), batch_format="numpy", batch_size=batch_size,
                          num_cpus=DATA_TASK_CPUS)


class _PhiTokenize:
    """``map_batches`` fn for phi: caption + masked caption (fresh masks each time the dataset is executed)."""

    def __init__(self, model: ModelConfig, prompts: PromptConfig, masking: PhiMaskingConfig):
        self.model, self.prompts, self.masking = model, prompts, masking

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from rtd.data.masking import mask_caption

        tok = build_tokenizer(self.model, self.prompts.placeholder)
        ok = batch["_bad"] == ""
        caps = [clean_caption(c) for c in batch["caption"][ok].tolist()]
        if not caps:
            L = tok.context_length
            z, zm = np.zeros((0, L), np.int32), np.zeros((0, L), np.int8)
            return {"c_ids": z, "c_mask": zm, "m_ids": z, "m_mask": zm}
        rng = random.Random(int.from_bytes(os.urandom(8), "little"))
        ph = self.prompts.placeholder
        masked = [mask_caption(c, rng, self.masking.mode, ph, self.masking.max_span, self.masking.full_mask_prob,
                               self.prompts.plain) for c in caps]
        m = tok(masked, trim=False)
        lost = ~(m.ids == tok.placeholder_id).any(1)  # truncation cut the placeholder: plain prompt (LinCIR 4.2)
        if bool(lost.any()):
            masked = [self.prompts.plain if lost[i] else s for i, s in enumerate(masked)]
            m = tok(masked, trim=False)
        c_ids, c_mask = _ids(tok(caps, trim=False))
        m_ids, m_mask = _ids(m)
        return {"c_ids": c_ids, "c_mask": c_mask, "m_ids": m_ids, "m_mask": m_mask}


def tokenize_phi(ds: "ray.data.Dataset", model: ModelConfig, prompts: PromptConfig, masking: PhiMaskingConfig,
                 batch_size: int = 256) -> "ray.data.Dataset":
    """Valid caption rows -> ``c_*`` (caption) and ``m_*`` (masked caption) token columns."""
    return ds.map_batches(_PhiTokenize(model, prompts, masking), batch_format="numpy", batch_size=batch_size,
                          num_cpus=DATA_TASK_CPUS)


# --------------------------------------------------------------------------------------------------- worker side


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a).astype(np.int64))


class RayBatchSource:
    """``fit``'s batch source over a Ray Train dataset shard.

    Every rank gets the same number of rows per epoch (``streaming_split(equal=True)``), so every rank runs the
    same number of steps per epoch (``steps_per_epoch``, computed on the driver from the kept-row count) and calls
    ``report`` equally often. ``batches(start_step)`` resumes at the step's position inside its epoch by skipping
    the batches already trained on; the local shuffle is seeded by (seed, epoch, rank).

    Args:
        shard: ``ray.train.get_dataset_shard("train")``.
        kind: ``rtd`` or ``phi``.
        batch_size: rows (triplets / captions) per worker per step.
        steps_per_epoch: batches per rank per pass over the data.
        stats: the ingest counts (reported in every metrics row).
        cache: frozen-embedding cache (RTD with ``data.use_cache``), else the frozen-tower ids travel in the batch.
        refined: refined batch sampling (queries = composed + plain).
        seed, rank: shuffle seeding.
        shuffle_buffer: rows in the local shuffle buffer (0 = no shuffle).
    """

    def __init__(self, shard, kind: str, batch_size: int, steps_per_epoch: int, stats: RowStats,
                 cache=None, refined: bool = True, seed: int = 0, rank: int = 0, shuffle_buffer: int = 0,
                 prefetch_batches: int = 2, read_ahead: int = 0):
        if steps_per_epoch < 1:
            raise ValueError("steps_per_epoch must be >= 1 (fewer valid rows than one global batch?)")
        self.shard, self.kind, self.B, self.per_epoch, self.stats = shard, kind, batch_size, steps_per_epoch, stats
        self.cache, self.refined, self.seed, self.rank = cache, refined, seed, rank
        self.shuffle_buffer, self.prefetch, self.read_ahead = shuffle_buffer, prefetch_batches, read_ahead

    def _collate(self, b: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        if self.kind == "phi":
            return {"caption_ids": _t(b["c_ids"]), "caption_mask": _t(b["c_mask"]),
                    "masked_ids": _t(b["m_ids"]), "masked_mask": _t(b["m_mask"])}
        if self.refined:
            out = {"query_ids": _t(np.concatenate([b["qc_ids"], b["qp_ids"]])),
                   "query_mask": _t(np.concatenate([b["qc_mask"], b["qp_mask"]]))}
        else:
            out = {"query_ids": _t(b["qc_ids"]), "query_mask": _t(b["qc_mask"])}
        if self.cache is not None:
            out["target_emb"] = self.cache.get(list(b["target_text"]))
            out["reference_emb"] = self.cache.get(list(b["reference_text"]))
        else:
            out.update(target_ids=_t(b["t_ids"]), target_mask=_t(b["t_mask"]),
                       reference_ids=_t(b["r_ids"]), reference_mask=_t(b["r_mask"]))
        return out

    def _collate_fn(self):
        from ray.data.collate_fn import NumpyBatchCollateFn

        source = self

        class _Collate(NumpyBatchCollateFn):
            def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
                return source._collate(batch)

        return _Collate()

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches from ``start_step`` on, epoch after epoch; with ``read_ahead`` > 0 a background thread keeps
        that many ready, so the next epoch's iterator starts while the step still works on the last ones."""
        if self.read_ahead > 0:
            return read_ahead(functools.partial(self._epochs, start_step), self.read_ahead)
        return self._epochs(start_step)

    def _epochs(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        epoch, skip = divmod(start_step, self.per_epoch)
        collate = self._collate_fn()
        while True:
            kw: dict[str, Any] = {}
            if self.shuffle_buffer:
                kw = {"local_shuffle_buffer_size": self.shuffle_buffer,
                      "local_shuffle_seed": (self.seed * 1_000_003 + epoch * 1009 + self.rank) % 2**31}
            n = 0
            for batch in self.shard.iter_torch_batches(batch_size=self.B, drop_last=True, collate_fn=collate,
                                                       prefetch_batches=self.prefetch, **kw):
                if n >= self.per_epoch:
                    break  # equal splits: never more, but never run past the epoch length either
                n += 1
                if skip:
                    skip -= 1
                    continue
                yield batch
            if n < self.per_epoch:
                raise RuntimeError(f"rank {self.rank}: epoch {epoch} gave {n} batches, expected {self.per_epoch}; "
                                   "the dataset changed under the run or the split is unequal")
            epoch += 1


_END = object()


def read_ahead(make: Callable[[], Iterator[Any]], depth: int, join_timeout_s: float = 30.0) -> Iterator[Any]:
    """Iterates ``make()`` in a daemon thread, at most ``depth`` items ahead of the consumer, in order.

    An error in the producer is re-raised at the consumer's next ``next()`` (after the items produced before it).
    Closing the returned generator (or dropping it) stops the producer, closes ``make()``'s iterator and waits up
    to ``join_timeout_s`` for the thread to end.
    """
    if depth < 1:
        raise ValueError("read_ahead depth must be >= 1")
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = make()
        try:
            for item in it:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as e:  # handed to the consumer, raised there
            put((_END, e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def consume() -> Iterator[Any]:
        thread = threading.Thread(target=produce, name="rtd-read-ahead", daemon=True)
        thread.start()
        try:
            while True:
                item, err = q.get()
                if item is _END:
                    if err is not None:
                        raise err
                    return
                yield item
        finally:
            stop.set()
            thread.join(timeout=join_timeout_s)  # nothing of the producer runs after close (e.g. past ray.shutdown)
            if thread.is_alive():
                logger.warning("read-ahead thread still busy %.0f s after close; left as a daemon", join_timeout_s)

    return consume()
