"""The FastAPI application: routes, limits, auth and JSON errors, over any :class:`serve.core.SearchBackend`.

Built per replica by the Serve ingress (``__serve_build_asgi_app__``) and, in tests, over a
:class:`serve.core.LocalBackend`, so the HTTP contract is tested and fuzzed without starting Ray.

Routes: ``POST /v1/search`` (JSON), ``POST /v1/search/upload`` (multipart), ``GET /v1/items``,
``GET /v1/items/{id}``, ``GET /v1/info``, ``GET /healthz``, ``GET /`` (web page), ``GET /openapi.json``.
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from rtd.index import merge_topk
from serve.core import EncodeItem, RequestError, decode_base64, decode_image, now_ms, resolve_auth_token
from serve.schemas import (
    MAX_ID,
    ErrorResponse,
    HealthResponse,
    InfoResponse,
    ItemResponse,
    ItemsPage,
    SearchHit,
    SearchRequest,
    SearchResponse,
)

logger = logging.getLogger(__name__)

__all__ = ["create_api", "BodyLimitMiddleware"]

STATIC_DIR = Path(__file__).parent / "static"
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 503)}


def _error(status: int, field: str | None, message: str, code: str = "invalid_request",
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "field": field}}, status_code=status,
                        headers=headers)


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 before any route parses them: by Content-Length up
    front, and for chunked or mis-declared bodies by reading (at most ``max_bytes + 1`` bytes) first and then
    replaying the buffered body to the app."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = _error(413, "body", f"request body exceeds max_body_bytes={self.max_bytes}", "too_large")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await _error(400, "content-length", "invalid Content-Length header")(scope, receive, send)
            if n > self.max_bytes:
                return await too_big(scope, receive, send)
        messages, seen = [], 0
        while True:
            msg = await receive()
            messages.append(msg)
            if msg["type"] != "http.request":
                break  # http.disconnect: let the app see it
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                return await too_big(scope, receive, send)
            if not msg.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _field_of(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def create_api(backend, cfg) -> FastAPI:
    """Build the FastAPI app over ``backend`` with ``cfg`` (a :class:`~rtd.config.ServeConfig`).

    Args:
        backend: a :class:`serve.core.SearchBackend` (in-process or Serve handles).
        cfg: the serve config (limits, auth, default k).

    Returns:
        The FastAPI app, with :class:`BodyLimitMiddleware` installed.
    """
    limits = cfg.limits
    manifest = backend.manifest
    token = resolve_auth_token(cfg)
    page = (STATIC_DIR / "index.html").read_text() if (STATIC_DIR / "index.html").is_file() else "<h1>rtd</h1>"

    app = FastAPI(
        title="rtd composed image retrieval",
        version="1",
        description="Composed queries (reference image + modification text) against a sharded FAISS gallery.",
    )

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, e: RequestError):
        return _error(e.status, e.field, e.message, e.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {"loc": ("body",), "msg": "invalid request"}
        field = _field_of(first.get("loc", ("body",)))
        msg = "; ".join(f"{_field_of(x.get('loc', ()))}: {x.get('msg')}" for x in errs[:5]) or "invalid request"
        return _error(422, field, msg)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException):
        return _error(e.status_code, None, str(e.detail), "http_error", headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, e: Exception):  # last resort; fuzzing asserts it never fires
        logger.exception("unhandled error")
        return _error(500, None, f"internal error: {type(e).__name__}", "internal")

    async def require_auth(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise RequestError(401, "authorization", "missing or invalid bearer token", "unauthorized")

    auth = [Depends(require_auth)]

    # ------------------------------------------------------------------ search
    async def run_search(*, text: str | None, k: int, include_metadata: bool, exclude_reference: bool,
                         image_bytes: bytes | None = None, image_b64: str | None = None,
                         gallery_id: int | None = None, embedding: list[float] | None = None,
                         image_field: str = "reference.image_base64",
                         gallery_field: str = "reference.gallery_id") -> SearchResponse:
        t_start = now_ms()
        timings: dict[str, float] = {}
        if k > limits.max_k:
            raise RequestError(422, "k", f"k={k} exceeds max_k={limits.max_k}")
        if text is not None and len(text) > limits.max_text_chars:
            raise RequestError(422, "text", f"text has {len(text)} characters; max_text_chars={limits.max_text_chars}")
        item = EncodeItem(text=text)
        t = now_ms()
        if (image_b64 is not None or image_bytes is not None) and manifest.gallery_kind == "caption":
            raise RequestError(422, image_field, "this deployment serves a caption gallery (frozen text tower, no "
                               "image tower): give the reference as a gallery_id or an embedding")
        if image_b64 is not None:
            image_bytes = decode_base64(image_b64, image_field, limits.max_image_bytes)
        if image_bytes is not None:
            item.image = await run_in_threadpool(decode_image, image_bytes, image_field, limits.max_image_pixels,
                                                 limits.max_image_bytes)
        timings["decode"] = now_ms() - t
        t = now_ms()
        exclude: int | None = None
        if gallery_id is not None:
            vec = await backend.get_vector(gallery_id)
            if vec is None:
                if await backend.get_item(gallery_id) is None:
                    raise RequestError(404, gallery_field, f"no gallery item with id {gallery_id}", "not_found")
                raise RequestError(422, gallery_field, "this index stores no vectors (built with "
                                   "store_vectors=false); gallery items cannot be references")
            item.ref = np.asarray(vec, np.float32)
            exclude = gallery_id if exclude_reference else None
        if embedding is not None:
            if len(embedding) != manifest.dim:
                raise RequestError(422, "reference.embedding",
                                   f"embedding has {len(embedding)} values; the index dimension is {manifest.dim}")
            ref = np.asarray(embedding, np.float32)
            if not np.isfinite(ref).all() or float(np.linalg.norm(ref)) == 0.0:
                raise RequestError(422, "reference.embedding", "embedding must be finite and non-zero")
            item.ref = ref
        timings["reference"] = now_ms() - t
        mode = item.mode
        if mode == "text" and not (text and text.strip()):
            raise RequestError(422, "text", "give a reference, a non-empty text, or both")
        k_fetch = k + (1 if exclude is not None else 0)
        found = await backend.encode_and_search(item, k_fetch)
        checkpoint, per_shard = found.checkpoint, found.per_shard
        timings["queue"], timings["encode"], timings["search"] = found.queue_ms, found.encode_ms, found.search_ms
        t = now_ms()
        D, I = merge_topk([(d, i) for d, i, _ in per_shard], k_fetch, manifest.metric)
        meta: dict[int, Any] = {}
        shard_of: dict[int, int] = {}
        for s, (_, _, m) in enumerate(per_shard):
            meta.update(m)
            shard_of.update({i: s for i in m})
        hits = []
        for score, i in zip(D[0], I[0]):
            i = int(i)
            if i < 0 or i == exclude or len(hits) == k:
                continue
            hits.append(SearchHit(id=i, id_str=str(i), score=float(score), rank=len(hits) + 1,
                                  shard=shard_of.get(i), metadata=meta.get(i) if include_metadata else None))
        timings["merge"] = now_ms() - t
        timings["total"] = now_ms() - t_start
        for stage, ms in timings.items():
            backend.observe(stage, ms)
        return SearchResponse(mode=mode, k=k, results=hits, timings_ms={s: round(v, 3) for s, v in timings.items()},
                              batch_size=found.batch_size, index_version=manifest.index_version,
                              checkpoint=checkpoint)

    @app.post("/v1/search", response_model=SearchResponse, responses=_ERRORS, dependencies=auth,
              summary="Composed / text-only / reference-only search (JSON body)")
    async def search(req: SearchRequest) -> SearchResponse:
        ref = req.reference
        return await run_search(
            text=req.text, k=req.k, include_metadata=req.include_metadata, exclude_reference=req.exclude_reference,
            image_b64=ref.image_base64 if ref else None, gallery_id=ref.gallery_id if ref else None,
            embedding=ref.embedding if ref else None,
        )

    @app.post("/v1/search/upload", response_model=SearchResponse, responses=_ERRORS, dependencies=auth,
              summary="Search with the reference image as a multipart upload")
    async def search_upload(
        image: UploadFile | None = File(None, description="Reference image file."),
        text: str | None = Form(None, max_length=4096),
        k: int = Form(10, ge=1, le=10_000),
        gallery_id: int | None = Form(None, ge=0, le=MAX_ID),
        include_metadata: bool = Form(True),
        exclude_reference: bool = Form(True),
    ) -> SearchResponse:
        raw = None
        if image is not None:
            raw = await image.read(limits.max_image_bytes + 1)
            if not raw:
                raise RequestError(422, "image", "empty upload")
        if raw is not None and gallery_id is not None:
            raise RequestError(422, "image", "give either an image or a gallery_id, not both")
        if raw is None and gallery_id is None and not (text and text.strip()):
            raise RequestError(422, "text", "give an image, a gallery_id, a non-empty text, or a combination")
        return await run_search(text=text, k=k, include_metadata=include_metadata,
                                exclude_reference=exclude_reference, image_bytes=raw, gallery_id=gallery_id,
                                image_field="image", gallery_field="gallery_id")

    # ------------------------------------------------------------------ items, info, health
    @app.get("/v1/items", response_model=ItemsPage, responses=_ERRORS, dependencies=auth,
             summary="A page of gallery items (from the first shard), to pick references")
    async def list_items(offset: int = Query(0, ge=0, le=10**9), limit: int = Query(20, ge=1, le=100)):
        recs = await backend.list_items(offset, limit)
        return ItemsPage(items=[ItemResponse(id_str=str(r["id"]), has_image=image_path(r) is not None, **r)
                                for r in recs if r])

    @app.get("/v1/items/{item_id}", response_model=ItemResponse, responses=_ERRORS, dependencies=auth)
    async def get_item(item_id: int = PathParam(..., ge=0, le=MAX_ID)):
        rec = await backend.get_item(item_id)
        if rec is None:
            raise RequestError(404, "item_id", f"no gallery item with id {item_id}", "not_found")
        return ItemResponse(id_str=str(rec["id"]), has_image=image_path(rec) is not None, **rec)

    image_root = Path(cfg.image_root).resolve() if cfg.image_root else None

    def image_path(rec: dict[str, Any] | None) -> Path | None:
        if image_root is None or rec is None:
            return None
        rel = (rec.get("metadata") or {}).get("path")
        if not isinstance(rel, str) or not rel:
            return None
        p = (image_root / rel).resolve()
        return p if p.is_relative_to(image_root) and p.is_file() else None  # never leave image_root

    @app.get("/v1/items/{item_id}/image", response_class=FileResponse, dependencies=auth,
             responses={200: {"content": {"image/*": {}}}, **_ERRORS}, summary="The gallery item's image file")
    async def get_item_image(item_id: int = PathParam(..., ge=0, le=MAX_ID)):
        p = image_path(await backend.get_item(item_id))
        if p is None:
            raise RequestError(404, "item_id", f"no image for gallery item {item_id}", "not_found")
        return FileResponse(p)

    @app.get("/v1/info", response_model=InfoResponse, responses=_ERRORS, dependencies=auth)
    async def info():
        enc = await backend.encoder_info()
        return InfoResponse(
            model=enc["model"], checkpoint=enc["checkpoint"], fingerprint=enc["fingerprint"],
            embed_dim=enc["embed_dim"],
            index=manifest.model_dump(mode="json", include={"index_version", "fingerprint", "dim", "metric",
                                                            "factory", "num_shards", "ntotal", "gallery_kind"}),
            limits=limits.model_dump(), batching=enc.get("batching", {}), auth=token is not None,
        )

    @app.get("/healthz", response_model=HealthResponse, responses=_ERRORS)
    async def healthz():
        try:
            shards = await backend.health()
            enc = await backend.encoder_info()  # the encoder answers too (and its handle is warm afterwards)
        except Exception as e:  # noqa: BLE001 - any shard failure means "not ready"
            raise RequestError(503, None, f"index not ready: {type(e).__name__}: {e}", "unavailable") from e
        ntotal = sum(int(s["ntotal"]) for s in shards)
        if len(shards) != manifest.num_shards or ntotal != manifest.ntotal:
            raise RequestError(503, None, f"{len(shards)}/{manifest.num_shards} shards, {ntotal}/{manifest.ntotal} "
                                          "vectors loaded", "unavailable")
        return HealthResponse(status="ok", index_version=manifest.index_version, ntotal=ntotal, shards=shards,
                              encoder={"checkpoint": enc.get("checkpoint"), "fingerprint": enc.get("fingerprint")})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page():
        return HTMLResponse(page)

    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    return app
