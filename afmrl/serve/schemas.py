"""Request and response models of the search API: the OpenAPI schema at /openapi.json.

The schema says what the server enforces, so a client (or a fuzzer) that follows it is never
refused: JSON bodies forbid unknown fields (a typo such as ``{"txt": "milk"}`` is a 422 naming the
field, not a silently empty query) and are strict about types (``"k": "5"`` is refused, as the
schema's ``integer`` says); "text or image" rules are ``anyOf`` branches; limits that depend on
the server's config (``k`` up to ``serve.max_k``, filter and attribute keys, whether
``image_path`` exists at all) are written into the published schema by ``publish_limits``.
Multipart forms carry ``filters``/``attributes`` as a JSON string.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal, get_args

from fastapi import UploadFile
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema,
                      field_validator, model_validator)

MAX_TEXT_CHARS = 2000
MAX_PATH_CHARS = 1024
# What decode_image reads; the multipart encoding tells clients (and fuzzers) to send a photo.
IMAGE_MEDIA_TYPES = "image/jpeg, image/png, image/webp"
NOT_BLANK = r"\S"  # at least one non-whitespace character (servers strip text)


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


def text_or(image_field: str, text_field: str = "text") -> dict[str, Any]:
    """JSON Schema of "non-blank text, an image, or both" (the server answers 422 otherwise)."""
    return {"anyOf": [{"required": [text_field],
                       "properties": {text_field: {"type": "string", "pattern": NOT_BLANK}}},
                      {"required": [image_field]}]}


def _integral(value: Any) -> Any:
    """JSON Schema counts 67.0 as an integer; strict pydantic alone would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral)]
INT64 = {"ge": -(2 ** 63), "le": 2 ** 63 - 1}


# mode=lexical ranks by the query words: the server answers 422 without text.
LEXICAL_NEEDS_TEXT = {"if": {"required": ["mode"], "properties": {"mode": {"const": "lexical"}}},
                      "then": {"required": ["text"],
                               "properties": {"text": {"type": "string", "pattern": NOT_BLANK}}}}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FormModel(Strict):
    """Multipart fields are text: a boolean is 'true' or 'false' (as JSON and the page write
    it), not any of pydantic's lax spellings ('0', 'yes', 'on'), and 'null' is a nullable
    field's null, so the form means what the schema says."""

    @model_validator(mode="before")
    @classmethod
    def _booleans(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, field in cls.model_fields.items():
            if data.get(name) == "null" and type(None) in get_args(field.annotation):
                data[name] = None  # how a form spells a nullable field's null
            elif field.annotation in (bool, bool | None) and isinstance(data.get(name), str):
                if data[name] not in ("true", "false"):
                    raise ValueError(f"{name} must be true or false, not {data[name][:20]!r}")
                data[name] = data[name] == "true"
        return data


class StrictJson(BaseModel):
    """JSON bodies: no unknown fields and no type coercion (form fields are strings, JSON not)."""
    model_config = ConfigDict(extra="forbid", strict=True)


class ImagePathField(StrictJson):
    """``image_path``: absent means no image; ``null`` is refused, as the schema's type says."""
    image_path: Annotated[str | None, WithJsonSchema({
        "type": "string", "minLength": 1, "maxLength": MAX_PATH_CHARS,
        "description": "An image file inside the server's serve.image_root (relative to it)."
    })] = Field(None, min_length=1, max_length=MAX_PATH_CHARS)

    @field_validator("image_path", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("leave image_path out instead of sending null")
        return value


# Forms have no null: an optional photo is a binary part that may be left out.
PHOTO = WithJsonSchema({"type": "string", "format": "binary", "minLength": 1,
                        "description": "The photo (JPEG, PNG or WebP)."})


class QueryOptions(BaseModel):
    text: str = Field("", max_length=MAX_TEXT_CHARS, description="Query text.",
                      examples=["apple juice"])
    k: Integer = Field(10, ge=1, description="Number of results, 1..serve.max_k.")
    enrich: bool | None = Field(
        None, description="Let the generator write the query's attributes and append them to "
        "the query text before embedding (AFMRL's inference). Default: serve.enrich_by_default "
        "(on unless the profile turns it off) when the app has a generator (the pipeline serves "
        "with the run's best generator), else off.")
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(
        None, description="Ranking: dense (embeddings), lexical (BM25 over titles, text and "
        "attributes) or hybrid (both, fused with the weights tuned for the index). Default: "
        "retrieval.mode of the server's config.")


class SearchRequest(QueryOptions, ImagePathField):
    model_config = ConfigDict(json_schema_extra=text_or("image_path") | LEXICAL_NEEDS_TEXT)
    filters: Filters


class ImageSearchForm(QueryOptions, FormModel):
    """multipart/form-data of POST /search/image."""
    model_config = ConfigDict(json_schema_extra=LEXICAL_NEEDS_TEXT)
    image: Annotated[UploadFile, PHOTO]
    filters: FormFilters


class EmbedRequest(ImagePathField):
    model_config = ConfigDict(json_schema_extra=text_or("image_path"))
    text: str = Field("", max_length=MAX_TEXT_CHARS)


class ItemFields(BaseModel):
    title: str = Field("", max_length=500, description="Needed unless the item has an image.")
    text: str = Field("", max_length=MAX_TEXT_CHARS, description="Description.")
    group_id: Integer = Field(-1, **INT64, description="Product id: items sharing it are the "
                              "same product (-1: unknown).")
    coarse_group: str = Field("", max_length=100, description="Coarse category.")


class ItemUpdate(ItemFields, ImagePathField):
    """application/json body of PUT /items/{item_id}; the image is copied into the index."""
    model_config = ConfigDict(json_schema_extra=text_or("image_path", "title"))
    attributes: Attributes


class ItemForm(ItemFields, FormModel):
    """multipart/form-data body of PUT /items/{item_id}."""
    model_config = ConfigDict(json_schema_extra=text_or("image", "title"))
    attributes: FormAttributes
    image: Annotated[UploadFile | None, PHOTO] = None


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


def publish_limits(schema: dict[str, Any], max_k: int, keys: list[str] | tuple[str, ...],
                   image_paths: bool) -> dict[str, Any]:
    """Write the server's config-dependent rules into its OpenAPI ``schema`` (in place).

    ``k`` gets its maximum, filters and attributes their keys (filter values must be non-blank),
    image uploads their media types, and without ``serve.image_root`` the ``image_path`` fields
    disappear (the server refuses them as unknown fields then).
    """
    components = schema["components"]["schemas"]
    keyed = {"type": "object", "additionalProperties": False}
    for model in components.values():
        properties = model.get("properties", {})
        if "k" in properties:
            properties["k"]["maximum"] = max_k
        if "filters" in properties:
            properties["filters"] |= keyed | {"properties": {
                key: {"type": "string", "pattern": NOT_BLANK} for key in keys}}
        if "attributes" in properties:
            properties["attributes"] |= keyed | {"properties": {
                key: {"type": "string"} for key in keys}}
        if not image_paths and "image_path" in properties:
            del properties["image_path"]
            model["anyOf"] = [branch for branch in model.get("anyOf", [])
                              if "image_path" not in branch["required"]]
    for path in schema["paths"].values():
        for operation in path.values():
            form = operation.get("requestBody", {}).get("content", {}).get(
                "multipart/form-data")
            if form is not None:
                form["encoding"] = {"image": {"contentType": IMAGE_MEDIA_TYPES}}
    return schema
