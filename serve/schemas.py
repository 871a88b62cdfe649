"""HTTP request/response models of the search API (pydantic; they also produce the OpenAPI schema).

Static bounds here are the hard ceiling; the configured limits (``ServeConfig.limits``) are checked at request
time and are usually tighter. Every rejection is a 4xx :class:`ErrorResponse` naming the offending field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "MAX_ID",
    "Reference",
    "SearchRequest",
    "SearchHit",
    "SearchResponse",
    "ItemResponse",
    "ItemsPage",
    "InfoResponse",
    "HealthResponse",
    "ErrorDetail",
    "ErrorResponse",
]

MAX_ID = 2**63 - 1
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reference(_Strict):
    """The reference: exactly one of an image (base64), a gallery item id, or a raw frozen embedding."""

    image_base64: str | None = Field(
        None, max_length=16 * 2**20,
        description="The reference image (JPEG/PNG/WebP/...), base64; a data: URL prefix is accepted.",
    )
    gallery_id: int | None = Field(
        None, ge=0, le=MAX_ID, description="Use a gallery item as the reference (its stored frozen embedding)."
    )
    embedding: list[FiniteFloat] | None = Field(
        None, min_length=1, max_length=8192,
        description="A frozen image embedding of the index's dimension (un-normalised, as phi expects).",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "Reference":
        given = [n for n in ("image_base64", "gallery_id", "embedding") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of image_base64, gallery_id, embedding (got {given or 'none'})")
        return self


class SearchRequest(_Strict):
    """A composed query (reference + modification text), or text-only, or reference-only.

    At least a reference or a non-empty text is required (checked at request time, 422 naming ``text``).
    Modes (inferred): reference + text -> ``composed`` (phi(reference) fills ``$`` in the prompt, encoded by the
    trained text tower); text only -> ``text``; reference only -> ``image`` (the reference's own unit vector).
    """

    reference: Reference | None = None
    text: str | None = Field(None, max_length=4096, description="The modification text.")
    k: int = Field(10, ge=1, le=10_000, description="Number of results.")
    include_metadata: bool = True
    exclude_reference: bool = Field(True, description="Drop the reference gallery item from its own results.")


class SearchHit(BaseModel):
    id: int
    id_str: str = Field(description="The id as a string (JavaScript numbers lose precision above 2**53).")
    score: float
    rank: int
    shard: int | None = None
    metadata: dict[str, Any] | None = None


class SearchResponse(BaseModel):
    mode: Literal["composed", "text", "image"]
    k: int
    results: list[SearchHit]
    timings_ms: dict[str, float] = Field(description="Per-stage wall time: decode, reference, queue (waiting for "
                                                     "a request batch), encode, search, merge, total.")
    batch_size: int = Field(1, description="How many requests shared this request's encoder and search calls.")
    index_version: str
    checkpoint: str | None = None


class ItemResponse(BaseModel):
    id: int
    id_str: str
    shard: int
    metadata: dict[str, Any]
    has_vector: bool
    has_image: bool = False


class ItemsPage(BaseModel):
    items: list[ItemResponse]


class InfoResponse(BaseModel):
    model: dict[str, Any]
    checkpoint: str | None
    fingerprint: str
    embed_dim: int
    index: dict[str, Any]
    limits: dict[str, Any]
    batching: dict[str, Any]
    auth: bool


class HealthResponse(BaseModel):
    status: Literal["ok"]
    index_version: str
    ntotal: int
    shards: list[dict[str, Any]]
    encoder: dict[str, Any] = Field(default_factory=dict, description="checkpoint and fingerprint of the encoder")


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
