"""Request and response models of the search API: the OpenAPI schema at /openapi.json.

Requests forbid unknown fields (a typo such as ``{"txt": "milk"}`` is a 422 naming the field,
not a silently empty query). Multipart forms carry ``filters``/``attributes`` as a JSON string.
"""
from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import UploadFile
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_TEXT_CHARS = 2000


def _json_object(value: Any) -> Any:
    """Form fields are strings: parse '{"colour": "red"}' into the dict the model expects."""
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"not a JSON object ({error.msg})") from None
    return value


Filters = Annotated[dict[str, str], Field(
    default_factory=dict, description="Attribute equality filters, e.g. {\"colour\": \"red\"}; "
    "keys from extract.attribute_keys, values compared lower-cased.",
    examples=[{"category": "juice"}])]
FormFilters = Annotated[Filters, BeforeValidator(_json_object)]
Attributes = Annotated[dict[str, str], Field(
    default_factory=dict, description="Key attributes (extract.attribute_keys).",
    examples=[{"category": "juice", "flavour": "apple"}])]
FormAttributes = Annotated[Attributes, BeforeValidator(_json_object)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueryOptions(Strict):
    text: str = Field("", max_length=MAX_TEXT_CHARS, description="Query text.",
                      examples=["apple juice"])
    k: int = Field(10, description="Number of results, 1..serve.max_k.")
    enrich: bool | None = Field(
        None, description="Let the generator write the query's attributes and append them to "
        "the query text before embedding (AFMRL's inference). Default: on when the app has a "
        "generator (the pipeline serves with the run's best generator), else off.")


class SearchRequest(QueryOptions):
    filters: Filters
    image_path: str | None = Field(None, description="Query image: a file inside the server's "
                                   "serve.image_root (relative to it).")


class ImageSearchForm(QueryOptions):
    """multipart/form-data of POST /search/image."""
    image: UploadFile = Field(description="The query photo (JPEG, PNG, WebP, ...).")
    filters: FormFilters


class EmbedRequest(Strict):
    text: str = Field("", max_length=MAX_TEXT_CHARS)
    image_path: str | None = Field(None, description="A file inside serve.image_root.")


class ItemFields(Strict):
    title: str = Field("", max_length=500, description="Needed unless the item has an image.")
    text: str = Field("", max_length=MAX_TEXT_CHARS, description="Description.")
    group_id: int = Field(-1, description="Product id: items sharing it are the same product "
                          "(-1: unknown).")
    coarse_group: str = Field("", max_length=100, description="Coarse category.")


class ItemUpdate(ItemFields):
    """application/json body of PUT /items/{item_id}."""
    attributes: Attributes
    image_path: str | None = Field(None, description="Item image: a file inside "
                                   "serve.image_root (copied into the index folder).")


class ItemForm(ItemFields):
    """multipart/form-data body of PUT /items/{item_id}."""
    attributes: FormAttributes
    image: UploadFile | None = Field(None, description="Item image upload.")


class Item(BaseModel):
    item_id: str
    group_id: int = Field(description="Product id (items sharing it are the same product).")
    title: str
    text: str
    coarse_group: str
    attributes: dict[str, str]
    image_url: str | None = Field(description="GET this for the item's image (None: no image).")


class Hit(Item):
    score: float = Field(description="Similarity (inner product: higher is better; "
                         "L2: lower is better).")


class SearchResponse(BaseModel):
    hits: list[Hit]
    query_text: str = Field(description="The text that was embedded (with the generated "
                            "attributes when enrich=true).")
    query_attributes: dict[str, str] = Field(description="Attributes the generator wrote.")


class EmbedResponse(BaseModel):
    embedding: list[float]
    dim: int
    model_hash: str = Field(description="Fingerprint of the embedder that produced it.")


class ItemResponse(BaseModel):
    item: Item
    created: bool = Field(description="True when the id was new.")


class ShardInfo(BaseModel):
    shard: int
    items: int


class IndexInfo(BaseModel):
    items: int
    dim: int
    model_hash: str
    kind: str
    metric: str
    shards: list[ShardInfo]
    journal_records: int = Field(description="Live updates applied since the index was built.")


class Health(BaseModel):
    status: str
    items: int


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong and what to send instead.")
