"""What the search app does per request, behind the HTTP routes of ``afmrl.serve.api``.

``SearchService`` validates input, enriches queries with the generator, embeds through the
Embedder deployment and retrieves through the Retriever, with a deadline on every call. It holds
Ray Serve deployment handles and is the base class of the ``SearchIngress`` deployment.
"""
from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
from fastapi import UploadFile
from PIL import Image
from ray.exceptions import RayActorError

from afmrl.config import AfmrlConfig
from afmrl.data.images import decode_image
from afmrl.index.lexical import LexicalIndexMissing, attribute_prose
from afmrl.models.embedders import EmbedInput, takes_images
from afmrl.serve.catalog import IndexSource
from afmrl.serve.enrich import enriched_text, enriches
from afmrl.serve.schemas import (EmbedRequest, EmbedResponse, Health, Hit, IndexInfo, Item,
                                 ItemFields, ItemResponse, QueryOptions, SearchResponse)
from afmrl.serve.validation import (ApiError, check_attributes, check_filters, check_item_id,
                                    check_k, resolve_image_path)
from afmrl.train.data import catalog_inputs

log = logging.getLogger("ray.serve")

# Longest side of item images kept in the index folder (re-encoded: no EXIF/GPS is stored).
STORED_IMAGE_SIDE = 1024


class SearchService:
    def __init__(self, embedder: Any, retriever: Any, generator: Any | None,
                 source: IndexSource, config: AfmrlConfig) -> None:
        self.embedder = embedder
        self.retriever = retriever
        self.generator = generator
        self.source = source
        self.config = config
        self.keys = config.extract.attribute_keys
        self.timeout_s = config.ray.call_timeout_s

    @functools.cached_property
    def embeds_images(self) -> bool:
        return takes_images(self.source.embedder)

    def _check_image(self, image: Image.Image | None) -> None:
        if image is not None and not self.embeds_images:
            raise ApiError(400, "this index's embedder has no image tower (it was trained on a "
                                "text-only catalog): send text only")

    async def _call(self, method: Any, *args: Any, retry: bool = True) -> Any:
        """One deployment call within the deadline.

        A replica dying under a request (crash, OOM kill, node loss) surfaces as RayActorError;
        Serve routes the second attempt to a live replica, so clients see no error. Only
        idempotent calls retry: all but DELETE, whose retry would answer 404 for a done delete.
        """
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            try:
                return await asyncio.wait_for(method.remote(*args), self.timeout_s)
            except asyncio.TimeoutError:
                raise ApiError(504, f"{method.deployment_name} did not answer within "
                                    f"{self.timeout_s:g}s (ray.call_timeout_s)") from None
            except RayActorError as error:
                if attempt + 1 == attempts:
                    raise ApiError(503, f"{method.deployment_name} is unavailable "
                                        f"({type(error).__name__}); retry shortly") from error
                log.warning("%s replica died under a request (%s); retrying",
                            method.deployment_name, type(error).__name__)

    # -- input -----------------------------------------------------------------------------
    def image_from_path(self, path: str, max_side: int | None = None) -> Image.Image:
        resolved = resolve_image_path(path, self.config.serve.image_root)
        return decode_image(resolved.read_bytes(), max_side or self.config.data.image_size, path)

    async def image_from_upload(self, upload: UploadFile, max_side: int | None = None
                                ) -> Image.Image:
        return decode_image(await upload.read(), max_side or self.config.data.image_size,
                            upload.filename or "upload")

    def _public(self, record: dict[str, Any], root_path: str) -> dict[str, Any]:
        """An item as clients see it: the image as a URL of this app, never a server path."""
        url = f"{root_path}/items/{quote(record['item_id'], safe='/')}/image" \
            if record["image_uri"] else None
        return {"item_id": record["item_id"], "group_id": record["group_id"],
                "title": record["title"], "text": record["text"],
                "coarse_group": record["coarse_group"], "attributes": record["attributes"],
                "image_url": url}

    # -- endpoints -------------------------------------------------------------------------
    async def search(self, query: QueryOptions, filters: dict[str, str],
                     image: Image.Image | None, root_path: str) -> SearchResponse:
        check_k(query.k, self.config.serve.max_k)
        filters = check_filters(filters, self.keys)
        text = query.text.strip()
        if not text and image is None:
            raise ApiError(422, "empty query: send text, an image, or both")
        self._check_image(image)
        mode = query.mode or self.config.retrieval.mode
        if mode == "lexical" and not text:
            raise ApiError(422, "mode=lexical needs query text (a photo alone can only be "
                                "searched with mode=dense or hybrid)")
        lexical_text = text
        attributes: dict[str, str] = {}
        if enriches(query.enrich, self.generator is not None,
                    self.config.serve.enrich_by_default):
            if self.generator is None:
                raise ApiError(400, "enrich=true needs the attribute generator, but this app "
                                    "runs without one (start it with a generator: afmrl serve "
                                    "--generator PATH)")
            attributes = await self._call(self.generator.attributes, (text, image))
            text = enriched_text(text, attributes, self.keys)
        vector = None if mode == "lexical" else \
            await self._call(self.embedder.embed, EmbedInput(text, image))
        try:
            hits = await self._call(self.retriever.search, vector, query.k, filters,
                                    lexical_text, mode, attribute_prose(attributes, self.keys))
        except LexicalIndexMissing as error:  # an index built before lexical ones
            raise ApiError(400, f"mode={mode} needs the lexical index, which this index "
                                f"lacks; rebuild it with `afmrl index` or send mode=dense"
                           ) from error
        return SearchResponse(hits=[Hit(**self._public(h, root_path), score=h["score"])
                                    for h in hits],
                              query_text=text, query_attributes=attributes)

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        image = self.image_from_path(request.image_path) if request.image_path else None
        if not request.text.strip() and image is None:
            raise ApiError(422, "nothing to embed: send text, an image_path, or both")
        self._check_image(image)
        vector = await self._call(self.embedder.embed, EmbedInput(request.text.strip(), image))
        return EmbedResponse(embedding=vector.tolist(), dim=len(vector),
                             model_hash=self.source.model_hash)

    async def put_item(self, item_id: str, fields: ItemFields, attributes: dict[str, str],
                       image: Image.Image | None, root_path: str) -> ItemResponse:
        """Embed the item like the index stage does (``catalog_inputs``), then add/replace it."""
        check_item_id(item_id)
        attributes = check_attributes(attributes, self.keys)
        if not fields.title.strip() and image is None:
            raise ApiError(422, "an item needs a title or an image")
        self._check_image(image)
        image_uri = ""
        if image is not None:
            jpeg = io.BytesIO()
            image.save(jpeg, "JPEG", quality=90)
            image_uri = await self._call(self.retriever.store_image, jpeg.getvalue())
        row = {"item_id": item_id, "group_id": fields.group_id, "title": fields.title.strip(),
               "text": fields.text.strip(), "image_uri": image_uri,
               "attributes": json.dumps(attributes), "coarse_group": fields.coarse_group}
        vector = await self._call(self.embedder.embed,
                                  catalog_inputs(pd.DataFrame([row]), self.keys)[0])
        created = await self._call(self.retriever.put, row, vector)
        item = Item(**self._public({**row, "attributes": attributes}, root_path))
        return ItemResponse(item=item, created=created)

    async def delete_item(self, item_id: str) -> None:
        if not await self._call(self.retriever.delete, item_id, retry=False):
            raise ApiError(404, f"no item {item_id[:200]!r} in the catalog")

    async def _record(self, item_id: str) -> dict[str, Any]:
        record = await self._call(self.retriever.get, item_id)
        if record is None:
            raise ApiError(404, f"no item {item_id[:200]!r} in the catalog")
        return record

    async def get_item(self, item_id: str, root_path: str) -> Item:
        return Item(**self._public(await self._record(item_id), root_path))

    async def item_image(self, item_id: str) -> Path:
        """The file of a catalog item's image: only paths the catalog holds, never user input."""
        path = Path((await self._record(item_id))["image_uri"] or "")
        if not path.is_file():
            raise ApiError(404, f"item {item_id[:200]!r} has no image")
        return path

    async def info(self) -> IndexInfo:
        return IndexInfo(**await self._call(self.retriever.info))

    async def health(self) -> Health:
        return Health(status="ok", items=await self._call(self.retriever.count))
