"""Evaluation core: the text proxy (PROXY_BASELINES.md) and the image benchmarks (METHOD.md 8).

The encoder is anything with the methods of :class:`QueryEncoderProtocol` (the project's
``rtd.model.composed.ComposedQueryEncoder`` is the real one; tests use a fake). Nothing here imports the model
package, so evaluation and baselines work without it.

Entry points:
    :func:`evaluate_text_proxy`              composed queries of an encoder on the vendored text proxy.
    :func:`evaluate_text_proxy_text_queries` text-only baselines (rows 1, 2, 3a, 5'' of PROXY_BASELINES.md).
    :func:`evaluate_text_proxy_tfidf`        the TF-IDF floor (needs scikit-learn).
    :func:`run_proxy_baselines`              all of the above baselines at once.
    :func:`evaluate_benchmark`               CIRR / FashionIQ / CIRCO / GeneCIS with images; test splits
                                             write server submissions instead of metrics.

Every function returns ``{metric_key: value x100}`` with the keys of :mod:`rtd.eval.metrics`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from rtd.data.benchmarks import CIRBenchmark, CIRQueries, load_benchmark, load_image
from rtd.data.benchmarks.fashioniq import FIQ_CATEGORIES, join_fiq_captions
from rtd.data.benchmarks.genecis import GENECIS_SUBSETS, GeneCISBenchmark
from rtd.data.benchmarks.text_proxy import DEFAULT_TEXT_PROXY_DIR, load_text_proxy, resolve_text_proxy_dir
from rtd.eval import metrics as M
from rtd.eval import submission as S

logger = logging.getLogger(__name__)

__all__ = [
    "QueryEncoderProtocol",
    "DEFAULT_TEMPLATE",
    "TEXT_PROXY_EVAL_SPLITS",
    "PROXY_QUERY_BUILDERS",
    "BASELINE_ROWS",
    "fiq_query_texts",
    "evaluate_text_proxy",
    "evaluate_text_proxy_text_queries",
    "evaluate_text_proxy_tfidf",
    "run_proxy_baselines",
    "evaluate_benchmark",
]

DEFAULT_TEMPLATE = "a photo of $ that {}"
# Accepted ``split`` values of the text-proxy evaluators.
TEXT_PROXY_EVAL_SPLITS = (
    "cirr_val",
    "cirr_val_sub",
    "fiq_val",
    "fiq_val_dress",
    "fiq_val_shirt",
    "fiq_val_toptee",
    "cirr_trainsel",
    "all",
)
# cirr_val_sub: every CIRR_SUB_STRIDE-th CIRR val query (1,046 of 4,181), for fast validation during training.
CIRR_SUB_STRIDE = 4


@runtime_checkable
class QueryEncoderProtocol(Protocol):
    """What the evaluators need from an encoder (duck-typed; ``ComposedQueryEncoder`` implements it)."""

    def encode_reference_texts(self, texts: list[str]) -> torch.Tensor:
        """``[N, D]`` frozen text embeddings: phi's input in place of an image embedding (text proxy)."""
        ...

    def encode_reference_images(self, images: list[Any]) -> torch.Tensor:
        """``[N, D]`` frozen image embeddings (phi's input)."""
        ...

    def encode_queries(
        self, ref_emb: torch.Tensor | None, texts: list[str], template: str | None = None
    ) -> torch.Tensor:
        """``[N, D]`` L2-normalised composed queries: ``template`` with ``$`` := phi(ref_emb), ``{}`` := text."""
        ...

    def encode_gallery_texts(self, texts: list[str]) -> torch.Tensor:
        """``[N, D]`` L2-normalised embeddings by the FROZEN text encoder."""
        ...

    def encode_gallery_images(self, images: list[Any]) -> torch.Tensor:
        """``[N, D]`` L2-normalised embeddings by the frozen image tower."""
        ...


# --------------------------------------------------------------------------------------------------- helpers


def _batched(fn: Callable[[list[Any]], torch.Tensor], items: Sequence[Any], batch_size: int) -> torch.Tensor:
    """Apply ``fn`` to consecutive batches under no_grad and concatenate to a float32 CPU tensor ``[N, D]``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            feats = fn(list(items[i : i + batch_size]))
            out.append(torch.as_tensor(feats).detach().float().cpu())
    if not out:
        raise ValueError("nothing to encode")
    return torch.cat(out)


# Frozen-encoder features (gallery captions, reference captions) keyed by (encoder fingerprint, kind, split,
# count); only used when the encoder exposes a non-empty ``fingerprint`` string naming its frozen weights.
_FROZEN_CACHE: "OrderedDict[tuple[Any, ...], torch.Tensor]" = OrderedDict()
_FROZEN_CACHE_SIZE = 16


def _cached_frozen(
    encoder: Any, key: tuple[Any, ...], compute: Callable[[], torch.Tensor], use_cache: bool
) -> torch.Tensor:
    fingerprint = getattr(encoder, "fingerprint", None)
    if not use_cache or not isinstance(fingerprint, str) or not fingerprint:
        return compute()
    full_key = (fingerprint, *key)
    if full_key in _FROZEN_CACHE:
        _FROZEN_CACHE.move_to_end(full_key)
        return _FROZEN_CACHE[full_key]
    value = compute()
    _FROZEN_CACHE[full_key] = value
    while len(_FROZEN_CACHE) > _FROZEN_CACHE_SIZE:
        _FROZEN_CACHE.popitem(last=False)
    return value


def _unique(values: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Unique values in first-seen order and ``[N]`` int64 positions of each value among them."""
    inverse = M.group_ids_from_keys(values)
    first: dict[int, str] = {}
    for v, g in zip(values, inverse.tolist()):
        first.setdefault(g, v)
    return [first[i] for i in range(len(first))], inverse


def fiq_query_texts(captions: Sequence[Sequence[str]], reverse: bool = False) -> list[str]:
    """FashionIQ modification texts ``"{c1} and {c2}"`` (``"{c2} and {c1}"`` with ``reverse``).

    Each caption is stripped of ``.?,`` and spaces at both ends (METHOD.md 8.2, PROXY_BASELINES.md).
    """
    return [join_fiq_captions(c[1], c[0]) if reverse else join_fiq_captions(c[0], c[1]) for c in captions]


def _encode_composed(
    encoder: QueryEncoderProtocol,
    ref_emb: torch.Tensor,
    ref_inverse: np.ndarray,
    texts: Sequence[str],
    template: str | None,
    batch_size: int,
) -> torch.Tensor:
    """``[Q, D]`` normalised composed queries; ``ref_emb`` ``[R, D]`` holds one row per unique reference."""
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            rows = torch.as_tensor(ref_inverse[i : i + batch_size])
            q = encoder.encode_queries(ref_emb[rows], list(texts[i : i + batch_size]), template)
            out.append(torch.as_tensor(q).detach().float().cpu())
    return F.normalize(torch.cat(out), dim=-1)


def _composed_query_features(
    encoder: QueryEncoderProtocol,
    bench: CIRBenchmark,
    ref_emb: torch.Tensor,
    ref_inverse: np.ndarray,
    template: str | None,
    fiq_two_orders: bool,
    batch_size: int,
) -> torch.Tensor:
    """``[Q, D]`` query features for a CIRR-/CIRCO-style (one text) or FashionIQ-style (two captions) split."""
    if bench.name.startswith("fiq_"):
        q = _encode_composed(encoder, ref_emb, ref_inverse, fiq_query_texts(bench.queries.texts), template, batch_size)
        if fiq_two_orders:
            q2 = _encode_composed(
                encoder, ref_emb, ref_inverse, fiq_query_texts(bench.queries.texts, reverse=True), template, batch_size
            )
            q = F.normalize(q + q2, dim=-1)  # normalize(normalize(f(q1)) + normalize(f(q2)))
        return q
    return _encode_composed(encoder, ref_emb, ref_inverse, [t[0] for t in bench.queries.texts], template, batch_size)


def _gallery_metrics(
    bench: CIRBenchmark,
    query_feats: torch.Tensor,
    gallery_feats: torch.Tensor,
    gallery_inverse: np.ndarray | None,
    tie_modes: Sequence[str],
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Metrics of a CIRR or FashionIQ split from query features and gallery features.

    Args:
        bench: the split (needs ``target_ids``).
        query_feats: ``[Q, D]`` normalised.
        gallery_feats: ``[U, D]`` normalised; ``U = G`` when ``gallery_inverse`` is None, else the unique items.
        gallery_inverse: ``[G]`` index of each gallery item's row in ``gallery_feats`` (identical captions
            encoded once, so their scores are exactly equal), or None.
        tie_modes: tie modes to report.
        chunk_size: queries scored at a time (bounds the ``[chunk, G]`` score matrix).
    """
    gal, qs = bench.gallery, bench.queries
    if qs.target_ids is None:
        raise ValueError(f"{bench.name} {bench.split} has no ground truth; use a submission writer instead")
    target_idx = gal.indices_of(qs.target_ids)
    ref_idx = gal.indices_of(qs.reference_ids) if bench.remove_reference else None
    member_idx = [gal.indices_of(m) for m in qs.members] if (bench.remove_reference and qs.members) else None
    group_ids = gal.group_ids
    full_parts, sub_parts = [], []
    for i in range(0, len(qs), chunk_size):
        sl = slice(i, i + chunk_size)
        s = (query_feats[sl] @ gallery_feats.T).numpy()  # [c, U]
        if gallery_inverse is not None:
            s = s[:, gallery_inverse]  # [c, G]
        if bench.remove_reference:
            full, sub = M.cirr_rank_stats(
                s, target_idx[sl], ref_idx[sl], None if member_idx is None else member_idx[sl], group_ids
            )
            full_parts.append(full)
            if sub is not None:
                sub_parts.append(sub)
        else:
            full_parts.append(M.target_rank_stats(s, target_idx[sl], None, group_ids))
    full = M.TargetRankStats.concat(full_parts)
    if bench.name == "cirr":
        return M.cirr_metrics_from_stats(full, M.TargetRankStats.concat(sub_parts) if sub_parts else None, tie_modes)
    if bench.name.startswith("fiq_"):
        return M.fashioniq_metrics_from_stats(full, bench.name[len("fiq_"):], tie_modes)
    return M.recall_at_k(full, M.CIRR_KS, f"{bench.name}_recall", tie_modes)


def _proxy_splits(split: str) -> list[str]:
    if split not in TEXT_PROXY_EVAL_SPLITS:
        raise ValueError(f"unknown text-proxy split {split!r}; available: {', '.join(TEXT_PROXY_EVAL_SPLITS)}")
    if split == "fiq_val":
        return [f"fiq_val_{c}" for c in FIQ_CATEGORIES]
    if split == "all":
        return ["cirr_val", *(f"fiq_val_{c}" for c in FIQ_CATEGORIES)]
    return [split]


def _load_proxy(split: str, data_dir: str | os.PathLike[str] | None, max_queries: int | None) -> CIRBenchmark:
    base = "cirr_val" if split == "cirr_val_sub" else split
    bench = load_text_proxy(base, data_dir)
    queries: CIRQueries = bench.queries
    if split == "cirr_val_sub":
        queries = queries.select(range(0, len(queries), CIRR_SUB_STRIDE))
    queries = queries.take(max_queries)
    return CIRBenchmark(bench.name, bench.split, queries, bench.gallery, bench.remove_reference)


def _with_fiq_average(out: dict[str, float], cats_done: Sequence[str]) -> dict[str, float]:
    if len(cats_done) == len(FIQ_CATEGORIES):
        out.update(M.fashioniq_average(out, FIQ_CATEGORIES))
    return out


# --------------------------------------------------------------------------------------------------- text proxy


def evaluate_text_proxy(
    encoder: QueryEncoderProtocol,
    split: str,
    data_dir: str | os.PathLike[str] | None = DEFAULT_TEXT_PROXY_DIR,
    max_queries: int | None = None,
    batch_size: int = 256,
    template: str | None = None,
    fiq_two_orders: bool = False,
    tie_modes: Sequence[str] = ("expected",),
    cache_frozen: bool = True,
) -> dict[str, float]:
    """Evaluate an encoder's composed queries on the text proxy.

    Query: ``encode_queries(encode_reference_texts(reference caption), modification, template)``, with the
    reference embedding computed once per unique reference caption. Gallery: ``encode_gallery_texts`` of every
    unique caption (identical captions get identical scores and are scored with the tie rule of
    :mod:`rtd.eval.metrics`). CIRR removes the reference from its ranking; FashionIQ does not.

    FashionIQ: the proxy protocol of PROXY_BASELINES.md uses only ``"{c1} and {c2}"`` (``fiq_two_orders=False``,
    the default here, so numbers are comparable with that table). ``fiq_two_orders=True`` averages the
    normalised features of ``"{c1} and {c2}"`` and ``"{c2} and {c1}"`` as METHOD.md 8.2 does for images.

    Args:
        encoder: see :class:`QueryEncoderProtocol`.
        split: one of :data:`TEXT_PROXY_EVAL_SPLITS`; ``fiq_val`` runs the three categories and adds
            ``fiq_avg_recall@K``; ``all`` runs CIRR and the three FashionIQ categories; ``cirr_val_sub`` is every
            4th CIRR val query.
        data_dir: folder of the vendored files (relative paths are also tried against the repository root).
        max_queries: use only the first N queries of each split (smoke tests, quick validation).
        batch_size: texts per encoder call.
        template: composed prompt; None = the encoder's default (``"a photo of $ that {}"``).
        fiq_two_orders: see above.
        tie_modes: any of ``expected`` (default), ``optimistic``, ``pessimistic``.
        cache_frozen: keep the frozen gallery and reference-caption features in memory between calls (repeated
            validation during training) when the encoder has a ``fingerprint`` string; they come from the
            frozen encoder, so only the query side is recomputed.

    Returns:
        ``{key: value x100}``, e.g. ``cirr_recall@10``, ``cirr_recall_subset@1``, ``fiq_dress_recall@10``.
    """
    out: dict[str, float] = {}
    cats: list[str] = []
    source = str(resolve_text_proxy_dir(data_dir).resolve())
    for name in _proxy_splits(split):
        t0 = time.perf_counter()
        bench = _load_proxy(name, data_dir, max_queries)
        refs_u, ref_inv = _unique(bench.queries.reference_captions or [])
        ref_emb = _cached_frozen(
            encoder, ("ref", source, name, len(bench.queries), len(refs_u)),
            lambda: _batched(encoder.encode_reference_texts, refs_u, batch_size), cache_frozen,
        )  # [R, D]
        q = _composed_query_features(encoder, bench, ref_emb, ref_inv, template, fiq_two_orders, batch_size)
        caps_u, cap_inv = _unique(bench.gallery.captions or [])
        g = _cached_frozen(
            encoder, ("gallery", source, name, len(caps_u)),
            lambda: F.normalize(_batched(encoder.encode_gallery_texts, caps_u, batch_size), dim=-1), cache_frozen,
        )  # [U, D]
        out.update(_gallery_metrics(bench, q, g, cap_inv, tie_modes))
        if bench.name.startswith("fiq_"):
            cats.append(bench.name)
        logger.info("text proxy %s: %d queries in %.1fs", name, len(bench.queries), time.perf_counter() - t0)
    return _with_fiq_average(out, cats)


# Query builders for the text-only baselines: (reference caption, modification text) -> query string.
PROXY_QUERY_BUILDERS: dict[str, Callable[[str, str], str]] = {
    "mod_only": lambda ref, mod: mod,  # row 1
    "ref_only": lambda ref, mod: ref,  # row 2
    "concat": lambda ref, mod: f"{ref} {mod}",  # row 3a
    "concat_comma": lambda ref, mod: f"{ref}, {mod}",  # row 3b
    "prompt": lambda ref, mod: f"a photo of {ref} that {mod}",  # row 3c
    "literal_placeholder": lambda ref, mod: f"a photo of $ that {mod}",  # row 5''
}
# PROXY_BASELINES.md row id -> builder name.
BASELINE_ROWS = {"1": "mod_only", "2": "ref_only", "3a": "concat", "3b": "concat_comma", "3c": "prompt",
                 "5''": "literal_placeholder"}


def evaluate_text_proxy_text_queries(
    encode_fn: Callable[[list[str]], Any],
    split: str,
    query_builder: str | Callable[[str, str], str],
    data_dir: str | os.PathLike[str] | None = DEFAULT_TEXT_PROXY_DIR,
    max_queries: int | None = None,
    batch_size: int = 256,
    tie_modes: Sequence[str] = ("expected",),
) -> dict[str, float]:
    """Text-only baseline on the text proxy: one encoder for queries and gallery, no pseudo-token.

    Reproduces PROXY_BASELINES.md rows 1 (``mod_only``), 2 (``ref_only``), 3a (``concat``), 3b, 3c and
    5'' (``literal_placeholder``) given the MiniLM encode function. FashionIQ's modification is
    ``"{c1} and {c2}"`` (one order, as in that table).

    Args:
        encode_fn: ``list[str] -> [N, D]`` embeddings (normalised here again, so raw ones are fine).
        split: as in :func:`evaluate_text_proxy`.
        query_builder: a key of :data:`PROXY_QUERY_BUILDERS` or ``(reference_caption, modification) -> str``.
        data_dir, max_queries, batch_size, tie_modes: as in :func:`evaluate_text_proxy`.

    Returns:
        ``{key: value x100}``.
    """
    if isinstance(query_builder, str):
        try:
            query_builder = PROXY_QUERY_BUILDERS[query_builder]
        except KeyError:
            raise ValueError(
                f"unknown query builder {query_builder!r}; available: {', '.join(PROXY_QUERY_BUILDERS)}"
            ) from None
    out: dict[str, float] = {}
    cats: list[str] = []
    for name in _proxy_splits(split):
        bench = _load_proxy(name, data_dir, max_queries)
        qs = bench.queries
        mods = fiq_query_texts(qs.texts) if bench.name.startswith("fiq_") else [t[0] for t in qs.texts]
        texts = [query_builder(r, m) for r, m in zip(qs.reference_captions or [], mods)]
        q = F.normalize(_batched(encode_fn, texts, batch_size), dim=-1)
        caps_u, cap_inv = _unique(bench.gallery.captions or [])
        g = F.normalize(_batched(encode_fn, caps_u, batch_size), dim=-1)
        out.update(_gallery_metrics(bench, q, g, cap_inv, tie_modes))
        if bench.name.startswith("fiq_"):
            cats.append(bench.name)
    return _with_fiq_average(out, cats)


def evaluate_text_proxy_tfidf(
    split: str,
    query_builder: str | Callable[[str, str], str] = "concat",
    data_dir: str | os.PathLike[str] | None = DEFAULT_TEXT_PROXY_DIR,
    max_queries: int | None = None,
    tie_modes: Sequence[str] = ("expected",),
) -> dict[str, float]:
    """TF-IDF floor: scikit-learn ``TfidfVectorizer`` fitted on each split's gallery captions.

    Scored with this module's tie rule, so FashionIQ numbers differ from the TF-IDF line of PROXY_BASELINES.md
    (which used another tie rule).

    Raises:
        ImportError: scikit-learn is not installed (the message says so; :func:`run_proxy_baselines` skips).
    """
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError as e:
        raise ImportError("the TF-IDF baseline needs scikit-learn (pip install scikit-learn)") from e
    out: dict[str, float] = {}
    cats: list[str] = []
    for name in _proxy_splits(split):
        captions = _load_proxy(name, data_dir, None).gallery.captions or []
        vec = TfidfVectorizer().fit(sorted(set(captions)))

        def encode(texts: list[str], _vec=vec) -> torch.Tensor:
            return torch.from_numpy(_vec.transform(texts).toarray().astype(np.float32))

        one = evaluate_text_proxy_text_queries(
            encode, name, query_builder, data_dir, max_queries,
            batch_size=4096, tie_modes=tie_modes,
        )
        out.update(one)
        if name.startswith("fiq_"):
            cats.append(name)
    return _with_fiq_average(out, cats)


def run_proxy_baselines(
    encode_fn: Callable[[list[str]], Any] | None,
    split: str = "all",
    rows: Iterable[str] = ("1", "2", "3a", "5''"),
    include_tfidf: bool = True,
    data_dir: str | os.PathLike[str] | None = DEFAULT_TEXT_PROXY_DIR,
    max_queries: int | None = None,
    batch_size: int = 256,
    tie_modes: Sequence[str] = ("expected",),
) -> dict[str, dict[str, float]]:
    """Run PROXY_BASELINES.md text-only rows (and the TF-IDF floor) in one call.

    Args:
        encode_fn: the text encoder (e.g. frozen MiniLM, mean pooled); None runs only TF-IDF.
        split: as in :func:`evaluate_text_proxy`.
        rows: row ids of :data:`BASELINE_ROWS`.
        include_tfidf: add ``tfidf_concat`` and ``tfidf_mod_only``; skipped with a warning without scikit-learn.

    Returns:
        ``{row name: metrics}``, e.g. ``{"1 mod_only": {...}, "tfidf_concat": {...}}``.
    """
    results: dict[str, dict[str, float]] = {}
    if encode_fn is not None:
        for row in rows:
            if row not in BASELINE_ROWS:
                raise ValueError(f"unknown baseline row {row!r}; available: {', '.join(BASELINE_ROWS)}")
            builder = BASELINE_ROWS[row]
            results[f"{row} {builder}"] = evaluate_text_proxy_text_queries(
                encode_fn, split, builder, data_dir, max_queries, batch_size, tie_modes
            )
    if include_tfidf:
        try:
            for builder in ("concat", "mod_only"):
                results[f"tfidf_{builder}"] = evaluate_text_proxy_tfidf(
                    split, builder, data_dir, max_queries, tie_modes
                )
        except ImportError as e:
            logger.warning("skipping the TF-IDF baseline: %s", e)
    return results


# --------------------------------------------------------------------------------------------------- images


def _open_images(paths: Sequence[Any], opener: Callable[[Any], Any], num_workers: int) -> list[Any]:
    if num_workers > 0:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            return list(pool.map(opener, paths))
    return [opener(p) for p in paths]


def _encode_images(
    fn: Callable[[list[Any]], torch.Tensor],
    items: Sequence[Any],
    opener: Callable[[Any], Any],
    batch_size: int,
    num_workers: int,
    what: str,
) -> torch.Tensor:
    """``[N, D]`` features of image items, opened and encoded batch by batch."""
    out = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            imgs = _open_images(items[i : i + batch_size], opener, num_workers)
            out.append(torch.as_tensor(fn(imgs)).detach().float().cpu())
            done = min(i + batch_size, len(items))
            if done == len(items) or (i // batch_size) % 50 == 49:
                logger.info("encoded %d/%d %s (%.1fs)", done, len(items), what, time.perf_counter() - t0)
    if not out:
        raise ValueError(f"no {what} to encode")
    return torch.cat(out)


def _gallery_image_features(
    encoder: QueryEncoderProtocol,
    bench: CIRBenchmark,
    batch_size: int,
    num_workers: int,
    cache_dir: str | os.PathLike[str] | None,
) -> torch.Tensor:
    """``[G, D]`` normalised gallery features, cached on disk per encoder fingerprint when possible."""
    fingerprint = getattr(encoder, "fingerprint", None)
    cache = None
    if cache_dir is not None and fingerprint:
        cache = Path(cache_dir) / f"{bench.name}_{bench.split}_{fingerprint}.pt"
        if cache.is_file():
            feats = torch.load(cache, map_location="cpu")
            if feats.shape[0] == len(bench.gallery):
                logger.info("gallery features from %s", cache)
                return feats
    paths = bench.gallery.paths
    if paths is None:
        raise ValueError(f"{bench.name} gallery has no image paths")
    feats = F.normalize(
        _encode_images(encoder.encode_gallery_images, paths, load_image, batch_size, num_workers, "gallery images"),
        dim=-1,
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(feats, cache)
    return feats


def _image_query_features(
    encoder: QueryEncoderProtocol,
    bench: CIRBenchmark,
    template: str | None,
    fiq_two_orders: bool,
    batch_size: int,
    num_workers: int,
) -> torch.Tensor:
    qs = bench.queries
    refs_u, ref_inv = _unique(qs.reference_ids)
    path_of = dict(zip(qs.reference_ids, qs.reference_paths or []))
    ref_emb = _encode_images(
        encoder.encode_reference_images, [path_of[r] for r in refs_u], load_image, batch_size, num_workers,
        "reference images",
    )  # [R, D], one per unique reference (pseudo-tokens per unique reference)
    return _composed_query_features(encoder, bench, ref_emb, ref_inv, template, fiq_two_orders, batch_size)


def _evaluate_gallery_benchmark(
    encoder: QueryEncoderProtocol,
    bench: CIRBenchmark,
    template: str | None,
    fiq_two_orders: bool,
    batch_size: int,
    num_workers: int,
    cache_dir: str | os.PathLike[str] | None,
    submission_dir: str | os.PathLike[str] | None,
    tie_modes: Sequence[str],
    chunk_size: int = 256,
) -> dict[str, float]:
    q = _image_query_features(encoder, bench, template, fiq_two_orders, batch_size, num_workers)  # [Q, D]
    g = _gallery_image_features(encoder, bench, batch_size, num_workers, cache_dir)  # [G, D]
    gal, qs = bench.gallery, bench.queries

    if bench.name == "circo":
        ranked: list[list[str]] = []
        for i in range(0, len(qs), chunk_size):
            top = M.topk_indices((q[i : i + chunk_size] @ g.T).numpy(), 50)  # [c, 50]
            ranked.extend([[gal.ids[j] for j in row] for row in top.tolist()])
        if qs.gt_ids is None:
            return _write_submission(bench, ranked, None, submission_dir)
        return M.circo_metrics(ranked, qs.gt_ids, qs.target_ids)

    if not bench.has_ground_truth:  # CIRR test1
        ref_idx = gal.indices_of(qs.reference_ids)
        member_idx = [gal.indices_of(m) for m in qs.members or []]
        top50: list[list[str]] = []
        top3: list[list[str]] = []
        for i in range(0, len(qs), chunk_size):
            sl = slice(i, i + chunk_size)
            s = (q[sl] @ g.T).numpy()
            t50 = M.topk_indices(s, 50, M.reference_exclude_mask(s.shape[1], ref_idx[sl]))
            top50.extend([[gal.ids[j] for j in row] for row in t50.tolist()])
            if member_idx:
                t3 = M.topk_indices(s, 3, M.subset_exclude_mask(s.shape[1], member_idx[sl], ref_idx[sl]))
                top3.extend([[gal.ids[j] for j in row] for row in t3.tolist()])
        return _write_submission(bench, top50, top3, submission_dir)

    return _gallery_metrics(bench, q, g, None, tie_modes, chunk_size)


def _write_submission(
    bench: CIRBenchmark,
    top50: list[list[str]],
    top3: list[list[str]] | None,
    submission_dir: str | os.PathLike[str] | None,
) -> dict[str, float]:
    if submission_dir is None:
        logger.warning("%s %s has no ground truth and no submission_dir was given: nothing written",
                       bench.name, bench.split)
        return {}
    out_dir = Path(submission_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    qs = bench.queries
    if bench.name == "circo":
        path = S.write_circo_submission(qs.ids, top50, out_dir / f"circo_{bench.split}_submission.json")
        S.validate_circo_submission(path, expected_query_ids=qs.ids)
        logger.info("wrote %s", path)
    else:
        recall_path, subset_path = S.write_cirr_submission(
            qs.ids, top50, top3 or [], out_dir, prefix=f"cirr_{bench.split}"
        )
        S.validate_cirr_submission(recall_path, "recall", expected_pairids=qs.ids,
                                   references=dict(zip(qs.ids, qs.reference_ids)))
        S.validate_cirr_submission(subset_path, "recall_subset", expected_pairids=qs.ids,
                                   references=dict(zip(qs.ids, qs.reference_ids)),
                                   members=dict(zip(qs.ids, qs.members or [])))
        logger.info("wrote %s and %s", recall_path, subset_path)
    return {}


def _evaluate_genecis(
    encoder: QueryEncoderProtocol,
    bench: GeneCISBenchmark,
    template: str | None,
    batch_size: int,
    num_workers: int,
    tie_modes: Sequence[str],
) -> dict[str, float]:
    refs_u: dict[Any, Any] = {}
    for r in bench.references:
        refs_u.setdefault(r.key, r)
    ref_keys = list(refs_u)
    ref_emb = _encode_images(
        encoder.encode_reference_images, list(refs_u.values()), lambda im: im.open(), batch_size, num_workers,
        "reference images",
    )  # [R, D]
    ref_pos = {k: i for i, k in enumerate(ref_keys)}
    ref_inv = np.asarray([ref_pos[r.key] for r in bench.references], dtype=np.int64)  # [Q]
    q = _encode_composed(encoder, ref_emb, ref_inv, bench.conditions, template, batch_size)  # [Q, D]

    cand_u: dict[Any, Any] = {}
    for cands in bench.candidates:
        for c in cands:
            cand_u.setdefault(c.key, c)
    cand_pos = {k: i for i, k in enumerate(cand_u)}
    feats = F.normalize(
        _encode_images(encoder.encode_gallery_images, list(cand_u.values()), lambda im: im.open(), batch_size,
                       num_workers, "candidate images"),
        dim=-1,
    )  # [U, D]
    n_max = max(len(c) for c in bench.candidates)
    idx = np.zeros((len(bench), n_max), dtype=np.int64)
    valid = np.zeros((len(bench), n_max), dtype=bool)
    for i, cands in enumerate(bench.candidates):
        idx[i, : len(cands)] = [cand_pos[c.key] for c in cands]
        valid[i, : len(cands)] = True
    cand_feats = feats[torch.from_numpy(idx)]  # [Q, C, D]
    scores = torch.einsum("qd,qcd->qc", q, cand_feats).numpy()  # [Q, C], column 0 = target
    return M.genecis_metrics(scores, bench.subset, valid, tie_modes)


def evaluate_benchmark(
    encoder: QueryEncoderProtocol,
    benchmark_name: str,
    root: str | os.PathLike[str],
    split: str | None = None,
    batch_size: int = 64,
    max_queries: int | None = None,
    template: str | None = None,
    fiq_two_orders: bool = True,
    num_workers: int = 0,
    gallery_cache_dir: str | os.PathLike[str] | None = None,
    submission_dir: str | os.PathLike[str] | None = None,
    tie_modes: Sequence[str] = ("expected",),
    loader_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Evaluate on an image benchmark in its official layout (METHOD.md 8).

    Reference embeddings are computed once per unique reference image; queries use
    ``template`` (default ``"a photo of $ that {}"``); gallery features come from the frozen image tower.
    CIRR removes the reference from its ranking; FashionIQ averages the two caption orders
    (``fiq_two_orders=True``, METHOD.md 8.2); CIRCO reports mAP@K; GeneCIS ranks ``[target] + gallery``.
    Test splits without ground truth (CIRR ``test1``, CIRCO ``test``) write validated submission files into
    ``submission_dir`` and return ``{}``.

    Args:
        encoder: see :class:`QueryEncoderProtocol`.
        benchmark_name: ``cirr``, ``fiq`` (three categories + average) or ``fiq_<cat>``, ``circo``, ``genecis``
            (four subsets + average) or ``genecis_<subset>``.
        root: the dataset root (for ``fiq``: the FashionIQ root; for ``genecis``: the GeneCIS root).
        split: benchmark split; default ``val`` (GeneCIS has a single split).
        batch_size: images / texts per encoder call.
        max_queries: first N queries only (smoke tests).
        template: composed prompt; None = the encoder's default.
        fiq_two_orders: FashionIQ two-order averaging.
        num_workers: threads opening images (0 = in the calling thread).
        gallery_cache_dir: cache gallery features here, keyed by ``encoder.fingerprint`` when it has one.
        submission_dir: where test-split submissions go.
        tie_modes: tie modes to report (images rarely tie).
        loader_kwargs: extra arguments for the loader (e.g. GeneCIS ``vg_dir``).

    Returns:
        ``{key: value x100}``.
    """
    kwargs = dict(loader_kwargs or {})
    name = benchmark_name.replace("fashioniq", "fiq")
    if name == "fiq":
        out: dict[str, float] = {}
        for cat in FIQ_CATEGORIES:
            out.update(evaluate_benchmark(encoder, f"fiq_{cat}", root, split, batch_size, max_queries, template,
                                          fiq_two_orders, num_workers, gallery_cache_dir, submission_dir, tie_modes,
                                          kwargs))
        return _with_fiq_average(out, list(FIQ_CATEGORIES))
    if name == "genecis":
        out = {}
        for sub in GENECIS_SUBSETS:
            out.update(evaluate_benchmark(encoder, f"genecis_{sub}", root, split, batch_size, max_queries, template,
                                          fiq_two_orders, num_workers, gallery_cache_dir, submission_dir, tie_modes,
                                          kwargs))
        out.update(M.genecis_average(out))
        return out
    t0 = time.perf_counter()
    if name.startswith("genecis_"):
        gbench = load_benchmark(name, root, **kwargs).take(max_queries)
        result = _evaluate_genecis(encoder, gbench, template, batch_size, num_workers, tie_modes)
    else:
        bench = load_benchmark(name, root, split, **kwargs)
        if max_queries is not None:
            bench = CIRBenchmark(bench.name, bench.split, bench.queries.take(max_queries), bench.gallery,
                                 bench.remove_reference)
        result = _evaluate_gallery_benchmark(encoder, bench, template, fiq_two_orders, batch_size, num_workers,
                                             gallery_cache_dir, submission_dir, tie_modes)
    logger.info("%s: done in %.1fs", name, time.perf_counter() - t0)
    return result
