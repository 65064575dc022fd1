"""The HTTP surface of the search app (FastAPI): routes, body limit, auth and error bodies.

Every failure a client can cause is a 4xx with ``{"error": "..."}`` saying what to send
instead; nothing a request carries can produce a 500 or take a replica down. Oversized bodies
are refused by Content-Length and, for chunked or lying uploads, by counting the stream before
anything is parsed. With ``serve.auth_token`` set, every route but the page shell, /healthz
and the API docs needs ``Authorization: Bearer <token>``.
"""
from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Annotated, Any, Callable

from fastapi import Depends, FastAPI, Form, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from afmrl.data.images import ImageError
from afmrl.index.sharded import ShardUnavailable
from afmrl.serve.schemas import (EmbedRequest, EmbedResponse, ErrorResponse, Health,
                                 ImageSearchForm, IndexInfo, Item, ItemForm, ItemResponse,
                                 ItemUpdate, SearchRequest, SearchResponse)
from afmrl.serve.service import STORED_IMAGE_SIDE, SearchService
from afmrl.serve.validation import ApiError
from afmrl.utils.ray_utils import RemoteCallTimeout

log = logging.getLogger("ray.serve")

DESCRIPTION = """Fine-grained multimodal product search (AFMRL).

Search by text, by photo, or both; filter on key attributes (exact: results are the best items
that match, never a filtered top-k); let the attribute generator enrich the query (`enrich`).
Edit the catalog live with `PUT`/`DELETE /items/{item_id}` (durable across restarts).
Errors are `{"error": "..."}` with a 4xx status. The search page is at `/`.
"""
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 503)}


def error_response(status: int, message: str, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with a 413.

    The declared Content-Length is checked first; the body is then read (at most max_bytes + one
    chunk) and replayed to the app, so chunked uploads and lying headers are caught before any
    parser runs.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"request body over {self.max_bytes} bytes "
                                       f"(serve.max_body_bytes); send a smaller image")
        await response(scope, receive, send)


def bearer_auth(token: str) -> Callable[..., Any]:
    """A dependency comparing the bearer token in constant time."""
    scheme = HTTPBearer(auto_error=False, description="serve.auth_token")

    async def check(credentials: HTTPAuthorizationCredentials | None = Security(scheme)) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(),
                                                          token.encode()):
            raise ApiError(401, "missing or wrong bearer token: send "
                                "'Authorization: Bearer <serve.auth_token>'",
                           {"WWW-Authenticate": "Bearer"})
    return check


def _validation_message(errors: list[Any]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error["loc"] if p not in ("body", "query", "path"))
        parts.append(f"{where or 'body'}: {error['msg']}")
    return "invalid request: " + "; ".join(parts)


def _install_error_handlers(api: FastAPI) -> None:
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, error.headers)

    async def invalid(_: Request, error: RequestValidationError | ValidationError
                      ) -> JSONResponse:
        return error_response(422, _validation_message(error.errors()))

    async def bad_image(_: Request, error: ImageError) -> JSONResponse:
        return error_response(400, f"{error}; send a JPEG, PNG or WebP photo")

    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), error.headers)

    async def unavailable(_: Request, error: Exception) -> JSONResponse:
        log.warning("backend unavailable: %s", error)
        return error_response(503, "the index is being reloaded after a failure; retry shortly")

    async def internal(_: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=error)
        return error_response(500, f"internal error ({type(error).__name__}); see the server "
                                   f"log")

    api.add_exception_handler(ApiError, api_error)
    api.add_exception_handler(RequestValidationError, invalid)
    api.add_exception_handler(ValidationError, invalid)
    api.add_exception_handler(ImageError, bad_image)
    api.add_exception_handler(HTTPException, http_error)
    api.add_exception_handler(ShardUnavailable, unavailable)
    api.add_exception_handler(RemoteCallTimeout, unavailable)
    api.add_exception_handler(Exception, internal)


def create_api(service: SearchService, page: Path) -> FastAPI:
    serve = service.config.serve
    api = FastAPI(title="afmrl search", version="1", description=DESCRIPTION, responses=ERRORS)
    api.add_middleware(BodyLimit, max_bytes=serve.max_body_bytes)
    _install_error_handlers(api)
    auth = [Depends(bearer_auth(serve.auth_token))] if serve.auth_token else []

    def root(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    @api.get("/", include_in_schema=False)
    async def search_page() -> HTMLResponse:
        return HTMLResponse(page.read_text())

    @api.get("/healthz", response_model=Health, summary="Liveness: the app answers and the "
             "Retriever holds the catalog")
    async def healthz() -> Health:
        return await service.health()

    @api.post("/search", response_model=SearchResponse, dependencies=auth,
              summary="Search by text and/or a server-side image path")
    async def search(body: SearchRequest, request: Request) -> SearchResponse:
        image = service.image_from_path(body.image_path) if body.image_path else None
        return await service.search(body, body.filters, image, root(request))

    @api.post("/search/image", response_model=SearchResponse, dependencies=auth,
              summary="Search by an uploaded photo (multipart), optionally with text")
    async def search_image(form: Annotated[ImageSearchForm, Form(media_type="multipart/form-data")],
                           request: Request) -> SearchResponse:
        image = await service.image_from_upload(form.image)
        return await service.search(form, form.filters, image, root(request))

    @api.post("/embed", response_model=EmbedResponse, dependencies=auth,
              summary="The embedding of a text and/or image (as the index was built)")
    async def embed(body: EmbedRequest) -> EmbedResponse:
        return await service.embed(body)

    @api.get("/index/info", response_model=IndexInfo, dependencies=auth,
             summary="Items, dimension, embedder hash and shards of the served index")
    async def index_info() -> IndexInfo:
        return await service.info()

    @api.get("/items/{item_id:path}/image", dependencies=auth, response_class=FileResponse,
             summary="A catalog item's image")
    async def item_image(item_id: str) -> FileResponse:
        return FileResponse(await service.item_image(item_id))

    @api.get("/items/{item_id:path}", response_model=Item, dependencies=auth,
             summary="One catalog item")
    async def get_item(item_id: str, request: Request) -> Item:
        return await service.get_item(item_id, root(request))

    @api.put("/items/{item_id:path}", response_model=ItemResponse, dependencies=auth,
             summary="Add or replace a catalog item (embedded and indexed live, durable)",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/ItemUpdate"}},
                 "multipart/form-data": {"schema": {"$ref": "#/components/schemas/ItemForm"}}}}})
    async def put_item(item_id: str, request: Request) -> JSONResponse:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            fields = ItemForm.model_validate(dict(form.multi_items()))
            image = await service.image_from_upload(fields.image, STORED_IMAGE_SIDE) \
                if fields.image is not None else None
        else:
            fields = ItemUpdate.model_validate_json(await request.body())
            image = service.image_from_path(fields.image_path, STORED_IMAGE_SIDE) \
                if fields.image_path else None
        result = await service.put_item(item_id, fields, fields.attributes, image,
                                        root(request))
        return JSONResponse(result.model_dump(), status_code=201 if result.created else 200)

    @api.delete("/items/{item_id:path}", status_code=204, dependencies=auth,
                summary="Remove a catalog item (durable)")
    async def delete_item(item_id: str) -> None:
        await service.delete_item(item_id)

    # The models only referenced by openapi_extra must be in the schema too.
    _add_schemas(api, ItemUpdate, ItemForm)
    return api


def _add_schemas(api: FastAPI, *models: type) -> None:
    original = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = original()
            for model in models:
                schema["components"]["schemas"][model.__name__] = model.model_json_schema(
                    ref_template="#/components/schemas/{model}")
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi
